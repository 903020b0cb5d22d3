"""The built-in device models by short type name, for configuration and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from virtio_msg.devices.blk import BlkDevice
from virtio_msg.devices.console import ConsoleDevice
from virtio_msg.devices.i2c import I2CDevice
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.model import DeviceModel

DeviceFactory = Callable[..., DeviceModel]

CATALOG: dict[str, DeviceFactory] = {
    "rng": RngDevice,
    "blk": BlkDevice,
    "console": ConsoleDevice,
    "i2c": I2CDevice,
}
"""Factories of the built-in device models, keyed by the short type name."""


def make_device(type_name: str, **options: Any) -> DeviceModel:
    """Create a built-in device model; ValueError names the known types if unknown."""
    try:
        factory = CATALOG[type_name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(f"unknown device type {type_name!r} (built-in: {known})") from None
    return factory(**options)


__all__ = ["CATALOG", "DeviceFactory", "make_device"]
