"""kill -9 a blk backend process during heavy I/O, many times, and check what survives.

A bus (this process) serves its socket; a backend process serves a blk
device backed by an image file, and a second backend (in this process, over
the same socket) serves an rng device.  Each round starts the blk backend,
runs several writer threads, kills the backend with SIGKILL mid-I/O, and
measures how long each in-flight request took to fail, from the call that
issued it (the run fails above the bus timeout + 10 %).  A thread reads the
rng device throughout: every read must succeed.  The next round's fresh
backend (the reconnect) must show every write acknowledged before the kill on
disk.  Usage:
``python3 soak/kill_backend.py --rounds 50`` (one JSON summary line).
"""

from __future__ import annotations

import argparse
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
from virtio_msg.errors import VirtioMsgError
from virtio_msg.testing import progress
from virtio_msg.transport.params import BusParams

BLK, RNG = 4, 5
TIMEOUT_MS = 1000
WRITERS = 3
WAIT = 30.0
CHILD = """
import sys, threading
from virtio_msg.bus.client import connect
from virtio_msg.devices.blk import BlkDevice
client = connect(sys.argv[1])
client.serve(int(sys.argv[3]), BlkDevice(sys.argv[2]))
print("ready", flush=True)
threading.Event().wait()
"""


def _wait_device(bus: LoopbackBus, dev_num: int, present: bool) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        entry = bus.device(dev_num)
        if present and entry is not None and entry.driver is not None:
            return
        if not present and entry is None:
            return
        time.sleep(0.01)
    raise RuntimeError(f"device {dev_num} {'never appeared' if present else 'was not removed'}")


class Round:
    """What the threads of one round saw: failed requests, unexpected errors, rng reads."""

    def __init__(self) -> None:
        """Nothing seen yet."""
        self.failed: list[tuple[float, float]] = []
        """(call started, call failed), monotonic seconds, one per writer."""
        self.unexpected: list[str] = []
        self.rng_reads = 0
        self.rng_failures = 0
        self.stop = threading.Event()


def _writer(
    driver: BlkDriver, rnd: random.Random, lane: int, done: dict[int, bytes],
    lock: threading.Lock, seen: Round,
) -> None:
    offset, data, began = 0, b"", 0.0
    try:
        while True:
            # Byte offsets; each write owns a 2 KiB slot and lanes never share slots.
            offset = (lane * 1000 + rnd.randrange(1000)) * 2048
            data = rnd.randbytes(512 * rnd.randint(1, 4))
            began = time.monotonic()
            driver.write(offset, data)
            with lock:
                for i in range(0, len(data), 512):
                    done[offset + i] = data[i : i + 512]
    except VirtioMsgError:
        seen.failed.append((began, time.monotonic()))
        with lock:  # the failed write may or may not have reached the disk
            for i in range(0, len(data), 512):
                done.pop(offset + i, None)
    except Exception as exc:  # anything else is a defect the run reports
        seen.unexpected.append(f"writer {lane}: {exc!r}")


def _rng_reader(driver: RngDriver, seen: Round) -> None:
    while not seen.stop.is_set():
        try:
            if len(driver.read(16)) == 16:
                seen.rng_reads += 1
            else:
                seen.rng_failures += 1
        except Exception as exc:
            seen.rng_failures += 1
            seen.unexpected.append(f"rng: {exc!r}")
        time.sleep(0.002)


def run(rounds: int, seed: int = 1, show: bool | None = False) -> dict[str, Any]:
    """Kill the blk backend ``rounds`` times during I/O; return the summary."""
    rnd = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-kb-"))
    image = tmp / "disk.img"
    image.write_bytes(bytes(8 << 20))
    bus = LoopbackBus(BusParams(timeout_ms=TIMEOUT_MS), size=4 << 20)
    server = SocketServer(bus, tmp / "bus.sock").start()
    good = connect(tmp / "bus.sock")
    done: dict[int, bytes] = {}
    lock = threading.Lock()
    worst_request = worst_after_kill = 0.0
    verified = failed_requests = rng_reads = rng_failures = 0
    unexpected: list[str] = []
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
                proc = subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(tmp / "bus.sock"), str(image), str(BLK)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                )
                try:
                    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"round {rnd_no}: the blk backend did not start")
                    _wait_device(bus, BLK, True)
                    entry = bus.device(BLK)
                    assert entry is not None and isinstance(entry.driver, BlkDriver)
                    driver = entry.driver
                    with lock:
                        snapshot = dict(done)
                    for offset, data in snapshot.items():  # acknowledged before the kill
                        if driver.read(offset, 512) != data:
                            raise RuntimeError(f"round {rnd_no}: byte {offset} lost its write")
                    verified += len(snapshot)
                    if rnd_no == rounds:
                        break
                    seen = Round()
                    threads = [
                        threading.Thread(
                            target=_writer,
                            args=(driver, random.Random(rnd.random()), i, done, lock, seen),
                        )
                        for i in range(WRITERS)
                    ]
                    threads.append(threading.Thread(target=_rng_reader, args=(rng, seen)))
                    for t in threads:
                        t.start()
                    time.sleep(0.05 + rnd.random() * 0.1)
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = time.monotonic()
                    for t in threads[:-1]:
                        t.join(WAIT)
                        if t.is_alive():
                            raise RuntimeError(f"round {rnd_no}: a writer hung after the kill")
                    _wait_device(bus, BLK, False)
                    seen.stop.set()
                    threads[-1].join(WAIT)
                    unexpected += seen.unexpected
                    failed_requests += len(seen.failed)
                    rng_reads += seen.rng_reads
                    rng_failures += seen.rng_failures
                    for began, failed in seen.failed:
                        worst_request = max(worst_request, failed - began)
                        worst_after_kill = max(worst_after_kill, failed - killed)
                finally:
                    proc.kill()
                    proc.wait(WAIT)
                if rnd_no < rounds:
                    bar.update(task, advance=1, note=f"worst request {worst_request:.3f} s")
    finally:
        good.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)
    bound = TIMEOUT_MS / 1000 * 1.1
    return {
        "rounds": rounds, "writers": WRITERS, "timeout_ms": TIMEOUT_MS,
        "failed_requests": failed_requests, "expected_failed_requests": rounds * WRITERS,
        "worst_failed_request_s": round(worst_request, 3),
        "worst_failure_after_kill_s": round(worst_after_kill, 3), "bound_s": bound,
        "within_bound": worst_request <= bound, "unexpected_errors": unexpected,
        "rng_reads_during_kills": rng_reads, "rng_failures": rng_failures,
        "sectors_verified_after_restarts": verified,
        "seconds": round(time.monotonic() - start, 1),
    }


def ok(summary: dict[str, Any]) -> bool:
    """Whether a summary passes: bounded failures, one per writer, rng unaffected, no defects."""
    return bool(
        summary["within_bound"]
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
    args = ap.parse_args(argv)
    summary = run(args.rounds, args.seed, show=None)
    print(json.dumps(summary), flush=True)
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
