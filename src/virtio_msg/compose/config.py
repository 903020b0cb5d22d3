"""What a run is made of: bus instances with their region, wire parameters and devices.

:class:`RunConfig` describes one bus instance to compose (from the embedded
default, a device tree through :func:`from_tree`, or code), and
:func:`parse_device_specs` reads the ``[N:]TYPE`` device lists the commands
take.  Nothing here builds a bus; :mod:`virtio_msg.compose.loopback` and
:mod:`virtio_msg.compose.socket` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE
from virtio_msg.compose.vhost import VhostSpec
from virtio_msg.devices.catalog import CATALOG
from virtio_msg.dt import LoopbackConfig, min_pool_size
from virtio_msg.errors import ConfigError
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile

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
    vhost: tuple[tuple[int, VhostSpec], ...] = ()
    """Extra devices served by vhost-user back ends: (dev_num, spec)."""


def from_tree(
    config: LoopbackConfig,
    *,
    profile: Profile | str | None = None,
    max_msg_size: int | None = None,
    timeout_ms: int | None = None,
    ring: str = "auto",
) -> RunConfig:
    """Turn one device-tree bus instance into a RunConfig; arguments override the tree.

    ``ring`` is the ring kind drivers use (``auto``, ``split``, ``packed``;
    see :attr:`~virtio_msg.transport.params.BusParams.ring`).

    Raises :class:`~virtio_msg.errors.ConfigError` when the instance's pool
    is too small for the devices the run would create (the tree itself may
    still be valid: ``dt check`` only warns).
    """
    need = min_pool_size(len(config.devices))
    if config.size < need:
        raise ConfigError(
            f"{config.node_path}: its pool ({config.pool_path}, {config.size:#x} bytes) is too "
            f"small for the {len(config.devices)} device(s) this run creates: they need at "
            f"least {need:#x} ({need // 1024} KiB); grow the pool's reg or list fewer devices "
            "in virtio,devices"
        )
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
        ring=ring,
    )
    return RunConfig(
        name=config.node_path,
        base=config.base,
        size=config.size,
        params=params,
        devices=tuple((d.dev_num, d.type) for d in config.devices),
    )


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


__all__ = ["DEFAULT_DEVICES", "RunConfig", "from_tree", "parse_device_specs"]
