"""The main job in one process: a loopback bus, a backend with the devices, a report.

:func:`run_loopback` builds one bus per configuration, lets the in-process
backend ADD every configured device, lets the driver side probe and exercise
each one (the driver's ``selftest``), serves any vhost-user devices the same
way, and returns the facts ``virtio-msg run`` prints (see
:mod:`virtio_msg.compose.report`).  No protocol logic lives here: it only
composes the bus, the backend, device models and drivers.
"""

from __future__ import annotations

import logging
from typing import Any

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.capture import BusCapture, CaptureWriter
from virtio_msg.compose.config import RunConfig
from virtio_msg.compose.report import bus_report, combine
from virtio_msg.compose.vhost import run_vhost_devices
from virtio_msg.devices.catalog import make_device
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import feature_names

log = logging.getLogger(__name__)


def run_one(
    config: RunConfig, capture: CaptureWriter | None = None, index: int = 0
) -> dict[str, Any]:
    """Run one bus instance in this process and return its report.

    With ``capture``, every message of the bus is recorded as bus instance ``index``.
    """
    bus = LoopbackBus(config.params, size=config.size, base=config.base, name=config.name)
    if capture is not None:
        bus.capture = BusCapture(capture, index)
    results: list[dict[str, Any]] = []
    bus, backend, _channel = loopback_pair(bus)
    try:
        for dev_num, type_name in config.devices:
            result: dict[str, Any] = {"dev_num": dev_num, "type": type_name, "ok": False}
            results.append(result)
            try:
                model = make_device(type_name)
            except (VirtioMsgError, ValueError, OSError) as exc:
                result["error"] = f"backend: {exc}"
                continue
            try:
                backend.serve(dev_num, model)
            except (VirtioMsgError, ValueError) as exc:
                model.close()
                result["error"] = f"backend: {exc}"
                continue
            entry = bus.device(dev_num)
            if entry is None:
                result["error"] = "device vanished after ADD"
                continue
            result["type"] = entry.type_name
            result["features"] = feature_names(entry.transport.negotiated_features, entry.device_id)
            if entry.error or entry.driver is None:
                result["error"] = entry.error or "no driver bound"
                continue
            try:
                result["result"] = entry.driver.selftest()
                result["ok"] = True
            except VirtioMsgError as exc:
                result["error"] = str(exc)
        if config.vhost:
            results += run_vhost_devices(bus, backend, config.vhost)
        return bus_report(bus, config, results)
    finally:
        bus.close()
        for served in backend.devices.values():
            served.model.close()


def run_loopback(
    configs: list[RunConfig], capture: CaptureWriter | None = None
) -> dict[str, Any]:
    """Run every bus instance; the report says per device whether it worked."""
    return combine([run_one(c, capture, i) for i, c in enumerate(configs)])


__all__ = ["run_loopback", "run_one"]
