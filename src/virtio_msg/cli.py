"""The ``virtio-msg`` command line: composes the pieces, holds no protocol logic.

Subcommands: ``run`` (the main job), ``decode`` / ``encode`` (raw messages,
JSON out/in).  Each handler
returns an exit status; ``main`` never lets a traceback reach the user for bad
input — errors are one line on stderr starting with ``error:``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from virtio_msg.errors import ConfigError, EncodeError, MalformedMessage
from virtio_msg.wire import Codec, Profile, from_json, to_json


def _add_codec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        choices=[x.value for x in Profile],
        default=Profile.SPEC.value,
        help="wire profile: newest draft (spec, default) or the seed kernel (linux-rfc1)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="N",
        help="maximum message size (spec: 52..65535, default 264; "
        "linux-rfc1: 44..65535, default 44)",
    )


def _add_bus_args(p: argparse.ArgumentParser) -> None:
    from virtio_msg.dt.cli import add_dt_arguments

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
    codec = _codec(args)
    failed = False
    for item in _hex_inputs(args.hex):
        try:
            data = parse_hex(item)
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


def _print_run_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for bus in report["buses"]:
        region = bus["region"]
        console.print(
            f"[bold]{bus['name']}[/bold]: profile {bus['profile']}, max message "
            f"{bus['max_msg_size']} bytes, region {region['base']:#x} + {region['size']:#x}"
        )
        table = Table(title="devices")
        for col in ("dev_num", "type", "features", "result"):
            table.add_column(col)
        for dev in bus["devices"]:
            if dev["ok"]:
                result = "[green]ok[/green] " + ", ".join(
                    f"{k}={v}" for k, v in dev.get("result", {}).items()
                )
            else:
                result = f"[red]FAILED[/red] {dev.get('error', '')}"
            table.add_row(
                str(dev["dev_num"]), dev["type"], " ".join(dev.get("features", [])), result
            )
        console.print(table)
        msgs = Table(title="messages")
        msgs.add_column("message")
        msgs.add_column("count", justify="right")
        for name, n in bus["messages"].items():
            msgs.add_row(name, str(n))
        console.print(msgs)
        pool = bus["pool"]
        lat = bus["latency_us"]
        console.print(
            f"pool: {pool['slots_used']}/{pool['slots_total']} slots in use, high water "
            f"{pool['high_water']}, {pool['live_mappings']} live mappings, "
            f"{pool['bytes_bounced_to_device']} B bounced to the device, "
            f"{pool['bytes_bounced_from_device']} B back"
        )
        console.print(
            f"requests: {lat['requests']}, latency p50 {lat['p50']} us, p99 {lat['p99']} us"
        )
        if bus["dropped"]:
            console.print(f"dropped: {bus['dropped']}")
    verdict = "[green]all devices ok[/green]" if report["ok"] else "[red]some devices failed[/red]"
    console.print(verdict)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the loopback bus with the built-in devices and print a summary."""
    from virtio_msg.dt.cli import configs_from_args
    from virtio_msg.runner import from_tree, run_loopback

    configs = [
        from_tree(c, profile=args.profile, max_msg_size=args.max_size, timeout_ms=args.timeout_ms)
        for c in configs_from_args(args)
    ]
    if args.vhost_user:
        from virtio_msg.vhost_cli import assign_numbers

        first = configs[0]
        taken = [n for n, _ in first.devices]
        vhost = tuple(assign_numbers(args.vhost_user, taken))
        configs[0] = dataclasses.replace(first, vhost=vhost)
    if args.socket:
        from virtio_msg.socket_cli import run_over_socket

        report = run_over_socket(configs)
    else:
        report = run_loopback(configs)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_run_report(report)
    return 0 if report["ok"] else 1


def cmd_nbd(args: argparse.Namespace) -> int:
    """Export a virtio-blk disk, through virtio-msg, as an NBD server on a Unix socket."""
    from virtio_msg.nbd import NbdServer, nbd_uri, serve_nbd
    from virtio_msg.transport.params import BusParams

    def ready(srv: NbdServer) -> None:
        where = args.image or "a temporary image"
        print(f"serving {where} at {nbd_uri(srv.path)}", file=sys.stderr, flush=True)

    params = BusParams(args.profile, args.max_size, timeout_ms=args.timeout_ms)
    try:
        report = serve_nbd(
            args.socket,
            args.image,
            size=args.size,
            read_only=args.read_only,
            params=params,
            export_name=args.name,
            max_clients=args.clients,
            ready=ready,
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(f"served {report['clients']} client(s): {report['commands']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="virtio-msg",
        description="virtio-msg in user space: loopback bus, devices, drivers and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run", help="run a loopback bus with the built-in devices and report (the main job)"
    )
    _add_bus_args(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--socket",
        action="store_true",
        help="serve the devices from a separate backend process over the Unix socket "
        "channel (same report)",
    )
    from virtio_msg.vhost_cli import add_vhost_run_arguments

    add_vhost_run_arguments(p)
    p.set_defaults(func=cmd_run)

    from virtio_msg.console_cli import add_console_parser
    from virtio_msg.dt.cli import add_dt_parser
    from virtio_msg.socket_cli import add_socket_commands

    add_dt_parser(sub)
    add_console_parser(sub)
    add_socket_commands(sub)

    p = sub.add_parser(
        "nbd", help="export a virtio-blk disk through virtio-msg over NBD (Unix socket)"
    )
    _add_codec_args(p)
    p.add_argument("socket", metavar="PATH", help="Unix socket to listen on (created mode 0600)")
    p.add_argument("--image", metavar="FILE", help="raw image file (default: a temporary image)")
    p.add_argument(
        "--size",
        type=int,
        metavar="BYTES",
        help="create the image at this size if it is missing (temporary: 16 MiB)",
    )
    p.add_argument("--read-only", action="store_true", help="offer VIRTIO_BLK_F_RO; NBD READ_ONLY")
    p.add_argument("--name", default="virtio-blk", help="export name (the empty name works too)")
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        metavar="N",
        help="stop after N clients (default: serve until Ctrl-C)",
    )
    p.add_argument("--timeout-ms", type=int, default=5000, metavar="MS")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_nbd)

    p = sub.add_parser("decode", help="decode raw messages (hex) to JSON lines")
    _add_codec_args(p)
    p.add_argument("hex", nargs="+", metavar="HEX", help="hex message(s), or - to read stdin")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("encode", help="encode JSON lines from stdin to hex")
    _add_codec_args(p)
    p.set_defaults(func=cmd_encode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["backend", "vhost-user"]:
        # `backend` takes built-in device names as positionals, so the vhost-user
        # form has its own parser.
        from virtio_msg.vhost_cli import main as vhost_main

        return vhost_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    try:
        status: int = args.func(args)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status
