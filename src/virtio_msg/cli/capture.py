"""Capture commands: ``decode --pcap``, ``virtio-msg trace`` and ``virtio-msg wireshark``.

``decode --pcap FILE`` prints one JSON line per frame (the ``decode`` form
plus frame number, time, direction and channel; undecodable frames are
``error:`` lines on stderr and make the exit status 1).  ``trace FILE`` shows
the capture as a sequence (:mod:`virtio_msg.capture.trace`).  ``wireshark
path`` prints where the shipped Lua dissector is; ``wireshark install``
copies it into the user's Wireshark plugin folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from virtio_msg.capture.frames import CaptureError, decode_frame, read_capture
from virtio_msg.cli.common import parse_int
from virtio_msg.errors import MalformedMessage


def decode_pcap(path: str, kernel_compat: bool = False) -> int:
    """Print every frame of a capture as a JSON line; exit 1 if any frame failed.

    ``kernel_compat``: read linux-rfc1 frames with the seed kernel's size rule.
    """
    failed = False
    try:
        for frame in read_capture(path):
            if isinstance(frame, MalformedMessage):
                print(f"error: {frame}", file=sys.stderr)
                failed = True
                continue
            try:
                print(json.dumps(decode_frame(frame, kernel_compat=kernel_compat)), flush=True)
            except MalformedMessage as exc:
                print(f"error: frame {frame.number}: {exc}", file=sys.stderr)
                failed = True
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_trace(args: argparse.Namespace) -> int:
    """Show a capture as a sequence of messages with a summary."""
    from virtio_msg.capture.trace import render, trace_capture

    try:
        result = trace_capture(args.file, dev=args.dev, msg=args.msg)
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
    return 0


def cmd_wireshark(args: argparse.Namespace) -> int:
    """``wireshark path`` / ``wireshark install``."""
    from virtio_msg.capture.dissector import install, script_path

    if args.action == "path":
        print(script_path())
        return 0
    try:
        target = install(Path(args.dir) if args.dir else None)
    except OSError as exc:
        print(f"error: cannot install the dissector: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"installed {target}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``trace`` and ``wireshark``."""
    p = sub.add_parser(
        "trace",
        help="show a capture as a driver | bus | device sequence",
        description="Read a pcapng capture written with --capture and print its messages as "
        "a sequence between driver, bus and device, one line per message, optionally only "
        "one device's (--dev) or one message kind (--msg).",
    )
    p.add_argument("file", metavar="FILE", help="a capture written with --capture")
    p.add_argument("--dev", type=parse_int, metavar="N", help="only messages of device number N")
    p.add_argument("--msg", metavar="NAME", help="only messages named NAME (e.g. GET_CONFIG)")
    p.add_argument("--json", action="store_true", help="rows and summary as one JSON object")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser(
        "wireshark",
        help="the Wireshark dissector: print its path or install it",
        description="The shipped Lua dissector for captures: `path` prints where it is (for "
        "tshark -X lua_script:PATH), `install` copies it into Wireshark's personal plugin "
        "folder (or --dir DIR).",
    )
    p.add_argument("action", choices=["path", "install"])
    p.add_argument("--dir", metavar="DIR", help="install into DIR instead of the plugin folder")
    p.set_defaults(func=cmd_wireshark)


__all__ = ["add_parsers", "cmd_trace", "cmd_wireshark", "decode_pcap"]
