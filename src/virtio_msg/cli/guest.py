"""``virtio-msg guest``: boot a kernel with the loopback under QEMU and print its verdict.

The work is :func:`virtio_msg.guest.run_guest`; this module parses the options,
prints a rich table (or, with ``--json``, one JSON object) and turns the
verdict into the exit status: 0 only if every check passed, 1 if one failed,
2 when the harness itself could not be set up (missing QEMU or packages).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from virtio_msg.cli.capture_args import add_capture_args, capture_limits
from virtio_msg.cli.common import add_deprecated_alias


def cmd_guest(args: argparse.Namespace) -> int:
    """Run the harness for ``args.kernel_image``; print the report."""
    from virtio_msg.guest import GuestSetupError, run_guest
    from virtio_msg.guest.boot import parse_devices

    if args.kernel_image is None:
        raise ValueError("guest needs the kernel to boot: --kernel-image IMAGE")
    devices = parse_devices(args.devices)
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    limits = capture_limits(args)  # ConfigError: reported by main
    capture = Path(args.capture) if args.capture else None
    try:
        report = run_guest(
            args.kernel_image,
            devices,
            timeout=args.timeout,
            keep=args.keep,
            conformance=args.conformance,
            capture=capture,
            capture_limits=limits,
        )
    except GuestSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        table = Table(title=f"{report.kernel} ({report.release or 'release unknown'})")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for check in report.checks:
            table.add_row(
                check.name, "[green]ok[/]" if check.ok else "[red]FAILED[/]", check.detail
            )
        console = Console()
        console.print(table)
        console.print("[green]all checks passed[/]" if report.ok else "[red]some checks failed[/]")
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``guest``."""
    p = sub.add_parser(
        "guest",
        help="boot a Linux kernel with the virtio-msg loopback under QEMU and check its drivers",
        description="Build a device tree and an initramfs, boot IMAGE under "
        "qemu-system-aarch64 -M virt, run 'virtio-msg backend --kernel' in the guest and "
        "check the kernel's own drivers on its devices.",
    )
    image = p.add_argument(
        "--kernel-image", type=Path, default=None, metavar="IMAGE",
        help="arm64 kernel Image to boot (required)",
    )
    # --kernel is the kernel channel in `backend` and `conformance`: here it was the image.
    add_deprecated_alias(p, "--kernel", image)
    p.add_argument(
        "--devices",
        default="rng,blk,console,i2c",
        metavar="LIST",
        help="comma-separated devices to check (default rng,blk,console,i2c)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--conformance",
        action="store_true",
        help="after the checks, run 'virtio-msg conformance driver --kernel' in the guest: "
        "the kernel's virtio-msg transport judged against the DRV- requirements",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="bound on the whole boot and its checks (default 300 s)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the tree, initramfs, QEMU command and console log in DIR",
    )
    add_capture_args(p)
    p.epilog = (
        "--capture: the in-guest backend records the kernel channel with these limits; "
        "the file (and its ring) is copied out over the serial console after the checks"
    )
    p.set_defaults(func=cmd_guest)
