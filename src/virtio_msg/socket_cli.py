"""Command-line side of the socket channel: ``bus``, ``backend`` and ``run --socket``.

Composes the pieces, holds no protocol logic.  ``virtio-msg bus`` runs a
loopback bus whose drivers serve a socket and reports devices as backends
add them; ``virtio-msg backend`` serves built-in devices to a running bus;
:func:`run_over_socket` is ``virtio-msg run --socket``: the same report as
:func:`virtio_msg.runner.run_loopback`, with the devices served by a separate
backend process over the socket.  :func:`add_socket_commands` registers the
two subcommands on the main parser; ``python -m virtio_msg.socket_cli`` runs
them on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from virtio_msg.bus.client import BackendClient, connect
from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE, DeviceEntry, LoopbackBus
from virtio_msg.bus.socket import SocketChannel, SocketLimits, SocketServer, default_socket_path
from virtio_msg.devices.catalog import CATALOG, make_device
from virtio_msg.errors import VirtioMsgError
from virtio_msg.runner import DEFAULT_DEVICES, RunConfig, bus_report, combine, feature_names
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile

BACKEND_MODULE = "virtio_msg.socket_cli"
"""Module ``run --socket`` starts as the backend process (``python -m``)."""
CHILD_EXIT_TIMEOUT = 5.0
"""How long a backend process gets to exit after the bus closes, seconds."""


# --- shared helpers ---------------------------------------------------------------------


def parse_device_specs(specs: Sequence[str]) -> list[tuple[int, str]]:
    """Parse ``TYPE`` or ``N:TYPE`` items into (device number, type); ValueError if invalid.

    Items without a number take the lowest number not used by any other item.
    """
    explicit: list[tuple[int, str] | str] = []
    for item in specs:
        num, sep, type_name = item.partition(":")
        if not sep:
            explicit.append(item)
            continue
        try:
            dev_num = int(num, 0)
        except ValueError:
            raise ValueError(f"device {item!r}: {num!r} is not a device number") from None
        if not 0 <= dev_num <= 0xFFFF:
            raise ValueError(f"device {item!r}: number outside 0..65535")
        explicit.append((dev_num, type_name))
    used = {x[0] for x in explicit if isinstance(x, tuple)}
    out: list[tuple[int, str]] = []
    free = 0
    for x in explicit:
        if isinstance(x, tuple):
            out.append(x)
            continue
        while free in used:
            free += 1
        used.add(free)
        out.append((free, x))
    nums = [n for n, _ in out]
    if len(set(nums)) != len(nums):
        raise ValueError(f"device numbers repeat: {sorted(nums)}")
    for _, type_name in out:
        if type_name not in CATALOG:
            known = ", ".join(sorted(CATALOG))
            raise ValueError(f"unknown device type {type_name!r} (built-in: {known})")
    return out


class _Output:
    """Lines for people, or JSON lines with the same facts (``--json``)."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def emit(self, text: str, **facts: Any) -> None:
        if self.quiet:
            return
        if self.as_json:
            print(json.dumps(facts), flush=True)
        else:
            print(text, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt in the main thread, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _int(text: str) -> int:
    return int(text, 0)


# --- virtio-msg bus ------------------------------------------------------------------------


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
    out = _Output(args.json)
    size, base = args.size, args.base
    params = BusParams(args.profile, args.max_size, timeout_ms=args.timeout_ms)
    if args.dt is not None:
        from virtio_msg.dt.cli import configs_from_args

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
    bus = LoopbackBus(params, size=size, base=base, name=args.name)
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
        out.error(str(exc))
        return 1
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
    try:
        with _sigterm_as_interrupt():
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
    out.emit(
        f"bus {bus.name} closed; messages: {sum(totals.values())}"
        + (f", dropped: {dropped}" if dropped else ""),
        event="closed",
        messages=totals,
        dropped=dropped,
    )
    return 0


def _bus_event(out: _Output, kind: str, obj: Any, *, selftest: bool) -> None:
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


# --- virtio-msg backend ----------------------------------------------------------------------


def cmd_backend(args: argparse.Namespace) -> int:
    """Serve built-in devices to a running bus until it goes away or we are interrupted."""
    out = _Output(args.json, args.quiet)
    try:
        specs = parse_device_specs(args.devices or [f"{n}:{t}" for n, t in DEFAULT_DEVICES])
    except ValueError as exc:
        out.error(str(exc))
        return 2
    try:
        client = connect(args.socket, timeout=args.connect_timeout)
    except VirtioMsgError as exc:
        out.error(str(exc))
        return 1
    ann = client.announcement
    out.emit(
        f"connected to {args.socket} (profile {ann.profile.value}, max message "
        f"{ann.max_msg_size} bytes, region {ann.region_base:#x} + {ann.region_size:#x})",
        event="connected",
        socket=str(args.socket),
        profile=ann.profile.value,
        max_msg_size=ann.max_msg_size,
        region={"base": ann.region_base, "size": ann.region_size},
    )
    failed = 0
    try:
        with _sigterm_as_interrupt():
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
                f"bus closed the connection: {client.reason}",
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
    return 1 if failed else 0


def _withdraw_all(client: BackendClient) -> None:
    for dev_num in list(client.devices):
        model = client.devices[dev_num].model
        with contextlib.suppress(VirtioMsgError, ValueError):
            client.withdraw(dev_num)
        model.close()


# --- virtio-msg run --socket ----------------------------------------------------------------


def _run_one_over_socket(config: RunConfig, start_timeout: float | None) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    specs: list[str] = []
    for dev_num, type_name in config.devices:
        result: dict[str, Any] = {"dev_num": dev_num, "type": type_name, "ok": False}
        results.append(result)
        if type_name not in CATALOG:
            known = ", ".join(sorted(CATALOG))
            result["error"] = f"backend: unknown device type {type_name!r} (built-in: {known})"
        else:
            specs.append(f"{dev_num}:{type_name}")
    wanted = {int(s.split(":")[0]) for s in specs}
    tmp = Path(tempfile.mkdtemp(prefix="virtio-msg-"))  # mode 0700
    bus = LoopbackBus(config.params, size=config.size, base=config.base, name=config.name)
    added: set[int] = set()
    cv = threading.Condition()

    def on_added(entry: DeviceEntry) -> None:
        with cv:
            added.add(entry.dev_num)
            cv.notify_all()

    bus.on_added.append(on_added)
    server = SocketServer(bus, tmp / "bus.sock")
    try:
        with tempfile.TemporaryFile() as errlog:
            return _serve_and_exercise(
                config, bus, server, results, specs, wanted, added, cv, errlog, start_timeout
            )
    finally:
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _serve_and_exercise(
    config: RunConfig,
    bus: LoopbackBus,
    server: SocketServer,
    results: list[dict[str, Any]],
    specs: list[str],
    wanted: set[int],
    added: set[int],
    cv: threading.Condition,
    errlog: Any,
    start_timeout: float | None,
) -> dict[str, Any]:
    child: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        if specs:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    BACKEND_MODULE,
                    "backend",
                    "--socket",
                    str(server.path),
                    "--quiet",
                    *specs,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errlog,
            )
            limit = start_timeout or max(20.0, 4 * config.params.timeout_ms / 1000)
            deadline = time.monotonic() + limit
            with cv:
                while not wanted <= added and child.poll() is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cv.wait(min(left, 0.1))
        for result in results:
            if "error" not in result:
                _exercise(bus, result, child, errlog)
        server.settle()  # events still on their way are counted, as in process
        report = bus_report(bus, config, results)
        report["channel"] = {
            "kind": "socket",
            "socket": str(server.path),
            "backend_pid": child.pid if child is not None else None,
            "disconnects": [list(d) for d in server.disconnects],
        }
        return report
    finally:
        server.close()  # the backend sees the bus go away and exits
        if child is not None:
            try:
                child.wait(CHILD_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(CHILD_EXIT_TIMEOUT)


def _exercise(
    bus: LoopbackBus,
    result: dict[str, Any],
    child: subprocess.Popen[bytes] | None,
    errlog: Any,
) -> None:
    """Fill in one device's result exactly as the in-process runner does."""
    entry = bus.device(result["dev_num"])
    if entry is None:
        errlog.seek(0)
        tail = errlog.read().decode(errors="replace").strip().splitlines()[-1:]
        why = tail[0] if tail else "no error output"
        if child is not None and child.poll() is not None:
            why = f"backend process exited with status {child.returncode}: {why}"
        result["error"] = f"backend did not add the device: {why}"
        return
    result["type"] = entry.type_name
    result["features"] = feature_names(entry.transport.negotiated_features, entry.device_id)
    if entry.error or entry.driver is None:
        result["error"] = entry.error or "no driver bound"
        return
    try:
        result["result"] = entry.driver.selftest()
        result["ok"] = True
    except VirtioMsgError as exc:
        result["error"] = str(exc)


def run_over_socket(
    configs: list[RunConfig], *, start_timeout: float | None = None
) -> dict[str, Any]:
    """``virtio-msg run --socket``: each bus's devices served by a backend process.

    Same report as :func:`virtio_msg.runner.run_loopback` (each bus report
    gains a ``channel`` entry).  ``start_timeout`` bounds the wait for the
    backend to add its devices (default: 20 s or 4 x the request timeout).
    """
    return combine([_run_one_over_socket(c, start_timeout) for c in configs])


# --- argument parsing --------------------------------------------------------------------------


def _add_wire_args(p: argparse.ArgumentParser) -> None:
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
        help="maximum message size (spec: 52..65535, default 264; linux-rfc1: 44..65535, "
        "default 44)",
    )
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=5000,
        metavar="MS",
        help="per-request timeout in milliseconds (default 5000)",
    )


