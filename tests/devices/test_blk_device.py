"""virtio-blk device model: every request type and every error path, through the real bus.

Requests are built by hand on the driver's queue (any shape, valid or not) so
the device's own checks are exercised.  Negative tests are named after the
rule they check; ``§5.2.6.2`` is the block device's "Device Operation"
device requirements.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import virtio_msg.devices.blk as B
import virtio_msg.devices.blk_protocol as P
import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkConfig, BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.transport.device import RING_FEATURES
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
        *, profile: str = "spec", size: int = MiB, backend_view: str = "shared",
        region: int = MiB, asynchronous: bool = False, **opts: object,
    ) -> Setup:
        path = tmp_path / f"disk{len(made)}.img"
        if asynchronous:  # the device model creates no thread: its owner does
            pools.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="blk-worker"))
            opts["executor"] = pools[-1].submit
        dev = BlkDevice(path, size=size, **opts)  # type: ignore[arg-type]
        params = BusParams(Profile(profile), timeout_ms=3000)
        bus = LoopbackBus(params, size=region, drivers=BLK_DRIVERS)
        made.append((bus, dev))
        bus, backend, _ = loopback_pair(bus, backend_view=backend_view)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        return Setup(bus, dev, cast(BlkDriver, entry.driver), path)

    yield factory
    for bus, dev in made:
        bus.close()
        dev.close()
    for pool in pools:
        pool.shutdown(wait=True)


def header(rtype: int, sector: int = 0) -> bytes:
    return P.REQ_HEADER.pack(rtype, 0, sector)


def seg(sector: int, count: int, flags: int = 0) -> bytes:
    return P.SEGMENT.pack(sector, count, flags)


def raw(s: Setup, readable: list[bytes], writable: list[int], queue: int = 0) -> bytes:
    """Post one chain exactly as given; return what the device wrote (length = used length)."""
    vq = s.drv.vqs[queue]
    token = object()
    vq.add(readable, writable, token)
    s.drv.transport.notify(vq)
    done = s.drv.transport.wait_until(vq.get_used)
    assert len(done) == 1 and done[0][0] is token
    data: bytes = done[0][1]
    return data


def status_of(data: bytes) -> int:
    return data[-1]


def file_bytes(s: Setup, offset: int, length: int) -> bytes:
    with open(s.path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def healthy(s: Setup) -> None:
    """The device is still fine: not DEVICE_NEEDS_RESET, and a normal read works."""
    transport = s.bus.device(0)
    assert transport is not None
    assert not transport.transport.get_status() & C.Status.DEVICE_NEEDS_RESET
    data = raw(s, [header(P.VIRTIO_BLK_T_IN)], [512, 1])
    assert status_of(data) == P.VIRTIO_BLK_S_OK


# --- configuration and features -----------------------------------------------------------


def test_config_space_layout_matches_the_spec(blk: Factory) -> None:
    s = blk(size=3 * MiB, num_queues=2, size_max=64 << 10, seg_max=30, blk_size=4096)
    raw_cfg = s.drv.transport.get_config(0, P.CONFIG.size)
    capacity, size_max, seg_max = struct.unpack_from("<QII", raw_cfg, 0)
    assert (capacity, size_max, seg_max) == (3 * MiB // 512, 64 << 10, 30)
    assert struct.unpack_from("<I", raw_cfg, 20)[0] == 4096  # blk_size @20
    assert raw_cfg[33] == 0 and raw_cfg[57:60] == bytes(3)  # unused0, unused1 MUST be 0
    assert struct.unpack_from("<H", raw_cfg, 34)[0] == 2  # num_queues @34
    cfg = BlkConfig.unpack(raw_cfg)
    assert cfg.max_discard_seg == P.DEFAULT_MAX_DISCARD_SEG
    assert cfg.discard_sector_alignment == 8
    assert cfg.max_write_zeroes_sectors == P.DEFAULT_MAX_DISCARD_SECTORS
    assert s.drv.num_queues == 2 and s.drv.block_size == 4096


def test_default_size_max_is_the_pool_mapping_cap(blk: Factory) -> None:
    s = blk()
    assert s.dev.blk_config.size_max == P.POOL_MAPPING_CAP == 256 << 10
    assert s.dev.blk_config.seg_max == 254  # queue size 256 - header - status


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"size_max": (256 << 10) + 512}, "mapping cap"),
        ({"size_max": 256}, "size_max"),
        ({"seg_max": 255}, "seg_max"),
        ({"blk_size": 1000}, "blk_size"),
        ({"serial": "x" * 21}, "serial"),
        ({"num_queues": 0}, "num_queues"),
        ({"queue_max_size": 100}, "queue_max_size"),
        ({"size": 1000}, "multiple of 512"),
    ],
)
def test_options_outside_the_limits_are_refused(
    tmp_path: Path, opts: dict[str, int | str], match: str
) -> None:
    kwargs: dict[str, object] = {"size": MiB, **opts}
    with pytest.raises(ValueError, match=match):
        BlkDevice(tmp_path / "d.img", **kwargs)  # type: ignore[arg-type]


def test_offered_features_follow_the_options(blk: Factory) -> None:
    plain = blk().dev.offered_features
    assert not plain >> P.VIRTIO_BLK_F_RO & 1 and not plain >> P.VIRTIO_BLK_F_MQ & 1
    for bit in (P.VIRTIO_BLK_F_FLUSH, P.VIRTIO_BLK_F_DISCARD, P.VIRTIO_BLK_F_WRITE_ZEROES,
                P.VIRTIO_BLK_F_SIZE_MAX, P.VIRTIO_BLK_F_SEG_MAX, P.VIRTIO_BLK_F_BLK_SIZE):
        assert plain >> bit & 1
    assert blk(read_only=True).dev.offered_features >> P.VIRTIO_BLK_F_RO & 1
    assert blk(num_queues=3).dev.offered_features >> P.VIRTIO_BLK_F_MQ & 1
    bare = blk(flush=False, discard=False, write_zeroes=False).dev.offered_features
    assert not bare & ((1 << P.VIRTIO_BLK_F_FLUSH) | (1 << P.VIRTIO_BLK_F_DISCARD))


# --- images ---------------------------------------------------------------------------------


def test_image_is_created_at_the_given_size(tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    with BlkDevice(path, size=2 * MiB) as dev:
        assert dev.capacity == 4096
    assert path.stat().st_size == 2 * MiB
    with BlkDevice(path) as dev:  # opened again, as it is
        assert dev.capacity == 4096


def test_missing_image_without_size_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        BlkDevice(tmp_path / "absent.img")


def test_existing_image_of_another_size_is_not_resized(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="not the"):
        BlkDevice(path, size=MiB)
    assert path.stat().st_size == 4096


def test_temporary_image_by_default(tmp_path: Path) -> None:
    with BlkDevice() as dev:
        assert dev.path is None and dev.capacity == P.DEFAULT_TEMP_SIZE // 512
        fd = dev.fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, and so gone


# --- IN / OUT -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_in_reads_the_image_and_used_length_covers_data_and_status(
    blk: Factory, profile: str
) -> None:
    s = blk(profile=profile)
    pattern = bytes(range(256)) * 8
    with open(s.path, "r+b") as f:
        f.seek(512 * 10)
        f.write(pattern)
    data = raw(s, [header(P.VIRTIO_BLK_T_IN, 10)], [1024, 1024, 1])
    assert len(data) == 2049
    assert status_of(data) == P.VIRTIO_BLK_S_OK
    assert data[:2048] == pattern


def test_in_with_data_split_over_odd_segments(blk: Factory) -> None:
    s = blk()
    blob = os.urandom(4096)
    with open(s.path, "r+b") as f:
        f.write(blob)
    data = raw(s, [header(P.VIRTIO_BLK_T_IN)[:5], header(P.VIRTIO_BLK_T_IN)[5:]], [1, 4000, 95, 1])
    assert status_of(data) == P.VIRTIO_BLK_S_OK and data[:4096] == blob  # framing is free


def test_out_writes_the_image(blk: Factory) -> None:
    s = blk()
    blob = os.urandom(1536)
    data = raw(s, [header(P.VIRTIO_BLK_T_OUT, 7), blob[:100], blob[100:]], [1])
    assert data == bytes([P.VIRTIO_BLK_S_OK])
    assert file_bytes(s, 7 * 512, 1536) == blob
    assert s.dev.requests["OUT"] == 1 and s.dev.bytes_written == 1536


def test_header_shorter_than_16_bytes_is_ioerr(blk: Factory) -> None:
    s = blk()
    data = raw(s, [header(P.VIRTIO_BLK_T_IN)[:12]], [512, 1])
    assert status_of(data) == P.VIRTIO_BLK_S_IOERR
    assert s.dev.errors["short-header"] == 1
    healthy(s)


def test_chain_without_a_status_byte_is_completed_empty(blk: Factory) -> None:
    s = blk()
    data = raw(s, [header(P.VIRTIO_BLK_T_OUT), bytes(512)], [])
    assert data == b""  # used length 0: there is nowhere to put a status
    assert s.dev.errors["no-status-byte"] == 1 and file_bytes(s, 0, 512) == bytes(512)
    healthy(s)


@pytest.mark.parametrize(
    ("sector", "nbytes"),
    [(2048, 512), (2047, 1024), (2**64 - 1, 512), (2**63, 0)],
)
def test_sector_out_of_range_is_ioerr(blk: Factory, sector: int, nbytes: int) -> None:
    s = blk()  # 1 MiB = 2048 sectors
    data = raw(s, [header(P.VIRTIO_BLK_T_IN, sector)], [nbytes, 1] if nbytes else [1])
    assert status_of(data) == P.VIRTIO_BLK_S_IOERR
    out = raw(s, [header(P.VIRTIO_BLK_T_OUT, sector), bytes(max(nbytes, 512))], [1])
    assert status_of(out) == P.VIRTIO_BLK_S_IOERR
    assert s.dev.errors["sector-out-of-range"] == 2
    healthy(s)


def test_last_sector_is_in_range(blk: Factory) -> None:
    s = blk()
    data = raw(s, [header(P.VIRTIO_BLK_T_OUT, 2047), b"\xee" * 512], [1])
    assert status_of(data) == P.VIRTIO_BLK_S_OK
    assert file_bytes(s, MiB - 512, 512) == b"\xee" * 512


def test_data_not_a_multiple_of_512_is_ioerr(blk: Factory) -> None:
    s = blk()
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_IN)], [513, 1])) == P.VIRTIO_BLK_S_IOERR
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_OUT), bytes(100)], [1])) == 1
    assert s.dev.errors["data-not-sector-multiple"] == 2


def test_data_in_the_wrong_direction_is_ioerr(blk: Factory) -> None:
    s = blk()
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_IN), bytes(512)], [512, 1])) == 1
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_OUT), bytes(512)], [512, 1])) == 1
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_GET_ID), bytes(8)], [20, 1])) == 1
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_DISCARD), seg(0, 1)], [8, 1])) == 1
    assert s.dev.errors["data-in-wrong-direction"] == 4
    assert file_bytes(s, 0, 512) == bytes(512)


def test_request_larger_than_seg_max_times_size_max_is_ioerr(blk: Factory) -> None:
    s = blk(size_max=4096, seg_max=2)
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_IN)], [8192, 1])) == P.VIRTIO_BLK_S_OK
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_IN)], [8704, 1])) == P.VIRTIO_BLK_S_IOERR
    assert s.dev.errors["data-too-large"] == 1


def test_zero_length_read_is_ok(blk: Factory) -> None:
    s = blk()
    assert raw(s, [header(P.VIRTIO_BLK_T_IN, 5)], [1]) == bytes([P.VIRTIO_BLK_S_OK])


# --- read-only -----------------------------------------------------------------------------


def test_write_on_read_only_device_is_ioerr_and_writes_nothing(blk: Factory) -> None:
    s = blk(read_only=True)  # §5.2.6.2: IOERR, and MUST NOT write any data
    assert s.drv.read_only
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_OUT), b"\xff" * 512], [1])) == 1
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_WRITE_ZEROES), seg(0, 8)], [1])) == 1
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_DISCARD), seg(0, 8)], [1])) == 1
    assert s.dev.errors["write-on-read-only"] == 3
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_FLUSH)], [1])) == P.VIRTIO_BLK_S_OK
    assert file_bytes(s, 0, 4096) == bytes(4096)
    healthy(s)


def test_read_only_device_opens_a_read_only_image(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(MiB))
    path.chmod(0o444)
    with BlkDevice(path, read_only=True) as dev:
        assert dev.read_only and dev.capacity == 2048


# --- FLUSH and GET_ID ------------------------------------------------------------------------


def test_flush_is_ok(blk: Factory) -> None:
    s = blk()
    assert raw(s, [header(P.VIRTIO_BLK_T_FLUSH)], [1]) == bytes([P.VIRTIO_BLK_S_OK])
    assert s.dev.requests["FLUSH"] == 1


def test_flush_without_the_feature_is_unsupp(blk: Factory) -> None:
    s = blk(flush=False)
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_FLUSH)], [1])) == P.VIRTIO_BLK_S_UNSUPP


@pytest.mark.parametrize(
    ("serial", "buf", "expected"),
    [
        ("disk-7", 20, b"disk-7".ljust(20, b"\0")),
        ("x" * 20, 20, b"x" * 20),  # exactly 20 bytes: no NUL terminator
        ("disk-7", 4, b"disk"),  # a shorter buffer gets the first bytes
        ("disk-7", 64, b"disk-7".ljust(20, b"\0")),  # never more than 20
    ],
)
def test_get_id_returns_the_nul_padded_serial(
    blk: Factory, serial: str, buf: int, expected: bytes
) -> None:
    s = blk(serial=serial)
    data = raw(s, [header(P.VIRTIO_BLK_T_GET_ID)], [buf, 1])
    assert status_of(data) == P.VIRTIO_BLK_S_OK and data[: len(expected)] == expected


def test_get_id_without_a_buffer_is_ioerr(blk: Factory) -> None:
    s = blk()
    assert raw(s, [header(P.VIRTIO_BLK_T_GET_ID)], [1]) == bytes([P.VIRTIO_BLK_S_IOERR])
    assert s.dev.errors["get-id-without-buffer"] == 1


# --- DISCARD and WRITE_ZEROES --------------------------------------------------------------------


def fill(s: Setup, byte: int = 0xAB) -> None:
    with open(s.path, "r+b") as f:
        f.write(bytes([byte]) * MiB)


@pytest.mark.parametrize("unmap", [0, P.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP])
def test_write_zeroes_makes_the_range_read_zero(blk: Factory, unmap: int) -> None:
    s = blk()
    fill(s)
    payload = seg(8, 16, unmap) + seg(100, 1, unmap)
    assert raw(s, [header(P.VIRTIO_BLK_T_WRITE_ZEROES), payload], [1]) == b"\0"
    assert file_bytes(s, 8 * 512, 16 * 512) == bytes(16 * 512)
    assert file_bytes(s, 100 * 512, 512) == bytes(512)
    assert file_bytes(s, 7 * 512, 512) == b"\xab" * 512  # neighbours untouched
    assert file_bytes(s, 24 * 512, 512) == b"\xab" * 512
    assert os.path.getsize(s.path) == MiB


def test_discard_is_ok_and_keeps_the_image_size(blk: Factory) -> None:
    s = blk()
    fill(s)
    assert raw(s, [header(P.VIRTIO_BLK_T_DISCARD), seg(0, 256)], [1]) == b"\0"
    assert os.path.getsize(s.path) == MiB
    assert file_bytes(s, 256 * 512, 512) == b"\xab" * 512
    if B._FALLOCATE is not None and s.dev._can_punch:
        assert file_bytes(s, 0, 256 * 512) == bytes(256 * 512)  # the hole reads as zeros


def test_discard_with_unmap_flag_is_unsupp(blk: Factory) -> None:
    s = blk()  # §5.2.6.2: UNSUPP for discard commands if the unmap flag is set
    fill(s)
    payload = seg(0, 8, P.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    assert raw(s, [header(P.VIRTIO_BLK_T_DISCARD), payload], [1]) == bytes([2])
    assert file_bytes(s, 0, 4096) == b"\xab" * 4096


@pytest.mark.parametrize("rtype", [P.VIRTIO_BLK_T_DISCARD, P.VIRTIO_BLK_T_WRITE_ZEROES])
def test_unknown_segment_flag_is_unsupp(blk: Factory, rtype: int) -> None:
    s = blk()  # §5.2.6.2: UNSUPP if any unknown flag is set
    fill(s)
    payload = seg(0, 8) + seg(16, 8, 1 << 5)
    assert raw(s, [header(rtype), payload], [1]) == bytes([P.VIRTIO_BLK_S_UNSUPP])
    assert file_bytes(s, 0, 4096) == b"\xab" * 4096  # all segments checked before any ran


@pytest.mark.parametrize("rtype", [P.VIRTIO_BLK_T_DISCARD, P.VIRTIO_BLK_T_WRITE_ZEROES])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "segments-bad-length"),
        (bytes(17), "segments-bad-length"),
        (seg(2040, 9), "sector-out-of-range"),
        (seg(2**64 - 1, 1), "sector-out-of-range"),
        (seg(0, P.DEFAULT_MAX_DISCARD_SECTORS + 1), "segment-too-large"),
        (seg(0, 1) * (P.DEFAULT_MAX_DISCARD_SEG + 1), "too-many-segments"),
    ],
)
def test_malformed_segments_are_ioerr(
    blk: Factory, rtype: int, payload: bytes, reason: str
) -> None:
    s = blk()
    fill(s)
    parts = [header(rtype), payload] if payload else [header(rtype)]
    assert raw(s, parts, [1]) == bytes([P.VIRTIO_BLK_S_IOERR])
    assert s.dev.errors[reason] == 1
    assert file_bytes(s, 0, 4096) == b"\xab" * 4096
    healthy(s)


@pytest.mark.parametrize("rtype", [P.VIRTIO_BLK_T_DISCARD, P.VIRTIO_BLK_T_WRITE_ZEROES])
def test_discard_and_write_zeroes_without_the_feature_are_unsupp(
    blk: Factory, rtype: int
) -> None:
    s = blk(discard=False, write_zeroes=False)
    assert raw(s, [header(rtype), seg(0, 1)], [1]) == bytes([P.VIRTIO_BLK_S_UNSUPP])


# --- unknown requests and I/O failures ------------------------------------------------------------


@pytest.mark.parametrize("rtype", [2, 3, 5, P.VIRTIO_BLK_T_GET_LIFETIME, 14, 15, 16, 0x80000000])
def test_unknown_request_type_is_unsupp(blk: Factory, rtype: int) -> None:
    s = blk()
    assert raw(s, [header(rtype)], [64, 1])[-1] == P.VIRTIO_BLK_S_UNSUPP
    assert s.dev.errors["unsupported-type"] == 1
    healthy(s)


def test_image_io_error_is_ioerr_not_an_exception(blk: Factory) -> None:
    s = blk()
    ro = os.open(s.path, os.O_RDONLY)
    writable_fd, s.dev.fd = s.dev.fd, ro  # pwritev on a read-only fd fails with EBADF
    try:
        assert status_of(raw(s, [header(P.VIRTIO_BLK_T_OUT), bytes(512)], [1])) == 1
        assert s.dev.errors["io-error"] == 1
        healthy(s)
    finally:
        s.dev.fd = writable_fd
        os.close(ro)


def test_image_shrunk_underneath_is_ioerr(blk: Factory) -> None:
    s = blk()
    os.truncate(s.path, 512 * 4)
    assert status_of(raw(s, [header(P.VIRTIO_BLK_T_IN, 100)], [512, 1])) == 1
    assert s.dev.errors["io-error"] == 1


# --- queues, ring features, deferred processing --------------------------------------------------


@pytest.mark.parametrize(
    "ring",
    [0, 1 << C.VIRTIO_F_INDIRECT_DESC, 1 << C.VIRTIO_F_EVENT_IDX, RING_FEATURES],
    ids=["none", "indirect", "event-idx", "all"],
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_requests_work_with_every_ring_feature_set(
    blk: Factory, ring: int, asynchronous: bool
) -> None:
    s = blk(ring_features=ring, asynchronous=asynchronous)
    negotiated = s.drv.features
    assert bool(negotiated >> C.VIRTIO_F_INDIRECT_DESC & 1) == bool(
        ring >> C.VIRTIO_F_INDIRECT_DESC & 1
    )
    assert bool(negotiated >> C.VIRTIO_F_EVENT_IDX & 1) == bool(ring >> C.VIRTIO_F_EVENT_IDX & 1)
    blob = os.urandom(64 << 10)
    s.drv.write(0, blob)
    assert s.drv.read(0, len(blob)) == blob
    assert file_bytes(s, 0, len(blob)) == blob


def test_every_queue_serves_requests(blk: Factory) -> None:
    s = blk(num_queues=4)
    assert s.drv.num_queues == 4
    for q in range(4):
        data = raw(s, [header(P.VIRTIO_BLK_T_OUT, q), bytes([q]) * 512], [1], queue=q)
        assert status_of(data) == P.VIRTIO_BLK_S_OK
    assert dict(s.dev.per_queue) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert file_bytes(s, 3 * 512, 1) == b"\x03"


def test_executor_serves_requests_off_the_notifying_thread(blk: Factory) -> None:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blk-worker")
    threads: list[str] = []

    def submit(fn: Callable[[], None]) -> object:
        def run() -> None:
            threads.append(threading.current_thread().name)
            fn()

        return pool.submit(run)

    try:
        s = blk(executor=submit, num_queues=2)
        blob = os.urandom(256 << 10)
        s.drv.write(512, blob)
        assert s.drv.read(512, len(blob)) == blob
        assert threads and all(name.startswith("blk-worker") for name in threads)
        assert threading.current_thread().name not in threads
    finally:
        pool.shutdown(wait=True)


class HeldWork:
    """An executor that keeps the work until the test runs it."""

    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.work.append(fn)


def test_work_deferred_before_a_reset_is_dropped(blk: Factory) -> None:
    held = HeldWork()
    s = blk(executor=held)
    held.work.clear()  # nothing was submitted during the probe anyway
    vq = s.drv.vqs[0]
    vq.add([header(P.VIRTIO_BLK_T_OUT), b"\x77" * 512], [1], object())
    s.drv.transport.notify(vq)
    assert len(held.work) == 1 and s.dev.requests["OUT"] == 0
    s.drv.transport.reset()  # the rings are gone; the deferred drain must not touch them
    held.work.pop()()
    assert s.dev.requests["OUT"] == 0 and file_bytes(s, 0, 512) == bytes(512)


def test_work_deferred_after_close_is_dropped(blk: Factory) -> None:
    held = HeldWork()
    s = blk(executor=held)
    vq = s.drv.vqs[0]
    vq.add([header(P.VIRTIO_BLK_T_OUT), b"\x77" * 512], [1], object())
    s.drv.transport.notify(vq)
    s.dev.close()
    held.work.pop()()  # no I/O on a closed image, no exception
    assert s.dev.requests["OUT"] == 0


def test_reset_drops_work_queued_before_it(blk: Factory) -> None:
    s = blk(asynchronous=True)
    epoch = s.dev._epoch
    s.drv.transport.reset()  # the model's reset bumps the epoch under the work lock
    assert s.dev._epoch == epoch + 1


def test_mapped_backend_view_sees_the_same_memory(blk: Factory) -> None:
    s = blk(backend_view="mapped")  # the device maps the region a second time
    blob = os.urandom(8192)
    s.drv.write(4096, blob)
    assert file_bytes(s, 4096, 8192) == blob and s.drv.read(4096, 8192) == blob


# --- garbage in never crashes the device -------------------------------------------------------


TYPES = [0, 1, 4, 8, 11, 13, 2, 10, 14, 0xFFFFFFFF]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One device for every example of the property test (examples share the fixture)."""
    path = tmp_path_factory.mktemp("garbage") / "disk.img"
    dev = BlkDevice(path, size=MiB)
    bus, backend, _ = loopback_pair(
        LoopbackBus(BusParams(timeout_ms=3000), size=MiB, drivers=BLK_DRIVERS)
    )
    backend.serve(0, dev)
    entry = bus.device(0)
    assert entry is not None
    try:
        yield Setup(bus, dev, cast(BlkDriver, entry.driver), path)
    finally:
        bus.close()
        dev.close()


