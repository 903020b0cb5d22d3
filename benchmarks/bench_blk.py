"""virtio-blk throughput through virtio-msg, next to plain os.pread/os.pwrite on the same file.

Workloads (ARCHITECTURE 8: figures are printed with their raw baseline,
measured in the same run, and compared as ratios):

* sequential 64 KiB writes and reads over the whole image,
* random 4 KiB reads at queue depth 1 (one request at a time) and at queue
  depth 32 (32 requests submitted, then waited for, repeatedly).

Channels: ``inprocess`` (the backend shares the bus's region object),
``mapped`` (the backend maps the region's memfd a second time, as a device
in another process does), and ``socket`` when ``virtio_msg.bus.socket``
exists (the device model runs in a second Python process, messages over
SOCK_SEQPACKET, the region passed by SCM_RIGHTS).  The baseline is the same sizes at the
same offsets with os.pwrite, or os.pread plus one copy into a buffer, on the same file.
With ``--json`` each row is one figure, ratio = baseline time / virtio time
(target: at least 0.3 for sequential 64 KiB reads in process).

Run:  python benchmarks/bench_blk.py [--size-mib 64] [--ops 4000] [--repeat 3]
                                     [--profile spec|linux-rfc1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from figures import emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile

SEQ = 64 << 10
RAND = 4 << 10
QD = 32


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def workloads(
    size: int, ops: int, seed: int
) -> dict[str, tuple[int, int, list[int]]]:
    """Map each workload name to (bytes per op, queue depth, offsets)."""
    rng = random.Random(seed)
    seq = list(range(0, size, SEQ))
    rand = [rng.randrange(0, size // RAND) * RAND for _ in range(ops)]
    return {
        "seq-write-64k": (SEQ, 1, seq),
        "seq-read-64k": (SEQ, 1, seq),
        "rand-read-4k-qd1": (RAND, 1, rand),
        "rand-read-4k-qd32": (RAND, QD, rand),
    }


def baseline(path: str, name: str, nbytes: int, offsets: list[int]) -> float:
    """Seconds for the same operations with os.pwrite, or os.pread plus one copy.

    A read through virtio-blk ends with the data in a caller's buffer, so the
    read baseline copies what pread returned into a preallocated buffer too.
    """
    fd = os.open(path, os.O_RDWR)
    blob = os.urandom(nbytes)
    buf = bytearray(nbytes)

    def write() -> None:
        for off in offsets:
            os.pwrite(fd, blob, off)

    def read() -> None:
        for off in offsets:
            buf[:] = os.pread(fd, nbytes, off)

    try:
        return _timed(write if "write" in name else read)
    finally:
        os.close(fd)


def through_virtio(drv: BlkDriver, name: str, nbytes: int, qd: int, offsets: list[int]) -> float:
    """Seconds for the operations through the driver (qd requests in flight)."""
    blob = os.urandom(nbytes)
    batches = [offsets[i : i + qd] for i in range(0, len(offsets), qd)]

    def write() -> None:
        for off in offsets:
            drv.write_sectors(off >> 9, blob)

    def read() -> None:
        for off in offsets:
            drv.read_sectors(off >> 9, nbytes >> 9)

    def read_qd() -> None:
        for batch in batches:
            drv.execute([BlkOp.read_sectors(off >> 9, nbytes >> 9) for off in batch])

    if "write" in name:
        return _timed(write)
    return _timed(read if qd == 1 else read_qd)


BACKEND = """
import sys
from virtio_msg.bus.client import connect
from virtio_msg.devices.blk import BlkDevice
with connect(sys.argv[1]) as client, BlkDevice(sys.argv[2]) as dev:
    client.serve(0, dev)
    print("serving", flush=True)
    client.wait()
