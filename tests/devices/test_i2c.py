"""virtio-i2c through the whole stack: transfers, FAIL_NEXT groups, every error path, the RTC."""

from __future__ import annotations

import datetime as dt
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

import virtio_msg.devices.i2c as DEV
import virtio_msg.drivers.i2c as DRV
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.compose import RunConfig, run_one
from virtio_msg.devices.catalog import CATALOG
from virtio_msg.devices.ds1338 import DS1338, ManualClock
from virtio_msg.devices.i2c import (
    MAX_TRANSFER,
    VIRTIO_I2C_FLAGS_FAIL_NEXT,
    VIRTIO_I2C_FLAGS_M_RD,
    VIRTIO_I2C_MSG_ERR,
    VIRTIO_I2C_MSG_OK,
    I2CDevice,
    I2CRequest,
    I2CTarget,
    parse_request,
)
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.i2c import DS1338Client, I2CDriver, I2CError, I2CMessage, RtcError
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile

HDR = struct.Struct("<HHI")
RTC = 0x20


class Recorder(I2CTarget):
    """A target that records every bus event and serves reads from ``memory``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.memory = bytes(range(256))
        self.nack_start = False
        self.nack_write = False

    def start(self, read: bool) -> bool:
        self.events.append(("start", read))
        return not self.nack_start

    def write(self, data: bytes) -> bool:
        self.events.append(("write", data))
        return not self.nack_write

    def read(self, length: int) -> bytes:
        self.events.append(("read", length))
        return self.memory[:length]

    def stop(self) -> None:
        self.events.append(("stop", None))


class Raising(I2CTarget):
    def start(self, read: bool) -> bool:
        raise RuntimeError("model bug")

    def stop(self) -> None:
        raise RuntimeError("model bug on stop")


class ShortRead(I2CTarget):
    def read(self, length: int) -> bytes:
        return b"\x01"


@dataclass
class Rig:
    bus: LoopbackBus
    dev: I2CDevice
    drv: I2CDriver
    clock: ManualClock
    rtc: DS1338
    rec: Recorder = field(default_factory=Recorder)

    def raw(self, readable: list[bytes], writable: list[int]) -> bytes:
        """Send one hand-made chain on the request queue; return what came back."""
        token = object()
        self.drv.vq.add(readable, writable, token)
        self.drv.transport.notify(self.drv.vq)
        got: dict[str, bytes] = {}

        def reap() -> bool:
            for tok, data in self.drv.vq.get_used():
                if tok is token:
                    got["data"] = data
            return "data" in got

        self.drv.transport.wait_until(reap)
        return got["data"]


Factory = Callable[..., Rig]


@pytest.fixture
def rig() -> Iterator[Factory]:
    made: list[LoopbackBus] = []

    def factory(
        *, profile: str = "spec", backend_view: str = "shared",
        driver: type[I2CDriver] = I2CDriver,
    ) -> Rig:
        clock = ManualClock(50.0)
        rtc = DS1338(clock=clock)
        rec = Recorder()
        dev = I2CDevice({RTC: rtc, 0x50: rec, 0x51: Raising(), 0x52: ShortRead()})
        params = BusParams(Profile(profile), timeout_ms=3000)
        bus = LoopbackBus(params, size=1 << 20, drivers={DeviceId.I2C: driver})
        made.append(bus)
        bus, backend, _ = loopback_pair(bus, backend_view=backend_view)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        return Rig(bus, dev, cast(I2CDriver, entry.driver), clock, rtc, rec)

    yield factory
    for bus in made:
        bus.close()


STACKS = [
    pytest.param("spec", "shared", id="spec-shared"),
    pytest.param("spec", "mapped", id="spec-mapped"),
    pytest.param("linux-rfc1", "shared", id="rfc1-shared"),
    pytest.param("linux-rfc1", "mapped", id="rfc1-mapped"),
]


# --- the protocol constants and the pure parser -----------------------------------------------


def test_driver_and_device_agree_on_the_wire_constants() -> None:
    assert DRV.VIRTIO_I2C_F_ZERO_LENGTH_REQUEST == DEV.VIRTIO_I2C_F_ZERO_LENGTH_REQUEST == 0
    assert DRV.VIRTIO_I2C_FLAGS_FAIL_NEXT == DEV.VIRTIO_I2C_FLAGS_FAIL_NEXT == 1
    assert DRV.VIRTIO_I2C_FLAGS_M_RD == DEV.VIRTIO_I2C_FLAGS_M_RD == 2
    assert DRV.VIRTIO_I2C_MSG_OK == DEV.VIRTIO_I2C_MSG_OK == 0
    assert DEV.VIRTIO_I2C_MSG_ERR == 1
    assert DRV._OUT_HDR.format == DEV.OUT_HDR.format
    assert DRV.MAX_TRANSFER == DEV.MAX_TRANSFER


def hdr(addr: int, flags: int = 0) -> bytes:
    return HDR.pack(addr << 1, 0, flags)


@pytest.mark.parametrize(
    ("header", "readable", "writable", "zero", "expected"),
    [
        (hdr(0x20), 9, 1, True, I2CRequest(0x20, 0, 0, 1)),
        (hdr(0x20, VIRTIO_I2C_FLAGS_M_RD), 8, 5, True, I2CRequest(0x20, 2, 4, 0)),
        (hdr(0x20), 8, 1, True, I2CRequest(0x20, 0, 0, 0)),  # zero-length write
        (hdr(0x20), 8, 1, False, "zero-length-not-negotiated"),
        (hdr(0x20, VIRTIO_I2C_FLAGS_M_RD), 8, 1, False, "zero-length-not-negotiated"),
        (hdr(0x20)[:4], 4, 1, True, "short-header"),
        (hdr(0x20), 9, 0, True, "no-status-byte"),
        (hdr(0x20, VIRTIO_I2C_FLAGS_M_RD), 10, 5, True, "read-with-write-data"),
        (hdr(0x20), 10, 5, True, "write-with-read-buffer"),
        (HDR.pack(0x41, 0, 0), 9, 1, True, "bad-address"),  # bit 0 set
        (HDR.pack(0xF0 | 0x100, 0, 0), 9, 1, True, "bad-address"),  # 10-bit pattern
        (hdr(0x20), 8 + MAX_TRANSFER + 1, 1, True, "too-long"),
        (hdr(0x20, VIRTIO_I2C_FLAGS_M_RD), 8, MAX_TRANSFER + 2, True, "too-long"),
        (HDR.pack(0x20 << 1, 0xBEEF, 1 << 31), 9, 1, True, I2CRequest(0x20, 1 << 31, 0, 1)),
    ],
)
def test_parse_request(
    header: bytes, readable: int, writable: int, zero: bool, expected: I2CRequest | str
) -> None:
    assert parse_request(header, readable, writable, zero_length=zero) == expected


# --- transfers through the stack ---------------------------------------------------------------


@pytest.mark.parametrize(("profile", "view"), STACKS)
def test_register_write_then_read_back_through_the_stack(
    rig: Factory, profile: str, view: str
) -> None:
    r = rig(profile=profile, backend_view=view)
    r.drv.write_registers(RTC, 0x08, b"hello, i2c")
    assert r.drv.read_register(RTC, 0x08, 10) == b"hello, i2c"
    assert r.dev.stats["ok"] == 3  # one write message, then pointer write + read


@pytest.mark.parametrize(("profile", "view"), STACKS)
def test_rtc_set_and_get_time_through_the_stack(rig: Factory, profile: str, view: str) -> None:
    r = rig(profile=profile, backend_view=view)
    client = DS1338Client(r.drv, RTC)
    client.set_time(dt.datetime(2026, 11, 26, 13, 45, 7))
    r.clock.advance(65)
    assert client.get_time() == dt.datetime(2026, 11, 26, 13, 46, 12)


def test_transfer_is_one_transaction_with_repeated_start_and_one_stop(rig: Factory) -> None:
    r = rig()
    assert r.drv.transfer(0x50, b"\x10", 3) == b"\x00\x01\x02"
    assert r.rec.events == [("start", False), ("write", b"\x10"), ("start", True),
                            ("read", 3), ("stop", None)]


def test_transfer_messages_returns_each_read(rig: Factory) -> None:
    r = rig()
    out = r.drv.transfer_messages([
        I2CMessage.write(RTC, b"\x08ab"), I2CMessage.write(RTC, b"\x08"),
        I2CMessage.read(RTC, 2), I2CMessage.read(0x50, 1),
    ])
    assert out == [b"", b"", b"ab", b"\x00"]


def test_large_transfers_up_to_the_limit(rig: Factory) -> None:
    r = rig()
    r.rec.memory = bytes(range(256)) * 256
    assert r.drv.transfer(0x50, b"", MAX_TRANSFER) == r.rec.memory[:MAX_TRANSFER]
    r.drv.transfer(0x50, bytes(MAX_TRANSFER))
    assert r.rec.events[-2] == ("write", bytes(MAX_TRANSFER))


# --- errors: unknown address, NACKs, broken targets ---------------------------------------------


def test_unknown_address_answers_error_status_and_the_device_keeps_working(rig: Factory) -> None:
    r = rig()
    with pytest.raises(I2CError) as info:
        r.drv.read_register(0x33, 0, 1)
    assert info.value.addr == 0x33 and info.value.index == 0
    assert r.dev.stats["nack"] == 1
    assert r.drv.read_register(RTC, 0x08, 1) == b"\x00"


def test_fail_next_fails_the_rest_of_the_group_without_touching_the_bus(rig: Factory) -> None:
    r = rig()
    with pytest.raises(I2CError) as info:
        r.drv.transfer_messages([I2CMessage.write(0x33, b"\x00"), I2CMessage.read(0x50, 2),
                                 I2CMessage.write(0x50, b"x")])
    assert info.value.index == 0
    assert r.rec.events == []  # the later messages never reached the target
    assert r.dev.stats["group-failed"] == 2
    assert r.drv.transfer(0x50, b"", 1) == b"\x00"  # the next group is fresh


def test_failure_later_in_a_group_keeps_earlier_results_and_stops_targets(rig: Factory) -> None:
    r = rig()
    with pytest.raises(I2CError) as info:
        r.drv.transfer_messages([I2CMessage.write(0x50, b"\x01"), I2CMessage.read(0x33, 1)])
    assert info.value.index == 1
    assert r.rec.events == [("start", False), ("write", b"\x01"), ("stop", None)]


@pytest.mark.parametrize(
    ("setup", "addr", "message"),
    [
        ("nack_start", 0x50, I2CMessage.read(0x50, 1)),
        ("nack_write", 0x50, I2CMessage.write(0x50, b"\x01")),
        (None, 0x51, I2CMessage.write(0x51, b"\x01")),  # target raises
        (None, 0x52, I2CMessage.read(0x52, 4)),  # target returns 1 byte for 4
    ],
)
def test_target_refusals_and_bugs_answer_error_status(
    rig: Factory, setup: str | None, addr: int, message: I2CMessage
) -> None:
    r = rig()
    if setup:
        setattr(r.rec, setup, True)
    with pytest.raises(I2CError):
        r.drv.transfer_messages([message])
    assert r.drv.probe_address(RTC)
    assert not r.drv.transport.broken


def test_probe_and_scan_use_zero_length_writes(rig: Factory) -> None:
    r = rig()
    r.dev.detach(0x51)
    assert r.drv.scan() == [RTC, 0x50, 0x52]
    assert ("write", b"") not in r.rec.events  # zero-length: start and stop only
    assert r.rec.events[:2] == [("start", False), ("stop", None)]


def test_attach_and_detach_targets_at_runtime(rig: Factory) -> None:
    r = rig()
    r.dev.attach(0x10, Recorder())
    assert r.drv.probe_address(0x10)
    r.dev.detach(0x10)
    assert not r.drv.probe_address(0x10)
    with pytest.raises(ValueError):
        r.dev.attach(RTC, Recorder())
    with pytest.raises(ValueError):
        r.dev.attach(0x80, Recorder())


class NoZeroLength(I2CDriver):
    device_features = 0


def test_without_zero_length_feature_the_driver_refuses_and_the_device_rejects(
    rig: Factory,
) -> None:
    r = rig(driver=NoZeroLength)
    assert not r.drv.zero_length
    with pytest.raises(ValueError):
        r.drv.transfer_messages([I2CMessage.write(RTC)])
    assert r.drv.probe_address(RTC)  # falls back to a one-byte read
    data = r.raw([hdr(RTC)], [1])  # a zero-length write sent anyway
    assert data == bytes([VIRTIO_I2C_MSG_ERR])
    assert r.dev.stats["rejected:zero-length-not-negotiated"] == 1


# --- malformed requests built by hand: always an answer, never a broken device -------------------


@pytest.mark.parametrize(
    ("readable", "writable", "expected", "reason"),
    [
        ([hdr(RTC)[:4]], [1], bytes([VIRTIO_I2C_MSG_ERR]), "short-header"),
        ([hdr(RTC, VIRTIO_I2C_FLAGS_M_RD), b"\x00"], [3],
         bytes([0, 0, VIRTIO_I2C_MSG_ERR]), "read-with-write-data"),
        ([hdr(RTC), b"\x08"], [4, 1], bytes([0, 0, 0, 0, VIRTIO_I2C_MSG_ERR]),
         "write-with-read-buffer"),
        ([HDR.pack(0x41, 0, 0), b"\x00"], [1], bytes([VIRTIO_I2C_MSG_ERR]), "bad-address"),
        ([hdr(RTC), bytes(MAX_TRANSFER + 1)], [1], bytes([VIRTIO_I2C_MSG_ERR]), "too-long"),
        ([hdr(RTC), b"\x08"], [], b"", "no-status-byte"),
    ],
)
def test_malformed_requests_answer_err(
    rig: Factory, readable: list[bytes], writable: list[int], expected: bytes, reason: str
) -> None:
    r = rig()
    assert r.raw(readable, writable) == expected
    assert r.dev.stats[f"rejected:{reason}"] == 1
    assert r.drv.read_register(RTC, 0x08, 2) == b"\x00\x00"
    assert not r.drv.transport.broken


def test_header_and_data_may_share_one_descriptor(rig: Factory) -> None:
    r = rig()
    assert r.raw([hdr(RTC) + b"\x08\x5a"], [1]) == bytes([VIRTIO_I2C_MSG_OK])
    assert r.raw([hdr(RTC) + b"\x08"], [1]) == bytes([VIRTIO_I2C_MSG_OK])
    assert r.raw([hdr(RTC, VIRTIO_I2C_FLAGS_M_RD)], [2]) == bytes([0x5A, VIRTIO_I2C_MSG_OK])


def test_a_group_stays_open_across_notifications(rig: Factory) -> None:
    r = rig()
    first = r.raw([hdr(0x50, VIRTIO_I2C_FLAGS_FAIL_NEXT), b"\x07"], [1])
    assert first == bytes([VIRTIO_I2C_MSG_OK])
    assert ("stop", None) not in r.rec.events  # the transaction is still open
    second = r.raw([hdr(0x50, VIRTIO_I2C_FLAGS_M_RD)], [2, 1])
    assert second == b"\x00\x01" + bytes([VIRTIO_I2C_MSG_OK])
    assert r.rec.events == [("start", False), ("write", b"\x07"), ("start", True),
                            ("read", 2), ("stop", None)]


def test_a_rejected_request_with_fail_next_fails_the_group(rig: Factory) -> None:
    r = rig()
    assert r.raw([hdr(0x50, VIRTIO_I2C_FLAGS_FAIL_NEXT), b"x"], [2, 1])[-1] == VIRTIO_I2C_MSG_ERR
    assert r.raw([hdr(0x50), b"y"], [1]) == bytes([VIRTIO_I2C_MSG_ERR])
    assert r.dev.stats["group-failed"] == 1
    assert r.rec.events == []


def test_device_reset_ends_an_open_transaction(rig: Factory) -> None:
    r = rig()
    r.raw([hdr(0x50, VIRTIO_I2C_FLAGS_FAIL_NEXT), b"\x07"], [1])
    r.dev.reset()
    assert r.rec.events[-1] == ("stop", None)


def test_a_target_raising_on_stop_is_contained(rig: Factory) -> None:
    r = rig()
    with pytest.raises(I2CError):
        r.drv.transfer(0x51, b"\x00")
    assert r.dev.stats["target-error"] == 2  # start and stop both raised
    assert r.drv.probe_address(RTC)


# --- driver-side validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "msgs",
    [
        [],
        [I2CMessage.write(0x80, b"\x00")],
        [I2CMessage.read(RTC, MAX_TRANSFER + 1)],
        [I2CMessage.write(RTC, b"\x00")] * (DRV.MAX_GROUP_MESSAGES + 1),
    ],
)
def test_driver_rejects_bad_transfers_before_sending(rig: Factory, msgs: list[I2CMessage]) -> None:
    r = rig()
    with pytest.raises(ValueError):
        r.drv.transfer_messages(msgs)
    assert r.dev.stats.total() == 0


def test_read_register_needs_a_length(rig: Factory) -> None:
    with pytest.raises(ValueError):
        rig().drv.read_register(RTC, 0, 0)


# --- the DS1338 client ---------------------------------------------------------------------------


def test_get_time_refuses_a_clock_that_stopped(rig: Factory) -> None:
    r = rig()
    client = DS1338Client(r.drv, RTC)
    with pytest.raises(RtcError, match="OSF"):
        client.get_time()  # power-on: OSF set
    client.set_time(dt.datetime(2030, 1, 1))
    client.write_registers(0x00, b"\x80")  # CH: halt the oscillator
    with pytest.raises(RtcError):
        client.get_time()


def test_get_time_decodes_twelve_hour_mode(rig: Factory) -> None:
    r = rig()
    client = DS1338Client(r.drv, RTC)
    client.set_time(dt.datetime(2026, 6, 1, 0, 30, 0), twelve_hour=True)
    assert client.read_registers(0x02, 1) == b"\x52"  # 12 AM
    assert client.get_time() == dt.datetime(2026, 6, 1, 0, 30, 0)
    client.set_time(dt.datetime(2026, 6, 1, 15, 30, 0), twelve_hour=True)
    assert client.read_registers(0x02, 1) == b"\x63"  # 3 PM
    assert client.get_time() == dt.datetime(2026, 6, 1, 15, 30, 0)


def test_get_time_rejects_illogical_registers(rig: Factory) -> None:
    r = rig()
    client = DS1338Client(r.drv, RTC)
    client.set_time(dt.datetime(2026, 6, 1))
    client.write_registers(0x05, b"\x13")  # month 13
    with pytest.raises(RtcError):
        client.get_time()


def test_set_time_clears_osf_and_ram_is_separate(rig: Factory) -> None:
    r = rig()
    client = DS1338Client(r.drv, RTC)
    client.write_ram(0, b"keep me")
    client.set_time(dt.datetime(2040, 2, 29, 23, 59, 59))
    assert not client.read_registers(0x07, 1)[0] & 0x20
    assert client.read_ram(0, 7) == b"keep me"
    client.write_ram(55, b"!")
    assert client.read_ram(55, 1) == b"!"
    for bad in ((0, 0), (50, 7), (-1, 1)):
        with pytest.raises(ValueError):
            client.read_ram(*bad)
    with pytest.raises(ValueError):
        client.write_ram(50, bytes(7))
    with pytest.raises(ValueError):
        client.set_time(dt.datetime(2100, 1, 1))


# --- self-test and `virtio-msg run` ---------------------------------------------------------------


def test_selftest_sets_and_reads_the_rtc(rig: Factory) -> None:
    r = rig()
    r.drv.now = lambda: dt.datetime(2026, 11, 26, 8, 0, 0)
    assert r.drv.selftest() == {
        "rtc": "ds1338@0x20", "set": "2026-11-26T08:00:00", "read": "2026-11-26T08:00:00",
    }


def test_selftest_reports_a_wrong_readback(rig: Factory) -> None:
    r = rig()
    r.drv.now = lambda: dt.datetime(2026, 11, 26, 8, 0, 0)
    real_set = DS1338Client.set_time

    def set_and_jump(self: DS1338Client, when: dt.datetime, **kw: bool) -> None:
        real_set(self, when, **kw)
        r.clock.advance(3600)

    DS1338Client.set_time = set_and_jump  # type: ignore[method-assign]
    try:
        with pytest.raises(RtcError):
            r.drv.selftest()
    finally:
        DS1338Client.set_time = real_set  # type: ignore[method-assign]


def test_selftest_without_an_rtc_says_so(rig: Factory) -> None:
    r = rig()
    r.dev.detach(RTC)
    assert r.drv.selftest()["rtc"] == "none"


def test_default_device_is_the_seed_demo_bus() -> None:
    dev = I2CDevice()
    assert list(dev.targets) == [0x20]
    assert isinstance(dev.targets[0x20], DS1338)
    assert I2CDevice({}).targets == {}


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_virtio_msg_run_sets_and_reads_the_rtc(
    monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    monkeypatch.setitem(CATALOG, "i2c", I2CDevice)
    monkeypatch.setitem(DRIVERS, DeviceId.I2C, I2CDriver)
    report = run_one(RunConfig(params=BusParams(Profile(profile)), size=1 << 20,
                               devices=((0, "i2c"),)))
    (dev,) = report["devices"]
    assert dev["ok"], dev
    assert dev["type"] == "i2c"
    assert dev["result"]["rtc"] == "ds1338@0x20"
    # The self-test itself fails unless the read-back matches what it set.
    assert dt.datetime.fromisoformat(dev["result"]["read"]) >= dt.datetime.fromisoformat(
        dev["result"]["set"]
    )


# --- driver and device in different processes (socket channel) ------------------------------

CHILD_I2C = """
import sys
from virtio_msg.bus.client import connect
from virtio_msg.devices.ds1338 import DS1338
from virtio_msg.devices.i2c import I2CDevice
client = connect(sys.argv[1], timeout=10)
client.serve(0, I2CDevice({0x20: DS1338(clock=lambda: 0.0)}))  # a stopped clock: exact reads
client.wait(60)
client.close()
"""


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_rtc_across_processes(tmp_path: Path, profile: str) -> None:
    from virtio_msg.bus.socket import SocketServer

    bus = LoopbackBus(BusParams(Profile(profile), timeout_ms=5000), size=1 << 20,
                      drivers={DeviceId.I2C: I2CDriver})
    probed = threading.Event()
    bus.on_added.append(lambda entry: probed.set())
    server = SocketServer(bus, tmp_path / "bus.sock").start()
    child = subprocess.Popen([sys.executable, "-c", CHILD_I2C, str(server.path)])
    try:
        assert probed.wait(30), "the device process did not come up"
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        drv = cast(I2CDriver, entry.driver)
        drv.now = lambda: dt.datetime(2026, 11, 26, 13, 0, 0)
        assert drv.selftest()["read"] == "2026-11-26T13:00:00"
        with pytest.raises(I2CError):
            drv.read_register(0x33, 0, 1)  # unknown address, answered across processes
        rtc = DS1338Client(drv, RTC)
        rtc.write_ram(0, bytes(range(56)))
        assert rtc.read_ram(0, 56) == bytes(range(56))
    finally:
        server.close()
        bus.close()
        child.wait(30)
    assert child.returncode == 0
