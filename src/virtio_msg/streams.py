"""Device-side byte streams that do I/O, for the console device.

:class:`FdStream` (a file-descriptor pair, e.g. a backend's stdin/stdout),
:class:`PtyStream`, :class:`TcpStream` (127.0.0.1 only) and :class:`ExecStream`
(a program) implement :class:`~virtio_msg.devices.console.ByteStream` with one
reader and one writer thread each.  They live at the top layer because nothing
below bus/ performs I/O; device models receive them ready-made.  The reader asks
the port for room before it reads its source, so a full port inbox stops the
reading (flow control without loss); the writer drains a bounded outbox and
tells the port when it has room again.  Both wait in ``select`` on their
descriptor and a wake-up pipe, so :meth:`FdStream.close` ends them promptly
(bounded joins).  :func:`make_stream` builds one from a short spec.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import shlex
import socket
import subprocess
import threading
import tty
from collections.abc import Sequence
from typing import Final

from virtio_msg.devices.console import (
    DEFAULT_INBOX_LIMIT,
    ByteStream,
    EchoStream,
    StreamLink,
)

__all__ = ["ExecStream", "FdStream", "PtyStream", "TcpStream", "make_stream"]

log = logging.getLogger(__name__)

_IO_CHUNK: Final = 4096
_POLL: Final = 0.2
"""Seconds between checks for a stop request while a stream thread waits for room."""


# --- device-side streams that do I/O -----------------------------------------------------


class FdStream(ByteStream):
    """A pair of file descriptors (one may serve both ways), each with its own thread.

    The reader reads only when the port has room; the writer drains a bounded
    outbox.  ``close_fds`` closes the descriptors on :meth:`close`.
    """

    def __init__(
        self, read_fd: int, write_fd: int, *, close_fds: bool = False,
        out_limit: int = DEFAULT_INBOX_LIMIT,
    ) -> None:
        """Use ``read_fd`` for input and ``write_fd`` for output."""
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.close_fds = close_fds
        self.out_limit = out_limit
        self._out = bytearray()
        self._cond = threading.Condition()
        self._stopping = False
        self._out_closing = False
        self._out_dead = False
        self._wake_r, self._wake_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self.dropped_output = 0
        """Output bytes discarded because the consumer went away (EPIPE)."""

    def start(self, link: StreamLink) -> None:
        """Start the reader and writer threads."""
        super().start(link)
        for target, name in ((self._reader, "rx"), (self._writer, "tx")):
            t = threading.Thread(target=target, name=f"console-{name}-{self.describe()}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def send(self, data: bytes) -> int:
        """Queue output for the writer thread (up to ``out_limit`` bytes waiting)."""
        with self._cond:
            if self._out_dead:
                self.dropped_output += len(data)
                return len(data)  # nobody reads any more: discard rather than stall
            take = min(len(data), self.out_limit - len(self._out))
            if take > 0:
                self._out += data[:take]
                self._cond.notify_all()
            return max(take, 0)

    def close_output(self) -> None:
        """Half-close after the queued output is written."""
        with self._cond:
            self._out_closing = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop both threads (bounded) and close owned descriptors."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        for fd in (self._wake_r, self._wake_w):
            _close_quietly(fd)
        if self.close_fds:
            self._close_fds()

    def _close_fds(self) -> None:
        _close_quietly(self.read_fd)
        if self.write_fd != self.read_fd:
            _close_quietly(self.write_fd)

    def _shutdown_output(self) -> None:
        if self.write_fd != self.read_fd:
            _close_quietly(self.write_fd)

    def describe(self) -> str:
        """Name the descriptors."""
        return f"fd{self.read_fd}/{self.write_fd}"

    def _reader(self) -> None:
        link = self.link
        if link is None:  # start() sets it before the thread runs
            return
        sel = selectors.DefaultSelector()
        sel.register(self.read_fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping and not link.closed:
                room = link.wait_room(_POLL)  # flow control: read only what fits
                if room <= 0:
                    continue
                keys = {k.fd for k, _ in sel.select()}
                if self._wake_r in keys:
                    return
                try:
                    data = os.read(self.read_fd, min(room, _IO_CHUNK))
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO: a pty whose other side closed
                        log.warning("console stream %s: read failed: %s", self.describe(), exc)
                    data = b""
                if not data:
                    link.eof()
                    return
                link.feed(data)
        finally:
            sel.close()

    def _writer(self) -> None:
        link = self.link
        if link is None:
            return
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                with self._cond:
                    while not self._out and not self._out_closing and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    if not self._out:  # closing and drained
                        self._shutdown_output()
                        return
                    chunk = bytes(self._out[:512])  # small: a writable pipe takes it whole
                try:
                    sel.register(self.write_fd, selectors.EVENT_WRITE)
                    keys = {k.fd for k, _ in sel.select()}
                    sel.unregister(self.write_fd)
                    if self._wake_r in keys:
                        return
                    n = os.write(self.write_fd, chunk)
                except OSError as exc:
                    log.info("console stream %s: output closed: %s", self.describe(), exc)
                    with self._cond:
                        self._out_dead = True
                        self.dropped_output += len(self._out)
                        self._out.clear()
                    link.output_ready()
                    return
                with self._cond:
                    del self._out[:n]
                link.output_ready()
        finally:
            sel.close()


class TcpStream(FdStream):
    """A TCP connection on 127.0.0.1 (the device side connects)."""

    def __init__(self, sock: socket.socket) -> None:
        """Use a connected socket (see :meth:`connect`)."""
        self.sock = sock
        super().__init__(sock.fileno(), sock.fileno())

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> TcpStream:
        """Connect to ``host:port`` (loopback only)."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("console TCP streams connect to the loopback interface only")
        return cls(socket.create_connection((host, port), timeout=timeout))

    def _shutdown_output(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _close_fds(self) -> None:
        self.sock.close()

    def close(self) -> None:
        """Stop the threads and close the socket."""
        self.close_fds = True
        super().close()

    def describe(self) -> str:
        """Name the peer."""
        try:
            host, port = self.sock.getpeername()[:2]
            return f"tcp:{host}:{port}"
        except OSError:
            return "tcp"


class PtyStream(FdStream):
    """A pseudo-terminal: the device owns the master; a person attaches to :attr:`path`."""

    def __init__(self) -> None:
        """Open a raw-mode pty pair."""
        master, slave = os.openpty()
        tty.setraw(slave)  # bytes pass unchanged: no echo, no line editing
        self.slave_fd = slave
        self.path = os.ttyname(slave)
        super().__init__(master, master, close_fds=True)

    def close(self) -> None:
        """Close the master and the slave."""
        super().close()
        _close_quietly(self.slave_fd)

    def _shutdown_output(self) -> None:
        # A terminal has no half-close: the driver closing its side ends the session.
        if self.link is not None:
            self.link.eof()

    def describe(self) -> str:
        """Name the terminal."""
        return f"pty:{self.path}"


class ExecStream(FdStream):
    """A program: its stdout is the input, output goes to its stdin."""

    def __init__(self, argv: Sequence[str]) -> None:
        """Start ``argv`` with piped stdin and stdout (stderr is inherited)."""
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:  # cannot happen with PIPE; keeps mypy honest
            raise OSError(f"could not pipe to {self.argv[0]}")
        super().__init__(stdout.fileno(), stdin.fileno())

    def _shutdown_output(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self) -> None:
        """Stop the threads, then the program (terminate, bounded wait, kill)."""
        super().close()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2.0)

    def describe(self) -> str:
        """Name the program."""
        return f"exec:{self.argv[0]}"


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def make_stream(spec: str) -> ByteStream:
    """Build a stream from a short spec: echo, stdio, pty, tcp:PORT, exec:COMMAND."""
    kind, _, arg = spec.partition(":")
    if kind == "echo" and not arg:
        return EchoStream()
    if kind == "stdio" and not arg:
        return FdStream(0, 1)
    if kind == "pty" and not arg:
        return PtyStream()
    if kind == "tcp" and arg.isdigit():
        return TcpStream.connect(int(arg))
    if kind == "exec" and arg.strip():
        return ExecStream(shlex.split(arg))
    raise ValueError(f"unknown console stream {spec!r} (echo, stdio, pty, tcp:PORT, exec:CMD)")



