"""Soak: a long run of mixed requests (rng reads, verified blk writes and reads).

One bus serves an rng and a blk device (in-memory image), in process or over
the socket channel (a backend client in this process, the real socket and
fd-passed region between them).  Each request is, at random, an rng read, a
blk write of 1-8 sectors recorded in a shadow copy, or a blk read compared
with the shadow.  A progress bar goes to stderr (when it is a terminal); the
JSON summary has RSS at start, end and its maximum, descriptor counts
(after a garbage collection), errors and mismatches.  Usage:
``python3 soak/mixed.py --mode both --requests 1000000``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.client import connect
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import VirtioMsgError
from virtio_msg.testing import fd_count, progress, rss_kib
from virtio_msg.transport.params import BusParams

BLK, RNG = 1, 2
IMAGE = 4 << 20
SAMPLE_EVERY = 1000
CHUNK = 128 << 10
"""Whole-image transfers go in pieces below the pool's per-mapping cap."""


@contextmanager
def _bus(mode: str) -> Iterator[LoopbackBus]:
    bus = LoopbackBus(BusParams(timeout_ms=5000), size=4 << 20)
    if mode == "inprocess":
        _b, backend, _ch = loopback_pair(bus)
        backend.serve(RNG, RngDevice(seed=1))
        backend.serve(BLK, BlkDevice(size=IMAGE))
        try:
            yield bus
        finally:
            bus.close()
        return
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-sk-"))
    server = SocketServer(bus, tmp / "bus.sock").start()
    client = connect(tmp / "bus.sock")
    try:
        client.serve(RNG, RngDevice(seed=1))
        client.serve(BLK, BlkDevice(size=IMAGE))
        yield bus
    finally:
        client.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run(mode: str, requests: int, seed: int = 1, show: bool | None = False) -> dict[str, Any]:
    """Run ``requests`` mixed requests in ``mode``; return the summary."""
    rnd = random.Random(seed)
    shadow = bytearray(IMAGE)
    counts = {"rng": 0, "write": 0, "read": 0}
    errors = mismatches = 0
    start = time.monotonic()
    with _bus(mode) as bus, progress(show) as bar:
        task = bar.add_task(f"soak {mode}", total=requests, note="")
        rng_e, blk_e = bus.device(RNG), bus.device(BLK)
        if rng_e is None or blk_e is None:
            raise RuntimeError("devices did not probe")
        rng, blk = rng_e.driver, blk_e.driver
        if not isinstance(rng, RngDriver) or not isinstance(blk, BlkDriver):
            raise RuntimeError("unexpected drivers")
        shadow[:] = rnd.randbytes(IMAGE)  # fill both copies first: RSS then measures growth
        for off in range(0, IMAGE, CHUNK):
            blk.write(off, shadow[off : off + CHUNK])
        fds0, rss0 = fd_count(), rss_kib()
        rss_max = rss0
        for i in range(requests):
            kind = rnd.choice(("rng", "write", "read"))
            counts[kind] += 1
            try:
                if kind == "rng":
                    if len(rng.read(32)) != 32:
                        mismatches += 1
                else:
                    offset = 512 * rnd.randrange(IMAGE // 512 - 8)
                    length = 512 * rnd.randint(1, 8)
                    if kind == "write":
                        data = rnd.randbytes(length)
                        blk.write(offset, data)
                        shadow[offset : offset + length] = data
                    elif blk.read(offset, length) != shadow[offset : offset + length]:
                        mismatches += 1
            except VirtioMsgError:
                errors += 1
            if (i + 1) % SAMPLE_EVERY == 0:
                rss_max = max(rss_max, rss_kib())
                bar.update(task, completed=i + 1, note=f"RSS {rss_max} KiB, errors {errors}")
        for off in range(0, IMAGE, CHUNK):
            if blk.read(off, CHUNK) != shadow[off : off + CHUNK]:
                mismatches += 1
        fds1, rss1 = fd_count(), rss_kib()
    return {
        "mode": mode, "requests": requests, "by_kind": counts, "errors": errors,
        "mismatches": mismatches, "rss_kib_start": rss0, "rss_kib_end": rss1,
        "rss_kib_max": max(rss_max, rss1), "fds_start": fds0, "fds_end": fds1,
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: soak each mode, print one JSON line each; exit 1 on errors or mismatches."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("inprocess", "socket", "both"), default="both")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    modes = ("inprocess", "socket") if args.mode == "both" else (args.mode,)
    ok = True
    for mode in modes:
        summary = run(mode, args.requests, args.seed, show=None)
        ok = ok and not summary["errors"] and not summary["mismatches"]
        print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
