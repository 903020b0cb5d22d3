"""Device drivers (driver side), registered by virtio device type."""

from __future__ import annotations

from virtio_msg.drivers.base import TRANSPORT_FEATURES, Driver
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.console import ConsoleDriver
from virtio_msg.drivers.fs import FsDriver
from virtio_msg.drivers.i2c import DS1338Client, I2CDriver
from virtio_msg.drivers.net import NetDriver
from virtio_msg.drivers.rng import RngDriver

DRIVERS: dict[int, type[Driver]] = {
    cls.device_id: cls
    for cls in (RngDriver, BlkDriver, ConsoleDriver, I2CDriver, NetDriver, FsDriver)
}
"""The built-in drivers by device id; a bus binds devices through this table."""

__all__ = [
    "DRIVERS",
    "TRANSPORT_FEATURES",
    "BlkDriver",
    "ConsoleDriver",
    "DS1338Client",
    "Driver",
    "FsDriver",
    "I2CDriver",
    "NetDriver",
    "RngDriver",
]
