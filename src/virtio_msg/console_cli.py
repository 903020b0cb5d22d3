"""``virtio-msg console`` and the console's device-side streams that do I/O.

Streams.  :class:`FdStream` (a file-descriptor pair, e.g. a backend's
stdin/stdout), :class:`PtyStream`, :class:`TcpStream` (127.0.0.1 only) and
:class:`ExecStream` (a program) implement
:class:`~virtio_msg.devices.console.ByteStream` with one reader and one writer
thread each.  They live here, above the bus layer, because nothing below bus/
performs I/O.  The reader asks the port for room before it reads its source,
so a full port inbox stops the reading (flow control without loss); the
writer drains a bounded outbox and tells the port when it has room again.
Both wait in ``select`` on their descriptor and a wake-up pipe, so
:meth:`FdStream.close` ends them promptly (bounded joins).  :func:`make_stream`
builds one from a short spec.

Command.  The command builds a loopback bus in this process with a backend
serving one :class:`~virtio_msg.devices.console.ConsoleDevice` whose port is
connected to the chosen device-side stream (echo by default; a program, a
TCP connection on 127.0.0.1 or a pty), then joins the *driver-side* port to
the user's stdin and stdout: a reader thread copies the port to stdout while
the main thread copies stdin to the port.  At end of input the port is
closed (PORT_OPEN 0); the device half-closes its stream, and the command
ends when the device reports end of stream -- so every byte the backend
sends before that is printed, with no timing involved.  Every wait is
bounded by ``--timeout-ms``.

The lead wires it into ``virtio_msg.cli`` with :func:`add_console_parser`;
``python -m virtio_msg.console_cli`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import selectors
import shlex
import socket
import subprocess
import sys
import threading
import tty
from collections.abc import Sequence
from typing import BinaryIO, Final

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.console import (
    DEFAULT_INBOX_LIMIT,
    ByteStream,
    ConsoleDevice,
    EchoStream,
    StreamLink,
)
from virtio_msg.drivers.console import ConsoleDriver, ConsolePort
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile

__all__ = [
    "ExecStream",
    "FdStream",
    "PtyStream",
    "TcpStream",
    "add_console_parser",
    "cmd_console",
    "main",
    "make_stream",
    "run_console",
]

log = logging.getLogger(__name__)

_READ_SLICE: Final = 0.25
"""Seconds per wait of the output thread, so it notices a stop request."""
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



# --- the command -------------------------------------------------------------------------




def add_console_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``console`` subcommand to a ``virtio-msg`` subparsers object."""
    p = subparsers.add_parser(
        "console",
        help="type into a driver-side virtio console and see what the device side sends back",
        description="Run a loopback bus with one virtio-console device. Standard input goes "
        "to the driver-side console port; what the device side sends back is printed. "
        "The device side echoes by default.",
    )
    p.add_argument(
        "--profile", choices=[x.value for x in Profile], default=Profile.SPEC.value,
        help="wire profile (default spec)",
    )
    p.add_argument("--max-size", type=int, default=None, metavar="N",
                   help="maximum message size (default: the profile's)")
    p.add_argument("--timeout-ms", type=int, default=5000, metavar="MS",
                   help="bound on every wait, in milliseconds (default 5000)")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--echo", action="store_true",
                         help="the device side echoes every byte (default)")
    backend.add_argument("--exec", metavar="COMMAND", dest="exec_cmd",
                         help="the device side is a program: its stdout is what you see")
    backend.add_argument("--tcp", metavar="PORT", type=int,
                         help="the device side connects to 127.0.0.1:PORT")
    backend.add_argument("--pty", action="store_true",
                         help="the device side is a pseudo-terminal (its path is printed)")
    p.set_defaults(func=cmd_console)


