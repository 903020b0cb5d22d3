"""``virtio-msg nbd``: a virtio-blk disk, through virtio-msg, as an NBD export.

Standard NBD clients (qemu-img, qemu-io, nbdinfo) then read and write the
disk through the driver, the bus and the device model; the server is
:mod:`virtio_msg.exports.nbd`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from virtio_msg.cli.common import (
    SIZE_FORMS,
    add_codec_args,
    add_deprecated_alias,
    describe_os_error,
    parse_int,
    parse_size,
)


def summary_line(report: dict[str, Any]) -> str:
    """The last line of ``nbd``: clients served and commands by kind, for people."""
    def counts(facts: dict[str, int]) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(facts.items())) or "none"

    line = f"served {report['clients']} client(s); commands: {counts(report['commands'])}"
    if report.get("rejected"):
        line += f"; refused: {counts(report['rejected'])}"
    return line


def cmd_nbd(args: argparse.Namespace) -> int:
    """Export a virtio-blk disk, through virtio-msg, as an NBD server on a Unix socket."""
    from virtio_msg.exports.nbd import NbdServer, nbd_uri, serve_nbd
    from virtio_msg.transport.params import BusParams

    def ready(srv: NbdServer) -> None:
        where = args.image or "a temporary image"
        print(f"serving {where} at {nbd_uri(srv.path)}", file=sys.stderr, flush=True)

    params = BusParams(args.profile, args.max_size, timeout_ms=args.timeout_ms)
    try:
        report = serve_nbd(
            args.socket,
            args.image,
            size=args.image_size,
            read_only=args.read_only,
            params=params,
            export_name=args.export_name,
            max_clients=args.clients,
            ready=ready,
        )
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(summary_line(report))
    return 0


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``nbd``."""
    p = sub.add_parser(
        "nbd",
        help="export a virtio-blk disk through virtio-msg over NBD (Unix socket)",
        description="Serve a raw image as a virtio-blk device on a loopback bus and export "
        "the driver's disk as an NBD server on a Unix socket, for qemu-img, qemu-io and "
        "nbdinfo (nbd+unix:///virtio-blk?socket=PATH).  Ends after --clients N clients or "
        "at Ctrl-C, printing what the clients did.",
    )
    add_codec_args(p)
    p.add_argument("socket", metavar="PATH", help="Unix socket to listen on (created mode 0600)")
    p.add_argument("--image", metavar="FILE", help="raw image file (default: a temporary image)")
    image_size = p.add_argument(
        "--image-size",
        type=parse_size,
        metavar="BYTES",
        help=f"create the image at this size if it is missing, {SIZE_FORMS} "
        "(temporary image: 16M)",
    )
    p.add_argument("--read-only", action="store_true", help="offer VIRTIO_BLK_F_RO; NBD READ_ONLY")
    export = p.add_argument(
        "--export-name", default="virtio-blk", metavar="NAME",
        help="export name (default virtio-blk; the empty name works too)",
    )
    # --size and --name are the region's size and the bus's name in `bus`.
    add_deprecated_alias(p, "--size", image_size)
    add_deprecated_alias(p, "--name", export)
    p.add_argument(
        "--clients",
        type=parse_int,
        default=None,
        metavar="N",
        help="stop after N clients (default: serve until Ctrl-C)",
    )
    p.add_argument(
        "--timeout-ms", type=parse_int, default=5000, metavar="MS",
        help="per-request timeout in milliseconds (default 5000)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_nbd)


__all__ = ["add_parser", "cmd_nbd"]
