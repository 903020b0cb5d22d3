"""Device models (device side)."""

from __future__ import annotations

from virtio_msg.devices.blk import BlkDevice
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.device import DeviceModel

__all__ = ["BlkDevice", "DeviceModel", "RngDevice"]
