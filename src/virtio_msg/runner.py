"""The main job: a loopback bus, a backend with the built-in devices, a report.

:func:`run_loopback` builds one bus per configuration, lets the backend ADD
every configured device, lets the driver side probe and exercise each one
(the driver's ``selftest``), and collects the facts ``virtio-msg run`` prints:
per device number, type, negotiated features and result; messages by id; pool
use; request latency percentiles.  No protocol logic lives here: it only
composes the bus, the backend, device models and drivers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE
from virtio_msg.devices.catalog import make_device
from virtio_msg.dt import LoopbackConfig
from virtio_msg.errors import VirtioMsgError
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile

log = logging.getLogger(__name__)

DEFAULT_DEVICES: tuple[tuple[int, str], ...] = ((0, "rng"), (1, "blk"), (2, "console"), (3, "i2c"))
"""Built-in devices of the embedded default: (device number, type)."""


@dataclass(frozen=True)
class RunConfig:
    """One bus instance to run: region, wire parameters and devices."""

    name: str = "loopback0"
    base: int = DEFAULT_BASE
    size: int = DEFAULT_SIZE
    params: BusParams = field(default_factory=BusParams)
    devices: tuple[tuple[int, str], ...] = DEFAULT_DEVICES
    vhost: tuple[tuple[int, Any], ...] = ()
    """Extra devices served by vhost-user back ends: (dev_num, vhost_cli.VhostSpec)."""


def from_tree(
    config: LoopbackConfig,
    *,
    profile: Profile | str | None = None,
    max_msg_size: int | None = None,
    timeout_ms: int | None = None,
) -> RunConfig:
    """Turn one device-tree bus instance into a RunConfig; arguments override the tree."""
    if profile is not None and Profile(profile) != config.profile:
        # A different profile: the tree's size was chosen for the tree's profile.
        size = max_msg_size
    else:
        size = max_msg_size if max_msg_size is not None else config.max_msg_size
    params = BusParams(
        config.profile if profile is None else profile,
        size,
        config.transport_features if profile is None or profile == config.profile else 0,
        timeout_ms=config.timeout_ms if timeout_ms is None else timeout_ms,
    )
    return RunConfig(
        name=config.node_path,
        base=config.base,
        size=config.size,
        params=params,
        devices=tuple((d.dev_num, d.type) for d in config.devices),
    )


def feature_names(features: int, device_id: int = 0) -> list[str]:
    """Readable names of the feature bits set in ``features`` (device type aware)."""
    table = {**C.DEVICE_FEATURE_NAMES.get(device_id, {}), **C.FEATURE_NAMES}
    names = [name for bit, name in sorted(table.items()) if features >> bit & 1]
    other = features & ~sum(1 << bit for bit in table)
    if other:
        names.append(f"device:{other:#x}")
    return names


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by nearest rank; 0.0 if empty."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


def bus_report(
    bus: LoopbackBus, config: RunConfig, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The facts of one bus run: devices, messages by id, drops, pool use, latency."""
    stats = bus.pool.stats()
    lat = list(bus.latencies)
    messages: dict[str, int] = {}
    for name, n in (bus.sent + bus.received).items():
        messages[name] = n
    return {
        "name": config.name,
        "profile": bus.params.profile.value,
        "max_msg_size": bus.params.max_size,
        "region": {"base": bus.region.base, "size": bus.region.size},
        "devices": results,
        "messages": dict(sorted(messages.items())),
        "dropped": dict(bus.dropped),
        "pool": {
            "slots_total": stats.slots_total,
            "slots_used": stats.slots_used,
            "high_water": stats.high_water,
            "live_mappings": stats.live_mappings,
            "bytes_bounced_to_device": stats.bytes_bounced_to_device,
            "bytes_bounced_from_device": stats.bytes_bounced_from_device,
        },
        "latency_us": {
            "requests": len(lat),
            "p50": round(percentile(lat, 0.50) * 1e6, 1),
            "p99": round(percentile(lat, 0.99) * 1e6, 1),
        },
    }


def run_one(config: RunConfig) -> dict[str, Any]:
    """Run one bus instance in this process and return its report."""
    bus = LoopbackBus(config.params, size=config.size, base=config.base, name=config.name)
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
            from virtio_msg.vhost_cli import run_vhost_devices

            results += run_vhost_devices(bus, backend, config.vhost)
        return bus_report(bus, config, results)
    finally:
        bus.close()
        for served in backend.devices.values():
            served.model.close()


def combine(buses: list[dict[str, Any]]) -> dict[str, Any]:
    """The run report over several bus reports: all devices, summed messages and pool use."""
    devices = [d for b in buses for d in b["devices"]]
    messages: dict[str, int] = {}
    pool: dict[str, int] = {}
    for b in buses:
        for key, n in b["messages"].items():
            messages[key] = messages.get(key, 0) + n
        for key, n in b["pool"].items():
            pool[key] = pool.get(key, 0) + n
    return {
        "ok": bool(devices) and all(d["ok"] for d in devices),
        "devices": devices,
        "messages": dict(sorted(messages.items())),
        "pool": pool,
        "latency_us": buses[0]["latency_us"] if len(buses) == 1 else None,
        "buses": buses,
    }


def run_loopback(configs: list[RunConfig]) -> dict[str, Any]:
    """Run every bus instance; the report says per device whether it worked."""
    return combine([run_one(c) for c in configs])


__all__ = [
    "DEFAULT_DEVICES",
    "RunConfig",
    "bus_report",
    "combine",
    "feature_names",
    "from_tree",
    "percentile",
    "run_loopback",
    "run_one",
]
