"""Real vhost-user back ends for the tests: start them in a tmp dir, always stop them.

Each back end is started directly (no shell in between, so the pid we signal
is the daemon's own), waited for with a bound until its socket appears, and
stopped in a ``finally`` with a bounded wait and SIGKILL as the last resort.
qemu-storage-daemon is stopped by the pid in its ``--pidfile``.  A test that
needs a binary that is not installed skips and says which one; any other
failure to start fails the test with the daemon's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from virtio_msg.bus import Backend, LoopbackBus, loopback_pair
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.base import Driver
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.net import NetDriver
from virtio_msg.spec import DeviceId
from virtio_msg.transport.params import BusParams

QSD = shutil.which("qemu-storage-daemon") or "/usr/bin/qemu-storage-daemon"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
TESTPMD = os.environ.get("VIRTIO_MSG_TESTPMD") or shutil.which("dpdk-testpmd") or ""
START_TIMEOUT = 15.0
"""Bound on a daemon creating its socket (they take well under a second)."""
STOP_TIMEOUT = 10.0
"""Bound on a daemon exiting after its stop signal, before SIGKILL."""
MiB = 1 << 20


def need(path: str, what: str) -> str:
    """Skip the test unless the executable ``path`` exists."""
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"{what} is not installed ({path or 'not on PATH'})")
    return path


@dataclass
class Daemon:
    """One running back end."""

    name: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    pidfile: Path | None = None
    stop_signal: int = signal.SIGTERM
    cleanup: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The daemon's pid: from its pidfile when it writes one."""
        if self.pidfile is not None and self.pidfile.exists():
            text = self.pidfile.read_text().strip()
            if text.isdigit():
                return int(text)
        return self.proc.pid

    def log_tail(self) -> str:
        """The end of the daemon's output (for failure messages)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def alive(self) -> bool:
        """Whether the daemon still runs."""
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon (by its pidfile pid) and reap it, bounded."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop cleanly (SIGKILL after the bound) and remove what it left."""
        self.kill(self.stop_signal)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _wait_for_socket(daemon: Daemon) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not daemon.socket.exists():
        if not daemon.alive():
            raise AssertionError(f"{daemon.name} exited at start:\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{daemon.name}: no socket after {START_TIMEOUT} s")
        time.sleep(0.02)
    if daemon.pidfile is not None:
        while not daemon.pidfile.exists() or not daemon.pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"{daemon.name}: no pidfile after {START_TIMEOUT} s")
            time.sleep(0.02)


@contextlib.contextmanager
def _started(daemon: Daemon) -> Iterator[Daemon]:
    try:
        _wait_for_socket(daemon)
        yield daemon
    finally:
        daemon.stop()


