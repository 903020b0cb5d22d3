"""``virtio-msg backend``: serve devices to a running bus over its socket.

``virtio-msg backend [--socket PATH] [N:]TYPE ...`` connects to a bus
(``virtio-msg bus``, ``run --socket``), maps its region, ADDs the built-in
device models and serves them until the bus goes away or it is interrupted (the
devices are then REMOVEd). With ``--listen PATH`` it listens instead and serves
the one bus that connects (``conformance device --connect PATH``).
``--capture FILE`` records the connection from the backend's side (with
``--kernel``: the kernel's 44-byte buffers). ``virtio-msg
backend vhost-user --vhost-user PATH ...`` does the same for one device whose
implementation is a vhost-user back end (qemu-storage-daemon, virtiofsd, DPDK);
it exits 1 if the back end goes away, or, with ``--reconnect S``, REMOVEs the
device, reconnects (within S seconds) when the back end is back and ADDs it
again. Since ``backend`` takes device names as positionals, the vhost-user form
has its own parser (:func:`main_vhost_user`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtio_msg.bus.client import BackendClient, accept_bus, connect
from virtio_msg.bus.socket import default_socket_path
from virtio_msg.cli.capture_args import add_capture_args, close_capture, open_capture
from virtio_msg.cli.common import Output, ranged, sigterm_as_interrupt, stop_on_signals
from virtio_msg.cli.kernel import add_kernel_arguments, cmd_backend_kernel
from virtio_msg.compose.config import DEFAULT_DEVICES, parse_device_specs
from virtio_msg.compose.vhost import VhostSpec
from virtio_msg.devices.catalog import make_device
from virtio_msg.errors import VirtioMsgError
from virtio_msg.vhost import PROFILES
from virtio_msg.vhost.device import DEFAULT_FS_TAG, DEFAULT_QUEUE_SIZE, VhostUserDevice
from virtio_msg.vhost.frontend import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT

WAIT_SLICE = 0.5
"""The vhost-user serving loop re-checks its exit conditions this often, seconds."""
RECONNECT_SLICE = 0.2
"""Pause between reconnection attempts to a vhost-user back end, seconds."""
log = logging.getLogger(__name__)
VHOST_EPILOG = """\
subcommand:
  vhost-user   serve one device from a vhost-user back end (qemu-storage-daemon,
               virtiofsd, DPDK testpmd) to the bus:
               virtio-msg backend vhost-user --vhost-user PATH [--type blk|net|fs]
                   [--dev-num N] [--socket PATH]
               (virtio-msg backend vhost-user --help for all its options)
