"""Test helpers: a hand-written driver ring (like rust-vmm's MockSplitQueue) and a spy region."""

from __future__ import annotations

from collections.abc import Sequence

from virtio_msg.memory import Region
from virtio_msg.spec import VQ_MAX_SIZE
from virtio_msg.virtqueue import (
    DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    DeviceQueue,
    SplitLayout,
    avail_ring_size,
    desc_table_size,
)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


class RawRing:
    """Writes split-ring structures byte by byte, with no validation at all.

    Rings sit at the start of the region; :meth:`buffer` hands out addresses
    from a bump allocator after them.
    """

    def __init__(self, region: Region, size: int, features: int = 0, *, start: int = 0) -> None:
        self.region = region
        self.size = size
        self.features = features
        desc = region.base
        avail = desc + desc_table_size(size)
        used = _align(avail + avail_ring_size(size), 4)
        self.layout = SplitLayout(size, desc, avail, used)
        self.next_free = _align(self.layout.avail_event + 2, 64)
        self.avail_idx = start
        self.start = start
        region.write_u16(self.layout.avail_idx, start)
        region.write_u16(self.layout.used_idx, start)

    def device(self, max_size: int = VQ_MAX_SIZE) -> DeviceQueue:
        """Create the device side over this ring."""
        lay = self.layout
        return DeviceQueue.create(
            self.region,
            self.size,
            lay.desc,
            lay.avail,
            lay.used,
            self.features,
            max_size,
            start_index=self.start,
        )

    def buffer(self, length: int, fill: bytes = b"") -> int:
        """Reserve ``length`` bytes in the data area, optionally filled; return the address."""
        addr = self.next_free
        self.next_free = _align(addr + max(length, 1), 16)
        if fill:
            self.region.write(addr, fill)
        return addr

    def set_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        """Write descriptor ``index`` of the table."""
        self.region.pack(DESC, self.layout.descriptor(index), addr, length, flags, nxt)

    def chain(self, buffers: Sequence[tuple[int, int, bool]], first: int = 0, step: int = 1) -> int:
        """Write ``(addr, len, writable)`` buffers as one chain at ``first, first+step, ...``."""
        for i, (addr, length, writable) in enumerate(buffers):
            index = (first + i * step) % self.size
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            if i + 1 < len(buffers):
                nxt = (index + step) % self.size
                self.set_desc(index, addr, length, flags | VIRTQ_DESC_F_NEXT, nxt)
            else:
                self.set_desc(index, addr, length, flags)
        return first

    def indirect_table(
        self, buffers: Sequence[tuple[int, int, bool]], extra_flags: int = 0
    ) -> tuple[int, int]:
        """Write an indirect table for ``buffers`` in the data area; return (addr, len)."""
        table = self.buffer(16 * len(buffers))
        for i, (addr, length, writable) in enumerate(buffers):
            flags = (VIRTQ_DESC_F_WRITE if writable else 0) | extra_flags
            nxt = i + 1 if i + 1 < len(buffers) else 0
            if nxt:
                flags |= VIRTQ_DESC_F_NEXT
            self.region.pack(DESC, table + 16 * i, addr, length, flags, nxt)
        return table, 16 * len(buffers)

    def indirect(self, head: int, buffers: Sequence[tuple[int, int, bool]]) -> int:
        """Make descriptor ``head`` point at a fresh indirect table for ``buffers``."""
        table, length = self.indirect_table(buffers)
        self.set_desc(head, table, length, VIRTQ_DESC_F_INDIRECT)
        return head

    def publish(self, *heads: int) -> None:
        """Put ``heads`` in the available ring and advance ``avail.idx``."""
        for head in heads:
            slot = self.avail_idx % self.size
            self.region.write_u16(self.layout.avail_ring + 2 * slot, head)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.region.write_u16(self.layout.avail_idx, self.avail_idx)
