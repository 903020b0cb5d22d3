"""Virtqueue errors: one class per rule, grouped by who broke it.

Strategy: every rule the device side enforces on untrusted ring contents has
its own subclass of :class:`DriverViolation`, so tests and logs name the rule
rather than a message string; every lie the driver side detects in the used
ring is a subclass of :class:`DeviceLied`.  Both sides mark the queue broken
when they raise one, and from then on raise :class:`QueueBroken` until the
queue is reset (sticky failure, STYLE principle 4).  Each class cites the
virtio 1.x section whose MUST it checks.
"""

from __future__ import annotations

from virtio_msg.errors import VirtqueueError

__all__ = [
    "AvailIndexTooFar",
    "BufferOutOfRegion",
    "ChainDescriptorNotAvailable",
    "ChainTooLarge",
    "ChainTooLong",
    "DescriptorAfterIndirect",
    "DescriptorIndexOutOfRange",
    "DeviceLied",
    "DriverViolation",
    "EventSuppressionInvalid",
    "HeadInFlight",
    "IndirectBadLength",
    "IndirectEntryInvalid",
    "IndirectInChain",
    "IndirectNotNegotiated",
    "IndirectOutOfRegion",
    "InvalidQueueConfig",
    "NestedIndirect",
    "NotificationDataInvalid",
    "OutOfOrderDescriptor",
    "QueueAreaMisaligned",
    "QueueAreaOutOfRegion",
    "QueueBroken",
    "QueueFeaturesInvalid",
    "QueueFull",
    "QueueSizeInvalid",
    "ReadableAfterWritable",
    "UsedIdNotOutstanding",
    "UsedIdOutOfRange",
    "UsedIndexTooFar",
    "UsedLengthTooLarge",
]


class QueueBroken(VirtqueueError):
    """The queue was marked broken by an earlier violation; reset it to use it again."""


class QueueFull(VirtqueueError):
    """The driver has not enough free descriptors for the chain (try again after get_used)."""


# --- device side: the driver's ring contents or parameters are invalid ---------


class DriverViolation(VirtqueueError):
    """Base class of rules the device enforces on driver-controlled parameters and memory."""


class InvalidQueueConfig(DriverViolation):
    """Base class of SET_VQUEUE parameters that cannot form a queue."""


class QueueSizeInvalid(InvalidQueueConfig):
    """Size is not a power of two in 1..min(32768, device maximum) (§2.7, §4.x max_size)."""


class QueueAreaMisaligned(InvalidQueueConfig):
    """An area is not aligned: descriptors 16, available ring 2, used ring 4 (§2.7)."""


class QueueAreaOutOfRegion(InvalidQueueConfig):
    """An area does not lie entirely inside the shared region."""


class QueueFeaturesInvalid(InvalidQueueConfig):
    """The negotiated features cannot drive a split queue (e.g. RING_PACKED)."""


class AvailIndexTooFar(DriverViolation):
    """``avail.idx`` moved more than queue-size entries past the last one seen.

    A driver can have at most queue-size chains outstanding (§2.7.6), so a
    larger jump is corrupt (vhost's "Guest moved avail index" check).
    """


class DescriptorIndexOutOfRange(DriverViolation):
    """A head or ``next`` index is not below the queue (or indirect table) size (§2.7.5)."""


class HeadInFlight(DriverViolation):
    """The driver made a head available again before the device returned it.

    The descriptors of an available chain belong to the device until the
    chain comes back through the used ring; reusing them makes two chains
    share descriptors (vhost and QEMU do not check this; we do, cheaply).
    """


class ChainTooLong(DriverViolation):
    """A chain has more descriptors than the queue size: a loop or an over-long chain.

    §2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer than the
    Queue Size of the device."  Descriptors of an indirect table count; the
    descriptor pointing at the table does not.
    """


class ChainTooLarge(DriverViolation):
    """The sum of a chain's buffer lengths is not below 2**32.

    §2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total".
    """