"""


def cmd_backend(args: argparse.Namespace) -> int:
    """Serve built-in devices to a running bus until it goes away or we are interrupted."""
    if args.kernel:
        return cmd_backend_kernel(args)
    out = Output(args.json, args.quiet)
    args.devices = list(args.devices or []) + list(args.device or [])
    try:
        specs = parse_device_specs(args.devices or [f"{n}:{t}" for n, t in DEFAULT_DEVICES])
    except ValueError as exc:
        out.error(str(exc))
        return 2
    capture = open_capture(args)  # ConfigError: reported by main
    try:
        if args.listen:
            with sigterm_as_interrupt():
                client = accept_bus(
                    args.listen,
                    accept_timeout=args.accept_timeout,
                    timeout=args.connect_timeout,
                    capture=capture,
                    on_listening=lambda: out.emit(
                        f"listening at {args.listen}", event="listening", socket=str(args.listen)
                    ),
                )
        else:
            client = connect(args.socket, timeout=args.connect_timeout, capture=capture)
    except VirtioMsgError as exc:
        close_capture(capture)
        out.error(str(exc))
        return 1
    except KeyboardInterrupt:
        close_capture(capture)
        return 130
    ann = client.announcement
    where = args.listen or args.socket
    out.emit(
        f"connected to {where} (profile {ann.profile.value}, max message "
        f"{ann.max_msg_size} bytes, region {ann.region_base:#x} + {ann.region_size:#x})",
        event="connected",
        socket=str(where),
        profile=ann.profile.value,
        max_msg_size=ann.max_msg_size,
        region={"base": ann.region_base, "size": ann.region_size},
    )
    failed = 0
    try:
        with sigterm_as_interrupt():
            for dev_num, type_name in specs:
                try:
                    model = make_device(type_name)
                except (VirtioMsgError, ValueError, OSError) as exc:
                    failed += 1
                    out.error(f"device {dev_num} ({type_name}): {exc}")
                    continue
                try:
                    client.serve(dev_num, model)
                except (VirtioMsgError, ValueError) as exc:
                    model.close()
                    failed += 1
                    out.error(f"device {dev_num} ({type_name}): {exc}")
                    continue
                out.emit(
                    f"device {dev_num} added: {type_name}",
                    event="added",
                    dev_num=dev_num,
                    type=type_name,
                )
            if not client.devices:
                return 1
            while not client.wait(0.5):
                pass
            out.emit(
                f"disconnected: {client.reason}",
                event="disconnected",
                reason=client.reason,
            )
    except KeyboardInterrupt:
        _withdraw_all(client)
    finally:
        models = [t.model for t in client.devices.values()]
        client.close()
        for model in models:
            model.close()
        close_capture(capture)
    return 1 if failed else 0


def _withdraw_all(client: BackendClient) -> None:
    for dev_num in list(client.devices):
        model = client.devices[dev_num].model
        with contextlib.suppress(VirtioMsgError, ValueError):
            client.withdraw(dev_num)
        model.close()


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``backend`` (built-in devices)."""
    default = default_socket_path()
    p = sub.add_parser(
        "backend",
        help="serve built-in devices to a running bus over its socket, or (--kernel) to "
        "the running kernel's virtio-msg loopback",
        description=textwrap.fill(
            "Connect to a bus, map its region, ADD the devices and serve them until the bus "
            "goes away or you interrupt (devices are then REMOVEd).  With --kernel, the bus is "
            "the kernel's: /dev/virtio-msg-lb and /dev/virtio-msg-0 (docs/kernel.md).", 78
        ),
        epilog=VHOST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"the bus's socket (default {default})",
    )
    p.add_argument(
        "--listen",
        type=Path,
        default=None,
        metavar="PATH",
        help="listen at PATH instead and let one bus connect (e.g. 'virtio-msg conformance "
        "device --connect PATH'); the protocol is unchanged after the connection",
    )
    p.add_argument(
        "--accept-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="with --listen: bound on waiting for the bus (default 60 s)",
    )
    p.add_argument(
        "devices",
        nargs="*",
        metavar="[N:]TYPE",
        help="devices to serve, e.g. rng or 5:rng; with --kernel also blk=IMAGE "
        "(default: the built-in set of "
        f"'virtio-msg run': {' '.join(f'{n}:{t}' for n, t in DEFAULT_DEVICES)})",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="bound on connecting and receiving the announcement (default 5 s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    add_capture_args(p)
    add_kernel_arguments(p)
    p.set_defaults(func=cmd_backend)


# --- virtio-msg backend vhost-user ------------------------------------------------------------


def _open_vhost(
    spec: VhostSpec, args: argparse.Namespace, stop: threading.Event, gone: list[str]
) -> VhostUserDevice:
    """Connect to the back end; its loss appends the reason to ``gone`` and sets ``stop``."""
    device = spec.open(timeout=args.reply_timeout, connect_timeout=args.connect_timeout)

    def on_disconnect(reason: str) -> None:
        gone.append(reason)
        stop.set()

    device.on_disconnect.append(on_disconnect)
    return device


def _reopen_vhost(
    spec: VhostSpec, args: argparse.Namespace, stop: threading.Event, gone: list[str],
    interrupted: threading.Event,
) -> VhostUserDevice | None:
    """Retry connecting for at most ``--reconnect`` seconds; None when it never came back."""
    deadline = time.monotonic() + args.reconnect
    while not interrupted.is_set():
        try:
            return _open_vhost(spec, args, stop, gone)
        except (VirtioMsgError, ValueError, OSError) as exc:
            if time.monotonic() >= deadline:
                log.warning(
                    "vhost-user %s: not back after %s s: %s", spec.socket, args.reconnect, exc
                )
                return None
        interrupted.wait(RECONNECT_SLICE)
    return None


def _vhost_error(path: Path, exc: Exception) -> str:
    """``exc`` about the back end at ``path``, naming the path once."""
    text = str(exc).removeprefix("vhost-user ")
    return f"vhost-user back end {text if str(path) in text else f'{path}: {text}'}"


def _vhost_sockets(args: argparse.Namespace, out: Output) -> bool:
    """Settle ``--vhost-user``/``--socket``/``--bus`` (deprecated); False after an error."""
    if args.bus is not None:
        if args.socket is not None:
            out.error("--bus is the deprecated name of --socket: give only --socket")
            return False
        print(
            "warning: --bus is deprecated: the bus's socket is --socket PATH, as in "
            "`virtio-msg backend`",
            file=sys.stderr, flush=True,
        )
        args.socket = args.bus
    if args.vhost_user is None:
        hint = (
            " (--socket names the bus's socket, as in `virtio-msg backend`; it used to name "
            "the back end here)" if args.socket is not None else ""
        )
        out.error(f"give the vhost-user back end's socket with --vhost-user PATH{hint}")
        return False
    if args.socket is None:
        args.socket = default_socket_path()
    return True


def cmd_vhost_user(args: argparse.Namespace) -> int:
    """Serve one vhost-user device to a running bus (see the module docstring)."""
    out = Output(args.json, args.quiet)
    if not _vhost_sockets(args, out):
        return 2
    spec = VhostSpec(
        socket=str(args.vhost_user),
        type=args.type,
        dev_num=args.dev_num,
        mac=args.mac,
        tag=args.tag,
        queues=args.queues,
        queue_size=args.queue_size,
    )
    stop = threading.Event()
    interrupted = threading.Event()
    gone: list[str] = []
    try:
        device = _open_vhost(spec, args, stop, gone)
    except (VirtioMsgError, ValueError) as exc:
        out.error(_vhost_error(args.vhost_user, exc))
        return 1
    try:
        client = connect(args.socket, timeout=args.connect_timeout)
    except VirtioMsgError as exc:
        device.close()
        out.error(f"bus {args.socket}: {exc}")
        return 1
    status = 0
    current: VhostUserDevice | None = device
    try:
        with stop_on_signals(interrupted):
            while current is not None:
                status = _serve_vhost(out, args, client, current, stop, interrupted, gone)
                current.close()
                lost = bool(gone) and client.connected
                if status != 1 or not lost or not args.reconnect or interrupted.is_set():
                    break
                stop.clear()
                gone.clear()
                current = _reopen_vhost(spec, args, stop, gone, interrupted)
                if current is not None:
                    out.emit(
                        f"vhost-user back end {args.vhost_user} is back: serving device "
                        f"{args.dev_num} again", event="reconnected", dev_num=args.dev_num,
                    )
                    status = 0
    finally:
        if current is not None:
            current.close()
        client.close()
    return status


def _serve_vhost(
    out: Output, args: argparse.Namespace, client: BackendClient, device: VhostUserDevice,
    stop: threading.Event, interrupted: threading.Event, gone: list[str],
) -> int:
    """ADD ``device``, serve it until the bus, the back end or a signal ends it; the status.

    Returns 0 when interrupted or the bus went away, 1 when the device could
    not be added or its back end went away (``gone`` then holds the reason).
    """
    try:
        client.serve(args.dev_num, device)
    except (VirtioMsgError, ValueError) as exc:
        out.error(f"device {args.dev_num}: {exc}")
        return 1
    out.emit(
        f"device {args.dev_num} added: {device.name} from {args.vhost_user} "
        f"(features {device.offered_features:#x}, {device.num_queues} queues)",
        event="added", dev_num=args.dev_num, type=device.profile.name,
        socket=str(args.vhost_user), features=device.offered_features,
        queues=device.num_queues,
    )
    while not stop.is_set() and not interrupted.is_set():
        if client.wait(WAIT_SLICE):
            out.emit(
                f"disconnected: {client.reason}",
                event="disconnected", reason=client.reason,
            )
            return 0
    status = 0
    if gone:
        out.error(f"device {args.dev_num}: {gone[0]}; removing it")
        status = 1
    with contextlib.suppress(VirtioMsgError, ValueError):
        client.withdraw(args.dev_num)
    out.emit(f"device {args.dev_num} removed", event="removed", dev_num=args.dev_num)
    return status


def add_vhost_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``vhost-user`` command on ``subparsers``; return its parser."""
    from virtio_msg.bus.socket import default_socket_path

    default_bus = default_socket_path()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "vhost-user",
        help="serve a device from a vhost-user back end to a running bus",
        description="Connect to a vhost-user back end (qemu-storage-daemon, virtiofsd, DPDK "
        "net_vhost, ...) and to a running bus, ADD the device and serve it until the bus or "
        "the back end goes away, or you interrupt (the device is then REMOVEd).",
    )
    p.add_argument(
        "--vhost-user", type=Path, default=None, metavar="PATH",
        help="the vhost-user back end's socket (required)",
    )
    p.add_argument(
        "--type", choices=sorted(PROFILES), default=None,
        help="device type (default: inferred from the back end's command line when known)",
    )
    p.add_argument(
        "--dev-num", type=ranged("device number", 0, 0xFFFF), default=0,
        metavar="N", help="device number on the bus (default 0)",
    )
    p.add_argument(
        "--socket", type=Path, default=None, metavar="PATH",
        help=f"the bus's socket, as in `virtio-msg backend` (default {default_bus})",
    )
    p.add_argument(
        "--bus", type=Path, default=None, metavar="PATH",
        help="deprecated name of --socket (prints a warning)",
    )
    p.add_argument("--mac", default=None, help="net: MAC address (default: random, local)")
    p.add_argument(
        "--tag", default=DEFAULT_FS_TAG, help=f"fs: mount tag (default {DEFAULT_FS_TAG})"
    )
    p.add_argument(
        "--queues", type=ranged("queue count", 1, 64), default=None, metavar="Q",
        help="blk/fs: request queues to expose (default: all the back end has; fs: 1)",
    )
    p.add_argument(
        "--queue-size", type=ranged("queue size", 1, 32768),
        default=DEFAULT_QUEUE_SIZE, metavar="N",
        help=f"largest ring offered per queue (default {DEFAULT_QUEUE_SIZE})",
    )
    p.add_argument(
        "--reply-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"bound on each vhost-user reply (default {DEFAULT_TIMEOUT} s)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
        help=f"bound on connecting to either socket (default {DEFAULT_CONNECT_TIMEOUT} s)",
    )
    p.add_argument(
        "--reconnect", type=float, default=0.0, metavar="S",
        help="when the back end goes away, REMOVE the device and keep trying to reconnect "
        "for up to S seconds, then ADD it again (default 0: exit 1 instead)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_vhost_user)
    return p


def main_vhost_user(argv: Sequence[str] | None = None) -> int:
    """``virtio-msg backend vhost-user ...`` (``argv`` from ``vhost-user`` on); the status."""
    parser = argparse.ArgumentParser(
        prog="virtio-msg backend",
        description="Serve a device from a vhost-user back end to a running bus.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_vhost_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    try:
        status: int = args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status


__all__ = ["add_parser", "add_vhost_parser", "cmd_backend", "cmd_vhost_user", "main_vhost_user"]
