"""Device models (device side)."""

from __future__ import annotations

from virtio_msg.devices.blk import BlkDevice
from virtio_msg.devices.console import ConsoleDevice
from virtio_msg.devices.ds1338 import DS1338
from virtio_msg.devices.i2c import I2CDevice, I2CTarget
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.model import DeviceModel

__all__ = [
    "DS1338",
    "BlkDevice",
    "ConsoleDevice",
    "DeviceModel",
    "I2CDevice",
    "I2CTarget",
    "RngDevice",
]
