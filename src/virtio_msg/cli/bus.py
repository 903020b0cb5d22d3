"""``virtio-msg bus``: a loopback bus serving a Unix socket, reporting what backends add.

The bus and its drivers run here; backend processes (``virtio-msg backend``,
or any program speaking the documented socket protocol) connect, ADD devices
and serve them.  Each added device is probed and, unless ``--no-selftest``,
exercised; connections, devices and results are printed as they happen
(text, or ``--json`` lines) until Ctrl-C or SIGTERM.  ``--capture FILE``
records every datagram of every backend connection, both ways, with the
socket channel's own frames flagged (docs/capture.md).
"""

from __future__ import annotations

import argparse
import queue
from pathlib import Path
from typing import Any

from virtio_msg.bus.capture import BusCapture
from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE, DeviceEntry, LoopbackBus
from virtio_msg.bus.socket import SocketChannel, SocketLimits, SocketServer, default_socket_path
from virtio_msg.cli.capture_args import add_capture_args, close_capture, open_capture
from virtio_msg.cli.common import (
    SIZE_FORMS,
    Output,
    add_wire_args,
    parse_int,
    parse_size,
    sigterm_as_interrupt,
)
from virtio_msg.cli.dt import add_dt_arguments
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import feature_names
from virtio_msg.transport.params import BusParams


def _describe(entry: DeviceEntry) -> dict[str, Any]:
    channel = entry.channel
    return {
        "dev_num": entry.dev_num,
        "type": entry.type_name,
        "backend": channel.name if isinstance(channel, SocketChannel) else repr(channel),
        "features": feature_names(entry.transport.negotiated_features, entry.device_id),
        "driver": entry.driver is not None,
        "error": entry.error,
    }


def cmd_bus(args: argparse.Namespace) -> int:
    """Run a bus serving a socket until interrupted; report backends and devices."""
    out = Output(args.json)
    size, base = args.size, args.base
    params = BusParams(args.profile, args.max_size, timeout_ms=args.timeout_ms)
    if args.dt is not None:
        from virtio_msg.cli.dt import configs_from_args

        configs = configs_from_args(args)  # ConfigError: reported by main
        if not 0 <= args.instance < len(configs):
            out.error(
                f"{args.dt} describes {len(configs)} bus instance(s); no --instance {args.instance}"
            )
            return 1
        tree = configs[args.instance]
        size, base = tree.size, tree.base
        params = BusParams(
            tree.profile, tree.max_msg_size, tree.transport_features, timeout_ms=tree.timeout_ms
        )
    capture = open_capture(args)  # ConfigError: reported by main
    bus = LoopbackBus(params, size=size, base=base, name=args.name)
    if capture is not None:
        bus.capture = BusCapture(capture)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    bus.on_added.append(lambda e: events.put(("added", e)))
    bus.on_removed.append(lambda e: events.put(("removed", e)))
    server = SocketServer(bus, args.socket, limits=SocketLimits(max_connections=args.max_backends))
    server.on_connect.append(lambda ch: events.put(("connected", ch)))
    server.on_disconnect.append(lambda ch, why: events.put(("disconnected", (ch, why))))
    try:
        server.start()
    except VirtioMsgError as exc:
        bus.close()
        close_capture(capture)
        out.error(str(exc))
        return 1
    # SIGTERM becomes KeyboardInterrupt before "listening" is printed: a peer that
    # stops the bus as soon as it reads that line still gets the socket removed.
    try:
        with sigterm_as_interrupt():
            region = bus.region
            out.emit(
                f"bus {bus.name} listening on {server.path} (profile {params.profile.value}, max "
                f"message {params.max_size} bytes, region {region.base:#x} + {region.size:#x})",
                event="listening",
                bus=bus.name,
                socket=str(server.path),
                profile=params.profile.value,
                max_msg_size=params.max_size,
                region={"base": region.base, "size": region.size},
            )
            while True:
                try:
                    kind, obj = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                _bus_event(out, kind, obj, selftest=not args.no_selftest)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        totals = dict(sorted((bus.sent + bus.received).items()))
        dropped = dict(bus.dropped)
        bus.close()
        close_capture(capture)
    out.emit(
        f"bus {bus.name} closed; messages: {sum(totals.values())}"
        + (f", dropped: {dropped}" if dropped else ""),
        event="closed",
        messages=totals,
        dropped=dropped,
    )
    return 0


def _bus_event(out: Output, kind: str, obj: Any, *, selftest: bool) -> None:
    if kind == "connected":
        out.emit(f"{obj.name} connected", event="connected", backend=obj.name, pid=obj.pid)
    elif kind == "disconnected":
        channel, why = obj
        out.emit(
            f"{channel.name} disconnected: {why}",
            event="disconnected",
            backend=channel.name,
            reason=why,
        )
    elif kind == "removed":
        out.emit(f"device {obj.dev_num} removed", event="removed", dev_num=obj.dev_num)
    elif kind == "added":
        facts = _describe(obj)
        state = f"probe failed: {obj.error}" if obj.error else "driver bound"
        out.emit(
            f"device {obj.dev_num} added by {facts['backend']}: {facts['type']}, {state}, "
            f"features {' '.join(facts['features']) or '-'}",
            event="added",
            **facts,
        )
        if selftest and obj.driver is not None and not obj.error:
            try:
                result = obj.driver.selftest()
            except VirtioMsgError as exc:
                out.emit(
                    f"device {obj.dev_num} selftest FAILED: {exc}",
                    event="selftest",
                    dev_num=obj.dev_num,
                    ok=False,
                    error=str(exc),
                )
            else:
                shown = ", ".join(f"{k}={v}" for k, v in result.items())
                out.emit(
                    f"device {obj.dev_num} selftest ok: {shown}",
                    event="selftest",
                    dev_num=obj.dev_num,
                    ok=True,
                    result=result,
                )


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``bus``."""
    default = default_socket_path()
    p = sub.add_parser(
        "bus",
        help="run a bus serving a Unix socket; report devices as backends add them",
        description="Run a loopback bus with its drivers; backends connect to the socket "
        "and add devices; each added device is probed and (unless --no-selftest) exercised.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"socket to create, in a directory only you can write (default {default})",
    )
    add_wire_args(p)
    p.add_argument("--name", default="loopback0", help="bus name (default loopback0)")
    p.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help=f"region size, {SIZE_FORMS} (default {DEFAULT_SIZE >> 20}M)",
    )
    p.add_argument(
        "--base",
        type=parse_int,
        default=DEFAULT_BASE,
        metavar="ADDR",
        help=f"region bus base address (default {DEFAULT_BASE:#x})",
    )
    p.add_argument(
        "--max-backends",
        type=parse_int,
        default=SocketLimits.max_connections,
        metavar="N",
        help=f"backends connected at once (default {SocketLimits.max_connections})",
    )
    p.add_argument("--no-selftest", action="store_true", help="do not exercise added devices")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    add_capture_args(p)
    add_dt_arguments(p)
    p.add_argument(
        "--instance",
        type=parse_int,
        default=0,
        metavar="N",
        help="with --dt: which bus instance of the tree to serve (default 0); the tree's "
        "region, profile, message size, transport features and timeout replace the flags",
    )
    p.set_defaults(func=cmd_bus)


__all__ = ["add_parser", "cmd_bus"]
