"""Command-line side of vhost-user devices: ``backend vhost-user`` and ``run --vhost-user``.

Composes the pieces, holds no protocol logic.

* ``virtio-msg backend vhost-user --socket PATH [--type blk|net|fs] --dev-num N``
  connects to a running bus (``--bus``, the socket channel), connects to the
  vhost-user back end at ``--socket``, ADDs the device and serves it until the
  bus goes away, the back end goes away (the device is then REMOVEd and the
  command exits 1) or it is interrupted (the device is REMOVEd, exit 0).
  :func:`add_vhost_parser` registers the ``vhost-user`` parser on any
  subparsers object; ``python -m virtio_msg.vhost_cli vhost-user ...`` runs it
  on its own.
* ``virtio-msg run --vhost-user socket=PATH[,type=T][,dev-num=N][,mac=M][,tag=S]``
  adds vhost-user devices to the in-process run: :func:`add_vhost_run_arguments`
  declares the option, :func:`parse_vhost_spec` parses one value and
  :func:`run_vhost_devices` serves, exercises (the driver's self-test) and
  withdraws them on a bus, returning one result per device in the runner's
  format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from virtio_msg.bus import Backend, LoopbackBus
from virtio_msg.errors import VirtioMsgError
from virtio_msg.vhost import PROFILES, OptionError, VhostUserDevice
from virtio_msg.vhost.device import DEFAULT_FS_TAG, DEFAULT_QUEUE_SIZE
from virtio_msg.vhost.frontend import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT

WAIT_SLICE = 0.5
"""The serving loop re-checks its exit conditions this often, seconds."""


@dataclass(frozen=True)
class VhostSpec:
    """One vhost-user device to serve: its back end's socket and the options."""

    socket: str
    type: str | None = None
    dev_num: int | None = None
    mac: str | None = None
    tag: str | None = None
    queues: int | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE

    def open(
        self, *, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> VhostUserDevice:
        """Connect to the back end and build the device (close it when done)."""
        return VhostUserDevice.connect(
            self.socket,
            self.type,
            timeout=timeout,
            connect_timeout=connect_timeout,
            queue_size=self.queue_size,
            queues=self.queues,
            mac=self.mac,
            tag=self.tag or DEFAULT_FS_TAG,
        )


_SPEC_KEYS = {"socket", "path", "type", "dev-num", "mac", "tag", "queues", "queue-size"}


def _int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise OptionError(f"{what} {text!r} is not a number") from None
    if not low <= value <= high:
        raise OptionError(f"{what} {value} is outside {low}..{high}")
    return value


def parse_vhost_spec(text: str) -> VhostSpec:
    """Parse ``socket=PATH[,type=T][,dev-num=N][,mac=M][,tag=S][,queues=Q][,queue-size=Z]``.

    A value without ``=`` is taken as the socket path.  Raises
    :class:`~virtio_msg.vhost.OptionError` (a ValueError) naming the problem.
    """
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            key, value = "socket", item
        key = key.strip()
        if key not in _SPEC_KEYS:
            known = ", ".join(sorted(_SPEC_KEYS))
            raise OptionError(f"vhost-user option {key!r} unknown ({known})")
        if key == "path":
            key = "socket"
        if key in fields:
            raise OptionError(f"vhost-user option {key!r} given twice")
        fields[key] = value
    if not fields.get("socket"):
        raise OptionError(f"vhost-user device {text!r} names no socket")
    type_name = fields.get("type")
    if type_name is not None and type_name not in PROFILES:
        raise OptionError(f"vhost-user type {type_name!r} unknown ({', '.join(sorted(PROFILES))})")
    dev_num = fields.get("dev-num")
    queues = fields.get("queues")
    return VhostSpec(
        socket=fields["socket"],
        type=type_name,
        dev_num=None if dev_num is None else _int(dev_num, "device number", 0, 0xFFFF),
        mac=fields.get("mac"),
        tag=fields.get("tag"),
        queues=None if queues is None else _int(queues, "queue count", 1, 64),
        queue_size=_int(fields.get("queue-size", str(DEFAULT_QUEUE_SIZE)), "queue size", 1, 32768),
    )


def assign_numbers(
    specs: Sequence[VhostSpec], taken: Sequence[int] = ()
) -> list[tuple[int, VhostSpec]]:
    """Give every spec a device number: its own, or the lowest one not taken."""
    used = set(taken) | {s.dev_num for s in specs if s.dev_num is not None}
    out: list[tuple[int, VhostSpec]] = []
    free = 0
    for spec in specs:
        if spec.dev_num is not None:
            out.append((spec.dev_num, spec))
            continue
        while free in used:
            free += 1
        used.add(free)
        out.append((free, spec))
    nums = [n for n, _ in out]
    if len(set(nums)) != len(nums) or set(nums) & set(taken):
        raise OptionError(f"device numbers repeat: {sorted(nums)} (taken: {sorted(taken)})")
    return out


# --- virtio-msg run --vhost-user --------------------------------------------------------------


def add_vhost_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--vhost-user SPEC`` (repeatable) on the ``run`` parser."""
    parser.add_argument(
        "--vhost-user",
        action="append",
        default=[],
        metavar="SPEC",
        type=parse_vhost_spec,
        help="also serve a device from a vhost-user back end: "
        "socket=PATH[,type=blk|net|fs][,dev-num=N][,mac=MAC][,tag=TAG][,queues=Q] "
        "(type inferred from the back end when it is known; repeatable)",
    )


def run_vhost_devices(
    bus: LoopbackBus, backend: Backend, specs: Sequence[tuple[int, VhostSpec]]
) -> list[dict[str, Any]]:
    """Serve each vhost-user device on ``bus``, run its driver's self-test, withdraw it.

    Returns one result per device in :func:`virtio_msg.runner.run_one`'s
    format (``dev_num``, ``type``, ``ok``, ``features``, ``result`` or
    ``error``), plus ``socket``.  Every device is withdrawn and closed before
    this returns, whatever happened.
    """
    from virtio_msg.runner import feature_names

    results: list[dict[str, Any]] = []
    for dev_num, spec in specs:
        result: dict[str, Any] = {
            "dev_num": dev_num,
            "type": f"vhost-user-{spec.type or '?'}",
            "socket": spec.socket,
            "ok": False,
        }
        results.append(result)
        try:
            device = spec.open()
        except (VirtioMsgError, ValueError) as exc:
            result["error"] = f"vhost-user: {exc}"
            continue
        result["type"] = device.name
        try:
            backend.serve(dev_num, device)
            entry = bus.device(dev_num)
            if entry is None:
                result["error"] = "device vanished after ADD"
            else:
                result["features"] = feature_names(
                    entry.transport.negotiated_features, entry.device_id
                )
                if entry.error or entry.driver is None:
                    result["error"] = entry.error or "no driver bound"
                else:
                    result["result"] = entry.driver.selftest()
                    result["ok"] = True
        except (VirtioMsgError, ValueError) as exc:
            result["error"] = str(exc)
        finally:
            with contextlib.suppress(VirtioMsgError, ValueError):
                backend.withdraw(dev_num)
            device.close()
    return results


# --- virtio-msg backend vhost-user ------------------------------------------------------------


class _Output:
    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def emit(self, text: str, **facts: Any) -> None:
        if self.quiet:
            return
        print(json.dumps(facts) if self.as_json else text, flush=True)

    @staticmethod
    def error(text: str) -> None:
        print(f"error: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def cmd_vhost_user(args: argparse.Namespace) -> int:
    """Serve one vhost-user device to a running bus (see the module docstring)."""
    from virtio_msg.bus.client import connect

    out = _Output(args.json, args.quiet)
    spec = VhostSpec(
        socket=str(args.socket),
        type=args.type,
        dev_num=args.dev_num,
        mac=args.mac,
        tag=args.tag,
        queues=args.queues,
        queue_size=args.queue_size,
    )
    try:
        device = spec.open(timeout=args.reply_timeout, connect_timeout=args.connect_timeout)
    except (VirtioMsgError, ValueError) as exc:
        out.error(f"vhost-user {args.socket}: {exc}")
        return 1
    stop = threading.Event()
    gone: list[str] = []

    def on_disconnect(reason: str) -> None:
        gone.append(reason)
        stop.set()

    device.on_disconnect.append(on_disconnect)
    try:
        client = connect(args.bus, timeout=args.connect_timeout)
    except VirtioMsgError as exc:
        device.close()
        out.error(f"bus {args.bus}: {exc}")
        return 1
    status = 0
    try:
        with _stop_on_sigterm(stop):
            try:
                client.serve(args.dev_num, device)
            except (VirtioMsgError, ValueError) as exc:
                out.error(f"device {args.dev_num}: {exc}")
                return 1
            out.emit(
                f"device {args.dev_num} added: {device.name} from {args.socket} "
                f"(features {device.offered_features:#x}, {device.num_queues} queues)",
                event="added", dev_num=args.dev_num, type=device.profile.name,
                socket=str(args.socket), features=device.offered_features,
                queues=device.num_queues,
            )
            while not stop.is_set():
                if client.wait(WAIT_SLICE):
                    out.emit(
                        f"bus closed the connection: {client.reason}",
                        event="disconnected", reason=client.reason,
                    )
                    return 0
            if gone:
                out.error(f"device {args.dev_num}: {gone[0]}; removing it")
                status = 1
            with contextlib.suppress(VirtioMsgError, ValueError):
                client.withdraw(args.dev_num)
            out.emit(f"device {args.dev_num} removed", event="removed", dev_num=args.dev_num)
    finally:
        device.close()
        client.close()
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
        "--socket", type=Path, required=True, metavar="PATH",
        help="the vhost-user back end's socket",
    )
    p.add_argument(
        "--type", choices=sorted(PROFILES), default=None,
        help="device type (default: inferred from the back end's command line when known)",
    )
    p.add_argument(
        "--dev-num", type=lambda s: _int(s, "device number", 0, 0xFFFF), default=0,
        metavar="N", help="device number on the bus (default 0)",
    )
    p.add_argument(
        "--bus", type=Path, default=default_bus, metavar="PATH",
        help=f"the bus's socket (default {default_bus})",
    )
    p.add_argument("--mac", default=None, help="net: MAC address (default: random, local)")
    p.add_argument(
        "--tag", default=DEFAULT_FS_TAG, help=f"fs: mount tag (default {DEFAULT_FS_TAG})"
    )
    p.add_argument(
        "--queues", type=lambda s: _int(s, "queue count", 1, 64), default=None, metavar="Q",
        help="blk/fs: request queues to expose (default: all the back end has; fs: 1)",
    )
    p.add_argument(
        "--queue-size", type=lambda s: _int(s, "queue size", 1, 32768),
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
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_vhost_user)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m virtio_msg.vhost_cli vhost-user ...``; return the exit status."""
    import logging

    parser = argparse.ArgumentParser(prog="virtio-msg backend", description=__doc__.splitlines()[0])
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


__all__ = [
    "VhostSpec",
    "add_vhost_parser",
    "add_vhost_run_arguments",
    "assign_numbers",
    "cmd_vhost_user",
    "main",
    "parse_vhost_spec",
    "run_vhost_devices",
]

if __name__ == "__main__":
    sys.exit(main())
