"""``virtio-msg console``: type into a driver-side console port.

The device-side streams it can connect to (a program, a TCP connection, a
pty) live in :mod:`virtio_msg.streams`; they are re-exported here.

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
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

from virtio_msg.bus import DeviceEntry, LoopbackBus, loopback_pair
from virtio_msg.devices.console import (
    ByteStream,
    ConsoleDevice,
    EchoStream,
)
from virtio_msg.drivers.console import ConsoleDriver, ConsolePort
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.streams import ExecStream, FdStream, PtyStream, TcpStream, make_stream
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
    "run_console_listening",
]

log = logging.getLogger(__name__)

_READ_SLICE: Final = 0.25
"""Seconds per wait of the output thread, so it notices a stop request."""


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
    backend.add_argument(
        "--listen", metavar="PATH",
        help="no device here: serve the bus on this Unix socket and use the first console "
        "a backend adds (e.g. `virtio-msg backend --socket PATH console`)",
    )
    p.add_argument("--wait-ms", type=int, default=60000, metavar="MS",
                   help="with --listen: how long to wait for a console (default 60000)")
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
    if args.listen:
        return run_console_listening(
            sys.stdin.buffer, sys.stdout.buffer, Path(args.listen), params=params,
            wait_ms=args.wait_ms,
        )
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


def run_console_listening(
    stdin: BinaryIO,
    stdout: BinaryIO,
    path: Path,
    *,
    params: BusParams | None = None,
    wait_ms: int = 60000,
    stderr: BinaryIO | None = None,
) -> int:
    """Like :func:`run_console`, with the device side in another process.

    The bus serves a Unix socket at ``path``; the first console device a
    backend adds is joined to ``stdin``/``stdout``.  Waiting for it is bounded
    by ``wait_ms``.
    """
    from virtio_msg.bus.socket import SocketServer

    params = params or BusParams()
    errors = stderr if stderr is not None else sys.stderr.buffer
    limit = params.timeout_ms / 1000
    bus = LoopbackBus(params, drivers={DeviceId.CONSOLE: ConsoleDriver}, name="console")
    ready = threading.Event()
    found: list[ConsoleDriver] = []

    def added(entry: DeviceEntry) -> None:
        if isinstance(entry.driver, ConsoleDriver) and not found:
            found.append(entry.driver)
            ready.set()

    bus.on_added.append(added)
    server = SocketServer(bus, path)
    try:
        server.start()
        errors.write(f"waiting for a backend with a console at {server.path}\n".encode())
        errors.flush()
        if not ready.wait(wait_ms / 1000):
            errors.write(f"error: no console device added within {wait_ms} ms\n".encode())
            return 1
        return _pump(found[0].console(limit), stdin, stdout, errors, limit)
    except VirtioMsgError as exc:
        errors.write(f"error: {exc}\n".encode())
        return 1
    finally:
        server.close()
        bus.close()


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