def _popen(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def make_image(path: Path, size: int, pattern: bytes = b"") -> Path:
    """A raw image of ``size`` bytes, the ``pattern`` repeated over it (or zeros)."""
    with open(path, "wb") as f:
        if pattern:
            f.write((pattern * (size // len(pattern) + 1))[:size])
        else:
            f.truncate(size)
    return path


# The command lines below are the ones docs/vhost-user.md gives ("Starting the back ends").


def storage_daemon_argv(
    binary: str, image: str, sock: str, pidfile: str, queues: int = 1
) -> list[str]:
    """qemu-storage-daemon's command line: ``image`` as a vhost-user-blk export on ``sock``."""
    return [
        binary,
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--export",
        f"type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={sock},"
        f"writable=on,num-queues={queues}",
        "--pidfile", pidfile,
    ]


def virtiofsd_argv(binary: str, sock: str, share: str) -> list[str]:
    """The virtiofsd command line: share the directory ``share`` on ``sock``."""
    return [binary, f"--socket-path={sock}", "-o", f"source={share}", "-o", "sandbox=chroot"]


def testpmd_argv(binary: str, sock: str, prefix: str) -> list[str]:
    """The testpmd command line: one net_vhost port on ``sock``, macswap, no hugepages."""
    return [
        binary, "-l", "0-1", "--no-huge", "-m", "256", "--no-pci", f"--file-prefix={prefix}",
        "--vdev", f"net_vhost0,iface={sock},queues=1",
        "--", "--forward-mode=macswap", "--stats-period", "3600", "--nb-cores=1",
        "--total-num-mbufs=8192",
    ]


@contextlib.contextmanager
def storage_daemon(tmp: Path, image: Path, *, queues: int = 1) -> Iterator[Daemon]:
    """qemu-storage-daemon exporting ``image`` as vhost-user-blk (stopped by its pidfile)."""
    binary = need(QSD, "qemu-storage-daemon (Debian package qemu-system-common)")
    sock, pidfile, log = tmp / "vub.sock", tmp / "qsd.pid", tmp / "qsd.log"
    argv = storage_daemon_argv(binary, str(image), str(sock), str(pidfile), queues)
    daemon = Daemon("qemu-storage-daemon", _popen(argv, log, tmp), sock, log, pidfile)
    with _started(daemon) as d:
        yield d


@contextlib.contextmanager
def virtiofsd(tmp: Path, share: Path) -> Iterator[Daemon]:
    """Run virtiofsd (C, QEMU 7.2) sharing ``share``; it serves one connection, then exits."""
    binary = need(VIRTIOFSD, "virtiofsd (Debian package qemu-system-common)")
    sock, log = tmp / "vfs.sock", tmp / "virtiofsd.log"
    argv = virtiofsd_argv(binary, str(sock), str(share))
    daemon = Daemon("virtiofsd", _popen(argv, log, tmp), sock, log)
    with _started(daemon) as d:
        yield d


@contextlib.contextmanager
def dpdk_testpmd(tmp: Path) -> Iterator[Daemon]:
    """DPDK testpmd with a net_vhost port swapping MAC addresses (no hugepages)."""
    binary = need(TESTPMD, "dpdk-testpmd (extracted from Debian's dpdk-dev, docs/vhost-user.md)")
    sock, log = tmp / "vhn.sock", tmp / "testpmd.log"
    prefix = f"vmsg{os.getpid()}x{abs(hash(str(tmp))) % 10**6}"
    argv = testpmd_argv(binary, str(sock), prefix)
    daemon = Daemon(
        "dpdk-testpmd", _popen(argv, log, tmp), sock, log, stop_signal=signal.SIGINT,
        cleanup=[Path("/var/run/dpdk") / prefix],
    )
    with _started(daemon) as d:
        yield d


# --- buses ------------------------------------------------------------------------------------


class FsProbeDriver(Driver):
    """A minimal virtio-fs driver for the tests: config, two queues, raw FUSE requests."""

    device_id = DeviceId.FS
    name = "fs"

    def setup(self) -> None:
        """Read the tag config and set up the high-priority and one request queue."""
        t = self.transport
        self.config = t.get_config(0, 40)
        self.hiprio, self.requests = t.find_vqs(2)

    def fuse(self, opcode: int, nodeid: int, body: bytes, unique: int = 1) -> bytes:
        """Send one FUSE request on the request queue; return the reply bytes."""
        import struct

        header = struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0)
        token = object()
        self.requests.add([header + body], [4096], token)
        self.transport.notify(self.requests)
        done = self.transport.wait_until(self.requests.get_used, 5.0)
        assert [t for t, _ in done] == [token]
        reply: bytes = done[0][1]
        return reply


DRIVERS_UNDER_TEST: dict[int, type[Driver]] = {
    **DRIVERS,
    DeviceId.BLOCK: BlkDriver,
    DeviceId.NET: NetDriver,
    DeviceId.FS: FsProbeDriver,
}


@contextlib.contextmanager
def bus(size: int = 4 * MiB, timeout_ms: int = 5000) -> Iterator[tuple[LoopbackBus, Backend]]:
    """An in-process bus with the drivers under test; closed at the end."""
    lb = LoopbackBus(BusParams(timeout_ms=timeout_ms), size=size, drivers=DRIVERS_UNDER_TEST)
    try:
        lb, backend, _channel = loopback_pair(lb)
        yield lb, backend
    finally:
        lb.close()