def _stream_from_args(args: argparse.Namespace) -> ByteStream:
    if args.exec_cmd:
        return make_stream(f"exec:{args.exec_cmd}")
    if args.tcp is not None:
        return make_stream(f"tcp:{args.tcp}")
    if args.pty:
        return make_stream("pty")
    return EchoStream()


def cmd_console(args: argparse.Namespace) -> int:
    """Handler of ``virtio-msg console``: stdin to the console, console to stdout."""
    params = BusParams(args.profile, args.max_size, timeout_ms=args.timeout_ms)
    try:
        stream = _stream_from_args(args)
    except OSError as exc:
        print(f"error: cannot open the device-side stream: {exc}", file=sys.stderr)
        return 1
    return run_console(sys.stdin.buffer, sys.stdout.buffer, stream=stream, params=params)


def _read_some(stdin: BinaryIO) -> bytes:
    read1 = getattr(stdin, "read1", None)
    if read1 is not None:
        data: bytes = read1(4096)  # whatever is there: a line from a terminal
        return data
    return stdin.read(4096)


def run_console(
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    stream: ByteStream | None = None,
    params: BusParams | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Join ``stdin``/``stdout`` to a console port whose device side is ``stream``.

    Returns 0 when the device side ended the stream after end of input, 1 on
    an error or if it did not within the timeout.
    """
    params = params or BusParams()
    errors = stderr if stderr is not None else sys.stderr.buffer
    stream = stream or EchoStream()
    limit = params.timeout_ms / 1000
    bus = LoopbackBus(params, drivers={DeviceId.CONSOLE: ConsoleDriver}, name="console")
    device = ConsoleDevice([stream])
    try:
        bus, backend, _channel = loopback_pair(bus)
        backend.serve(0, device)
        entry = bus.device(0)
        if entry is None or not isinstance(entry.driver, ConsoleDriver):
            why = entry.error if entry is not None else "device vanished"
            errors.write(f"error: console did not start: {why}\n".encode())
            return 1
        port = entry.driver.console(limit)
        path = getattr(stream, "path", None)
        if path:
            errors.write(f"device side: {stream.describe()} (attach to {path})\n".encode())
            errors.flush()
        return _pump(port, stdin, stdout, errors, limit)
    except VirtioMsgError as exc:
        errors.write(f"error: {exc}\n".encode())
        return 1
    finally:
        bus.close()
        device.close()


def _pump(port: ConsolePort, stdin: BinaryIO, stdout: BinaryIO, errors: BinaryIO,
          limit: float) -> int:
    stop = threading.Event()
    finished = threading.Event()
    failure: list[str] = []

    def output() -> None:
        try:
            while not stop.is_set():
                try:
                    data = port.read(4096, _READ_SLICE)
                except TransportError as exc:
                    if exc.kind == "timeout":
                        continue  # nothing yet; look at the stop flag again
                    raise
                if not data:
                    finished.set()  # the device side ended the stream
                    return
                stdout.write(data)
                stdout.flush()
        except (VirtioMsgError, OSError) as exc:
            failure.append(str(exc))

    reader = threading.Thread(target=output, name="console-output", daemon=True)
    reader.start()
    try:
        while True:
            data = _read_some(stdin)
            if not data:
                break
            port.write(data, limit)
        port.close()  # end of input: the device side finishes, then ends the stream
    except (VirtioMsgError, OSError) as exc:
        failure.append(str(exc))
    finally:
        reader.join(timeout=limit)
        stop.set()
        reader.join(timeout=limit)
    if failure:
        errors.write(f"error: {failure[0]}\n".encode())
        return 1
    if not finished.is_set():
        errors.write(b"error: the device side did not end the stream in time\n")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``console`` stand-alone (``python -m virtio_msg.console_cli``)."""
    parser = argparse.ArgumentParser(prog="virtio-msg")
    sub = parser.add_subparsers(dest="command", required=True)
    add_console_parser(sub)
    args = parser.parse_args(["console", *(sys.argv[1:] if argv is None else argv)])
    try:
        status: int = args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
