"""The in-process loopback bus: ADD/REMOVE, correlation, timeouts, several devices and buses.

Negative tests are named after the rule (checklist ID where one exists) they check.
"""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest

import virtio_msg.spec as C
from virtio_msg.bus import Backend, LoopbackBus, loopback_pair
from virtio_msg.devices import RngDevice
from virtio_msg.drivers import RngDriver
from virtio_msg.errors import BusError, DeviceBroken, TransportError
from virtio_msg.testing import GatedChannel
from virtio_msg.transport import BusParams, DeviceModel
from virtio_msg.virtqueue import DeviceRing
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


def wait_for(predicate: object, limit: float = 5.0) -> None:
    """Poll ``predicate`` (bounded) until it is true."""
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def rng(bus: LoopbackBus, dev_num: int) -> RngDriver:
    entry = bus.device(dev_num)
    assert entry is not None and entry.error is None, entry and entry.error
    return cast(RngDriver, entry.driver)


class SilentRng(RngDevice):
    """Takes buffers but never completes them."""

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        pass


# --- ADD / REMOVE ----------------------------------------------------------------


def test_add_probes_device_while_add_is_pending(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(3, RngDevice(seed=3))
    entry = bus.device(3)
    assert entry is not None and entry.type_name == "rng" and entry.error is None
    # The probe's requests reached the backend before ADD returned.
    assert len(channel.delivered) >= 8
    assert len(rng(bus, 3).read(32)) == 32


def test_add_rejects_duplicate_device_number(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(1, RngDevice())
    with pytest.raises(BusError, match="already present"):
        bus.add_device(1, channel)


@pytest.mark.parametrize("dev_num", [-1, 0x10000, 1 << 32])
def test_add_rejects_numbers_outside_16_bits(
    gated: tuple[LoopbackBus, Backend, GatedChannel], dev_num: int
) -> None:
    bus, _backend, channel = gated
    with pytest.raises(BusError, match=r"outside 0\.\.65535"):
        bus.add_device(dev_num, channel)


def test_remove_rejects_absent_device(gated: tuple[LoopbackBus, Backend, GatedChannel]) -> None:
    bus, _backend, _channel = gated
    with pytest.raises(BusError, match="not present"):
        bus.remove_device(7)


def test_add_from_unattached_channel_is_refused(profile: str) -> None:
    with LoopbackBus(BusParams(profile), size=1 << 20) as bus:
        stranger = GatedChannel.__new__(GatedChannel)
        with pytest.raises(BusError, match="not attached"):
            bus.add_device(0, stranger)


def test_remove_frees_rings_and_reports_to_driver(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, _channel = gated
    removed: list[int] = []
    bus.on_removed.append(lambda e: removed.append(e.dev_num))
    before = bus.pool.stats().slots_used
    backend.serve(2, RngDevice())
    assert bus.pool.stats().slots_used > before
    driver = rng(bus, 2)
    backend.withdraw(2)
    assert removed == [2]
    assert bus.device(2) is None
    assert bus.pool.stats().slots_used == before  # REMOVE frees everything
    assert bus.pool.stats().live_mappings == 0
    with pytest.raises(TransportError) as err:
        driver.read(8)
    assert err.value.kind == "removed"


def test_readd_after_remove_probes_afresh(gated: tuple[LoopbackBus, Backend, GatedChannel]) -> None:
    bus, backend, _channel = gated
    backend.serve(5, RngDevice(seed=1))
    first = rng(bus, 5).read(16)
    backend.withdraw(5)
    backend.serve(5, RngDevice(seed=1))
    assert rng(bus, 5).read(16) == first


def test_remove_while_request_in_flight_fails_it_as_removed(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None
    channel.hold = True  # the backend will not see the next request
    errors: list[TransportError] = []

    def ask() -> None:
        try:
            entry.transport.get_status()
        except TransportError as exc:
            errors.append(exc)

    t = threading.Thread(target=ask)
    t.start()
    wait_for(lambda: channel.held)
    bus.remove_device(0)
    t.join(5)
    assert not t.is_alive()
    assert [e.kind for e in errors] == ["removed"]


def test_remove_while_buffer_in_flight_wakes_the_waiting_driver(profile: str) -> None:
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        backend.serve(0, SilentRng())
        driver = rng(bus, 0)
        errors: list[TransportError] = []

        def read() -> None:
            try:
                driver.read(64)
            except TransportError as exc:
                errors.append(exc)

        t = threading.Thread(target=read)
        t.start()
        wait_for(lambda: driver.vq.outstanding)
        backend.withdraw(0)
        t.join(5)
        assert not t.is_alive()
        assert [e.kind for e in errors] == ["removed"]
        assert bus.pool.stats().live_mappings == 0


# --- completion contract -----------------------------------------------------------


def test_bus_21_silent_backend_times_out_and_others_carry_on(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    backend.serve(1, RngDevice())
    silent = bus.device(0)
    assert silent is not None
    channel.hold = True
    with pytest.raises(TransportError) as err:
        silent.transport.get_status()
    assert err.value.kind == "timeout"
    channel.held.clear()
    channel.hold = False
    # DRV-15: the device is broken for its driver until a reset succeeds ...
    with pytest.raises(DeviceBroken):
        silent.transport.get_status()
    # ... while the other device carries on.
    assert len(rng(bus, 1).read(16)) == 16


def test_late_response_is_dropped_and_never_completes_another_request(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None
    channel.hold = True
    with pytest.raises(TransportError):
        entry.transport.get_status()
    channel.release()  # the backend answers now: too late
    assert bus.dropped["unmatched-response"] == 1
    entry.transport.reset()  # recovery through reset (DRV-15)
    assert entry.transport.get_status() == 0


def test_duplicate_response_is_dropped(gated: tuple[LoopbackBus, Backend, GatedChannel]) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None
    entry.transport.get_status()
    bus.receive(channel.responses[-1], channel)  # the same response again
    assert bus.dropped["unmatched-response"] == 1
    assert entry.transport.get_device_info().device_id == C.DeviceId.ENTROPY


def test_response_with_other_msg_id_does_not_complete_request(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None
    channel.hold = True
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(entry.transport.get_status()))
    t.start()
    wait_for(lambda: channel.held)
    adapter = WireAdapter(bus.params.profile, bus.params.max_size)
    held = adapter.codec.decode_header(channel.held[0])
    wrong = adapter.encode(S.GetShmResp(0, 0, 0, 0, dev_num=0, token=held.token))
    bus.receive(wrong, channel)
    assert bus.dropped["unmatched-response"] == 1
    channel.release()
    t.join(5)
    assert result == [entry.transport.engine.status]


def test_response_from_another_backend_is_dropped(profile: str) -> None:
    bus = LoopbackBus(BusParams(profile, timeout_ms=200), size=1 << 20)
    with bus:
        a = Backend(bus.region, bus.params)
        b = Backend(bus.region, bus.params)
        ca, cb = GatedChannel(bus, a), GatedChannel(bus, b)
        a.serve(0, RngDevice())
        b.serve(1, RngDevice())
        entry = bus.device(0)
        assert entry is not None
        ca.hold = True
        with pytest.raises(TransportError):
            entry.transport.get_status()
        # b replays a's held request's answer: it does not own device 0.
        a.attach(cb)
        for data in ca.held:
            a.deliver(data)
        assert bus.dropped["response-not-from-owner"] >= 1


def test_bus_06_request_for_unknown_device_is_a_failure_not_a_hang(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, _channel = gated
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None
    with pytest.raises(TransportError) as err:
        bus._request(9, S.GetDeviceStatus(dev_num=9))
    assert err.value.kind == "unroutable"


def test_malformed_and_unexpected_messages_from_backend_are_counted(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(0, RngDevice())
    bus.receive(b"\x01\x02", channel)
    adapter = WireAdapter(bus.params.profile, bus.params.max_size)
    bus.receive(adapter.encode(S.GetDeviceStatus(dev_num=0)), channel)  # a request
    bus.receive(adapter.encode(S.EventAvail(0, 0, dev_num=0)), channel)  # wrong direction
    bus.receive(adapter.encode(S.EventUsed(0, dev_num=42)), channel)  # no such device
    assert bus.dropped["malformed"] == 1
    assert bus.dropped["request-from-backend"] == 1
    assert bus.dropped["unexpected:EventAvail"] == 1
    assert bus.dropped["event-not-from-owner"] == 1
    assert len(rng(bus, 0).read(8)) == 8


# --- bus messages answered by the bus ----------------------------------------------


def test_bus_messages_ping_and_get_devices_from_backend(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    for n in (0, 2, 5):
        backend.serve(n, RngDevice())
    adapter = WireAdapter(bus.params.profile, bus.params.max_size)
    got: list[object] = []
    backend.deliver = lambda data: got.append(adapter.decode(data))  # type: ignore[method-assign]
    bus.receive(adapter.encode(S.Ping(0xDEADBEEF, token=0)), channel)
    bus.receive(adapter.encode(S.GetDevices(0, 16)), channel)
    assert got[0] == S.PingResp(0xDEADBEEF)
    resp = got[1]
    assert isinstance(resp, S.GetDevicesResp)
    assert resp.bitmap == bytes([0b00100101, 0]) and resp.next_offset == 0


def test_bus_52_to_57_get_devices_windows(gated: tuple[LoopbackBus, Backend, GatedChannel]) -> None:
    bus, backend, _channel = gated
    for n in (1, 12, 300, 65535):
        backend.serve(n, RngDevice(queue_max_size=4))
    zero = bus.get_devices(0, 0)
    assert (zero.count, zero.bitmap, zero.next_offset) == (0, b"", 1)
    w = bus.get_devices(0, 13)
    assert w.count == 13 and w.bitmap == bytes([0b00000010, 0b00010000])  # BUS-55: bits >= 13 zero
    assert w.next_offset == 300 and w.next_offset > 0  # BUS-57
    last = bus.get_devices(65535, 1)
    assert last.next_offset == 0 and last.bitmap == b"\x01"  # BUS-56
    assert bus.discover() == [1, 12, 300, 65535]
    assert bus.ping(0x1234_5678) == 0x1234_5678


def test_event_device_from_backend_adds_and_removes(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    backend.serve(4, RngDevice(), add=False)
    adapter = WireAdapter(bus.params.profile, bus.params.max_size)
    bus.receive(adapter.encode(S.EventDevice(4, C.DeviceBusState.ADDED)), channel)
    assert len(rng(bus, 4).read(8)) == 8
    bus.receive(adapter.encode(S.EventDevice(4, C.DeviceBusState.ADDED)), channel)  # idempotent
    bus.receive(adapter.encode(S.EventDevice(4, C.DeviceBusState.REMOVED)), channel)
    assert bus.device(4) is None
    bus.receive(adapter.encode(S.EventDevice(4, C.DeviceBusState.REMOVED)), channel)  # idempotent
    assert bus.device(4) is None


# --- scale -------------------------------------------------------------------------


def test_64_devices_on_one_bus(profile: str) -> None:
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile)))
    with bus:
        for n in range(64):
            backend.serve(n, RngDevice(seed=n, queue_max_size=16))
        assert [e.dev_num for e in bus.devices()] == list(range(64))
        outputs = {rng(bus, n).read(16) for n in range(64)}
        assert len(outputs) == 64  # every device answered with its own stream
        assert bus.discover() == list(range(64))


def test_two_bus_instances_in_one_process(profile: str) -> None:
    one, b1, _c1 = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20, name="a"))
    two, b2, _c2 = loopback_pair(
        LoopbackBus(BusParams(profile), size=1 << 20, base=0x2_0000_0000, name="b")
    )
    with one, two:
        b1.serve(0, RngDevice(seed=1))
        b2.serve(0, RngDevice(seed=2))
        assert rng(one, 0).read(16) != rng(two, 0).read(16)
        q1 = rng(one, 0).vq
        q2 = rng(two, 0).vq
        assert one.region.contains(q1.desc_addr, 16) and not two.region.contains(q1.desc_addr, 16)
        assert two.region.contains(q2.desc_addr, 16)
        one.close()
        assert len(rng(two, 0).read(8)) == 8


def test_backend_on_a_second_mapping_of_the_region(profile: str) -> None:
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile)), backend_view="mapped")
    with bus:
        assert backend.region is not bus.region
        backend.serve(0, RngDevice(seed=9))
        expect = RngDevice(seed=9).source(100)
        assert rng(bus, 0).read(100) == expect


def test_device_without_access_platform_is_not_bound(profile: str) -> None:
    class Legacy(RngDevice):
        pass

    model = Legacy()
    model.offered_features &= ~(1 << C.VIRTIO_F_ACCESS_PLATFORM)
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        backend.serve(0, model)
        entry = bus.device(0)
        assert entry is not None and entry.driver is None
        assert entry.error is not None and "ACCESS_PLATFORM" in entry.error


def test_unknown_device_type_stays_visible_without_driver(profile: str) -> None:
    class Odd(DeviceModel):
        device_id = 99

    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        backend.serve(0, Odd(num_queues=0))
        entry = bus.device(0)
        assert entry is not None and entry.driver is None and entry.type_name == "id-99"
        assert entry.error == "no driver for device type 99"


# --- device-originated events reach the driver ---------------------------------------


class Tunable(RngDevice):
    """An rng with 8 bytes of config the device side can change."""

    def __init__(self) -> None:
        super().__init__()
        self.config = bytearray(8)


def test_event_config_reaches_the_config_changed_callback(profile: str) -> None:
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        model = Tunable()
        backend.serve(0, model)
        entry = bus.device(0)
        assert entry is not None
        seen: list[bytes] = []
        entry.transport.config_changed = lambda: seen.append(entry.transport.get_config(0, 8))
        model.update_config(2, b"\xaa\xbb")
        assert seen == [bytes([0, 0, 0xAA, 0xBB, 0, 0, 0, 0])]
        assert not entry.transport.needs_reset


def test_device_needs_reset_surfaces_at_the_driver_and_reset_clears_it(profile: str) -> None:
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        model = Tunable()
        backend.serve(0, model)
        entry = bus.device(0)
        assert entry is not None
        calls: list[bool] = []
        entry.transport.config_changed = lambda: calls.append(entry.transport.needs_reset)
        model.fail("simulated device fault")
        assert calls == [True]
        assert entry.transport.needs_reset
        assert entry.transport.get_status() & C.Status.DEVICE_NEEDS_RESET
        entry.transport.reset()
        assert not entry.transport.needs_reset
        assert entry.transport.get_status() == 0


# --- linux-rfc1 compatibility: every message is answered, kicks included -------------


def test_rfc1_kick_waits_for_the_seed_style_answer() -> None:
    bus = LoopbackBus(BusParams("linux-rfc1", timeout_ms=200), size=1 << 20)
    with bus:
        backend = Backend(bus.region, bus.params)
        channel = GatedChannel(bus, backend)
        backend.serve(0, RngDevice())
        driver = rng(bus, 0)
        assert len(driver.read(16)) == 16
        assert bus.sent["EVENT_AVAIL"] >= 1
        assert bus.received["EVENT_AVAIL resp"] == bus.sent["EVENT_AVAIL"]
        # A backend that takes the kick but never answers it: the kick times out.
        channel.hold = True
        driver.vq.add((), (8,), object())
        with pytest.raises(TransportError) as err:
            driver.transport.notify(driver.vq)
        assert err.value.kind == "timeout"


def test_spec_kick_is_one_way() -> None:
    bus = LoopbackBus(BusParams("spec", timeout_ms=200), size=1 << 20)
    with bus:
        backend = Backend(bus.region, bus.params)
        channel = GatedChannel(bus, backend)
        backend.serve(0, RngDevice())
        driver = rng(bus, 0)
        assert len(driver.read(16)) == 16
        assert bus.received["EVENT_AVAIL resp"] == 0
        channel.hold = True  # nobody will answer; a one-way kick does not care
        driver.vq.add((), (8,), object())
        assert driver.transport.notify(driver.vq) is True


def test_event_config_marks_the_config_stale_even_while_its_dispatch_waits(profile: str) -> None:
    """DRV-37: a deferred EVENT_CONFIG still makes the driver re-read before new I/O.

    While another thread is dispatching events the bus queues the event; a
    response it receives next may let the driver go on, so the config view is
    marked stale as the event arrives, not when it is dispatched.
    """
    bus, backend, _ch = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    with bus:
        model = Tunable()
        backend.serve(0, model)
        entry = bus.device(0)
        assert entry is not None
        calls: list[int] = []
        entry.transport.config_changed = lambda: calls.append(1)
        entry.transport.engine.config_stale = False
        with bus._lock:
            bus._dispatching = True  # another thread is in the middle of a dispatch
        model.update_config(2, b"\xaa\xbb")
        assert calls == []  # queued, not dispatched yet
        assert entry.transport.engine.config_stale  # but the change is already known
        bus._dispatch_events()
        assert calls == [1]
