"""``virtio-msg conformance device|driver``: the conformance tool.

The tool plays driver and bus.  ``--socket PATH``: it listens at PATH as the
socket bus and a backend process (``virtio-msg backend --socket PATH``, or one
in C or Rust speaking docs/socket-protocol.md) connects and adds its devices;
``--connect PATH``: a backend listens at PATH (``virtio-msg backend --listen
PATH``) and the tool connects to it, then plays the bus the same way;
``--builtin TYPES`` serves the project's own device models in this process
(``--broken DEFECT`` gives them one deliberate defect, for the self-test).
Every device number offered is run through the scenarios of
:mod:`virtio_msg.conformance`; one line per scenario, a summary, ``--json``,
``--junit FILE``, ``-k`` and ``--list``; exit 1 if any scenario failed.
``conformance driver`` plays devices instead and judges a driver side: the
project's drivers behind the in-process bus (``--broken DEFECT``: with one
deliberate defect; ``--strict``: strict configuration profile), a socket
bus's drivers (``--socket PATH``, the tool connecting as a backend), or the
kernel's drivers behind the kernel channel (``--kernel``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virtio_msg.bus.kernel import DEFAULT_LB_PATH, DEFAULT_SYSFS_DIR, DeviceFiles, KernelFiles
from virtio_msg.cli.common import add_codec_args, add_deprecated_alias, parse_int, parse_size
from virtio_msg.cli.kernel import reader_wakeup
from virtio_msg.conformance.broken import DEFECTS, BrokenBackend
from virtio_msg.conformance.broken_drivers import DRIVER_DEFECTS
from virtio_msg.conformance.driver_check import RULES
from virtio_msg.conformance.driver_provoke import PROVOCATIONS
from virtio_msg.conformance.driver_suite import (
    run_driver_suite,
    run_driver_suite_kernel,
    run_driver_suite_socket,
)
from virtio_msg.conformance.links import DeviceLink, InProcessLink, SocketLink
from virtio_msg.conformance.report import Report
from virtio_msg.conformance.runner import run_device_suite, select
from virtio_msg.dt.live import LIVE_TREE, kernel_region
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import VIRTIO_MSG_F_STRICT_CONFIG_GENERATION
from virtio_msg.transport.params import BusParams


def add_parser(sub: Any) -> None:
    """Register ``conformance`` and its ``device`` subcommand."""
    top = sub.add_parser(
        "conformance",
        help="run the conformance scenarios against another implementation",
        description="Conformance tool: plays driver and bus against a device side.",
    )
    kinds = top.add_subparsers(dest="suite", required=True, metavar="SUITE")
    p = kinds.add_parser(
        "device",
        help="check a device side (a backend) against the DEV- and G- requirements",
        description="Play driver and bus against every device number a backend offers.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, metavar="PATH",
                       help="listen at PATH as the socket bus; the backend connects")
    where.add_argument("--connect", type=Path, metavar="PATH",
                       help="connect to a backend listening at PATH (e.g. virtio-msg backend "
                       "--listen PATH) and be its bus")
    where.add_argument("--kernel", action="store_true",
                       help="no device side exists behind the kernel channel (the kernel is "
                       "a driver); see 'conformance driver'")
    where.add_argument("--builtin", metavar="TYPES",
                       help="serve the project's device models in this process, e.g. "
                       "rng,blk,console,i2c")
    p.add_argument("--broken", choices=sorted(DEFECTS), metavar="DEFECT",
                   help=f"with --builtin: one deliberate defect ({', '.join(DEFECTS)})")
    add_codec_args(p)
    p.add_argument("--strict", action="store_true",
                   help="advertise VIRTIO_MSG_F_STRICT_CONFIG_GENERATION (strict profile)")
    p.add_argument("--timeout-ms", type=parse_int, default=1000, metavar="MS",
                   help="wait for each response (default 1000)")
    p.add_argument("--silence-ms", type=parse_int, default=150, metavar="MS",
                   help="how long 'no reply' must last (default 150)")
    p.add_argument("--wait-ms", type=parse_int, default=30000, metavar="MS",
                   help="with --socket or --connect: wait for the backend and its first ADD "
                   "(default 30000)")
    p.add_argument("--settle-ms", type=parse_int, default=500, metavar="MS",
                   help="with --socket: no ADD for this long ends discovery (default 500)")
    p.add_argument("-k", dest="pattern", metavar="PATTERN",
                   help="run only scenarios whose name or checklist id contains PATTERN "
                   "(comma-separated alternatives)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML to FILE")
    p.set_defaults(func=cmd_device)

    d = kinds.add_parser(
        "driver",
        help="check a driver side against the DRV- requirements (the tool plays devices)",
        description="Serve device models (the project's, an asynchronously resetting one and "
        "one refusing FEATURES_OK) to a driver side and judge everything it sends.",
    )
    dwhere = d.add_mutually_exclusive_group()
    dwhere.add_argument("--socket", type=Path, metavar="PATH",
                        help="connect to a socket bus at PATH (e.g. virtio-msg bus) as a "
                        "backend; its drivers are checked")
    dwhere.add_argument("--kernel", action="store_true",
                        help="serve the devices behind the kernel channel (the seed's "
                        "/dev/virtio-msg-lb): the kernel's own virtio drivers are checked")
    dwhere.add_argument("--broken", choices=sorted(DRIVER_DEFECTS), metavar="DEFECT",
                        help="in process: the project's drivers with one deliberate defect "
                        f"({', '.join(DRIVER_DEFECTS)})")
    d.add_argument("--types", default="rng,blk,console,i2c", metavar="TYPES",
                   help="device models to serve (default rng,blk,console,i2c)")
    d.add_argument("--first", type=parse_int, default=0, metavar="N",
                   help="with --socket or --kernel: first device number to use (default 0)")
    add_codec_args(d)
    d.add_argument("--strict", action="store_true",
                   help="in process: the bus selects the strict configuration profile")
    d.add_argument("--settle-ms", type=parse_int, default=1000, metavar="MS",
                   help="with --socket or --kernel: quiet time that ends the driver's exercise "
                   "(default 1000)")
    k = d.add_argument_group("kernel channel (--kernel)")
    k.add_argument("--dev-dir", default=str(Path(DEFAULT_LB_PATH).parent), metavar="DIR",
                   help="where the device files are (default /dev)")
    k.add_argument("--lb", default=None, metavar="PATH", help="default DIR/virtio-msg-lb")
    msg_dev = k.add_argument("--msg-dev", default=None, metavar="PATH",
                             help="default DIR/virtio-msg-0")
    add_deprecated_alias(k, "--msg", msg_dev)  # --msg is trace's message-name filter
    k.add_argument("--dt-root", default=LIVE_TREE, metavar="DIR",
                   help=f"the live device tree the region is read from (default {LIVE_TREE})")
    k.add_argument("--base", type=parse_int, default=None, metavar="ADDR",
                   help="the region's bus address (default: from the device tree)")
    k.add_argument("--size", type=parse_size, default=None, metavar="N",
                   help="the region's size (default: what the device maps)")
    k.add_argument("--op-timeout", type=float, default=60.0, metavar="S",
                   help="bound on each ADD and REMOVE (default 60 s)")
    k.add_argument("--sysfs-dir", default=DEFAULT_SYSFS_DIR, help=argparse.SUPPRESS)
    d.add_argument("-k", dest="pattern", metavar="PATTERN",
                   help="report only rule groups whose name or id contains PATTERN")
    d.add_argument("--list", action="store_true", help="list the rule groups and exit")
    d.add_argument("--json", action="store_true", help="print the report as one JSON object")
    d.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML to FILE")
    d.set_defaults(func=cmd_driver)


def _emit(report: Report, args: argparse.Namespace) -> int:
    if args.junit:
        args.junit.write_bytes(report.to_junit())
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        for r in report.results:
            print(r.line())
        print(report.summary())
    return 0 if report.ok else 1


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """Keep the library's warnings (expected under test) quiet for one run, then restore."""
    logger = logging.getLogger("virtio_msg")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _driver_kernel(args: argparse.Namespace, types: list[str],
                   files: KernelFiles | None) -> Report:
    if args.base is not None:
        base, size = args.base, args.size
    else:
        region = kernel_region(args.dt_root)
        base, size = region.base, args.size if args.size is not None else region.size
    if files is None:
        files = DeviceFiles(args.lb or str(Path(args.dev_dir) / "virtio-msg-lb"),
                            args.msg_dev or str(Path(args.dev_dir) / "virtio-msg-0"),
                            args.sysfs_dir)
    reader_wakeup()
    return run_driver_suite_kernel(files, base, size, types, first=args.first,
                                   settle=args.settle_ms / 1000, op_timeout_s=args.op_timeout)


