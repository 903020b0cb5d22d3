"""``virtio-msg run``: the main job -- a loopback bus with devices, probed and exercised.

Builds the buses the device tree describes (the embedded default: one bus
with rng, blk, console and i2c), serves their devices in this process or,
with ``--socket``, from a backend process, adds vhost-user devices
(``--vhost-user``), and prints the report (a table, or ``--json``).  Exit 0
only if every device worked.  The work is :mod:`virtio_msg.compose`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from virtio_msg.cli.capture_args import add_capture_args, close_capture, open_capture
from virtio_msg.cli.common import add_bus_args
from virtio_msg.transport.params import RING_KINDS


def print_run_report(report: dict[str, Any]) -> None:
    """Print a run report as tables (the default output of ``run``)."""
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
        for col in ("dev_num", "type", "features"):
            table.add_column(col)
        # Fold, never cut: an error's last word is often the path that matters.
        table.add_column("result", overflow="fold")
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
    from virtio_msg.cli.dt import configs_from_args
    from virtio_msg.compose import assign_numbers, from_tree, run_loopback

    if args.socket and args.vhost_user:
        # run_over_socket serves only the built-in devices: a report from it would
        # claim a run of the vhost-user devices that never happened.
        raise ValueError(
            "--socket and --vhost-user cannot be combined (the socket run serves only "
            "the built-in devices); use `run --vhost-user SPEC` for an in-process run, or "
            "`virtio-msg bus` with `virtio-msg backend vhost-user` for the socket bus"
        )
    configs = [
        from_tree(
            c,
            profile=args.profile,
            max_msg_size=args.max_size,
            timeout_ms=args.timeout_ms,
            ring=args.ring,
        )
        for c in configs_from_args(args)
    ]
    if args.vhost_user:
        first = configs[0]
        taken = [n for n, _ in first.devices]
        vhost = tuple(assign_numbers(args.vhost_user, taken))
        configs[0] = dataclasses.replace(first, vhost=vhost)
    capture = open_capture(args)
    try:
        if args.socket:
            from virtio_msg.compose.socket import run_over_socket

            path = None if args.socket is True else Path(args.socket)
            report = run_over_socket(configs, capture=capture, socket_path=path)
        else:
            report = run_loopback(configs, capture)
    finally:
        close_capture(capture)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_run_report(report)
    return 0 if report["ok"] else 1


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``run``."""
    p = sub.add_parser(
        "run",
        help="run a loopback bus with the built-in devices and report (the main job)",
        description="Build the loopback buses a device tree describes (default: the embedded "
        "tree, one bus with rng, blk, console and i2c with a DS1338 RTC), serve the devices "
        "in this process (or --socket: from a backend process), probe and exercise every "
        "device through its driver, and print the devices, messages, pool use and latency "
        "(--json: one object).  Exit 0 only if every device worked.",
    )
    add_bus_args(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--socket",
        nargs="?",
        const=True,
        default=False,
        metavar="PATH",
        help="serve the devices from a separate backend process over the bus's Unix "
        "socket (same report; not with --vhost-user); PATH: where the bus's socket goes "
        "(one bus only; default: a private temporary directory)",
    )
    p.add_argument(
        "--ring",
        choices=RING_KINDS,
        default="auto",
        help="virtqueue kind the drivers use: packed when offered (auto, default), or force "
        "split or packed (a device without packed rings then fails to probe)",
    )
    add_vhost_run_arguments(p)
    add_capture_args(p)
    p.set_defaults(func=cmd_run)


def add_vhost_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--vhost-user SPEC`` (repeatable) on the ``run`` parser."""
    from virtio_msg.cli.common import argument_type
    from virtio_msg.compose.vhost import parse_vhost_spec

    parser.add_argument(
        "--vhost-user",
        action="append",
        default=[],
        metavar="SPEC",
        type=argument_type(parse_vhost_spec),
        help="also serve a device from a vhost-user back end: "
        "socket=PATH[,type=blk|net|fs][,dev-num=N][,mac=MAC][,tag=TAG][,queues=Q] "
        "(type inferred from the back end when it is known; repeatable)",
    )


__all__ = ["add_parser", "add_vhost_run_arguments", "cmd_run", "print_run_report"]
