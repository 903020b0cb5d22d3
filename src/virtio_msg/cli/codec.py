"""``virtio-msg decode`` and ``virtio-msg encode``: raw messages to JSON lines and back.

``decode`` takes hex messages (arguments, or ``-`` for one per stdin line)
and prints one JSON object per message with every field by the names the
codec uses; ``encode`` reads such JSON lines and prints hex.  A bad input is
one ``error:`` line naming what was wrong, the rest still processed, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from virtio_msg.cli.common import add_codec_args
from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec, Profile, from_json, to_json
from virtio_msg.wire.compat import kernel_frame


def _codec(args: argparse.Namespace) -> Codec:
    return Codec(args.profile, args.max_size)


def _hex_inputs(items: Sequence[str]) -> Iterable[str]:
    if list(items) == ["-"]:
        for line in sys.stdin:
            if line.strip():
                yield line
    else:
        yield from items


def parse_hex(text: str) -> bytes:
    """Parse hex that may contain spaces, colons and a leading ``0x``."""
    cleaned = text.strip().replace(":", "").replace(" ", "").replace("\t", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise MalformedMessage(f"not valid hex: {text.strip()!r}", "input") from None


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode hex messages to JSON lines; exit 1 if any input failed."""
    if args.pcap:
        from virtio_msg.cli.capture import decode_pcap

        if args.hex:
            raise ValueError("give hex messages or --pcap FILE, not both")
        return decode_pcap(args.pcap, kernel_compat=args.kernel_compat)
    if not args.hex:
        raise ValueError("decode needs hex messages, - for stdin, or --pcap FILE")
    codec = _codec(args)
    if args.kernel_compat and codec.profile is not Profile.LINUX_RFC1:
        raise ValueError("--kernel-compat needs --profile linux-rfc1")
    failed = False
    for item in _hex_inputs(args.hex):
        try:
            data = parse_hex(item)
            if args.kernel_compat:
                data = bytes(kernel_frame(data))
            msg = codec.decode(data)
            header = codec.decode_header(data)
        except MalformedMessage as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        out = to_json(codec, msg, msg_size=header.msg_size)
        out["type"] = header.type  # raw byte: reserved bits 2-7 are reported, then ignored
        print(json.dumps(out), flush=True)
    return 1 if failed else 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Encode JSON lines from stdin to hex; exit 1 if any line failed."""
    codec = _codec(args)
    failed = False
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            print(f"error: line {lineno}: invalid JSON: {exc.msg}", file=sys.stderr)
            failed = True
            continue
        try:
            print(codec.encode(from_json(codec, obj)).hex(), flush=True)
        except EncodeError as exc:
            print(f"error: line {lineno}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``decode`` and ``encode``."""
    p = sub.add_parser(
        "decode",
        help="decode raw messages (hex) to JSON lines",
        description="Decode virtio-msg messages given as hex (arguments, or - for one per "
        "line of stdin), or every frame of a capture (--pcap), to one JSON object per "
        "message with every field.  Decoding is strict: a bad message is one error line on "
        "stderr naming what was wrong, the rest are still decoded, and the exit status is 1.",
    )
    add_codec_args(p)
    p.add_argument("hex", nargs="*", metavar="HEX", help="hex message(s), or - to read stdin")
    p.add_argument(
        "--kernel-compat",
        action="store_true",
        help="linux-rfc1 only: accept the seed kernel's wrong msg_size in SET_DRV_FEATURES "
        "(14) and SET_CONFIG (18), reading the fields past it (docs/kernel.md); with --pcap, "
        "applied to the capture's linux-rfc1 frames",
    )
    p.add_argument(
        "--pcap",
        metavar="FILE",
        help="decode every frame of a capture (--capture) instead: the same JSON lines plus "
        "frame, time, direction and channel",
    )
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "encode",
        help="encode JSON lines from stdin to hex",
        description="Read JSON objects, one per line of stdin, in the form decode prints, "
        "and print each message as hex (round-trips with decode).  A line that does not "
        "encode is one error line on stderr with its line number; exit status 1.",
    )
    add_codec_args(p)
    p.set_defaults(func=cmd_encode)


__all__ = ["add_parsers", "cmd_decode", "cmd_encode", "parse_hex"]
