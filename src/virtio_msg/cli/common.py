"""Argument and output helpers shared by the ``virtio-msg`` commands.

Wire options (``--profile``, ``--max-size``, ``--timeout-ms``) in their two
forms (a fixed default, or overriding a device tree), the ``--json`` line
output every long-running command uses, signal handling that lets cleanup
run, and argument parsing whose errors name the bad value and the accepted
forms: integers with base prefixes, byte sizes with K/M/G suffixes.  No command lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

from virtio_msg.wire import Profile

T = TypeVar("T")

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
    p.add_argument("--max-size", type=parse_int, default=None, metavar="N", help=MAX_SIZE_HELP)


def add_wire_args(p: argparse.ArgumentParser) -> None:
    """``--profile``, ``--max-size`` and ``--timeout-ms`` with fixed defaults."""
    add_codec_args(p)
    p.add_argument(
        "--timeout-ms",
        type=parse_int,
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
        type=parse_int,
        default=None,
        metavar="N",
        help="maximum message size, overriding the device tree's "
        "(spec: 52..65535, default 264; linux-rfc1: 44..65535, default 44)",
    )
    p.add_argument(
        "--timeout-ms",
        type=parse_int,
        default=None,
        metavar="MS",
        help="per-request timeout in milliseconds, overriding the device tree's (default 5000)",
    )


INT_FORMS = "a whole number: decimal (42) or with a base prefix (0x2a, 0o52, 0b101010)"
SIZE_FORMS = (
    "a byte count: decimal (4096), hex (0x1000), or with a K, M or G suffix "
    "(binary: 64K = 65536, 4M, 1G; KiB/MiB/GiB too)"
)
_SIZE_SUFFIXES = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10,
                  "m": 1 << 20, "g": 1 << 30}


def parse_int(text: str) -> int:
    """An integer with an optional base prefix (``0x100``, ``0o7``, ``42``).

    Raises :class:`argparse.ArgumentTypeError` (so argparse prints it as is)
    naming the bad value and the accepted forms.
    """
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {INT_FORMS}") from None


def parse_size(text: str) -> int:
    """A byte count: :func:`parse_int`'s forms, or decimal with a K/M/G suffix (x 1024^n).

    ``16M``, ``16MiB``, ``0x1000000`` and ``16777216`` are the same size.
    Raises :class:`argparse.ArgumentTypeError` naming the bad value and the
    accepted forms.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    for suffix, scale in _SIZE_SUFFIXES.items():
        number = stripped[: -len(suffix)].strip()
        if lowered.endswith(suffix) and number.isdecimal():
            return int(number) * scale
    with contextlib.suppress(ValueError):
        value = int(stripped, 0)
        if value >= 0:
            return value
    raise argparse.ArgumentTypeError(f"{text!r} is not {SIZE_FORMS}")


def ranged(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: :func:`parse_int` in ``low..high``, errors naming ``what``."""

    def parse(text: str) -> int:
        value = parse_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} {value} is outside {low}..{high}")
        return value

    parse.__name__ = what
    return parse


class DeprecatedAlias(argparse.Action):
    """An old flag name kept for a while: prints a warning, then sets the new flag's value."""

    def __init__(self, option_strings: list[str], dest: str, *, replacement: str,
                 **kwargs: Any) -> None:
        """``replacement`` is the flag to use instead (named in the warning)."""
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: Any, option_string: str | None = None,
    ) -> None:
        """Warn on stderr and store ``values`` where the new flag would."""
        print(
            f"warning: {option_string} is deprecated in `{parser.prog}`: use "
            f"{self.replacement}", file=sys.stderr, flush=True,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: argparse.Action,
) -> None:
    """Declare ``old`` as a deprecated name of the already declared flag ``new``."""
    replacement = new.option_strings[0]
    extra: dict[str, Any] = {} if new.type is None else {"type": new.type}
    parser.add_argument(
        old, dest=new.dest, metavar=new.metavar, action=DeprecatedAlias,
        replacement=replacement, default=argparse.SUPPRESS,
        help=f"deprecated name of {replacement} (prints a warning)", **extra,
    )


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so that its ValueError reaches the user as its own message.

    argparse prints only ``invalid <function name> value`` for a plain
    ValueError; an :class:`argparse.ArgumentTypeError` is printed as is.
    """

    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            raise
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line that names the file it was about, without ``[Errno N]``."""
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {text}"
    return text


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
    "DeprecatedAlias",
    "Output",
    "add_bus_args",
    "add_codec_args",
    "add_deprecated_alias",
    "add_wire_args",
    "argument_type",
    "describe_os_error",
    "parse_int",
    "parse_size",
    "ranged",
    "sigterm_as_interrupt",
    "stop_on_signals",
]