def add_socket_commands(subparsers: Any) -> None:
    """Register the ``bus`` and ``backend`` subcommands on ``subparsers``."""
    default = default_socket_path()
    p = subparsers.add_parser(
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
    _add_wire_args(p)
    p.add_argument("--name", default="loopback0", help="bus name (default loopback0)")
    p.add_argument(
        "--size",
        type=_int,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help=f"region size (default {DEFAULT_SIZE:#x})",
    )
    p.add_argument(
        "--base",
        type=_int,
        default=DEFAULT_BASE,
        metavar="ADDR",
        help=f"region bus base address (default {DEFAULT_BASE:#x})",
    )
    p.add_argument(
        "--max-backends",
        type=int,
        default=SocketLimits.max_connections,
        metavar="N",
        help=f"backends connected at once (default {SocketLimits.max_connections})",
    )
    p.add_argument("--no-selftest", action="store_true", help="do not exercise added devices")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    from virtio_msg.dt.cli import add_dt_arguments

    add_dt_arguments(p)
    p.add_argument(
        "--instance",
        type=int,
        default=0,
        metavar="N",
        help="with --dt: which bus instance of the tree to serve (default 0); the tree's "
        "region, profile, message size, transport features and timeout replace the flags",
    )
    p.set_defaults(func=cmd_bus)

    p = subparsers.add_parser(
        "backend",
        help="serve built-in devices to a running bus over its socket",
        description="Connect to a bus, map its region, ADD the devices and serve them until "
        "the bus goes away or you interrupt (devices are then REMOVEd).",
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"the bus's socket (default {default})",
    )
    p.add_argument(
        "devices",
        nargs="*",
        metavar="[N:]TYPE",
        help="devices to serve, e.g. rng or 5:rng (default: the built-in set of "
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
    p.set_defaults(func=cmd_backend)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m virtio_msg.socket_cli {bus,backend} ...``; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="virtio-msg", description="virtio-msg socket bus and backend."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_socket_commands(sub)
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


__all__ = [
    "BACKEND_MODULE",
    "add_socket_commands",
    "cmd_backend",
    "cmd_bus",
    "main",
    "parse_device_specs",
    "run_over_socket",
]

if __name__ == "__main__":
    sys.exit(main())
