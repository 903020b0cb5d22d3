"""Argument and output helpers shared by the ``virtio-msg`` commands.

Wire options (``--profile``, ``--max-size``, ``--timeout-ms``) in their two
forms (a fixed default, or overriding a device tree), the ``--json`` line
output every long-running command uses, signal handling that lets cleanup
run, and integer parsing with base prefixes.  No command lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from virtio_msg.wire import Profile

PROFILE_HELP = "wire profile: newest draft (spec, default) or the seed kernel (linux-rfc1)"
MAX_SIZE_HELP = (
    "maximum message size (spec: 52..65535, default 264; linux-rfc1: 44..65535, default 44)"
)


def add_codec_args(p: argparse.ArgumentParser) -> None:
    """``--profile`` (default spec) and ``--max-size``."""
    p.add_argument(
        "--profile",
        choices=[x.value for x in Profile],
        default=Profile.SPEC.value,
        help=PROFILE_HELP,
    )
    p.add_argument("--max-size", type=int, default=None, metavar="N", help=MAX_SIZE_HELP)


def add_wire_args(p: argparse.ArgumentParser) -> None:
    """``--profile``, ``--max-size`` and ``--timeout-ms`` with fixed defaults."""
    add_codec_args(p)
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=5000,
        metavar="MS",
        help="per-request timeout in milliseconds (default 5000)",
    )


def add_bus_args(p: argparse.ArgumentParser) -> None:
    """``--dt`` and the wire options as overrides of the device tree (``run``)."""
    from virtio_msg.cli.dt import add_dt_arguments

    add_dt_arguments(p)
    p.add_argument(
        "--profile",
        choices=[x.value for x in Profile],
        default=None,
        help="wire profile, overriding the device tree's (default: spec)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="N",
        help="maximum message size, overriding the device tree's "
        "(spec: 52..65535, default 264; linux-rfc1: 44..65535, default 44)",
    )
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=None,
        metavar="MS",
        help="per-request timeout in milliseconds, overriding the device tree's (default 5000)",
    )


def parse_int(text: str) -> int:
    """An integer with an optional base prefix (``0x100``, ``0o7``, ``42``)."""
    return int(text, 0)


class Output:
    """Lines for people, or JSON lines with the same facts (``--json``)."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        """Print text (or JSON with ``as_json``); nothing but errors with ``quiet``."""
        self.as_json = as_json
        self.quiet = quiet

    def emit(self, text: str, **facts: Any) -> None:
        """Print one event: ``text`` for people, ``facts`` as a JSON line."""
        if self.quiet:
            return
        print(json.dumps(facts) if self.as_json else text, flush=True)

    @staticmethod
    def error(text: str) -> None:
        """Print ``error: text`` on stderr."""
        print(f"error: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt in the main thread, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM and SIGINT (main thread only) instead of interrupting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


__all__ = [
    "Output",
    "add_bus_args",
    "add_codec_args",
    "add_wire_args",
    "parse_int",
    "sigterm_as_interrupt",
    "stop_on_signals",
]
