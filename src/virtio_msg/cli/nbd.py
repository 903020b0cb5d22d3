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

from virtio_msg.cli.common import add_codec_args


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


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``nbd``."""
    p = sub.add_parser(
        "nbd", help="export a virtio-blk disk through virtio-msg over NBD (Unix socket)"
    )
    add_codec_args(p)
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


__all__ = ["add_parser", "cmd_nbd"]
