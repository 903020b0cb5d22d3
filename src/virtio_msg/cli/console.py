"""``virtio-msg console``: type into a driver-side console port, see what comes back.

The device side is an echo (default), a program (``--exec``), a TCP
connection on 127.0.0.1 (``--tcp``), a pseudo-terminal (``--pty``; the
streams are :mod:`virtio_msg.streams`), or a console another process adds
over the socket (``--listen PATH``).  Standard input goes to the port; end of
input closes it, and the command ends when the device side ends the stream.
The work is :mod:`virtio_msg.compose.console`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from virtio_msg.cli.common import parse_int
from virtio_msg.compose.console import run_console, run_console_listening
from virtio_msg.devices.console import ByteStream, EchoStream
from virtio_msg.streams import make_stream
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``console``."""
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
    p.add_argument("--max-size", type=parse_int, default=None, metavar="N",
                   help="maximum message size (default: the profile's)")
    p.add_argument("--timeout-ms", type=parse_int, default=5000, metavar="MS",
                   help="bound on every wait, in milliseconds (default 5000)")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--echo", action="store_true",
                         help="the device side echoes every byte (default)")
    backend.add_argument("--exec", metavar="COMMAND", dest="exec_cmd",
                         help="the device side is a program: its stdout is what you see")
    backend.add_argument("--tcp", metavar="PORT", type=parse_int,
                         help="the device side connects to 127.0.0.1:PORT")
    backend.add_argument("--pty", action="store_true",
                         help="the device side is a pseudo-terminal (its path is printed)")
    backend.add_argument(
        "--listen", metavar="PATH",
        help="no device here: serve the bus on this Unix socket and use the first console "
        "a backend adds (e.g. `virtio-msg backend --socket PATH console`)",
    )
    p.add_argument("--wait-ms", type=parse_int, default=60000, metavar="MS",
                   help="with --listen: how long to wait for a console (default 60000)")
    p.set_defaults(func=cmd_console)


def _stream_from_args(args: argparse.Namespace) -> ByteStream:
    if args.exec_cmd is not None:
        if not args.exec_cmd.strip():
            raise ValueError("--exec needs a command line, e.g. --exec 'cat -n'")
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
            wait_ms=args.wait_ms, announce=True,
        )
    try:
        stream = _stream_from_args(args)
    except OSError as exc:
        print(f"error: cannot open the device-side stream: {exc}", file=sys.stderr)
        return 1
    return run_console(
        sys.stdin.buffer, sys.stdout.buffer, stream=stream, params=params, announce=True
    )


__all__ = ["add_parser", "cmd_console"]
