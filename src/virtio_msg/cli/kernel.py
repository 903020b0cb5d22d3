"""``virtio-msg backend --kernel``: serve built-in devices to the kernel's virtio-msg loopback.

``virtio-msg backend --kernel [--lb PATH] [--dev-dir DIR | --msg-dev PATH]
[--dt-root DIR] [--base ADDR] [--size N] [N:]TYPE[=IMAGE] ...`` opens the seed
kernel's ``/dev/virtio-msg-lb`` and ``/dev/virtio-msg-0``, maps the region
(its base from the live device tree unless ``--base`` gives it), ADDs each
device (the kernel's own drivers probe it while ADD runs) and serves them
until SIGINT or SIGTERM, then REMOVEs them and exits 0 (1 if a device could
not be added or removed).  Devices use the ``backend --socket`` syntax;
``blk=IMAGE`` (or ``N:blk=IMAGE``) serves an image file; ``--capture FILE``
records every 44-byte buffer read from and written to the message device.  The work is
:class:`virtio_msg.bus.kernel.KernelChannel`; docs/kernel.md explains it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtio_msg.bus.kernel import (
    DEFAULT_LB_PATH,
    DEFAULT_SYSFS_DIR,
    DeviceFiles,
    KernelChannel,
    KernelError,
    KernelFiles,
)
from virtio_msg.cli.capture_args import close_capture, open_capture
from virtio_msg.cli.common import (
    Output,
    add_deprecated_alias,
    parse_int,
    parse_size,
    stop_on_signals,
)
from virtio_msg.compose.config import DEFAULT_DEVICES, parse_device_specs
from virtio_msg.devices.catalog import make_device
from virtio_msg.dt.live import LIVE_TREE, kernel_region
from virtio_msg.errors import ConfigError, VirtioMsgError
from virtio_msg.transport.model import DeviceModel

__all__ = [
    "add_kernel_arguments",
    "cmd_backend_kernel",
    "parse_kernel_devices",
    "reader_wakeup",
    "serve_kernel",
]

WAIT_SLICE = 0.5
"""The serving loop re-checks for a stop request this often, seconds."""


def parse_kernel_devices(items: Sequence[str]) -> list[tuple[int, str, Path | None]]:
    """Parse ``[N:]TYPE[=IMAGE]`` items; ValueError names a bad one.

    Numbers are assigned as by ``backend --socket``; only ``blk`` takes an image.
    """
    bare: list[str] = []
    images: list[Path | None] = []
    for item in items:
        spec, sep, image = item.partition("=")
        if sep and not image:
            raise ValueError(f"device {item!r}: empty image path after '='")
        bare.append(spec)
        images.append(Path(image) if sep else None)
    out: list[tuple[int, str, Path | None]] = []
    for (dev_num, type_name), image_path in zip(parse_device_specs(bare), images, strict=True):
        if image_path is not None and type_name != "blk":
            raise ValueError(f"device {dev_num} ({type_name}): only blk takes =IMAGE")
        out.append((dev_num, type_name, image_path))
    return out


def _model(type_name: str, image: Path | None) -> DeviceModel:
    if image is None:
        return make_device(type_name)
    if not image.is_file():
        raise ValueError(f"blk image {image} is not a file")
    return make_device(type_name, path=image)


def serve_kernel(
    channel: KernelChannel,
    devices: Sequence[tuple[int, str, Path | None]],
    out: Output,
    stop: threading.Event,
) -> int:
    """ADD ``devices`` on ``channel``, serve until ``stop`` is set, then close the channel.

    Return 0 if every device was added and removed, 1 otherwise (each failure
    is printed).
    """
    failed = 0
    models: list[DeviceModel] = []
    try:
        for dev_num, type_name, image in devices:
            if stop.is_set():
                break
            try:
                model = _model(type_name, image)
            except (VirtioMsgError, ValueError, OSError) as exc:
                failed += 1
                out.error(f"device {dev_num} ({type_name}): {exc}")
                continue
            try:
                channel.serve(dev_num, model)
            except (VirtioMsgError, ValueError) as exc:
                model.close()
                failed += 1
                out.error(f"device {dev_num} ({type_name}): {exc}")
                continue
            models.append(model)
            out.emit(
                f"device {dev_num} added: {type_name}",
                event="added",
                dev_num=dev_num,
                type=type_name,
            )
        if models:
            while not stop.wait(WAIT_SLICE):
                pass
    finally:
        served = channel.devices
        try:
            channel.close()
        except KernelError as exc:
            failed += 1
            out.error(str(exc))
        else:
            for dev_num in served:
                out.emit(f"device {dev_num} removed", event="removed", dev_num=dev_num)
        for model in models:
            model.close()
    out.emit(
        f"kernel channel closed: {dict(channel.stats)}", event="closed", stats=dict(channel.stats)
    )
    return 1 if failed or not models else 0


def _region(args: argparse.Namespace, out: Output) -> tuple[int, int | None]:
    if args.base is not None:
        return args.base, args.size
    region = kernel_region(args.dt_root)
    how = 'the seed\'s legacy node "vmsglb"' if region.legacy else "the virtio,msg-loopback node"
    out.emit(
        f"region {region.base:#x} + {region.size:#x} from {region.node} ({how})",
        event="region",
        base=region.base,
        size=region.size,
        node=region.node,
        legacy=region.legacy,
    )
    return region.base, args.size if args.size is not None else region.size


def cmd_backend_kernel(args: argparse.Namespace, files: KernelFiles | None = None) -> int:
    """Run ``backend --kernel`` (``files`` replaces the real device files in tests)."""
    out = Output(args.json, args.quiet)
    try:
        items = list(args.device or []) + list(args.devices or [])
        devices = parse_kernel_devices(items or [f"{n}:{t}" for n, t in DEFAULT_DEVICES])
    except ValueError as exc:
        out.error(str(exc))
        return 2
    try:
        base, size = _region(args, out)
    except ConfigError as exc:
        out.error(str(exc))
        return 2
    msg_path = args.msg_dev or str(Path(args.dev_dir) / "virtio-msg-0")
    lb_path = args.lb or str(Path(args.dev_dir) / "virtio-msg-lb")
    if files is None:
        files = DeviceFiles(lb_path, msg_path, args.sysfs_dir)
    stop = threading.Event()
    capture = open_capture(args)  # ConfigError: reported by main
    try:
        with stop_on_signals(stop):
            reader_wakeup()
            try:
                channel = KernelChannel(
                    files, base, size, op_timeout_s=args.op_timeout, capture=capture
                )
            except FileNotFoundError as exc:
                out.error(
                    f"kernel channel: {exc.filename} does not exist: the kernel needs "
                    "CONFIG_VIRTIO_MSG_LOOPBACK (with VIRTIO_MSG, VIRTIO_MSG_USER) and a "
                    "restricted-dma-pool named vmsglb (docs/kernel.md)"
                )
                return 1
            except (KernelError, OSError) as exc:
                out.error(f"kernel channel ({lb_path}, {msg_path}): {exc}")
                return 1
            out.emit(
                f"kernel channel on {lb_path} and {msg_path}: region {base:#x} + "
                f"{channel.region.size:#x}",
                event="open",
                lb=lb_path,
                msg=msg_path,
                base=base,
                size=channel.region.size,
            )
            return serve_kernel(channel, devices, out, stop)
    finally:
        close_capture(capture)


def reader_wakeup() -> None:
    """Install a no-op SIGUSR1 handler: the channel's reader is woken with it at exit."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)


