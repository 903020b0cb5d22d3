"""virtio-blk data integrity: thousands of seeded random reads and writes, checked byte for byte.

Each run keeps a shadow copy of the disk.  Every read through the driver is
compared with the shadow *and* with the image file read directly (os.pread),
and at the end the whole image file must equal the shadow.  The mix covers
unaligned byte ranges (read-modify-write), sector batches with many requests
in flight, write-zeroes and flushes, over several bus and device set-ups:
both wire profiles, synchronous devices and devices deferring to a worker
thread (an executor), one and several
queues, the backend on the bus's region object or on a second mapping of it
(as a device in another process sees it), ring features on and off -- and
with the device model really in another process, over the socket channel.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile

DISK = 4 << 20
OPS = 2500

CONFIGS: dict[str, tuple[str, str, dict[str, object]]] = {
    # name: (wire profile, backend view of the region, device options)
    "spec-sync-1q-shared": ("spec", "shared", {}),
    "rfc1-async-4q-mapped": ("linux-rfc1", "mapped", {"asynchronous": True, "num_queues": 4}),
    "spec-sync-2q-mapped-noring-small-segments": (
        "spec", "mapped", {"num_queues": 2, "ring_features": 0, "size_max": 8192, "seg_max": 6},
    ),
    "spec-async-eventidx-only": (
        "spec", "shared", {"asynchronous": True, "ring_features": 1 << C.VIRTIO_F_EVENT_IDX},
    ),
}


def _size(rng: random.Random) -> int:
    # Mostly small, sometimes large: exercises RMW, splitting and the pool.
    return rng.choice([rng.randint(1, 600), rng.randint(1, 9000), rng.randint(1, 300_000)])


def exercise(drv: BlkDriver, path: Path, rng: random.Random, ops: int, label: str) -> None:
    """Run ``ops`` random operations, checking every read; then compare the whole image."""
    fd = os.open(path, os.O_RDONLY)
    try:
        shadow = bytearray(os.pread(fd, DISK, 0))
        counts = {"read": 0, "write": 0, "batch": 0, "zero": 0, "flush": 0}
        for _ in range(ops):
            kind = rng.choices(
                ["read", "write", "batch", "zero", "flush"], weights=[40, 40, 12, 5, 3]
            )[0]
            counts[kind] += 1
            if kind in ("read", "write", "zero"):
                length = _size(rng)
                offset = rng.randrange(0, DISK - length + 1)
                if kind == "write":
                    blob = rng.randbytes(length)
                    drv.write(offset, blob)
                    shadow[offset : offset + length] = blob
                elif kind == "zero":
                    drv.zero_range(offset, length, unmap=rng.random() < 0.5)
                    shadow[offset : offset + length] = bytes(length)
                else:
                    got = drv.read(offset, length)
                    assert got == shadow[offset : offset + length], (label, offset, length)
                    assert got == os.pread(fd, length, offset), (label, offset, length)
            elif kind == "batch":
                # Many requests in flight: disjoint sector ranges, writes then reads.
                starts = rng.sample(range(0, DISK // 512 - 16, 16), rng.randint(2, 48))
                writes = []
                for sector in starts:
                    blob = rng.randbytes(512 * rng.randint(1, 16))
                    writes.append(BlkOp.write(sector, blob))
                    shadow[sector * 512 : sector * 512 + len(blob)] = blob
                drv.execute(writes)
                reads = [BlkOp.read_sectors(op.sector, op.data.nbytes >> 9) for op in writes]
                drv.execute(reads)
                for op in reads:
                    lo = op.sector * 512
                    assert op.result == shadow[lo : lo + op.in_len], (label, op)
            else:
                drv.flush()
        assert min(counts.values()) > 0
        drv.flush()
        assert drv.read(0, DISK) == shadow
        assert os.pread(fd, DISK + 1, 0) == shadow
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_reads_and_writes_match_the_image_byte_for_byte(
    tmp_path: Path, name: str
) -> None:
    profile, view, options = CONFIGS[name]
    path = tmp_path / "disk.img"
    options = dict(options)
    pool = ThreadPoolExecutor(max_workers=1)  # the device's worker, when asked for one
    if options.pop("asynchronous", False):
        options["executor"] = pool.submit
    dev = BlkDevice(path, size=DISK, **options)  # type: ignore[arg-type]
    params = BusParams(Profile(profile), timeout_ms=5000)
    bus = LoopbackBus(params, size=2 << 20, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    try:
        bus, backend, _ = loopback_pair(bus, backend_view=view)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        drv = cast(BlkDriver, entry.driver)
        exercise(drv, path, random.Random(f"virtio-blk-{name}"), OPS, name)
        assert not dev.errors, dev.errors
        assert bus.pool.stats().live_mappings == 0
        bus.pool.check_consistency()
    finally:
        bus.close()
        dev.close()
        pool.shutdown(wait=True)


@pytest.mark.parametrize("ring", ["split", "packed"])
@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_random_ops_on_each_ring_kind_match_the_image_byte_for_byte(
    tmp_path: Path, ring: str, profile: str
) -> None:
    """The same random workload with the ring kind forced (BusParams.ring), IN_ORDER on."""
    path = tmp_path / "disk.img"
    dev = BlkDevice(path, size=DISK, num_queues=2)
    params = BusParams(Profile(profile), timeout_ms=5000, ring=ring)
    bus = LoopbackBus(params, size=2 << 20, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    try:
        bus, backend, _ = loopback_pair(bus)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        drv = cast(BlkDriver, entry.driver)
        packed = bool(drv.features >> C.VIRTIO_F_RING_PACKED & 1)
        assert packed == (ring == "packed")
        assert drv.features >> C.VIRTIO_F_IN_ORDER & 1
        # BUS-51: notification data only where the profile can carry it.
        assert bool(drv.features >> C.VIRTIO_F_NOTIFICATION_DATA & 1) == (profile == "spec")
        exercise(drv, path, random.Random(f"virtio-blk-{ring}-{profile}"), 1200, ring)
        assert not dev.errors, dev.errors
        assert bus.pool.stats().live_mappings == 0
    finally:
        bus.close()
        dev.close()


# --- driver and device in different processes (socket channel) ----------------------------

BACKEND = """
import json, sys
from virtio_msg.bus.client import connect
from virtio_msg.devices.blk import BlkDevice
sock, image, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with connect(sock) as client, BlkDevice(image, **options) as dev:
    client.serve(0, dev)
    print("serving", flush=True)
    client.wait()
    print(json.dumps({"errors": dict(dev.errors), "requests": dict(dev.requests)}), flush=True)
