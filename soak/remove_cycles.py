"""REMOVE and ADD again while blk I/O is in flight, in process or over the socket channel.

Each cycle ADDs a blk device (in-memory image), starts a thread doing
verified writes and reads on its driver, lets it run for a moment, then
REMOVEs the device under it.  The I/O thread must end (its request fails with
a transport error) within a bound: a cycle that does not is a deadlock and
fails the run.  An rng device on another number is read every cycle: it must
keep working.  File descriptors (``/proc/self/fd``) and RSS
(``/proc/self/status``) are sampled after a warm-up and at the end.  Usage:
``python3 soak/remove_cycles.py --mode both --cycles 1000`` (JSON summary per mode).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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
CYCLE_BOUND = 30.0
"""Seconds one cycle may take before it counts as a deadlock."""
WARMUP = 10


Serve = Callable[[int, Any], object]
Withdraw = Callable[[int], None]


@contextmanager
def _endpoints(mode: str) -> Iterator[tuple[LoopbackBus, Serve, Withdraw]]:
    bus = LoopbackBus(BusParams(timeout_ms=5000), size=4 << 20)
    if mode == "inprocess":
        _bus, backend, _ch = loopback_pair(bus)
        try:
            yield bus, backend.serve, backend.withdraw
        finally:
            bus.close()
        return
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-rc-"))
    server = SocketServer(bus, tmp / "bus.sock").start()
    client = connect(tmp / "bus.sock")
    try:
        yield bus, client.serve, client.withdraw
    finally:
        client.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _io(driver: BlkDriver, rnd: random.Random, stop: threading.Event, out: list[str]) -> None:
    try:
        while not stop.is_set():
            offset = 512 * rnd.randrange(0, 2000)
            data = rnd.randbytes(512 * rnd.randint(1, 8))
            driver.write(offset, data)
            if driver.read(offset, len(data)) != data:
                out.append(f"lost write at byte {offset}")
                return
    except VirtioMsgError:
        out.append("failed")  # the REMOVE ended it: expected
    else:
        out.append("stopped")


def run(mode: str, cycles: int, seed: int = 1, show: bool | None = False) -> dict[str, Any]:
    """Run ``cycles`` REMOVE/ADD cycles in ``mode`` ("inprocess" or "socket"); the summary."""
    if cycles <= WARMUP:
        raise ValueError(f"run more than {WARMUP} cycles (the first {WARMUP} are a warm-up)")
    rnd = random.Random(seed)
    outcomes: dict[str, int] = {}
    longest = 0.0
    start = time.monotonic()
    fds0 = rss0 = 0
    rss_max = 0
    with _endpoints(mode) as (bus, serve, withdraw), progress(show) as bar:
        task = bar.add_task(f"REMOVE/ADD {mode}", total=cycles, note="")
        serve(RNG, RngDevice(seed=seed))
        rng_entry = bus.device(RNG)
        if rng_entry is None or not isinstance(rng_entry.driver, RngDriver):
            raise RuntimeError("the rng device did not probe")
        rng = rng_entry.driver
        for cycle in range(cycles):
            if cycle == WARMUP:
                fds0, rss0 = fd_count(), rss_kib()
            t0 = time.monotonic()
            serve(BLK, BlkDevice(size=1 << 20))
            entry = bus.device(BLK)
            if entry is None or not isinstance(entry.driver, BlkDriver):
                raise RuntimeError(f"cycle {cycle}: blk did not probe ({entry})")
            stop = threading.Event()
            result: list[str] = []
            worker = threading.Thread(
                target=_io, args=(entry.driver, random.Random(rnd.random()), stop, result)
            )
            worker.start()
            time.sleep(rnd.random() * 0.01)
            withdraw(BLK)
            stop.set()
            worker.join(CYCLE_BOUND)
            if worker.is_alive():
                raise RuntimeError(f"cycle {cycle}: I/O still blocked {CYCLE_BOUND} s after REMOVE")
            if bus.device(BLK) is not None:
                raise RuntimeError(f"cycle {cycle}: device still present after REMOVE")
            if result and result[0].startswith("lost"):
                raise RuntimeError(f"cycle {cycle}: {result[0]}")
            outcomes[result[0]] = outcomes.get(result[0], 0) + 1
            if len(rng.read(16)) != 16:
                raise RuntimeError(f"cycle {cycle}: the rng device stopped working")
            longest = max(longest, time.monotonic() - t0)
            rss_max = max(rss_max, rss_kib())
            bar.update(task, advance=1, note=f"longest cycle {longest:.3f} s")
        fds1, rss1 = fd_count(), rss_kib()
    return {
        "mode": mode, "cycles": cycles, "io_outcomes": outcomes,
        "fds_after_warmup": fds0, "fds_end": fds1, "rss_kib_after_warmup": rss0,
        "rss_kib_end": rss1, "rss_kib_max": rss_max, "longest_cycle_s": round(longest, 3),
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: run the cycles per mode and print one JSON summary line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("inprocess", "socket", "both"), default="both")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    modes = ("inprocess", "socket") if args.mode == "both" else (args.mode,)
    for mode in modes:
        print(json.dumps(run(mode, args.cycles, args.seed, show=None)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
