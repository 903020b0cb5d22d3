"""Either ring kind behind one interface: the protocols and the factories that pick a kind.

Device models and drivers are written once against :class:`DeviceRing` and
:class:`DriverRing`; the transports build a split or a packed queue with
:func:`create_device_queue` / :func:`create_driver_queue` according to
whether VIRTIO_F_RING_PACKED was negotiated.  The two kinds differ only in
their layouts (``layout``) and in how their positions read (``next_avail``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import VIRTIO_F_RING_PACKED, VQ_MAX_SIZE
from virtio_msg.virtqueue.chain import DescriptorChain
from virtio_msg.virtqueue.device import DeviceQueue
from virtio_msg.virtqueue.driver import DriverQueue
from virtio_msg.virtqueue.errors import DeviceLied, DriverViolation
from virtio_msg.virtqueue.packed_device import PackedDeviceQueue
from virtio_msg.virtqueue.packed_driver import PackedDriverQueue

__all__ = [
    "DeviceRing",
    "DriverRing",
    "create_device_queue",
    "create_driver_queue",
    "driver_queue_size",
    "is_packed",
]

Buffer = bytes | bytearray | memoryview


class DeviceRing(Protocol):
    """What a device model uses of a device-side queue, split or packed."""

    @property
    def size(self) -> int:
        """Number of descriptors."""

    @property
    def features(self) -> int:
        """The negotiated features the queue was created with."""

    @property
    def broken(self) -> bool:
        """Whether a driver violation broke the queue."""

    @property
    def broken_reason(self) -> DriverViolation | None:
        """The violation that broke the queue, if any."""

    @property
    def in_flight(self) -> int:
        """Chains popped and not yet given to ``add_used``."""

    def pop(self) -> DescriptorChain | None:
        """The next available chain, validated, or None."""

    def add_used(self, head: int, written_len: int) -> None:
        """Return chain ``head`` with ``written_len`` bytes written."""

    def needs_notification(self) -> bool:
        """Whether the driver wants EVENT_USED for what was used since the last call."""

    def disable_notification(self) -> None:
        """Ask the driver not to send EVENT_AVAIL."""

    def enable_notification(self) -> bool:
        """Ask for EVENT_AVAIL again; True if buffers are already pending."""

    def has_available(self) -> bool:
        """Whether a chain is available to pop."""

    def check_notification(self, next_offset: int) -> None:
        """Check EVENT_AVAIL notification data against the ring (raises a violation)."""


class DriverRing(Protocol):
    """What a driver uses of a driver-side queue, split or packed."""

    @property
    def index(self) -> int:
        """The virtqueue index."""

    @property
    def size(self) -> int:
        """Number of descriptors."""

    @property
    def features(self) -> int:
        """The negotiated features."""

    @property
    def desc_addr(self) -> int:
        """SET_VQUEUE ``desc_addr``."""

    @property
    def driver_addr(self) -> int:
        """SET_VQUEUE ``driver_addr``."""

    @property
    def device_addr(self) -> int:
        """SET_VQUEUE ``device_addr``."""

    @property
    def num_free(self) -> int:
        """Free descriptors."""

    @property
    def outstanding(self) -> int:
        """Chains made available and not yet reaped."""

    @property
    def notification_data(self) -> int:
        """EVENT_AVAIL ``next_offset`` with VIRTIO_F_NOTIFICATION_DATA."""

    @property
    def broken(self) -> bool:
        """Whether the device lied."""

    @property
    def broken_reason(self) -> DeviceLied | None:
        """The lie that broke the queue, if any."""

    def add(self, readable: Sequence[Buffer], writable: Sequence[int], token: object) -> None:
        """Make one chain available at the next ``kick_prepare``."""

    def kick_prepare(self) -> bool:
        """Publish added chains; True if the device wants EVENT_AVAIL."""

    def pop_used(self) -> tuple[object, bytes] | None:
        """Reap one used chain."""

    def get_used(self) -> list[tuple[object, bytes]]:
        """Reap every used chain now visible."""

    def get_used_parts(self) -> list[tuple[object, list[bytes]]]:
        """Reap every used chain now visible, the written bytes per writable buffer."""

    def disable_callbacks(self) -> None:
        """Ask the device not to send EVENT_USED."""

    def enable_callbacks(self) -> bool:
        """Ask for EVENT_USED again; True if used chains are pending."""

    def detach_unused(self) -> list[object]:
        """Take back every outstanding chain; returns their tokens."""

    def reset(self) -> list[object]:
        """Detach everything and start over."""

    def close(self) -> list[object]:
        """Detach everything and free the rings."""


def is_packed(features: int) -> bool:
    """Whether ``features`` select packed rings (VIRTIO_F_RING_PACKED)."""
    return bool(features >> VIRTIO_F_RING_PACKED & 1)


def create_device_queue(
    region: Region,
    size: int,
    desc_addr: int,
    driver_addr: int,
    device_addr: int,
    features: int,
    max_size: int = VQ_MAX_SIZE,
) -> DeviceQueue | PackedDeviceQueue:
    """Validate untrusted SET_VQUEUE parameters and build the kind ``features`` select."""
    if is_packed(features):
        return PackedDeviceQueue.create(
            region, size, desc_addr, driver_addr, device_addr, features, max_size
        )
    return DeviceQueue.create(
        region, size, desc_addr, driver_addr, device_addr, features, max_size
    )


def driver_queue_size(features: int, wanted: int, max_size: int) -> int:
    """The ring size a driver asks for: ``min(wanted, max_size)``, a power of two if split."""
    size = min(wanted, max_size)
    if is_packed(features):
        return size
    return 1 << (size.bit_length() - 1)


def create_driver_queue(
    pool: DmaPool, index: int, size: int, features: int
) -> DriverQueue | PackedDriverQueue:
    """Allocate a driver-side queue of the kind ``features`` select."""
    if is_packed(features):
        return PackedDriverQueue(pool, index, size, features)
    return DriverQueue(pool, index, size, features)
