"""Device drivers (driver side), registered by virtio device type."""

from __future__ import annotations

from virtio_msg.drivers.base import TRANSPORT_FEATURES, Driver
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.drivers.rng import RngDriver

DRIVERS: dict[int, type[Driver]] = {cls.device_id: cls for cls in (RngDriver, BlkDriver)}
"""The built-in drivers by device id; a bus binds devices through this table."""

__all__ = ["DRIVERS", "TRANSPORT_FEATURES", "BlkDriver", "Driver", "RngDriver"]
