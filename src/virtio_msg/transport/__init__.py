"""The virtio-msg transport: driver-side and device-side protocol engines."""

from __future__ import annotations

from virtio_msg.transport.device import DeviceTransport
from virtio_msg.transport.driver import DriverTransport
from virtio_msg.transport.engine import (
    DeviceInfo,
    DriverEngine,
    FeaturesRefused,
    ProtocolViolation,
    QueueSetupFailed,
    VqueueInfo,
    run_sync,
)
from virtio_msg.transport.model import REQUIRED_FEATURES, DeviceModel
from virtio_msg.transport.params import BusParams

__all__ = [
    "REQUIRED_FEATURES",
    "BusParams",
    "DeviceInfo",
    "DeviceModel",
    "DeviceTransport",
    "DriverEngine",
    "DriverTransport",
    "FeaturesRefused",
    "ProtocolViolation",
    "QueueSetupFailed",
    "VqueueInfo",
    "run_sync",
]