class ReadableAfterWritable(DriverViolation):
    """A device-readable descriptor follows a device-writable one.

    §2.7.4.2: "The driver MUST place any device-writable descriptor elements
    after any device-readable descriptor elements."
    """


class BufferOutOfRegion(DriverViolation):
    """A descriptor's buffer does not lie inside the shared region."""


class IndirectNotNegotiated(DriverViolation):
    """VIRTQ_DESC_F_INDIRECT used without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)."""


class IndirectOutOfRegion(DriverViolation):
    """An indirect descriptor table does not lie inside the shared region."""


class IndirectBadLength(DriverViolation):
    """An indirect table's length is zero or not a multiple of 16 (§2.7.5.3.1)."""


class NestedIndirect(DriverViolation):
    """VIRTQ_DESC_F_INDIRECT inside an indirect table (§2.7.5.3.1)."""


class DescriptorAfterIndirect(DriverViolation):
    """An indirect descriptor also sets VIRTQ_DESC_F_NEXT (§2.7.5.3.1)."""


class IndirectInChain(DriverViolation):
    """Packed ring: an indirect descriptor inside a list linked by NEXT (§2.8.19.1).

    "A driver MUST NOT write direct descriptors with DESC_F_INDIRECT set in a
    scatter-gather list linked by VIRTQ_DESC_F_NEXT": in a packed ring an
    indirect descriptor is a chain on its own.
    """


class IndirectEntryInvalid(DriverViolation):
    """Packed ring: an indirect-table entry sets a flag other than WRITE (§2.8.19.1)."""


class ChainDescriptorNotAvailable(DriverViolation):
    """Packed ring: a chain continues (NEXT) into a descriptor the driver did not make available.

    §2.8.21.1.1: the driver marks every descriptor of a chain with the AVAIL
    and USED bits of its wrap; the first descriptor is made available last.
    """


class EventSuppressionInvalid(DriverViolation):
    """Packed ring: the driver event suppression structure is invalid (§2.8.10.1).

    ``flags`` 3 is reserved; 2 (descriptor-specific) needs VIRTIO_F_EVENT_IDX;
    a descriptor-specific event offset must be below the ring size.
    """


class OutOfOrderDescriptor(DriverViolation):
    """Split ring with VIRTIO_F_IN_ORDER: descriptors are not used in ring order (§2.7.11).

    The driver MUST use descriptors in ring order, and a chained descriptor at
    table offset x MUST link to x + 1 (0 after the last entry).
    """


class NotificationDataInvalid(DriverViolation):
    """EVENT_AVAIL notification data contradicts the ring (VIRTIO_F_NOTIFICATION_DATA, §2.9).

    Split: bits 16..30 must be clear and the index may not lie ahead of
    ``avail.idx``.  Packed: the offset must be below the ring size and a
    position ahead of the device's must be available in the descriptor ring.
    """


# --- driver side: the device's used ring lies ----------------------------------


class DeviceLied(VirtqueueError):
    """Base class of used-ring contents the driver refuses (§2.7.8 device MUSTs).

    ``completed`` holds the ``(token, data)`` pairs already reaped by the call
    that found the lie, so :meth:`DriverQueue.get_used` loses nothing.
    """

    def __init__(self, message: str) -> None:
        """Describe the lie."""
        super().__init__(message)
        self.completed: list[tuple[object, bytes]] = []


class UsedIndexTooFar(DeviceLied):
    """``used.idx`` moved past more entries than the driver has outstanding."""


class UsedIdOutOfRange(DeviceLied):
    """A used element's ``id`` is not below the queue size."""


class UsedIdNotOutstanding(DeviceLied):
    """A used element's ``id`` is not the head of a chain the driver made available."""


class UsedLengthTooLarge(DeviceLied):
    """A used element's ``len`` exceeds the chain's device-writable bytes (§2.7.8.1)."""
