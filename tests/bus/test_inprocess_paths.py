"""The in-process channel's direct paths agree with its recording paths.

Without a capture, an ``InProcessChannel``'s ``deliver`` is the backend's own
``deliver`` and its ``send`` calls the bus's ``receive`` with no checks; with
a capture both go through methods that record first.  The same traffic, good
and bad, must give the same results and the same counters on both, and a
closed channel drops messages either way.  Also the backend's linux-rfc1
kick answer, which moved out of ``Backend.deliver``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtio_msg.bus import Backend, LoopbackBus, loopback_pair
from virtio_msg.bus.capture import BusCapture, CaptureWriter
from virtio_msg.bus.inprocess import InProcessChannel
from virtio_msg.capture.frames import read_capture
from virtio_msg.devices import RngDevice
from virtio_msg.drivers import RngDriver
from virtio_msg.errors import TransportError
from virtio_msg.memory import Region
from virtio_msg.transport import BusParams
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S


@pytest.fixture(params=["spec", "linux-rfc1"])
def profile(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def _traffic(bus: LoopbackBus, channel: InProcessChannel) -> list[Any]:
    """Requests, a virtqueue round trip and bad frames both ways; what each gave."""
    backend = channel.backend
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None and isinstance(entry.driver, RngDriver)
    out: list[Any] = [entry.transport.get_status(), entry.transport.get_device_info()]
    out.append(len(entry.driver.read(16)))
    out.append(entry.transport.get_config(0, 0))
    header = bytes([0, 0x06, 0, 0, 0, 0, 3, 0])[: bus.params.header_size]
    channel.send(header)  # truncated: malformed for the bus
    channel.deliver(header)  # and for the backend
    channel.send(bus.adapter.encode(S.GetDeviceStatusResp(1, dev_num=0, token=0)))  # unmatched
    channel.deliver(bus.adapter.encode(S.GetDeviceStatus(dev_num=9, token=4)))  # unknown device
    try:
        entry.transport.get_vqueue(5)  # beyond the device's queues: the sentinel
        out.append("vqueue ok")
    except TransportError as exc:
        out.append(exc.kind)
    out.append(sorted(bus.sent.items()))
    out.append(sorted(bus.received.items()))
    out.append(sorted(bus.dropped.items()))
    out.append(sorted(backend.dropped.items()))
    out.append(sorted(backend.devices[0].handled.items()))
    return out


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CaptureWriter]:
    w = CaptureWriter(tmp_path / "cap.pcapng")
    try:
        yield w
    finally:
        w.close()


def test_direct_and_recorded_paths_give_the_same_results(
    profile: str, writer: CaptureWriter
) -> None:
    direct_bus, _, direct = loopback_pair(LoopbackBus(BusParams(profile), size=1 << 20))
    recorded_bus = LoopbackBus(BusParams(profile), size=1 << 20)
    recorded_bus.capture = BusCapture(writer)
    recorded_bus, _, recorded = loopback_pair(recorded_bus)
    with direct_bus, recorded_bus:
        assert direct.tap is None and recorded.tap is not None
        assert _traffic(direct_bus, direct) == _traffic(recorded_bus, recorded)
        assert writer.flush()
    frames = list(read_capture(writer.path))
    sent, received = recorded_bus.sent.total(), recorded_bus.received.total()
    assert len(frames) >= sent + received + 4  # every message, the bad ones included


@pytest.mark.parametrize("capture", [False, True])
def test_closed_channel_drops_messages_both_ways(
    profile: str, capture: bool, writer: CaptureWriter
) -> None:
    bus = LoopbackBus(BusParams(profile), size=1 << 20)
    if capture:
        bus.capture = BusCapture(writer)
    bus, backend, channel = loopback_pair(bus)
    with bus:
        backend.serve(0, RngDevice())
        request = bus.adapter.encode(S.GetDeviceStatus(dev_num=0, token=7))
        response = bus.adapter.encode(S.GetDeviceStatusResp(1, dev_num=0, token=7))
        channel.close()
        assert not channel.connected and bus.device(0) is None
        before = (backend.devices[0].handled, bus.received, bus.dropped.copy())
        channel.deliver(request)
        channel.send(response)
        assert (backend.devices[0].handled, bus.received, bus.dropped) == before
        channel.close()  # idempotent


@pytest.mark.parametrize("first", [True, False])
def test_linux_rfc1_kick_is_answered_once_before_or_after_its_processing(first: bool) -> None:
    """linux-rfc1.md 4.1: every message is answered, kicks included (the order per bus kind)."""
    params = BusParams("linux-rfc1")
    with Region(1 << 16) as region:
        backend = Backend(region, params, answer_kicks_first=first)
        log: list[object] = []

        class Port:
            def send(self, data: bytes) -> None:
                log.append(type(backend.adapter.decode(data)).__name__)

            def add(self, dev_num: int) -> None:
                """Nothing to probe here."""

            def remove(self, dev_num: int) -> None:
                """Nothing to remove here."""

        backend.attach(Port())
        transport = backend.serve(3, RngDevice())
        real = transport.handle

        def handle(msg: Any) -> Any:
            log.append("processed")
            return real(msg)

        transport.handle = handle  # type: ignore[method-assign]
        backend.deliver(backend.adapter.encode(S.EventAvail(0, 0, dev_num=3)))
        ack = R.EventAvailResp.__name__
        assert log == ([ack, "processed"] if first else ["processed", ack])
        assert transport.discarded["event-avail-unconfigured-queue"] == 1
