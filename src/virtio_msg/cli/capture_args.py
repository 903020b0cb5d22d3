"""``--capture FILE`` and its limits, shared by the commands that can record the bus.

:func:`add_capture_args` declares the options; :func:`open_capture` turns
them into a started :class:`~virtio_msg.bus.capture.CaptureWriter` (or None),
and :func:`close_capture` writes what is queued and prints the one-line
summary on stderr.  The format is described in ``docs/capture.md``.
"""

from __future__ import annotations

import argparse
import sys

from virtio_msg.bus.capture import DEFAULT_FILES, DEFAULT_MAX_BYTES, CaptureLimits, CaptureWriter
from virtio_msg.cli.common import parse_int
from virtio_msg.errors import ConfigError


def add_capture_args(p: argparse.ArgumentParser) -> None:
    """Declare ``--capture FILE``, ``--capture-size MIB`` and ``--capture-files N``."""
    p.add_argument(
        "--capture",
        metavar="FILE",
        help="record every message both ways to a pcapng file (read it with tshark and "
        "`virtio-msg wireshark path`, or `virtio-msg trace FILE`)",
    )
    p.add_argument(
        "--capture-size",
        type=float,
        default=DEFAULT_MAX_BYTES / (1 << 20),
        metavar="MIB",
        help=f"size limit of one capture file in MiB (default {DEFAULT_MAX_BYTES >> 20})",
    )
    p.add_argument(
        "--capture-files",
        type=parse_int,
        default=DEFAULT_FILES,
        metavar="N",
        help=f"ring of N files (FILE, FILE.1, ...); 1 = stop recording at the size limit "
        f"(default {DEFAULT_FILES})",
    )


def capture_limits(args: argparse.Namespace) -> CaptureLimits:
    """The limits ``--capture-size`` and ``--capture-files`` ask for; ConfigError if bad."""
    try:
        return CaptureLimits(int(args.capture_size * (1 << 20)), args.capture_files)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def open_capture(args: argparse.Namespace) -> CaptureWriter | None:
    """Start the capture the options ask for; ConfigError if it cannot be."""
    if not getattr(args, "capture", None):
        return None
    limits = capture_limits(args)
    try:
        return CaptureWriter(args.capture, limits)
    except OSError as exc:
        raise ConfigError(f"cannot create capture {args.capture}: {exc.strerror or exc}") from None


def close_capture(writer: CaptureWriter | None) -> None:
    """Finish the capture and say on stderr what it holds."""
    if writer is not None:
        writer.close()
        print(writer.summary(), file=sys.stderr)


__all__ = ["add_capture_args", "capture_limits", "close_capture", "open_capture"]
