"""In-memory pieces for testing devices and drivers (STYLE 9: ship the fakes).

:class:`EnginePair` runs a driver engine against a device transport back to
back, through the real wire encoding of either profile, and records a trace
of every message both ways.  :func:`make_bus` builds a loopback bus with an
in-process backend.  Users test their own device models the same way.  For
long runs (the fault and soak scripts of docs/reliability.md),
:func:`fd_count` and :func:`rss_kib` read this process's descriptors and
resident memory from /proc, and :func:`progress` makes a rich progress bar.
:class:`SpyRegion` records every bounds-checked access, so a hostile-ring test
or fuzz run can prove that nothing was read or written outside the region.
The kill -9 campaigns of soak/ share :class:`KillRound` (what one round's threads
saw), :func:`kill_during_io` (one round: writers, an rng reader, the kill),
:class:`KillTally` (the totals and the summary every campaign reports) and
:class:`DeviceWatch` (waiting, bounded, for the bus's ADD and REMOVE reports).
"""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from virtio_msg.bus import Backend, DeviceEntry, InProcessChannel, LoopbackBus, loopback_pair
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.memory import DmaPool, Region
from virtio_msg.transport.device import DeviceModel, DeviceTransport
from virtio_msg.transport.engine import DriverEngine, Proc, run_sync
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message
from virtio_msg.wire.translate import WireAdapter

T = TypeVar("T")


@dataclass
class EnginePair:
    """A driver engine and a device transport joined through the wire codec.

    Every request is encoded and decoded in the bus profile on the way in and
    the way out, so linux-rfc1 runs go through the seed's real layouts.
    ``trace`` holds (direction, message) pairs: "req", "resp", "event".
    """

    model: DeviceModel
    params: BusParams = field(default_factory=BusParams)
    dev_num: int = 0
    region_size: int = 1 << 20
    async_reset_polls: int = 0

    def __post_init__(self) -> None:
        """Create the region, pool, engines and the wire adapter."""
        self.region = Region(self.region_size)
        self.pool = DmaPool(self.region)
        self.adapter = WireAdapter(self.params.profile, self.params.max_size)
        self.events: list[Message] = []
        self.trace: list[tuple[str, Message]] = []
        self.device = DeviceTransport(
            self.model,
            self.region,
            dev_num=self.dev_num,
            params=self.params,
            emit=self._emit,
            async_reset_polls=self.async_reset_polls,
        )
        self.driver = DriverEngine(self.dev_num, self.params)

    def _wire(self, msg: Message) -> Message:
        return self.adapter.decode(self.adapter.encode(msg))

    def _emit(self, msg: Message) -> None:
        msg = self._wire(msg)
        self.events.append(msg)
        self.trace.append(("event", msg))

    def send(self, msg: Message) -> Message | None:
        """Deliver one message to the device (through the wire); return its response."""
        msg = self._wire(msg)
        self.trace.append(("req", msg))
        resp = self.device.handle(msg)
        if resp is None:
            return None
        resp = self._wire(resp)
        self.trace.append(("resp", resp))
        return resp

    def answer(self, msg: Message) -> Message:
        """Like :meth:`send`, but a missing response is an error (for run_sync)."""
        resp = self.send(msg)
        if resp is None:
            raise AssertionError(f"device sent no response to {msg!r}")
        return resp

    def run(self, proc: Proc[T]) -> T:
        """Run a driver procedure to completion against the device."""
        return run_sync(proc, self.answer)

    def requests(self) -> list[Message]:
        """The requests sent so far, in order."""
        return [m for d, m in self.trace if d == "req"]

    def close(self) -> None:
        """Release the region."""
        self.pool.close()
        self.region.close()


class GatedChannel:
    """An in-process channel that can hold messages instead of delivering them.

    While ``hold`` is set, messages from the bus are kept in ``held``; the test
    decides when (or whether) the backend sees them, so it can make a backend
    that never answers, answers late, or answers twice.
    """

    def __init__(self, bus: LoopbackBus, backend: Backend) -> None:
        """Attach ``backend`` to ``bus`` through this channel."""
        self.bus = bus
        self.backend = backend
        self.hold = False
        self.held: list[bytes] = []
        self.delivered: list[bytes] = []
        self.responses: list[bytes] = []
        self.lock = threading.Lock()
        bus.attach(self)
        backend.attach(self)

    def deliver(self, data: bytes) -> None:
        """Bus to backend: deliver now, or keep while ``hold`` is set."""
        with self.lock:
            if self.hold:
                self.held.append(data)
                return
        self.delivered.append(data)
        self.backend.deliver(data)

    def release(self) -> None:
        """Deliver every held message now (a late backend) and stop holding."""
        with self.lock:
            held, self.held = self.held, []
            self.hold = False
        for data in held:
            self.deliver(data)

    def close(self) -> None:
        """Detach from the bus."""
        self.bus.detach(self)

    def send(self, data: bytes) -> None:
        """Backend to bus: pass a response or event on (and record it)."""
        self.responses.append(data)
        self.bus.receive(data, self)

    def add(self, dev_num: int) -> None:
        """ADD a device number."""
        self.bus.add_device(dev_num, self)

    def remove(self, dev_num: int) -> None:
        """REMOVE a device number."""
        self.bus.remove_device(dev_num)


