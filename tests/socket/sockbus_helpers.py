"""Helpers for the socket-channel tests: a bus on a private socket, backend processes.

Every helper cleans up after itself: processes are killed (with bounded
waits), servers and buses closed, socket directories removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from virtio_msg.bus import DeviceEntry, LoopbackBus
from virtio_msg.bus.socket import SocketChannel, SocketLimits, SocketServer
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.transport.params import BusParams

HERE = Path(__file__).resolve().parent
BACKEND_SCRIPT = HERE / "sockbus_backend_proc.py"
WAIT = 15.0
"""Generous bound on waiting for something that should happen (not a timing assertion)."""


def rng(entry: DeviceEntry | None) -> RngDriver:
    """The rng driver bound to ``entry`` (fails the test if there is none)."""
    assert entry is not None and isinstance(entry.driver, RngDriver), entry
    return entry.driver


def private_dir() -> Path:
    """A short private directory (mode 0700) for a socket; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix="vmsg-t-"))


class BusHarness:
    """A LoopbackBus served on a socket, recording what happens to it."""

    def __init__(
        self,
        params: BusParams | None = None,
        limits: SocketLimits | None = None,
        *,
        size: int = 1 << 20,
    ) -> None:
        self.dir = private_dir()
        self.path = self.dir / "bus.sock"
        self.bus = LoopbackBus(params or BusParams(timeout_ms=1000), size=size)
        self.server = SocketServer(self.bus, self.path, limits=limits)
        self.cv = threading.Condition()
        self.added: list[DeviceEntry] = []
        self.removed: list[DeviceEntry] = []
        self.connected: list[SocketChannel] = []
        self.disconnected: list[tuple[SocketChannel, str]] = []
        self.bus.on_added.append(lambda e: self._note(self.added, e))
        self.bus.on_removed.append(lambda e: self._note(self.removed, e))
        self.server.on_connect.append(lambda ch: self._note(self.connected, ch))
        self.server.on_disconnect.append(lambda ch, why: self._note(self.disconnected, (ch, why)))
        self.server.start()

    def _note(self, where: list[Any], item: Any) -> None:
        with self.cv:
            where.append(item)
            self.cv.notify_all()

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cv.wait(min(left, 0.05))

    def wait_device(self, dev_num: int, timeout: float = WAIT) -> DeviceEntry:
        entry: DeviceEntry = self.wait_for(
            lambda: self.bus.device(dev_num) if self.bus.device(dev_num) in self.added else None,
            f"device {dev_num} to be added", timeout,
        )
        return entry

    def wait_removed(self, dev_num: int, count: int = 1) -> None:
        self.wait_for(
            lambda: sum(e.dev_num == dev_num for e in self.removed) >= count,
            f"device {dev_num} to be removed",
        )

    def wait_disconnects(self, count: int) -> list[tuple[SocketChannel, str]]:
        self.wait_for(lambda: len(self.disconnected) >= count, f"{count} disconnection(s)")
        return list(self.disconnected)

    def raw(self) -> socket.socket:
        """A raw connection to the bus (a misbehaving backend written by hand)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(WAIT)
        sock.connect(str(self.path))
        return sock

    def close(self) -> None:
        self.server.close()
        self.bus.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def bus_harness(
    params: BusParams | None = None, limits: SocketLimits | None = None, **kw: Any
) -> Iterator[BusHarness]:
    h = BusHarness(params, limits, **kw)
    try:
        yield h
    finally:
        h.close()


class BackendProc:
    """A backend in another process (``sockbus_backend_proc.py``), driven line by line."""

    def __init__(self, path: Path, *, connect: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        if connect:
            hello = self._read()
            if not hello.get("ok"):
                raise AssertionError(f"backend did not connect: {hello}")
            self.announcement: dict[str, Any] = hello["announcement"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        result: list[str] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            result.append(self.proc.stdout.readline())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(WAIT)
        if not result or not result[0]:
            err = ""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            raise AssertionError(f"no answer from the backend process {self.pid}: {err}")
        answer: dict[str, Any] = json.loads(result[0])
        return answer

    def cmd(self, *words: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def send_only(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def stop(self) -> None:
        """SIGSTOP, and wait until every thread really is stopped (delivery is asynchronous)."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + WAIT
        while not self._all_stopped():
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {self.pid} did not stop")
            time.sleep(0.005)

    def _all_stopped(self) -> bool:
        tasks = Path(f"/proc/{self.pid}/task")
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
        return all(state in ("T", "t") for state in states)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(WAIT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def backend_procs() -> Iterator[Callable[[Path], BackendProc]]:
    """Start backend processes with the returned callable; all are killed at exit."""
    started: list[BackendProc] = []

    def start(path: Path, connect: bool = True) -> BackendProc:
        proc = BackendProc(path, connect=connect)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


def spawn(*args: str) -> subprocess.Popen[str]:
    """``python -m virtio_msg ARGS`` with pipes (the caller kills it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    """Signal ``proc``, wait (bounded; kill if needed) and return its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
    return out, err
