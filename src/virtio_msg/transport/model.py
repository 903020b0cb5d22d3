"""Device models: the base class a device implements, and what it may call back.

:class:`DeviceModel` is the device-specific half of a virtio device: offered
features, config bytes, queue limits and the hooks the transport engine calls
(``activate``, ``queue_notify``, ``reset``, ...).  :class:`ModelHost` is the
narrow set of services a model may call on the engine it is attached to
(:class:`~virtio_msg.transport.device.DeviceTransport` provides them), so this
module does not depend on the engine.  The feature constants every device
offers (:data:`REQUIRED_FEATURES`, :data:`RING_FEATURES`) live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import virtio_msg.spec as C
from virtio_msg.errors import VirtioMsgError
from virtio_msg.virtqueue import DeviceRing
from virtio_msg.wire import Message

if TYPE_CHECKING:
    from virtio_msg.memory import Region


class ModelHost(Protocol):
    """The engine services a :class:`DeviceModel` calls (its ``transport``)."""

    emit: Callable[[Message], None]
    """Sends a device-originated event; replaceable (tests wrap it to observe events)."""
    last_error: str | None
    """Why the device last entered DEVICE_NEEDS_RESET (None if it never did)."""

    @property
    def negotiated_features(self) -> int:
        """Features accepted at FEATURES_OK (0 before)."""

    @property
    def region(self) -> Region:
        """The shared region the device reads and writes buffers in."""

    def live_queue(self, index: int) -> DeviceRing | None:
        """The live device-side queue ``index``, if enabled and activated."""

    def notify_used(self, index: int) -> None:
        """Queue ``index`` has new used buffers (EVENT_USED if the ring asks for one)."""

    def signal_used(self, index: int) -> None:
        """Send EVENT_USED for queue ``index`` without consulting the ring."""

    def update_config(self, offset: int, data: bytes) -> None:
        """Change config bytes and report it with EVENT_CONFIG."""

    def needs_reset(self, reason: str) -> None:
        """Enter DEVICE_NEEDS_RESET because of ``reason``."""


VENDOR_ID = 0x4D56_5950
"""Vendor id our device models report ("PYVM" as little-endian ASCII)."""

REQUIRED_FEATURES = (1 << C.VIRTIO_F_VERSION_1) | (1 << C.VIRTIO_F_ACCESS_PLATFORM)
"""Every device offers these and refuses FEATURES_OK without them (ARCHITECTURE 4)."""

RING_FEATURES = (
    (1 << C.VIRTIO_F_INDIRECT_DESC)
    | (1 << C.VIRTIO_F_EVENT_IDX)
    | (1 << C.VIRTIO_F_RING_RESET)
    | (1 << C.VIRTIO_F_RING_PACKED)
    | (1 << C.VIRTIO_F_IN_ORDER)
    | (1 << C.VIRTIO_F_NOTIFICATION_DATA)
)
"""Ring features the transport implements for every device (offered unless disabled):
indirect descriptors, EVENT_IDX, ring reset, packed rings, in-order use and
notification data."""


class DeviceModel:
    """Base class of device models: the device-specific half of a virtio device.

    Subclasses set :attr:`device_id`, pass their offered feature bits, config
    bytes and queue limits to ``__init__``, and override the hooks they need.
    The transport engine calls the hooks; models call back into the engine
    through :meth:`notify_used`, :meth:`update_config` and :meth:`fail`.
    """

    device_id: int = 0
    """Virtio device type (GET_DEVICE_INFO ``device_id``)."""
    vendor_id: int = VENDOR_ID
    name: str = "device"
    """Short type name for summaries ("rng", "blk", ...)."""

    def __init__(
        self,
        *,
        features: int = 0,
        config: bytes = b"",
        num_queues: int = 1,
        queue_max_size: int | tuple[int, ...] = 256,
        uuid: bytes = bytes(16),
        writable_config: tuple[tuple[int, int], ...] = (),
        shm: dict[int, tuple[int, int]] | None = None,
        ring_features: int = RING_FEATURES,
    ) -> None:
        """Describe the device: offered features, config bytes, queue limits, shm regions.

        ``ring_features`` (default: indirect descriptors, EVENT_IDX, ring reset)
        are offered on top of ``features``; pass 0 to offer none of them.
        """
        if len(uuid) != 16:
            raise ValueError("uuid must be 16 bytes")
        if not 0 <= num_queues <= C.MAX_VIRTQUEUES:
            raise ValueError(f"num_queues {num_queues} out of range")
        features |= REQUIRED_FEATURES | (ring_features & RING_FEATURES)
        if features & (1 << C.VIRTIO_F_NOTIF_CONFIG_DATA):
            raise ValueError("virtio-msg devices must not offer VIRTIO_F_NOTIF_CONFIG_DATA")
        self.offered_features = features
        self.config = bytearray(config)
        self.num_queues = num_queues
        if isinstance(queue_max_size, int):
            queue_max_size = (queue_max_size,) * num_queues
        if len(queue_max_size) != num_queues:
            raise ValueError("one queue_max_size per queue")
        self.queue_max_sizes = queue_max_size
        self.uuid = bytes(uuid)
        self.writable_config = writable_config
        self.shm = dict(shm or {})
        self.transport: ModelHost | None = None

    # --- hooks (override) -----------------------------------------------------

    def validate_features(self, features: int) -> bool:
        """Return False to refuse a driver-selected feature set at FEATURES_OK."""
        return True

    def activate(self) -> None:
        """Called when the driver sets DRIVER_OK; queues are ready."""

    def reset(self) -> None:
        """Called when the device is reset (status 0); drop all device state."""

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Process available buffers of queue ``index`` (after DRIVER_OK only)."""

    def queue_reset(self, index: int) -> None:
        """Called when queue ``index`` is reset by RESET_VQUEUE."""

    def close(self) -> None:
        """Release what the model holds (files, worker state); called when it is retired."""

    def config_write(self, offset: int, data: bytes) -> bool:
        """Apply a driver write all-or-nothing; default: only declared writable ranges."""
        end = offset + len(data)
        for start, length in self.writable_config:
            if start <= offset and end <= start + length:
                self.config[offset:end] = data
                return True
        return False

    # --- services (call) --------------------------------------------------------

    @property
    def negotiated_features(self) -> int:
        """Features accepted at FEATURES_OK (0 before)."""
        return self.transport.negotiated_features if self.transport else 0

    def has_feature(self, bit: int) -> bool:
        """True if feature bit ``bit`` was negotiated."""
        return bool(self.negotiated_features >> bit & 1)

    @property
    def region(self) -> Region:
        """The shared region, for reading and writing buffers by bus address."""
        if self.transport is None:
            raise VirtioMsgError("device model is not attached to a transport")
        return self.transport.region

    def queue(self, index: int) -> DeviceRing | None:
        """The live device-side queue ``index``, if enabled and activated."""
        return self.transport.live_queue(index) if self.transport else None

    def notify_used(self, index: int) -> None:
        """Tell the engine that queue ``index`` has new used buffers."""
        if self.transport is not None:
            self.transport.notify_used(index)

    def signal_used(self, index: int) -> None:
        """Send EVENT_USED for queue ``index`` without consulting the ring (see engine)."""
        if self.transport is not None:
            self.transport.signal_used(index)

    def update_config(self, offset: int, data: bytes) -> None:
        """Change config bytes from the device side and report it with EVENT_CONFIG."""
        if self.transport is not None:
            self.transport.update_config(offset, data)
        else:
            self.config[offset : offset + len(data)] = data

    def fail(self, reason: str) -> None:
        """Enter DEVICE_NEEDS_RESET (reported to the driver) because of ``reason``."""
        if self.transport is not None:
            self.transport.needs_reset(reason)


__all__ = ["REQUIRED_FEATURES", "RING_FEATURES", "VENDOR_ID", "DeviceModel", "ModelHost"]
