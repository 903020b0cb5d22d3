"""virtio-blk driver: byte ranges, sectors, splitting, many requests in flight, failures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

import virtio_msg.devices.blk as B
import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import REQUEST_CAP, BlkDriver, BlkError, BlkOp, BlkReadOnly
from virtio_msg.errors import TransportError
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.virtqueue import DeviceRing
from virtio_msg.wire import Profile

BLK_DRIVERS = {**DRIVERS, DeviceId.BLOCK: BlkDriver}
MiB = 1 << 20


@dataclass
class Setup:
    bus: LoopbackBus
    dev: BlkDevice
    drv: BlkDriver
    path: Path


Factory = Callable[..., Setup]


@pytest.fixture
def blk(tmp_path: Path) -> Iterator[Factory]:
    made: list[tuple[LoopbackBus, BlkDevice]] = []
    pools: list[ThreadPoolExecutor] = []

    def factory(
        *, profile: str = "spec", size: int = 2 * MiB, region: int = MiB,
        backend_view: str = "shared", device: BlkDevice | None = None,
        drivers: dict[int, type[BlkDriver]] | None = None, asynchronous: bool = False,
        **opts: object,
    ) -> Setup:
        path = tmp_path / f"disk{len(made)}.img"
        if asynchronous:
            pools.append(ThreadPoolExecutor(max_workers=1))
            opts["executor"] = pools[-1].submit
        dev = device or BlkDevice(path, size=size, **opts)  # type: ignore[arg-type]
        params = BusParams(Profile(profile), timeout_ms=3000)
        bus = LoopbackBus(params, size=region, drivers={**DRIVERS, **(drivers or BLK_DRIVERS)})
        made.append((bus, dev))
        bus, backend, _ = loopback_pair(bus, backend_view=backend_view)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        return Setup(bus, dev, cast(BlkDriver, entry.driver), Path(dev.path) if dev.path else path)

    yield factory
    for bus, dev in made:
        bus.close()
        dev.close()
    for pool in pools:
        pool.shutdown(wait=True)


def file_bytes(s: Setup, offset: int, length: int) -> bytes:
    with open(s.path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def put_file(s: Setup, offset: int, data: bytes) -> None:
    with open(s.path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_geometry_from_the_config_space(blk: Factory, profile: str) -> None:
    s = blk(profile=profile, size=3 * MiB, blk_size=4096, num_queues=3)
    d = s.drv
    assert (d.capacity, d.size, d.block_size, d.num_queues) == (6144, 3 * MiB, 4096, 3)
    assert not d.read_only and d.supports_flush and d.supports_discard
    assert d.supports_write_zeroes and d.get_id() == "virtio-msg-blk"


def test_limits_respect_size_max_seg_max_and_the_pool(blk: Factory) -> None:
    s = blk(size_max=8192, seg_max=3)
    assert s.drv.segment_bytes == 8192 and s.drv.max_segments == 3
    assert s.drv.max_request_bytes == 3 * 8192
    big = blk(region=4 * MiB)
    assert big.drv.segment_bytes == B.POOL_MAPPING_CAP
    assert big.drv.max_request_bytes == min(REQUEST_CAP, 4 * MiB // 8)


# --- reads and writes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 512), (1, 1), (511, 2), (1000, 5000), (0, 2 * MiB), (2 * MiB - 3, 3), (700, 300_001)],
)
def test_byte_ranges_of_any_alignment(blk: Factory, offset: int, length: int) -> None:
    s = blk()
    base = os.urandom(2 * MiB)
    put_file(s, 0, base)
    assert s.drv.read(offset, length) == base[offset : offset + length]
    blob = os.urandom(length)
    s.drv.write(offset, blob)
    expected = base[:offset] + blob + base[offset + length :]
    assert file_bytes(s, 0, 2 * MiB) == expected  # neighbours of partial sectors kept


def test_sector_api_round_trip(blk: Factory) -> None:
    s = blk()
    blob = os.urandom(40 * 512)
    s.drv.write_sectors(100, blob)
    assert file_bytes(s, 100 * 512, len(blob)) == blob
    assert s.drv.read_sectors(100, 40) == blob
    assert s.drv.read_sectors(5, 0) == b""


def test_large_transfers_are_split_to_seg_max_and_size_max(blk: Factory) -> None:
    s = blk(size_max=4096, seg_max=4)  # the device refuses anything larger than 16 KiB
    blob = os.urandom(MiB)
    s.drv.write(0, blob)
    assert s.drv.read(0, MiB) == blob
    assert s.dev.requests["OUT"] == MiB // (16 << 10)
    assert s.dev.requests["IN"] == MiB // (16 << 10)
    assert not s.dev.errors


def test_many_requests_are_in_flight_at_once(blk: Factory) -> None:
    s = blk()
    ops = [BlkOp.read_sectors(8 * i, 8) for i in range(64)]
    s.drv.execute(ops)
    assert all(op.ok and len(op.result) == 4096 for op in ops)
    assert s.dev.max_batch >= 32  # one notification carried many chains


def test_in_flight_is_bounded_by_a_small_pool(blk: Factory) -> None:
    s = blk(region=256 << 10)  # rings + a few dozen 2 KiB slots
    blob = os.urandom(MiB)
    s.drv.write(0, blob)
    ops = [BlkOp.read_sectors(8 * i, 8) for i in range(200)]
    s.drv.execute(ops)
    assert b"".join(op.result for op in ops) == blob[: 200 * 4096]
    assert s.bus.pool.stats().live_mappings == 0
    s.bus.pool.check_consistency()


def test_blkop_read_sectors_counts_sectors_like_the_driver(blk: Factory) -> None:
    s = blk()
    blob = os.urandom(3 * 512)
    s.drv.write_sectors(40, blob)
    (op,) = s.drv.execute([BlkOp.read_sectors(40, 3)])
    assert op.in_len == 3 * 512 and op.result == blob == s.drv.read_sectors(40, 3)
    with pytest.raises(ValueError, match="negative"):
        BlkOp.read_sectors(0, -1)


def test_blkop_read_is_a_deprecated_byte_count_alias() -> None:
    with pytest.warns(DeprecationWarning, match=r"read_sectors\(sector, count\)"):
        old = BlkOp.read(7, 4096)
    new = BlkOp.read_sectors(7, 8)
    assert (old.type, old.sector, old.in_len) == (new.type, new.sector, new.in_len)


def test_requests_spread_over_every_queue(blk: Factory) -> None:
    s = blk(num_queues=4)
    s.drv.execute([BlkOp.read_sectors(i, 1) for i in range(16)])
    assert sorted(s.dev.per_queue) == [0, 1, 2, 3]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_mixed_batch_completes_with_results_in_order(blk: Factory, asynchronous: bool) -> None:
    s = blk(asynchronous=asynchronous, num_queues=2)
    blob = os.urandom(64 << 10)
    ops = [BlkOp.write(0, blob), BlkOp.get_id(), BlkOp.read_sectors(1024, 8), BlkOp.flush()]
    s.drv.execute(ops)
    assert [op.ok for op in ops] == [True] * 4
    assert ops[1].result.rstrip(b"\0") == b"virtio-msg-blk"
    assert s.drv.read(0, len(blob)) == blob


# --- flush, discard, write zeroes ----------------------------------------------------------------


def test_flush_reaches_the_device(blk: Factory) -> None:
    s = blk()
    s.drv.flush()
    assert s.dev.requests["FLUSH"] == 1
    quiet = blk(flush=False)
    quiet.drv.flush()  # write-through device: nothing to send
    assert quiet.dev.requests["FLUSH"] == 0


def test_write_zeroes_and_zero_range(blk: Factory) -> None:
    s = blk()
    put_file(s, 0, b"\xcd" * (2 * MiB))
    s.drv.write_zeroes(10, 20)
    assert file_bytes(s, 10 * 512, 20 * 512) == bytes(20 * 512)
    s.drv.zero_range(100_001, 70_000, unmap=True)
    assert file_bytes(s, 100_001, 70_000) == bytes(70_000)
    assert file_bytes(s, 100_000, 1) == b"\xcd" and file_bytes(s, 170_001, 1) == b"\xcd"
    s.drv.zero_range(5, 10)  # inside one sector: written, not WRITE_ZEROES
    assert file_bytes(s, 0, 20) == b"\xcd" * 5 + bytes(10) + b"\xcd" * 5


def test_write_zeroes_splits_to_the_device_limits(blk: Factory) -> None:
    s = blk(max_discard_sectors=8, max_discard_seg=2)
    s.drv.write_zeroes(0, 100)  # 13 segments of <= 8 sectors, 2 per request
    assert s.dev.requests["WRITE_ZEROES"] == 7 and not s.dev.errors


def test_write_zeroes_without_the_feature_writes_zeros(blk: Factory) -> None:
    s = blk(write_zeroes=False)
    put_file(s, 0, b"\x11" * 8192)
    s.drv.write_zeroes(2, 4)
    assert file_bytes(s, 1024, 2048) == bytes(2048) and s.dev.requests["OUT"] >= 1


def test_discard_and_discard_range(blk: Factory) -> None:
    s = blk()
    s.drv.discard(0, 64)
    s.drv.discard_range(1000, 10_000)  # only whole sectors inside
    assert s.dev.requests["DISCARD"] == 2 and not s.dev.errors


def test_discard_without_the_feature(blk: Factory) -> None:
    s = blk(discard=False)
    with pytest.raises(BlkError) as info:
        s.drv.discard(0, 8)
    assert info.value.status == B.VIRTIO_BLK_S_UNSUPP
    s.drv.discard_range(0, 4096)  # advisory: silently nothing


# --- errors --------------------------------------------------------------------------------------


def test_read_only_device_refuses_writes_before_sending(blk: Factory) -> None:
    s = blk(read_only=True)
    calls: list[Callable[[], object]] = [
        lambda: s.drv.write(0, b"x"),
        lambda: s.drv.write_sectors(0, bytes(512)),
        lambda: s.drv.write_zeroes(0, 1),
        lambda: s.drv.discard(0, 1),
        lambda: s.drv.zero_range(0, 10),
    ]
    for call in calls:
        with pytest.raises(BlkReadOnly):
            call()
    assert s.dev.requests["OUT"] == 0 and s.drv.read(0, 10) == bytes(10)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.read(2 * MiB - 1, 2),
        lambda d: d.read(-1, 1),
        lambda d: d.write(2 * MiB, b"x"),
        lambda d: d.read_sectors(4095, 2),
        lambda d: d.write_sectors(0, bytes(100)),
        lambda d: d.discard(4000, 100),
    ],
)
def test_out_of_range_is_refused_by_the_driver(
    blk: Factory, call: Callable[[BlkDriver], object]
) -> None:
    s = blk()
    with pytest.raises(ValueError):
        call(s.drv)
    assert not s.dev.errors  # nothing reached the device


def test_device_errors_raise_with_the_status(blk: Factory) -> None:
    s = blk()
    bad = BlkOp.read_sectors(4096, 1)  # past the end: the device answers IOERR
    with pytest.raises(BlkError) as info:
        s.drv.execute([BlkOp.read_sectors(0, 1), bad])
    assert info.value.status == B.VIRTIO_BLK_S_IOERR
    ops = s.drv.execute([BlkOp(99), BlkOp.read_sectors(0, 1)], check=False)
    assert [op.status for op in ops] == [B.VIRTIO_BLK_S_UNSUPP, B.VIRTIO_BLK_S_OK]


class FailingBlk(BlkDevice):
    """Declares itself broken on the first request (DEVICE_NEEDS_RESET)."""

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        self.fail("simulated device fault")


def test_device_needing_reset_ends_the_wait_at_once(blk: Factory, tmp_path: Path) -> None:
    s = blk(device=FailingBlk(tmp_path / "f.img", size=MiB))
    with pytest.raises(BlkError, match="needs a reset"):
        s.drv.read(0, 512)


def test_removed_device_raises_transport_error(blk: Factory) -> None:
    s = blk()
    s.bus.remove_device(0)
    with pytest.raises(TransportError):
        s.drv.read(0, 512)


class NoFlushDriver(BlkDriver):
    """A driver that does not negotiate FLUSH or DISCARD (feature veto through the class)."""

    device_features = BlkDriver.device_features & ~(
        (1 << B.VIRTIO_BLK_F_FLUSH) | (1 << B.VIRTIO_BLK_F_DISCARD)
    )


def test_driver_features_limit_what_is_negotiated(blk: Factory) -> None:
    s = blk(drivers={DeviceId.BLOCK: NoFlushDriver})
    assert not s.drv.supports_flush and not s.drv.supports_discard
    assert s.drv.features >> C.VIRTIO_F_VERSION_1 & 1


# --- self-test -----------------------------------------------------------------------------


def test_selftest_verifies_and_restores_the_scratch_area(blk: Factory) -> None:
    s = blk()
    before = os.urandom(2 * MiB)
    put_file(s, 0, before)
    report = s.drv.selftest()
    assert report["verified"] == "64 KiB" and report["id"] == "virtio-msg-blk"
    assert file_bytes(s, 0, 2 * MiB) == before


def test_selftest_on_a_read_only_device_only_reads(blk: Factory) -> None:
    s = blk(read_only=True)
    report = s.drv.selftest()
    assert "read-only" in str(report["read"]) and s.dev.requests["OUT"] == 0


def test_selftest_on_a_temporary_image(blk: Factory) -> None:
    s = blk(device=BlkDevice(size=MiB))
    assert s.drv.selftest()["verified"] == "64 KiB"