def make_bus(
    params: BusParams | None = None, *, size: int = 1 << 20, backend_view: str = "shared"
) -> tuple[LoopbackBus, Backend, InProcessChannel]:
    """A loopback bus with an in-process backend attached (close the bus when done)."""
    return loopback_pair(LoopbackBus(params, size=size), backend_view=backend_view)


def fd_count() -> int:
    """Open file descriptors of this process (``/proc/self/fd``), after a garbage collection.

    Objects in reference cycles (a removed driver and its transport) hold
    their descriptors until the cycle collector runs; collecting first makes
    the count a measure of leaks, not of collector timing.
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status")


def progress(enabled: bool | None = None) -> Progress:
    """A rich progress bar on stderr (use as a context manager; shown only on a terminal).

    ``enabled`` None means: when stderr is a terminal.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True), disable=not show,
    )


class SpyRegion(Region):
    """A Region that records every bounds-checked access as ``(address, length)``."""

    __slots__ = ("accesses",)

    def _offset(self, addr: int, length: int) -> int:
        if not hasattr(self, "accesses"):
            self.accesses: list[tuple[int, int]] = []
        self.accesses.append((addr, length))
        return super()._offset(addr, length)

    def reset_log(self) -> None:
        """Forget the recorded accesses."""
        self.accesses = []


__all__ = [
    "EnginePair",
    "GatedChannel",
    "SpyRegion",
    "fd_count",
    "make_bus",
    "progress",
    "rss_kib",
]


# --- kill -9 campaigns (soak/) ---------------------------------------------------------


class KillRound:
    """What the threads of one kill round saw: failed requests, unexpected errors, rng reads.

    Shared by the kill -9 campaigns in soak/ (a blk backend, a vhost-user back end).
    """

    def __init__(self, writers: int, wait: float) -> None:
        """Nothing seen yet; ``writers`` threads write, every wait is bounded by ``wait`` s."""
        self.writers = writers
        self.wait = wait
        self.failed: list[tuple[float, float]] = []
        """(call started, call failed), monotonic seconds, one per writer."""
        self.kinds: Counter[str] = Counter()
        """How the writers' requests failed (TransportError kinds)."""
        self.unexpected: list[str] = []
        self.acked = 0
        self.cv = threading.Condition()
        self.rng_reads = 0
        self.rng_failures = 0
        self.stop = threading.Event()

    def wait_busy(self, count: int) -> None:
        """Wait until the writers have had ``count`` writes acknowledged and the rng was read.

        Returns early if every writer already stopped (the summary then shows why).
        """
        deadline = time.monotonic() + self.wait
        with self.cv:
            while (self.acked < count or not self.rng_reads) and (
                len(self.failed) + len(self.unexpected) < self.writers
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"hang: {count} writes not acknowledged in {self.wait:.0f} s"
                    )
                self.cv.wait(left)


def kill_writer(
    driver: BlkDriver, rnd: random.Random, lane: int, done: dict[int, bytes],
    lock: threading.Lock, seen: KillRound,
) -> None:
    """Write random 512-byte-multiple blocks in ``lane``'s slots until a request fails.

    Acknowledged writes are recorded in ``done`` (byte offset -> sector); a write
    that failed is forgotten, since it may or may not have reached the disk.
    """
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
            with seen.cv:
                seen.acked += 1
                seen.cv.notify_all()
    except VirtioMsgError as exc:
        failed = time.monotonic()
        with lock:  # the failed write may or may not have reached the disk
            for i in range(0, len(data), 512):
                done.pop(offset + i, None)
        with seen.cv:
            seen.failed.append((began, failed))
            seen.kinds[exc.kind if isinstance(exc, TransportError) else type(exc).__name__] += 1
            seen.cv.notify_all()
    except Exception as exc:  # anything else is a defect the run reports
        with seen.cv:
            seen.unexpected.append(f"writer {lane}: {exc!r}")
            seen.cv.notify_all()


def kill_rng_reader(driver: RngDriver, seen: KillRound) -> None:
    """Read 16 bytes again and again until ``seen.stop``, counting reads and failures."""
    while not seen.stop.is_set():
        try:
            got = len(driver.read(16))
        except Exception as exc:
            got = -1
            seen.unexpected.append(f"rng: {exc!r}")
        with seen.cv:
            if got == 16:
                seen.rng_reads += 1
            else:
                seen.rng_failures += 1
            seen.cv.notify_all()
        seen.stop.wait(0.002)  # pacing only: the other backend is read throughout


