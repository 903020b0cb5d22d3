"""The ``virtio-msg`` command line: assembles the argparse tree, nothing else.

Each command lives in the module named after it -- :mod:`~virtio_msg.cli.run`
(the main job), :mod:`~virtio_msg.cli.bus`, :mod:`~virtio_msg.cli.backend`
(also ``backend vhost-user``), :mod:`~virtio_msg.cli.nbd`,
:mod:`~virtio_msg.cli.console`, :mod:`~virtio_msg.cli.guest`,
:mod:`~virtio_msg.cli.codec` (``decode`` and ``encode``) and
:mod:`~virtio_msg.cli.dt` -- and registers its parser with an ``add_parser``
function whose handler returns the exit status.  The work
behind the commands is :mod:`virtio_msg.compose` and the layers below.
:func:`main` never lets a traceback reach the user for bad input: errors are
one line on stderr starting with ``error:`` (exit 2 for bad arguments and
configuration), and Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    from virtio_msg.cli import (
        backend,
        bus,
        capture,
        codec,
        conformance,
        console,
        dt,
        guest,
        nbd,
        run,
    )

    parser = argparse.ArgumentParser(
        prog="virtio-msg",
        description="virtio-msg in user space: loopback bus, devices, drivers and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parser(sub)
    dt.add_parser(sub)
    console.add_parser(sub)
    bus.add_parser(sub)
    backend.add_parser(sub)
    nbd.add_parser(sub)
    guest.add_parser(sub)
    codec.add_parsers(sub)
    capture.add_parsers(sub)
    conformance.add_parser(sub)
    return parser


def _main(argv: list[str]) -> int:
    from virtio_msg.errors import ConfigError

    if argv[:2] == ["backend", "vhost-user"]:
        # `backend` takes built-in device names as positionals, so the vhost-user
        # form has its own parser.
        from virtio_msg.cli.backend import main_vhost_user

        return main_vhost_user(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    try:
        status: int = args.func(args)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # also while the parser and the stack are being imported
        return 130
    except BrokenPipeError:
        # Whoever read our output went away (``| head``): stop quietly, as cat does.
        # Standard output is pointed at /dev/null so the interpreter's final
        # flush cannot raise again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


__all__ = ["build_parser", "main"]