"""


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_device_in_another_process_over_the_socket_channel(
    tmp_path: Path, profile: str
) -> None:
    pytest.importorskip("virtio_msg.bus.socket", reason="socket channel not in this tree")
    from virtio_msg.bus.socket import SocketServer

    sock_dir = Path(tempfile.mkdtemp(prefix="vmblk-"))  # AF_UNIX paths are short
    image = tmp_path / "disk.img"
    params = BusParams(Profile(profile), timeout_ms=5000)
    bus = LoopbackBus(params, size=2 << 20, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    server = SocketServer(bus, sock_dir / "bus.sock").start()
    options = json.dumps({"size": DISK, "num_queues": 2})
    proc = subprocess.Popen(
        [sys.executable, "-c", BACKEND, str(sock_dir / "bus.sock"), str(image), options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving"  # ADD returns after the probe
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        assert entry.channel is not None and type(entry.channel).__name__ == "SocketChannel"
        drv = cast(BlkDriver, entry.driver)
        assert drv.num_queues == 2 and drv.get_id() == "virtio-msg-blk"
        exercise(drv, image, random.Random(f"virtio-blk-socket-{profile}"), 2000, profile)
        server.close()  # the backend sees the bus go away and reports
        out, err = proc.communicate(timeout=30)
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == {}, err
        assert report["requests"]["OUT"] > 0 and report["requests"]["IN"] > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.close()
        bus.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
