"""kill -9 qemu-storage-daemon under a ``backend vhost-user --reconnect`` bridge, many times.

A bus (this process) serves its socket; ``virtio-msg backend vhost-user
--reconnect`` (a separate process, the bridge) serves a blk device whose
implementation is qemu-storage-daemon exporting an image file over
vhost-user, and a second backend (in this process, over the same socket)
serves an rng device.  Each round waits for the bus to report the blk device
probed, checks that every write acknowledged so far is there (read through
the new device and from the image file itself), runs several writer threads,
waits until they have had a random number of writes acknowledged, kills
qemu-storage-daemon with SIGKILL, waits for every writer's in-flight request
to fail and for the bus to report the device removed, and starts
qemu-storage-daemon again: the bridge must reconnect and ADD the device again
by itself.  Every wait is on an event (the bus's ADD/REMOVE callbacks, the
writers' acknowledgements and failures, a process exiting) and bounded;
nothing sleeps to let something happen.  A thread reads the rng device
throughout: every read must succeed.  A writer's request may only fail with
a typed error that is not a timeout; how long it took (from the call) is
checked against the request timeout + 10 % in the long run's summary (the CI
test asserts no time).  Descriptors and RSS of the bridge process are read
from ``/proc`` at the start, after the first reconnect and at the end.
Usage: ``python3 soak/kill_vhost.py --rounds 50`` (one JSON summary line).
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections import Counter
from pathlib import Path
from typing import Any

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.client import connect
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.testing import DeviceWatch, KillTally, kill_during_io, progress
from virtio_msg.transport.params import BusParams

BLK, RNG = 4, 5
TIMEOUT_MS = 1000
"""The bus's request timeout for the long run (the CI test uses a longer one)."""
WRITERS = 3
WAIT = 60.0
"""Bound on every wait of the script, seconds (a wait that runs out is a hang)."""
IMAGE = 8 << 20
CHUNK = 256 << 10
"""Bytes per read when checking the acknowledged writes."""
QSD = shutil.which("qemu-storage-daemon") or "/usr/bin/qemu-storage-daemon"


def qsd_argv(image: Path, sock: Path) -> list[str]:
    """qemu-storage-daemon exporting ``image`` as a writable vhost-user-blk on ``sock``."""
    return [
        QSD,
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--export",
        f"type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={sock},"
        "writable=on,num-queues=1",
    ]


