"""Base class of device drivers (driver side).

A driver sees only its :class:`~virtio_msg.transport.driver.DriverTransport`:
config ops and virtqueues, never messages (STYLE 8).  :meth:`Driver.probe`
implements the common part of initialization once: the transport's init
sequence, feature selection, the driver's queue setup, DRIVER_OK.  Before new
I/O a driver calls :meth:`Driver.ready_for_io`: after DEVICE_NEEDS_RESET it
resets the device and initializes it again (DRV-54); after an EVENT_CONFIG it
reads its configuration view again (:meth:`Driver.refresh_config`, DRV-09,
DRV-37, DRV-38).
"""

from __future__ import annotations

from typing import ClassVar

import virtio_msg.spec as C
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.transport.device import REQUIRED_FEATURES
from virtio_msg.transport.driver import DriverTransport

TRANSPORT_FEATURES = (
    (1 << C.VIRTIO_F_INDIRECT_DESC)
    | (1 << C.VIRTIO_F_EVENT_IDX)
    | (1 << C.VIRTIO_F_RING_RESET)
    | (1 << C.VIRTIO_F_RING_PACKED)
    | (1 << C.VIRTIO_F_IN_ORDER)
    | (1 << C.VIRTIO_F_NOTIFICATION_DATA)
)
"""Transport-level features every driver here can use (both ring kinds)."""
_PACKED = 1 << C.VIRTIO_F_RING_PACKED


class Driver:
    """Common driver behaviour; subclasses set :attr:`device_id` and :meth:`setup`."""

    device_id: ClassVar[int] = 0
    name: ClassVar[str] = "device"
    device_features: ClassVar[int] = 0
    """Device-type feature bits the driver understands."""

    def __init__(self, transport: DriverTransport, *, feature_mask: int = ~0) -> None:
        """Bind to ``transport``; ``feature_mask`` can veto features (for tests)."""
        self.transport = transport
        self.feature_mask = feature_mask

    @property
    def features(self) -> int:
        """Negotiated features."""
        return self.transport.negotiated_features

    def probe(self) -> None:
        """Initialize the device: features, queues, DRIVER_OK (FAILED on error)."""
        t = self.transport
        offered = t.initialize()
        if offered & REQUIRED_FEATURES != REQUIRED_FEATURES:
            t.fail()
            raise TransportError(
                "features",
                f"device {t.dev_num} does not offer VERSION_1 and ACCESS_PLATFORM: its "
                "rings could not live in the restricted pool",
            )
        wanted = (REQUIRED_FEATURES | TRANSPORT_FEATURES | self.device_features) & self.feature_mask
        ring = t.params.ring
        if ring == "split":
            wanted &= ~_PACKED
        elif ring == "packed" and not offered & wanted & _PACKED:
            t.fail()
            raise TransportError(
                "features",
                f"device {t.dev_num} does not offer VIRTIO_F_RING_PACKED, and this run "
                "forces packed rings",
            )
        t.finalize_features(offered & wanted)
        try:
            self.setup()
            t.driver_ok()
        except VirtioMsgError:
            t.fail()
            raise

    def setup(self) -> None:
        """Device-specific setup after FEATURES_OK: config reads, find_vqs."""

    def refresh_config(self) -> None:
        """Read the config fields the driver relies on again (after an EVENT_CONFIG)."""

    def recover(self) -> None:
        """Reset the device (status 0, queues freed) and initialize it again."""
        self.transport.del_vqs()
        self.probe()

    def ready_for_io(self) -> None:
        """Call before new I/O: recover from DEVICE_NEEDS_RESET, re-read a changed config."""
        t = self.transport
        if t.needs_reset and not t.removed:
            self.recover()  # DRV-54: write 0 and re-initialize before resuming I/O
        if t.engine.config_stale:
            t.engine.config_stale = False
            self.refresh_config()  # DRV-37: the config view is current before I/O

    def remove(self) -> None:
        """Tear down (the transport frees the queues)."""

    def selftest(self) -> dict[str, object]:
        """Exercise the device once and describe the result (for ``virtio-msg run``)."""
        return {}


__all__ = ["TRANSPORT_FEATURES", "Driver"]
