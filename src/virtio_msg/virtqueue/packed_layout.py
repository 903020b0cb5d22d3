"""The packed virtqueue layout (virtio 1.2 §2.8): descriptors, flags, event suppression.

Strategy: as for split rings (:mod:`virtio_msg.virtqueue.layout`), the areas of
a packed queue are described once, as data (:class:`PackedLayout`), and both
sides compute field addresses from it.  A packed queue has one descriptor ring
that both sides write -- the driver makes descriptors available with the AVAIL
and USED flag bits set to ``(wrap, !wrap)``, the device marks them used with
both bits equal to its own wrap counter -- and two 4-byte event suppression
structures: the driver area (written by the driver, governs used-buffer
notifications) and the device area (written by the device, governs
available-buffer notifications).

::

    descriptor ring     16*N bytes, 16-aligned  {le64 addr, le32 len, le16 id, le16 flags}
    driver event area   4 bytes,    4-aligned   {le16 off_wrap, le16 flags}
    device event area   4 bytes,    4-aligned   {le16 off_wrap, le16 flags}

``N`` is 1..32768 and need not be a power of two.  Positions on the ring are
``(offset, wrap counter)`` pairs; :func:`packed_need_event` applies the core
spec's event rule to them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from virtio_msg.memory import wrap16
from virtio_msg.spec import VQ_MAX_SIZE
from virtio_msg.virtqueue.layout import vring_need_event

__all__ = [
    "EVENT_ALIGN",
    "EVENT_SUPPRESSION",
    "PACKED_DESC",
    "PACKED_DESC_ALIGN",
    "PACKED_DESC_BODY",
    "PACKED_FLAGS_OFFSET",
    "RING_EVENT_FLAGS_DESC",
    "RING_EVENT_FLAGS_DISABLE",
    "RING_EVENT_FLAGS_ENABLE",
    "VIRTQ_DESC_F_AVAIL",
    "VIRTQ_DESC_F_USED",
    "PackedLayout",
    "avail_used_flags",
    "is_valid_packed_size",
    "packed_need_event",
    "packed_ring_bytes",
]

VIRTQ_DESC_F_AVAIL: Final = 1 << 7
"""Descriptor flag: the driver's wrap counter when it made the descriptor available."""
VIRTQ_DESC_F_USED: Final = 1 << 15
"""Descriptor flag: the inverse of that (available), or the device's wrap counter (used)."""
RING_EVENT_FLAGS_ENABLE: Final = 0
"""Event suppression: notify on every event."""
RING_EVENT_FLAGS_DISABLE: Final = 1
"""Event suppression: do not notify."""
RING_EVENT_FLAGS_DESC: Final = 2
"""Event suppression: notify when the descriptor at ``off_wrap`` is reached (EVENT_IDX)."""

PACKED_DESC: Final = struct.Struct("<QIHH")
"""One packed descriptor: addr, len, id, flags."""
PACKED_DESC_BODY: Final = struct.Struct("<QIH")
"""A packed descriptor without its flags: addr, len, id (read only after the flags)."""
PACKED_FLAGS_OFFSET: Final = 14
"""Offset of the flags in a packed descriptor: read them first, alone (§2.8.21-22)."""
EVENT_SUPPRESSION: Final = struct.Struct("<HH")
"""One event suppression structure: off_wrap (bit 15 = wrap counter), flags."""
PACKED_DESC_ALIGN: Final = 16
EVENT_ALIGN: Final = 4
_DESC_SIZE: Final = PACKED_DESC.size


def is_valid_packed_size(size: int, max_size: int = VQ_MAX_SIZE) -> bool:
    """Return whether ``size`` is in ``1..min(max_size, 32768)`` (no power-of-two rule)."""
    return 0 < size <= min(max_size, VQ_MAX_SIZE)


def packed_ring_bytes(size: int) -> int:
    """Bytes of one allocation holding the descriptor ring and both event areas."""
    return _DESC_SIZE * size + 2 * EVENT_SUPPRESSION.size


def avail_used_flags(wrap: int) -> int:
    """The AVAIL/USED bits of a descriptor made available with driver wrap counter ``wrap``."""
    return VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED


def packed_need_event(off_wrap: int, wrap: int, size: int, new: int, advanced: int) -> bool:
    """The core rule for descriptor-specific events on a packed ring.

    ``new`` is the ring offset just reached with wrap counter ``wrap`` after
    advancing ``advanced`` descriptors since the last decision; ``off_wrap`` is
    the other side's event (offset in bits 0..14, wrap counter in bit 15).
    True when the event descriptor lies among the ``advanced`` just passed.
    An event from the previous lap is moved one ring size back, as Linux and
    QEMU do, so the 16-bit window test of :func:`vring_need_event` applies.
    """
    if advanced >= size:
        return True
    event = off_wrap & 0x7FFF
    if off_wrap >> 15 != wrap:
        event -= size
    return vring_need_event(wrap16(event), new, wrap16(new - advanced))


@dataclass(frozen=True, slots=True)
class PackedLayout:
    """Bus addresses of the three areas of one packed queue (checks nothing itself)."""

    size: int
    desc: int
    driver: int
    device: int

    def descriptor(self, index: int) -> int:
        """Address of descriptor ``index`` of the ring."""
        return self.desc + _DESC_SIZE * index