def proc_fds(pid: int) -> int:
    """Open descriptors of process ``pid`` (``/proc/PID/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS line in /proc/{pid}/status")


def _verify(driver: BlkDriver, image: Path, snapshot: dict[int, bytes], where: str) -> None:
    """Every acknowledged write, through the device and in the image file itself.

    The area the writers use is read whole (in ``CHUNK`` requests), not
    sector by sector: a round's check costs a few dozen requests.
    """
    area = WRITERS * 1000 * 2048
    device = b"".join(driver.read(at, min(CHUNK, area - at)) for at in range(0, area, CHUNK))
    with open(image, "rb") as f:
        disk = f.read(area)
    for offset, data in snapshot.items():
        if device[offset : offset + 512] != data:
            raise RuntimeError(f"{where}: byte {offset} lost its write (read via the device)")
        if disk[offset : offset + 512] != data:
            raise RuntimeError(f"{where}: byte {offset} lost its write (in the image file)")


class Children:
    """qemu-storage-daemon and the bridge: started, killed, always reaped (bounded)."""

    def __init__(self, tmp: Path, image: Path) -> None:
        """Nothing started yet; logs and sockets go into ``tmp``."""
        self.tmp, self.image = tmp, image
        self.vub = tmp / "vub.sock"
        self.qsd: subprocess.Popen[bytes] | None = None
        self.bridge: subprocess.Popen[bytes] | None = None

    def _popen(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with open(out, "ab") as stdout, open(err, "ab") as stderr:
            return subprocess.Popen(
                argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )

    def start_qsd(self) -> None:
        """Start qemu-storage-daemon (a killed one's socket file is removed first)."""
        with contextlib.suppress(FileNotFoundError):
            self.vub.unlink()
        self.qsd = self._popen(qsd_argv(self.image, self.vub), "qsd")

    def wait_socket(self) -> None:
        """Wait (bounded) for qemu-storage-daemon's socket, before the bridge's first connect."""
        deadline = time.monotonic() + WAIT
        while not self.vub.exists():
            assert self.qsd is not None
            if self.qsd.poll() is not None:
                raise RuntimeError(f"qemu-storage-daemon exited at start: {self.log('qsd')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hang: no qemu-storage-daemon socket in {WAIT:.0f} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qsd.wait(0.02)  # returns early if it exits

    def start_bridge(self, bus_sock: Path) -> None:
        """Start ``virtio-msg backend vhost-user --reconnect`` between the two sockets."""
        self.bridge = self._popen(
            [sys.executable, "-m", "virtio_msg", "backend", "vhost-user",
             "--vhost-user", str(self.vub), "--socket", str(bus_sock),
             "--dev-num", str(BLK), "--type", "blk",
             "--reconnect", str(WAIT), "--json"],
            "bridge",
        )

    def kill_qsd(self) -> None:
        """SIGKILL qemu-storage-daemon and reap it."""
        assert self.qsd is not None
        os.kill(self.qsd.pid, signal.SIGKILL)
        self.qsd.wait(WAIT)

    def stop_bridge(self) -> int:
        """SIGTERM the bridge (it REMOVEs the device and exits); its exit status."""
        assert self.bridge is not None
        self.bridge.send_signal(signal.SIGTERM)
        try:
            return self.bridge.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"hang: the bridge did not exit in {WAIT:.0f} s") from None

    def events(self) -> list[str]:
        """The bridge's JSON events so far."""
        text = (self.tmp / "bridge.out").read_text()
        return [json.loads(line)["event"] for line in text.splitlines() if line.strip()]

    def log(self, name: str) -> str:
        """The end of a child's stderr (for failure messages)."""
        with contextlib.suppress(OSError):
            return (self.tmp / f"{name}.err").read_text(errors="replace")[-1500:]
        return ""

    def close(self) -> None:
        """Kill whatever still runs, reap it (bounded)."""
        for proc in (self.bridge, self.qsd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)


def run(
    rounds: int, seed: int = 1, show: bool | None = False, timeout_ms: int = TIMEOUT_MS
) -> dict[str, Any]:
    """Kill qemu-storage-daemon ``rounds`` times during I/O; return the summary."""
    rnd = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-kv-"))
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE)
    bus = LoopbackBus(BusParams(timeout_ms=timeout_ms), size=4 << 20)
    watch = DeviceWatch(bus, WAIT)
    server = SocketServer(bus, tmp / "bus.sock").start()
    good = connect(tmp / "bus.sock")
    kids = Children(tmp, image)
    done: dict[int, bytes] = {}
    lock = threading.Lock()
    tally = KillTally()
    fds: list[int] = []
    rss: list[int] = []
    rss_max = 0
    status: int | None = None
    events: list[str] = []
    start = time.monotonic()
    try:
        good.serve(RNG, RngDevice(seed=seed))
        rng_entry = bus.device(RNG)
        if rng_entry is None or not isinstance(rng_entry.driver, RngDriver):
            raise RuntimeError("the rng device did not probe")
        rng = rng_entry.driver
        kids.start_qsd()
        kids.wait_socket()
        kids.start_bridge(tmp / "bus.sock")
        assert kids.bridge is not None and kids.qsd is not None
        bridge = kids.bridge
        with progress(show) as bar:
            task = bar.add_task("kill -9 qemu-storage-daemon", total=rounds, note="")
            for rnd_no in range(rounds + 1):
                alive = {"the bridge": bridge, "qemu-storage-daemon": kids.qsd}
                watch.wait(watch.added, BLK, rnd_no + 1, f"round {rnd_no}: the blk device's ADD",
                           alive)
                entry = bus.device(BLK)
                if entry is None or not isinstance(entry.driver, BlkDriver):
                    raise RuntimeError(f"round {rnd_no}: the blk device did not probe")
                driver = entry.driver
                with lock:
                    snapshot = dict(done)
                _verify(driver, image, snapshot, f"round {rnd_no}")
                tally.verified += len(snapshot)
                if rnd_no <= 1:  # at the start, and after one kill and reconnect
                    fds.append(proc_fds(bridge.pid))
                    rss.append(proc_rss_kib(bridge.pid))
                rss_max = max(rss_max, proc_rss_kib(bridge.pid))
                if rnd_no == rounds:
                    break
                seen, killed = kill_during_io(
                    driver, rng, rnd, done, lock, kids.kill_qsd,
                    functools.partial(watch.wait, watch.removed, BLK, rnd_no + 1,
                                      f"round {rnd_no}: the blk REMOVE", {"the bridge": bridge}),
                    WRITERS, WAIT, f"round {rnd_no}",
                )
                tally.add(seen, killed)
                kids.start_qsd()
                bar.update(task, advance=1, note=f"worst request {tally.worst_request:.3f} s")
        fds.append(proc_fds(bridge.pid))
        rss.append(proc_rss_kib(bridge.pid))
        status = kids.stop_bridge()
        events = kids.events()
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nbridge: {kids.log('bridge')}\nqsd: {kids.log('qsd')}") from None
    finally:
        kids.close()
        good.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **tally.summary(rounds, WRITERS, timeout_ms),
        "bridge_events": dict(Counter(events)),
        "expected_bridge_events": events == ["added"] + ["removed", "reconnected", "added"] * rounds
        + ["removed"],
        "bridge_exit_status": status,
        "bridge_fds_start": fds[0], "bridge_fds_after_first_reconnect": fds[1] if rounds else None,
        "bridge_fds_end": fds[-1],
        "bridge_rss_kib_start": rss[0],
        "bridge_rss_kib_after_first_reconnect": rss[1] if rounds else None,
        "bridge_rss_kib_end": rss[-1], "bridge_rss_kib_max": max(rss_max, rss[-1]),
        "seconds": round(time.monotonic() - start, 1),
    }


def ok(summary: dict[str, Any], *, timed: bool = True) -> bool:
    """Whether a summary passes: one typed, non-timeout failure per writer, rng unaffected.

    Also: the bridge reconnected every round and exited cleanly.  ``timed``
    adds the bound on how long the failures took (the long run's figure; a
    test on a loaded machine leaves it out).
    """
    return bool(
        (summary["within_bound"] or not timed)
        and summary["failed_requests"] == summary["expected_failed_requests"]
        and "timeout" not in summary["failure_kinds"]
        and not summary["unexpected_errors"]
        and not summary["rng_failures"]
        and summary["rng_reads_during_kills"] > 0
        and summary["expected_bridge_events"]
        and summary["bridge_exit_status"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: run the rounds, print the JSON summary; exit 1 if it does not pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout-ms", type=int, default=TIMEOUT_MS)
    args = ap.parse_args(argv)
    if not os.access(QSD, os.X_OK):
        print(f"qemu-storage-daemon is not installed ({QSD})", file=sys.stderr)
        return 2
    summary = run(args.rounds, args.seed, show=None, timeout_ms=args.timeout_ms)
    print(json.dumps(summary), flush=True)
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