def add_kernel_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--kernel`` options of ``virtio-msg backend``."""
    g = p.add_argument_group("kernel channel (--kernel)")
    g.add_argument(
        "--kernel",
        action="store_true",
        help="serve the running kernel's virtio-msg loopback (the seed's /dev/virtio-msg-lb) "
        "instead of a bus socket",
    )
    g.add_argument(
        "--dev-dir",
        default=str(Path(DEFAULT_LB_PATH).parent),
        metavar="DIR",
        help="where the device files are (default /dev)",
    )
    g.add_argument("--lb", default=None, metavar="PATH", help="default DIR/virtio-msg-lb")
    msg_dev = g.add_argument(
        "--msg-dev", default=None, metavar="PATH", help="default DIR/virtio-msg-0"
    )
    # --msg is trace's message-name filter: here it was this device file.
    add_deprecated_alias(g, "--msg", msg_dev)
    g.add_argument(
        "--dt-root",
        default=LIVE_TREE,
        metavar="DIR",
        help=f"the live device tree the region is read from (default {LIVE_TREE})",
    )
    g.add_argument(
        "--base",
        type=parse_int,
        default=None,
        metavar="ADDR",
        help="the region's bus address (default: from the device tree)",
    )
    g.add_argument(
        "--size",
        type=parse_size,
        default=None,
        metavar="N",
        help="the region's size (4M, 0x400000, ...); must match what the device maps "
        "(default: the device's)",
    )
    g.add_argument(
        "--device",
        action="append",
        metavar="[N:]TYPE[=IMAGE]",
        help="a device to serve (repeatable; same as the positionals)",
    )
    g.add_argument("--sysfs-dir", default=DEFAULT_SYSFS_DIR, help=argparse.SUPPRESS)
    g.add_argument(
        "--op-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="bound on each ADD and REMOVE (default 60 s)",
    )


def kernel_requested(args: Any) -> bool:
    """Whether the parsed ``backend`` arguments ask for the kernel channel."""
    return bool(getattr(args, "kernel", False))
