"""Packed descriptors read while the other side publishes them (virtio 1.2 §2.8.21-22).

In a packed ring the same 16 bytes are written by both sides: the driver
writes addr, len and id, then the flags; the device writes id and len, then
the flags.  A reader in another process (the backend) that loads the whole
descriptor in one go, in address order, can load the old body and then the
new flags: an available (or used) descriptor with the previous lap's length.
The rule is flags first, then the rest.  :class:`TearingRegion` makes that race
deterministic: the pending publish lands between a reader's loads of the body
and of the flags; a reader that loads the flags on their own sees it whole.
Found by ``soak/kill_backend.py`` (blk backend in another process).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import VIRTIO_F_RING_PACKED
from virtio_msg.virtqueue import PackedDeviceQueue, PackedDriverQueue

PACKED = 1 << VIRTIO_F_RING_PACKED
FLAGS = 14
"""Offset of the flags in a packed descriptor."""


class TearingRegion(Region):
    """A region where one pending descriptor publish lands mid-read.

    ``stage(at, new)`` holds 16 bytes for the descriptor at ``at``.  The next
    read that reaches its flags sees the old bytes below the flags and the new
    flags (the publish landed between those loads); from then on memory holds
    the new descriptor.  Reads that do not reach the flags see the old bytes.
    """

    def stage(self, at: int, new: bytes) -> None:
        """Hold ``new`` (16 bytes) for the descriptor at ``at``."""
        self.pending: tuple[int, bytes] | None = (at, new)

    def _torn(self, addr: int, length: int) -> bytes | None:
        pending = getattr(self, "pending", None)
        if pending is None:
            return None
        at, new = pending
        if not addr <= at + FLAGS < addr + length:
            return None
        self.pending = None
        old = Region.read(self, addr, length)
        Region.write(self, at, new)
        fresh = Region.read(self, addr, length)
        cut = at + FLAGS - addr
        return old[:cut] + fresh[cut:]

    def read(self, addr: int, length: int) -> bytes:
        """Read, tearing across a staged publish."""
        torn = self._torn(addr, length)
        return Region.read(self, addr, length) if torn is None else torn

    def read_u16(self, addr: int) -> int:
        """Read a le16, tearing across a staged publish."""
        return int.from_bytes(self.read(addr, 2), "little")

    def unpack(self, layout: struct.Struct, addr: int) -> tuple[Any, ...]:
        """Unpack, tearing across a staged publish."""
        return layout.unpack(self.read(addr, layout.size))


@pytest.fixture
def region() -> Iterator[TearingRegion]:
    with TearingRegion(1 << 20) as r:
        yield r


def _pair(region: Region) -> tuple[PackedDriverQueue, PackedDeviceQueue]:
    drv = PackedDriverQueue(DmaPool(region), 0, 4, PACKED)
    dev = PackedDeviceQueue.create(
        region, 4, drv.desc_addr, drv.driver_addr, drv.device_addr, PACKED
    )
    return drv, dev


def _lap(drv: PackedDriverQueue, dev: PackedDeviceQueue) -> None:
    # One whole lap: every slot now holds a used descriptor (len 100, writable).
    for i in range(4):
        drv.add([], [100], i)
        drv.kick_prepare()
        chain = dev.pop()
        assert chain is not None
        chain.write(bytes(100))
        dev.add_used(chain.head, 100)
        assert [t for t, _ in drv.get_used()] == [i]


def test_packed_device_reads_the_flags_before_the_descriptor(region: TearingRegion) -> None:
    drv, dev = _pair(region)
    _lap(drv, dev)
    at = drv.layout.descriptor(0)
    old = Region.read(region, at, 16)
    drv.add([b"fresh data"], [], "new")  # slot 0 again, second lap
    drv.kick_prepare()
    new = Region.read(region, at, 16)
    Region.write(region, at, old)  # the device looks before the driver's stores land
    region.stage(at, new)
    chain = dev.pop()
    assert chain is not None and not dev.broken
    assert chain.read() == b"fresh data"  # not the previous lap's 100 writable bytes


def test_packed_driver_reads_the_flags_before_the_used_descriptor(
    region: TearingRegion,
) -> None:
    drv, dev = _pair(region)
    _lap(drv, dev)
    drv.add([], [100], "new")
    drv.kick_prepare()
    at = drv.layout.descriptor(0)
    old = Region.read(region, at, 16)
    chain = dev.pop()
    assert chain is not None
    chain.write(b"forty bytes".ljust(40, b"."))
    dev.add_used(chain.head, 40)
    new = Region.read(region, at, 16)
    Region.write(region, at, old)  # the driver looks before the device's stores land
    region.stage(at, new)
    assert drv.get_used() == [("new", b"forty bytes".ljust(40, b"."))]  # not 100 bytes
    assert not drv.broken
