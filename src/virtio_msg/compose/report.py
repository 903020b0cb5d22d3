"""The facts of a run, as ``virtio-msg run`` reports them: one dict per bus, then combined.

:func:`bus_report` reads what a bus counted (messages by id, drops, pool use,
request latency) next to the per-device results a composition collected, and
:func:`combine` sums several bus reports into the run report.  Plain data in,
plain data out: the same report comes from an in-process run and a run over
the socket, vhost-user devices included.
"""

from __future__ import annotations

from typing import Any

from virtio_msg.bus import LoopbackBus
from virtio_msg.compose.config import RunConfig


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


__all__ = ["bus_report", "combine", "percentile"]