@settings(max_examples=150, deadline=None)
@given(
    rtype=st.sampled_from(TYPES),
    sector=st.one_of(st.integers(0, 2100), st.integers(0, 2**64 - 1)),
    head_len=st.integers(0, 20),
    out=st.lists(st.integers(1, 3000), max_size=3),
    writable=st.lists(st.integers(1, 3000), max_size=3),
    junk=st.binary(min_size=0, max_size=64),
)
def test_garbage_requests_get_a_status_never_an_exception(
    shared: Setup, rtype: int, sector: int, head_len: int, out: list[int],
    writable: list[int], junk: bytes,
) -> None:
    s = shared
    hdr = (P.REQ_HEADER.pack(rtype, 0, sector) + junk)[:head_len] or b"\0"
    readable = [hdr] + [(junk * 50 + bytes(n))[:n] for n in out]
    data = raw(s, readable, writable)
    if writable:
        assert len(data) == sum(writable)  # used length: the whole writable span
        assert data[-1] in (P.VIRTIO_BLK_S_OK, P.VIRTIO_BLK_S_IOERR, P.VIRTIO_BLK_S_UNSUPP)
    else:
        assert data == b""
    entry = s.bus.device(0)
    assert entry is not None
    assert not entry.transport.engine.status & C.Status.DEVICE_NEEDS_RESET
