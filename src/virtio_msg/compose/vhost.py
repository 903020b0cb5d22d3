"""vhost-user devices in a run: what to connect to, and serving them on a bus.

:class:`VhostSpec` names one vhost-user back end (its socket) and the device
options; :func:`parse_vhost_spec` reads the ``socket=PATH[,type=T]...`` form
the commands take and :func:`assign_numbers` gives each a device number.
:func:`run_vhost_devices` serves each device on a bus through a backend,
runs its driver's self-test, withdraws it, and returns one result per device
in the run report's format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from virtio_msg.bus import Backend, LoopbackBus
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import feature_names
from virtio_msg.vhost import PROFILES, OptionError, VhostUserDevice
from virtio_msg.vhost.device import DEFAULT_FS_TAG, DEFAULT_QUEUE_SIZE
from virtio_msg.vhost.frontend import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT


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


def parse_int(text: str, what: str, low: int, high: int) -> int:
    """``text`` as an integer (any base prefix) in ``low..high``; OptionError naming ``what``."""
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
        dev_num=None if dev_num is None else parse_int(dev_num, "device number", 0, 0xFFFF),
        mac=fields.get("mac"),
        tag=fields.get("tag"),
        queues=None if queues is None else parse_int(queues, "queue count", 1, 64),
        queue_size=parse_int(
            fields.get("queue-size", str(DEFAULT_QUEUE_SIZE)), "queue size", 1, 32768
        ),
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


def run_vhost_devices(
    bus: LoopbackBus, backend: Backend, specs: Sequence[tuple[int, VhostSpec]]
) -> list[dict[str, Any]]:
    """Serve each vhost-user device on ``bus``, run its driver's self-test, withdraw it.

    Returns one result per device in :func:`virtio_msg.compose.loopback.run_one`'s
    format (``dev_num``, ``type``, ``ok``, ``features``, ``result`` or
    ``error``), plus ``socket``.  Every device is withdrawn and closed before
    this returns, whatever happened.
    """
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


__all__ = ["VhostSpec", "assign_numbers", "parse_int", "parse_vhost_spec", "run_vhost_devices"]