class DeviceWatch:
    """What a bus reports about devices (its ADD/REMOVE callbacks), to wait on."""

    def __init__(self, bus: LoopbackBus, wait: float) -> None:
        """Count ADDs and REMOVEs of every number from now on; waits last at most ``wait`` s."""
        self.wait_s = wait
        self.cv = threading.Condition()
        self.added: Counter[int] = Counter()
        self.removed: Counter[int] = Counter()
        bus.on_added.append(lambda e: self._note(self.added, e))
        bus.on_removed.append(lambda e: self._note(self.removed, e))

    def _note(self, where: Counter[int], entry: DeviceEntry) -> None:
        with self.cv:
            where[entry.dev_num] += 1
            self.cv.notify_all()

    def wait(
        self, counts: Counter[int], dev_num: int, at_least: int, what: str,
        alive: Mapping[str, subprocess.Popen[bytes]], *, allow_killed: bool = False,
    ) -> None:
        """Wait until ``counts[dev_num]`` reaches ``at_least`` (re-checked on every report).

        Fails if a process in ``alive`` (name: process) exits first, unless
        ``allow_killed`` and it was killed with SIGKILL.
        """
        deadline = time.monotonic() + self.wait_s
        with self.cv:
            while counts[dev_num] < at_least:
                for name, proc in alive.items():
                    code = proc.poll()
                    if code is not None and not (allow_killed and code == -signal.SIGKILL):
                        raise RuntimeError(f"{name} exited ({code}) before {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"hang: {what} did not happen within {self.wait_s:.0f} s")
                self.cv.wait(min(left, 1.0))  # woken by the report; the slice checks the children


@dataclass
class KillTally:
    """A kill -9 campaign's totals over its rounds (:meth:`add` one :class:`KillRound` each)."""

    acked: int = 0
    failed_requests: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    rng_reads: int = 0
    rng_failures: int = 0
    worst_request: float = 0.0
    """Longest a failed request took, from its call to its failure, seconds."""
    worst_after_kill: float = 0.0
    """Longest from the kill to a request's failure, seconds."""
    verified: int = 0
    """Sectors read back and found as acknowledged, after each restart."""

    def add(self, seen: KillRound, killed: float) -> None:
        """Count one round whose back end was killed at monotonic time ``killed``."""
        self.unexpected += seen.unexpected
        self.failed_requests += len(seen.failed)
        self.kinds += seen.kinds
        self.acked += seen.acked
        self.rng_reads += seen.rng_reads
        self.rng_failures += seen.rng_failures
        for began, failed in seen.failed:
            self.worst_request = max(self.worst_request, failed - began)
            self.worst_after_kill = max(self.worst_after_kill, failed - killed)

    def summary(self, rounds: int, writers: int, timeout_ms: int) -> dict[str, Any]:
        """The figures every campaign reports, with the bound a failure must meet."""
        bound = timeout_ms / 1000 * 1.1
        return {
            "rounds": rounds, "writers": writers, "timeout_ms": timeout_ms,
            "writes_acknowledged": self.acked,
            "failed_requests": self.failed_requests,
            "expected_failed_requests": rounds * writers,
            "failure_kinds": dict(self.kinds),
            "worst_failed_request_s": round(self.worst_request, 3),
            "worst_failure_after_kill_s": round(self.worst_after_kill, 3), "bound_s": bound,
            "within_bound": self.worst_request <= bound, "unexpected_errors": self.unexpected,
            "rng_reads_during_kills": self.rng_reads, "rng_failures": self.rng_failures,
            "sectors_verified_after_restarts": self.verified,
        }


def kill_during_io(
    blk: BlkDriver, rng: RngDriver, rnd: random.Random, done: dict[int, bytes],
    lock: threading.Lock, kill: Callable[[], None], gone: Callable[[], None],
    writers: int, wait: float, where: str,
) -> tuple[KillRound, float]:
    """One round: ``writers`` blk writers and an rng reader run, ``kill()`` kills the back end.

    Waits (bounded) until some writes are acknowledged, kills, waits for every
    writer's request to fail, then for ``gone()`` (the device's REMOVE), and
    stops the rng reader.  Returns what the round saw and when the kill was.
    """
    seen = KillRound(writers, wait)
    threads = [
        threading.Thread(
            target=kill_writer, args=(blk, random.Random(rnd.random()), i, done, lock, seen)
        )
        for i in range(writers)
    ]
    threads.append(threading.Thread(target=kill_rng_reader, args=(rng, seen)))
    for t in threads:
        t.start()
    seen.wait_busy(writers * rnd.randint(2, 10))
    kill()
    killed = time.monotonic()
    for t in threads[:-1]:
        t.join(wait)
        if t.is_alive():
            raise RuntimeError(f"{where}: a writer hung after the kill")
    gone()
    seen.stop.set()
    threads[-1].join(wait)
    if threads[-1].is_alive():
        raise RuntimeError(f"{where}: the rng reader hung")
    return seen, killed
