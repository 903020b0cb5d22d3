"""The split virtqueue layout (virtio 1.x §2.7): sizes, alignments, field addresses.

Strategy: the three areas of a split queue are described once here, as data
(:class:`SplitLayout`), so the driver side and the device side compute every
field address the same way and neither does its own address arithmetic.  The
little-endian layouts of a descriptor and a used element are precompiled
:class:`struct.Struct` objects read and written through the Region API.

::

    descriptor table  16*N bytes, 16-aligned  {le64 addr, le32 len, le16 flags, le16 next}
    available ring    6+2*N,      2-aligned   {flags, idx, ring[N], used_event}
    used ring         6+8*N,      4-aligned   {flags, idx, ring[N]{le32 id, le32 len}, avail_event}

The trailing ``used_event`` / ``avail_event`` words exist in memory whether or
not VIRTIO_F_EVENT_IDX is negotiated (the core spec's "Queue Part" sizes
include them), so the area sizes do not depend on features.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from virtio_msg.memory import wrap16
from virtio_msg.spec import VQ_MAX_SIZE

__all__ = [
    "AVAIL_ALIGN",
    "DESC",
    "DESC_ALIGN",
    "DESC_SIZE",
    "USED_ALIGN",
    "USED_ELEM",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_USED_F_NO_NOTIFY",
    "SplitLayout",
    "avail_ring_size",
    "desc_table_size",
    "is_valid_queue_size",
    "used_ring_size",
    "vring_need_event",
]

VIRTQ_DESC_F_NEXT: Final = 1
"""The descriptor continues via ``next`` (§2.7.5)."""
VIRTQ_DESC_F_WRITE: Final = 2
"""The buffer is device-writable (otherwise device-readable)."""
VIRTQ_DESC_F_INDIRECT: Final = 4
"""The buffer holds a table of descriptors (§2.7.5.3)."""
VRING_AVAIL_F_NO_INTERRUPT: Final = 1
"""Driver to device: do not send used-buffer notifications (without EVENT_IDX)."""
VRING_USED_F_NO_NOTIFY: Final = 1
"""Device to driver: do not send available-buffer notifications (without EVENT_IDX)."""

DESC: Final = struct.Struct("<QIHH")
"""One descriptor: addr, len, flags, next."""
USED_ELEM: Final = struct.Struct("<II")
"""One used-ring element: id, len."""
DESC_SIZE: Final = DESC.size
DESC_ALIGN: Final = 16
"""Descriptor table alignment (§2.7 "Queue Part" table)."""
AVAIL_ALIGN: Final = 2
"""Available ring alignment."""
USED_ALIGN: Final = 4
"""Used ring alignment."""


def desc_table_size(size: int) -> int:
    """Bytes of the descriptor table of a queue of ``size`` entries."""
    return DESC_SIZE * size


def avail_ring_size(size: int) -> int:
    """Bytes of the available ring (flags, idx, ring, used_event)."""
    return 6 + 2 * size


def used_ring_size(size: int) -> int:
    """Bytes of the used ring (flags, idx, ring, avail_event)."""
    return 6 + USED_ELEM.size * size


def is_valid_queue_size(size: int, max_size: int = VQ_MAX_SIZE) -> bool:
    """Return whether ``size`` is a power of two in ``1..min(max_size, 32768)`` (§2.7)."""
    return 0 < size <= min(max_size, VQ_MAX_SIZE) and size & (size - 1) == 0


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Return the core spec's ``vring_need_event`` (§2.7.7, §2.7.10), wrap-correct.

    True when ``event_idx`` lies in the half-open window ``[old_idx, new_idx)``
    of indices published since the last notification decision.
    """
    return wrap16(new_idx - event_idx - 1) < wrap16(new_idx - old_idx)


@dataclass(frozen=True, slots=True)
class SplitLayout:
    """Bus addresses of every field of one split queue.

    Built by the driver from its allocation, or by the device from validated
    SET_VQUEUE parameters; it checks nothing itself.
    """

    size: int
    desc: int
    avail: int
    used: int

    @property
    def avail_flags(self) -> int:
        """Address of ``avail.flags``."""
        return self.avail

    @property
    def avail_idx(self) -> int:
        """Address of ``avail.idx``."""
        return self.avail + 2

    @property
    def avail_ring(self) -> int:
        """Address of ``avail.ring[0]``."""
        return self.avail + 4

    @property
    def used_event(self) -> int:
        """Address of ``avail.used_event`` (after the ring)."""
        return self.avail + 4 + 2 * self.size

    @property
    def used_flags(self) -> int:
        """Address of ``used.flags``."""
        return self.used

    @property
    def used_idx(self) -> int:
        """Address of ``used.idx``."""
        return self.used + 2

    @property
    def used_ring(self) -> int:
        """Address of ``used.ring[0]``."""
        return self.used + 4

    @property
    def avail_event(self) -> int:
        """Address of ``used.avail_event`` (after the ring)."""
        return self.used + 4 + USED_ELEM.size * self.size

    def descriptor(self, index: int) -> int:
        """Address of descriptor ``index`` of the table."""
        return self.desc + DESC_SIZE * index
