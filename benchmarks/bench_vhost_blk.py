"""Random 4 KiB reads through virtio-msg: qemu-storage-daemon (vhost-user) vs our Python device.

Both devices serve the same raw image on the same in-process loopback bus and
are driven by the same :class:`~virtio_msg.drivers.blk.BlkDriver`, in the same
run (ARCHITECTURE 8: figures are compared as ratios, next to a raw baseline):

* ``vhost-user``: :class:`~virtio_msg.vhost.VhostUserDevice` in front of
  qemu-storage-daemon's vhost-user-blk export -- requests travel EVENT_AVAIL ->
  kick eventfd -> QEMU's block layer -> call eventfd -> EVENT_USED;
* ``python``: :class:`~virtio_msg.devices.blk.BlkDevice`, the project's own
  device model (synchronous: each request is served inside its EVENT_AVAIL);
* ``pread``: plain ``os.pread`` of the same offsets, the floor.

Workloads: random 4 KiB reads at queue depth 1 (one request at a time) and 32
(32 requests submitted, then all waited for, repeatedly).  Offsets are the
same for every device.  The image is filled with data and read once before
timing, so all three read from the page cache.

Run:  python benchmarks/bench_vhost_blk.py [--size-mib 64] [--ops 4000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from figures import emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.spec import DeviceId
from virtio_msg.vhost import VhostUserDevice

BLOCK = 4096
QD = 32
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def storage_daemon(image: Path, tmp: Path) -> Iterator[Path]:
    """qemu-storage-daemon exporting ``image``; yields its socket; stopped by its pidfile."""
    binary = shutil.which("qemu-storage-daemon")
    if binary is None:
        sys.exit("qemu-storage-daemon is not installed (Debian package qemu-system-common)")
    sock, pidfile = tmp / "vub.sock", tmp / "qsd.pid"
    proc = subprocess.Popen(
        [
            binary,
            "--blockdev", f"driver=file,node-name=file0,filename={image}",
            "--export",
            f"type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={sock},"
            "writable=off,num-queues=1",
            "--pidfile", str(pidfile),
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (sock.exists() and pidfile.exists() and pidfile.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("qemu-storage-daemon did not start")
            time.sleep(0.02)
        yield sock
    finally:
        pid = int(pidfile.read_text().strip()) if pidfile.exists() else proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def qd1(drv: BlkDriver, offsets: list[int]) -> float:
    """Seconds for one read at a time."""
    t0 = time.perf_counter()
    for off in offsets:
        drv.execute([BlkOp.read_sectors(off // 512, BLOCK // 512)])
    return time.perf_counter() - t0


def qd32(drv: BlkDriver, offsets: list[int]) -> float:
    """Seconds for batches of 32 reads in flight."""
    batches = [offsets[i : i + QD] for i in range(0, len(offsets), QD)]
    t0 = time.perf_counter()
    for batch in batches:
        drv.execute([BlkOp.read_sectors(off // 512, BLOCK // 512) for off in batch])
    return time.perf_counter() - t0


def pread(fd: int, offsets: list[int]) -> float:
    """Seconds for plain os.pread of the same offsets."""
    t0 = time.perf_counter()
    for off in offsets:
        os.pread(fd, BLOCK, off)
    return time.perf_counter() - t0


def _check(drv: BlkDriver, image: bytes, offsets: list[int]) -> None:
    """The devices must read what the image holds (a benchmark of wrong answers is no use)."""
    for off in offsets[:64]:
        if drv.read(off, BLOCK) != image[off : off + BLOCK]:
            sys.exit(f"device read at {off} does not match the image")


def run(size: int, ops: int, repeat: int, directory: str | None) -> dict[str, object]:
    """Measure every device and workload; best of ``repeat`` runs each."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-vhost-", dir=directory))
    try:
        image = tmp / "disk.img"
        content = random.Random(1).randbytes(size)
        image.write_bytes(content)
        rng = random.Random(2)
        offsets = [rng.randrange(0, size // BLOCK) * BLOCK for _ in range(ops)]
        bus = LoopbackBus(size=4 << 20, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
        results: dict[str, dict[str, float]] = {}
        with storage_daemon(image, tmp) as sock, bus:
            bus, backend, _ch = loopback_pair(bus)
            vhost = VhostUserDevice.connect(sock, "blk")
            python = BlkDevice(image, read_only=True)
            try:
                backend.serve(0, vhost)
                backend.serve(1, python)
                drivers: dict[str, BlkDriver] = {}
                for name, dev_num in (("vhost-user", 0), ("python", 1)):
                    entry = bus.device(dev_num)
                    if entry is None or not isinstance(entry.driver, BlkDriver):
                        sys.exit(f"{name}: no blk driver bound ({entry and entry.error})")
                    drivers[name] = entry.driver
                    _check(entry.driver, content, offsets)
                fd = os.open(image, os.O_RDONLY)
                try:
                    for workload, fn in (("qd1", qd1), ("qd32", qd32)):
                        for name, drv in drivers.items():
                            best = min(fn(drv, offsets) for _ in range(repeat))
                            results.setdefault(name, {})[workload] = ops / best
                    best = min(pread(fd, offsets) for _ in range(repeat))
                    results["pread"] = {"qd1": ops / best}
                finally:
                    os.close(fd)
            finally:
                with contextlib.suppress(Exception):
                    backend.withdraw(0)
                vhost.close()
                python.close()
        v, p = results["vhost-user"], results["python"]
        return {
            "ops": ops,
            "repeat": repeat,
            "image_mib": size >> 20,
            "iops": results,
            "ratio_vhost_over_python": {w: v[w] / p[w] for w in ("qd1", "qd32")},
            "ratio_vs_pread": {n: r["qd1"] / results["pread"]["qd1"] for n, r in results.items()},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--ops", type=int, default=4000, help="reads per workload (default 4000)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--dir", default=None, help="where to put the image (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    report = run(args.size_mib << 20, args.ops, args.repeat, args.dir)
    iops = report["iops"]
    assert isinstance(iops, dict)
    if args.json:
        figures = [
            figure(f"vhost-user blk {qd} IOPS / python blk", iops["vhost-user"][qd], "1/s",
                   iops["python"][qd])
            for qd in ("qd1", "qd32")
        ]
        figures += [
            figure(f"blk 4 KiB random read QD1 IOPS: {name} / os.pread", r["qd1"], "1/s",
                   iops["pread"]["qd1"])
            for name, r in iops.items() if name != "pread"
        ]
        emit(figures, True)
        return
    print(f"random {BLOCK // 1024} KiB reads, {args.ops} per run, best of {args.repeat}, "
          f"{args.size_mib} MiB image (page cache)")
    print(f"{'device':<12}{'QD1 IOPS':>12}{'us/op':>9}{'QD32 IOPS':>12}{'us/op':>9}")
    for name, r in iops.items():
        q32 = r.get("qd32")
        print(
            f"{name:<12}{r['qd1']:>12,.0f}{1e6 / r['qd1']:>9.1f}"
            + (f"{q32:>12,.0f}{1e6 / q32:>9.1f}" if q32 else f"{'-':>12}{'-':>9}")
        )
    ratio = report["ratio_vhost_over_python"]
    assert isinstance(ratio, dict)
    print(f"vhost-user / python: QD1 {ratio['qd1']:.2f}x, QD32 {ratio['qd32']:.2f}x")


if __name__ == "__main__":
    main()