"""


@contextlib.contextmanager
def attach(channel: str, bus: LoopbackBus, path: str) -> Iterator[BlkDriver]:
    """Serve a BlkDevice on ``path`` to ``bus`` over ``channel``; yield the bound driver."""
    if channel != "socket":
        dev = BlkDevice(path)
        try:
            _, backend, _ = loopback_pair(
                bus, backend_view="mapped" if channel == "mapped" else "shared"
            )
            backend.serve(0, dev)
            yield _driver(bus)
        finally:
            bus.close()
            dev.close()
        return
    from virtio_msg.bus.socket import SocketServer

    sock_dir = tempfile.mkdtemp(prefix="vmbench-")
    server = SocketServer(bus, os.path.join(sock_dir, "bus.sock")).start()
    proc = subprocess.Popen(
        [sys.executable, "-c", BACKEND, str(server.path), path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        yield _driver(bus)
    finally:
        server.close()
        bus.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _driver(bus: LoopbackBus) -> BlkDriver:
    entry = bus.device(0)
    if entry is None or not isinstance(entry.driver, BlkDriver):
        raise SystemExit(f"blk device did not bind: {entry and entry.error}")
    return entry.driver


def bench_channel(
    channel: str, path: str, profile: str, work: dict[str, tuple[int, int, list[int]]],
    repeat: int,
) -> list[dict[str, object]]:
    """Every workload on one channel, each next to its baseline (best of ``repeat``)."""
    bus = LoopbackBus(
        BusParams(Profile(profile)), size=4 << 20, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver}
    )
    rows: list[dict[str, object]] = []
    with attach(channel, bus, path) as drv:
        for name, (nbytes, qd, offsets) in work.items():
            through_virtio(drv, name, nbytes, qd, offsets[: max(1, len(offsets) // 10)])  # warm up
            base = virt = float("inf")
            for _ in range(repeat):  # interleaved, so both see the same machine state
                base = min(base, baseline(path, name, nbytes, offsets))
                virt = min(virt, through_virtio(drv, name, nbytes, qd, offsets))
            n = len(offsets)
            rows.append({
                "workload": name,
                "channel": channel,
                "ops": n,
                "virtio_us_per_op": round(virt / n * 1e6, 1),
                "virtio_mib_s": round(n * nbytes / virt / (1 << 20), 1),
                "virtio_iops": round(n / virt),
                "baseline_us_per_op": round(base / n * 1e6, 2),
                "baseline_mib_s": round(n * nbytes / base / (1 << 20), 1),
                "ratio": round(virt / base, 1),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--ops", type=int, default=4000, help="random reads per workload")
    parser.add_argument("--profile", default="spec", choices=[p.value for p in Profile])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--dir", default=None, help="where to put the image (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    channels = ["inprocess", "mapped"]
    if importlib.util.find_spec("virtio_msg.bus.socket") is not None:
        channels.append("socket")
    size = args.size_mib << 20
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.img")
        with open(path, "wb") as f:
            f.write(os.urandom(size))  # allocated, and in the page cache for both sides
        work = workloads(size, args.ops, seed=1)
        for channel in channels:
            rows += bench_channel(channel, path, args.profile, work, args.repeat)
    if args.json:
        emit([
            figure(
                f"blk {r['workload']} {r['channel']}", float(str(r["virtio_us_per_op"])),
                "us/op", float(str(r["baseline_us_per_op"])),
                target=">= 0.3" if (r["workload"], r["channel"]) == ("seq-read-64k", "inprocess")
                else None,
                ratio=float(str(r["baseline_us_per_op"])) / float(str(r["virtio_us_per_op"])),
            )
            for r in rows
        ], True)
        return
    print(f"virtio-blk, profile {args.profile}, {args.size_mib} MiB image, best of "
          f"{args.repeat}; ratio = virtio time / baseline time (os.pwrite, or os.pread + one "
          "copy; same run, same file)")
    head = f"{'workload':<20} {'channel':<10} {'ops':>6} {'us/op':>9} {'MiB/s':>8} " \
           f"{'IOPS':>8} {'base us/op':>11} {'base MiB/s':>11} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['workload']:<20} {r['channel']:<10} {r['ops']:>6} {r['virtio_us_per_op']:>9} "
            f"{r['virtio_mib_s']:>8} {r['virtio_iops']:>8} {r['baseline_us_per_op']:>11} "
            f"{r['baseline_mib_s']:>11} {r['ratio']:>6}x"
        )
    if "socket" not in channels:
        print("socket channel: not in this tree, not measured")


if __name__ == "__main__":
    main()