def cmd_driver(args: argparse.Namespace, files: KernelFiles | None = None) -> int:
    """Run the driver suite; print the lines and the summary; 1 if anything failed.

    ``files`` replaces the kernel's device files with ``--kernel`` (tests).
    """
    words = [w.strip().lower() for w in (args.pattern or "").split(",") if w.strip()]

    def wanted(name: str, ids: tuple[str, ...]) -> bool:
        return not words or any(w in name or any(w in i.lower() for i in ids) for w in words)

    if args.list:
        listing: list[tuple[str, tuple[str, ...], str]] = [
            (name, ids, "") for name, ids, _fn in RULES]
        listing += [(p.name, p.ids, p.title) for p in PROVOCATIONS]
        for name, ids, title in listing:
            if wanted(name, ids):
                print(f"{name:30} [{','.join(ids)}] {title}".rstrip())
        return 0
    types = [t for t in args.types.split(",") if t]
    strict = VIRTIO_MSG_F_STRICT_CONFIG_GENERATION if args.strict else 0
    try:
        with _quiet_library_logs():
            if args.socket:
                report = run_driver_suite_socket(str(args.socket), types, first=args.first,
                                                 settle=args.settle_ms / 1000)
            elif args.kernel:
                report = _driver_kernel(args, types, files)
            else:
                report = run_driver_suite(types, BusParams(args.profile, args.max_size, strict),
                                          defect=args.broken)
    except (VirtioMsgError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.results = [r for r in report.results if wanted(r.scenario, r.ids)]
    return _emit(report, args)


def _link(args: argparse.Namespace, params: BusParams) -> DeviceLink:
    if args.builtin:
        from virtio_msg.bus.backend import Backend
        from virtio_msg.devices.catalog import make_device

        link = InProcessLink(params)
        backend = (BrokenBackend(args.broken, link.region, params) if args.broken
                   else Backend(link.region, params))
        link.attach(backend)
        for n, name in enumerate(t for t in args.builtin.split(",") if t):
            backend.serve(n, make_device(name))
        return link
    sock = SocketLink(args.connect or args.socket, params, listen=not args.connect)
    try:
        if args.connect:
            sock.connect(args.wait_ms / 1000)
        else:
            print(f"waiting for a backend at {sock.path}", file=sys.stderr, flush=True)
            sock.accept(args.wait_ms / 1000)
        sock.wait_devices(args.wait_ms / 1000, args.settle_ms / 1000)
    except BaseException:
        sock.close()
        raise
    return sock


def cmd_device(args: argparse.Namespace) -> int:
    """Run the device suite; print the lines and the summary; 1 if anything failed."""
    scenarios = select(args.pattern)
    if args.list:
        for s in scenarios:
            print(f"{s.name:30} [{','.join(s.ids)}] {s.title}")
        return 0
    if args.kernel:
        print("error: behind the kernel channel the kernel is the driver: there is no device "
              "side to check (use 'virtio-msg conformance driver')", file=sys.stderr)
        return 2
    if not args.socket and not args.connect and not args.builtin:
        print("error: give --socket PATH, --connect PATH or --builtin TYPES", file=sys.stderr)
        return 2
    if args.broken and not args.builtin:
        print("error: --broken needs --builtin", file=sys.stderr)
        return 2
    params = BusParams(args.profile, args.max_size,
                       VIRTIO_MSG_F_STRICT_CONFIG_GENERATION if args.strict else 0,
                       timeout_ms=args.timeout_ms)
    with _quiet_library_logs():  # device warnings are expected
        try:
            link = _link(args, params)
        except VirtioMsgError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            report = run_device_suite(link, link.devices, scenarios, timeout_ms=args.timeout_ms,
                                      silence_ms=args.silence_ms)
        finally:
            link.close()
    return _emit(report, args)


__all__ = ["add_parser", "cmd_device", "cmd_driver"]
