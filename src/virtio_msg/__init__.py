"""virtio-msg in user space.

The message-based virtio transport ("virtio-msg"): a strict wire codec for the
newest spec draft and for the seed's Linux RFC v1 layout, driver-side and
device-side transports, a loopback bus whose DMA is confined to one shared
region with a restricted pool, device models and drivers.
"""

from __future__ import annotations

from virtio_msg.errors import (
    BusError,
    ConfigError,
    DeviceBroken,
    EncodeError,
    MalformedMessage,
    MemoryAccessError,
    TransportError,
    VirtioMsgError,
    VirtqueueError,
)

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "ConfigError",
    "DeviceBroken",
    "EncodeError",
    "MalformedMessage",
    "MemoryAccessError",
    "TransportError",
    "VirtioMsgError",
    "VirtqueueError",
    "__version__",
]
