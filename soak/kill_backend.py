"""kill -9 a blk backend process during heavy I/O, many times, and check what survives.

A bus (this process) serves its socket; a backend process serves a blk
device backed by an image file, and a second backend (in this process, over
the same socket) serves an rng device.  Each round starts the blk backend,
waits for the bus to report the device probed, runs several writer threads,
waits until they have had a random number of writes acknowledged (so the
kill lands in the middle of a stream of requests), kills the backend with
SIGKILL and waits for the bus to report the device removed.  Every wait is
on an event (the bus's ADD/REMOVE callbacks, the writers' acknowledgements)
and bounded; nothing sleeps to let something happen.  It measures how long
each in-flight request took to fail, from the call that issued it, and how
each failed (the summary's ``passed`` requires timeout + 10 %, a figure for
the long run; the CI test asserts no time).  A thread reads the rng device
throughout: every read must succeed.  The next round's fresh backend (the
reconnect) must show every write acknowledged before the kill on disk.
Descriptors and RSS of this (the bus's) process are sampled after the first
kill and reconnect and at the end.  Usage:
``python3 soak/kill_backend.py --rounds 50`` (one JSON summary line).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.client import connect
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.testing import DeviceWatch, KillTally, fd_count, kill_during_io, progress, rss_kib
from virtio_msg.transport.params import BusParams

BLK, RNG = 4, 5
TIMEOUT_MS = 1000
"""The bus's request timeout for the long run (the CI test uses a longer one)."""
WRITERS = 3
WAIT = 60.0
"""Bound on every wait of the script, seconds (a wait that runs out is a hang)."""
CHILD = """
import sys, threading
from virtio_msg.bus.client import connect
from virtio_msg.devices.blk import BlkDevice
client = connect(sys.argv[1])
client.serve(int(sys.argv[3]), BlkDevice(sys.argv[2]))
threading.Event().wait()
"""


def _start(tmp: Path, image: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp / "bus.sock"), str(image), str(BLK)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )


def run(
    rounds: int, seed: int = 1, show: bool | None = False, timeout_ms: int = TIMEOUT_MS
) -> dict[str, Any]:
    """Kill the blk backend ``rounds`` times during I/O; return the summary."""
    rnd = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-kb-"))
    image = tmp / "disk.img"
    image.write_bytes(bytes(8 << 20))
    bus = LoopbackBus(BusParams(timeout_ms=timeout_ms), size=4 << 20)
    watch = DeviceWatch(bus, WAIT)
    server = SocketServer(bus, tmp / "bus.sock").start()
    good = connect(tmp / "bus.sock")
    done: dict[int, bytes] = {}
    lock = threading.Lock()
    tally = KillTally()
    fds0 = rss0 = rss_max = 0
    start = time.monotonic()
    try:
        good.serve(RNG, RngDevice(seed=seed))
        rng_entry = bus.device(RNG)
        if rng_entry is None or not isinstance(rng_entry.driver, RngDriver):
            raise RuntimeError("the rng device did not probe")
        rng = rng_entry.driver
        with progress(show) as bar:
            task = bar.add_task("kill -9 blk backend", total=rounds, note="")
            for rnd_no in range(rounds + 1):
                proc = _start(tmp, image)
                try:
                    backend = {"the blk backend": proc}
                    watch.wait(watch.added, BLK, rnd_no + 1, "the blk device's ADD", backend,
                               allow_killed=True)
                    entry = bus.device(BLK)
                    if entry is None or not isinstance(entry.driver, BlkDriver):
                        raise RuntimeError(f"round {rnd_no}: the blk device did not probe")
                    driver = entry.driver
                    with lock:
                        snapshot = dict(done)
                    for offset, data in snapshot.items():  # acknowledged before the kill
                        if driver.read(offset, 512) != data:
                            raise RuntimeError(f"round {rnd_no}: byte {offset} lost its write")
                    tally.verified += len(snapshot)
                    if rnd_no == 1 or rounds == 0:  # after one kill and reconnect: warmed up
                        fds0, rss0 = fd_count(), rss_kib()
                    rss_max = max(rss_max, rss_kib())
                    if rnd_no == rounds:
                        break
                    seen, killed = kill_during_io(
                        driver, rng, rnd, done, lock,
                        functools.partial(os.kill, proc.pid, signal.SIGKILL),
                        functools.partial(watch.wait, watch.removed, BLK, rnd_no + 1,
                                          "the blk REMOVE", backend, allow_killed=True),
                        WRITERS, WAIT, f"round {rnd_no}",
                    )
                    tally.add(seen, killed)
                finally:
                    proc.kill()
                    proc.wait(WAIT)
                if rnd_no < rounds:
                    bar.update(task, advance=1, note=f"worst request {tally.worst_request:.3f} s")
        fds1, rss1 = fd_count(), rss_kib()  # the bus process, the last backend still up
    finally:
        good.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **tally.summary(rounds, WRITERS, timeout_ms),
        "bus_fds_after_first_kill": fds0, "bus_fds_end": fds1,
        "bus_rss_kib_after_first_kill": rss0, "bus_rss_kib_end": rss1,
        "bus_rss_kib_max": max(rss_max, rss1),
        "seconds": round(time.monotonic() - start, 1),
    }


def ok(summary: dict[str, Any], *, timed: bool = True) -> bool:
    """Whether a summary passes: one typed failure per writer, rng unaffected, no defects.

    ``timed`` adds the bound on how long the failures took (the long run's
    figure; a test on a loaded machine leaves it out).
    """
    return bool(
        (summary["within_bound"] or not timed)
        and summary["failed_requests"] == summary["expected_failed_requests"]
        and not summary["unexpected_errors"]
        and not summary["rng_failures"]
        and summary["rng_reads_during_kills"] > 0
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: run the rounds, print the JSON summary; exit 1 if it does not pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout-ms", type=int, default=TIMEOUT_MS)
    args = ap.parse_args(argv)
    summary = run(args.rounds, args.seed, show=None, timeout_ms=args.timeout_ms)
    print(json.dumps(summary), flush=True)
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
