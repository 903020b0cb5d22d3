"""The loopback bus and its channels."""

from __future__ import annotations

from virtio_msg.bus.backend import Backend, BusPort
from virtio_msg.bus.inprocess import InProcessChannel, loopback_pair
from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE, Channel, DeviceEntry, LoopbackBus

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_SIZE",
    "Backend",
    "BusPort",
    "Channel",
    "DeviceEntry",
    "InProcessChannel",
    "LoopbackBus",
    "loopback_pair",
]
