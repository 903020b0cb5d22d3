"""The device side of a packed virtqueue (virtio 1.2 §2.8): untrusted ring in, validated chains out.

Strategy: the same hardening as the split :class:`~virtio_msg.virtqueue.DeviceQueue`.
:meth:`PackedDeviceQueue.create` is the one validating constructor (size
1..32768 within the device maximum, descriptor ring 16-aligned, event areas
4-aligned, all inside the region).  :meth:`PackedDeviceQueue.pop` reads the
descriptor at the device's position once, its flags first and alone (the
driver writes them last); it is available when its AVAIL bit
equals the device's avail wrap counter and its USED bit differs.  The chain
that starts there is walked in ring order (wrapping at the end, toggling the
counter), every descriptor read once and checked: each one available, at most
``size`` descriptors, indirect only when negotiated and alone (no NEXT, not
inside a list), tables a non-zero multiple of 16 bytes inside the region with
only WRITE set in their entries, no readable buffer after a writable one,
total below 2**32, every buffer inside the region, the buffer id (from the
last descriptor) not already in flight.  The first violation raises its
:class:`~virtio_msg.virtqueue.DriverViolation` subclass and breaks the queue;
the transport turns that into DEVICE_NEEDS_RESET.

:meth:`add_used` writes the used descriptor (id and length, then the flags
with both bits equal to the used wrap counter) at the used position and skips
forward by the chain's descriptor count.  With VIRTIO_F_IN_ORDER, buffers are
published in the order they were made available: a buffer completed early
waits until the ones before it are completed.  Event suppression: the device
writes the device area (enable, disable, or with EVENT_IDX the descriptor-
specific offset it will read next) and reads the driver area to decide
used-buffer notifications, refusing reserved flags, descriptor mode without
EVENT_IDX, and offsets past the ring.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from virtio_msg.memory import Region
from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VQ_MAX_SIZE,
)
from virtio_msg.virtqueue.chain import MAX_CHAIN_BYTES, DescriptorChain
from virtio_msg.virtqueue.errors import (
    BufferOutOfRegion,
    ChainDescriptorNotAvailable,
    ChainTooLarge,
    ChainTooLong,
    DescriptorAfterIndirect,
    DriverViolation,
    EventSuppressionInvalid,
    HeadInFlight,
    IndirectBadLength,
    IndirectEntryInvalid,
    IndirectInChain,
    IndirectNotNegotiated,
    IndirectOutOfRegion,
    NestedIndirect,
    NotificationDataInvalid,
    QueueAreaMisaligned,
    QueueAreaOutOfRegion,
    QueueBroken,
    QueueFeaturesInvalid,
    QueueSizeInvalid,
    ReadableAfterWritable,
)
from virtio_msg.virtqueue.layout import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from virtio_msg.virtqueue.packed_layout import (
    EVENT_ALIGN,
    EVENT_SUPPRESSION,
    PACKED_DESC,
    PACKED_DESC_ALIGN,
    PACKED_DESC_BODY,
    PACKED_FLAGS_OFFSET,
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_USED,
    PackedLayout,
    is_valid_packed_size,
    packed_need_event,
)

__all__ = ["PackedDeviceQueue"]

_CREATE_KEY: Final = object()
_USED_ID_LEN: Final = PACKED_DESC.size - 8  # len, id: the used descriptor's first write
_DESC_SIZE: Final = PACKED_DESC.size
_ALLOWED_IN_TABLE: Final = VIRTQ_DESC_F_WRITE


class PackedDeviceQueue:
    """The device's view of one packed virtqueue (create it with :meth:`create`).

    The public surface matches the split :class:`~virtio_msg.virtqueue.DeviceQueue`
    (``pop``, ``add_used``, notifications), so device models serve either kind;
    ``DescriptorChain.head`` is the driver's buffer id.
    """

    def __init__(self, key: object, region: Region, layout: PackedLayout, features: int) -> None:
        """Private: use :meth:`PackedDeviceQueue.create`, the validating constructor."""
        if key is not _CREATE_KEY:
            raise TypeError("PackedDeviceQueue is created only by PackedDeviceQueue.create()")
        self._region = region
        self._layout = layout
        self._size = layout.size
        self._features = features
        self._event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)
        self._in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self._desc = layout.desc
        self._next_avail = 0
        self._avail_wrap = 1
        self._next_used = 0
        self._used_wrap = 1
        self._advanced = 0  # descriptors marked used since the last notification decision
        self._notify_enabled = True
        self._in_flight: dict[int, tuple[int, int, bool]] = {}  # id -> (writable, count, written)
        self._order: deque[int] = deque()  # IN_ORDER: ids in the order they were made available
        self._done: dict[int, int] = {}  # IN_ORDER: completed ids waiting for earlier ones
        self._broken: DriverViolation | None = None

    @classmethod
    def create(
        cls,
        region: Region,
        size: int,
        desc_addr: int,
        driver_addr: int,
        device_addr: int,
        features: int,
        max_size: int = VQ_MAX_SIZE,
    ) -> PackedDeviceQueue:
        """Validate untrusted queue parameters (from SET_VQUEUE) and build the queue.

        Raises :class:`QueueSizeInvalid`, :class:`QueueAreaMisaligned`,
        :class:`QueueAreaOutOfRegion` or :class:`QueueFeaturesInvalid` (when
        VIRTIO_F_RING_PACKED is not negotiated).
        """
        if not is_valid_packed_size(size, max_size):
            raise QueueSizeInvalid(
                f"packed queue size {size} is not in 1..{min(max_size, VQ_MAX_SIZE)}"
            )
        if not features >> VIRTIO_F_RING_PACKED & 1:
            raise QueueFeaturesInvalid("VIRTIO_F_RING_PACKED is not negotiated")
        areas = (
            ("descriptor ring", desc_addr, _DESC_SIZE * size, PACKED_DESC_ALIGN),
            ("driver event suppression", driver_addr, EVENT_SUPPRESSION.size, EVENT_ALIGN),
            ("device event suppression", device_addr, EVENT_SUPPRESSION.size, EVENT_ALIGN),
        )
        for name, addr, length, align in areas:
            if addr % align:
                raise QueueAreaMisaligned(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not region.contains(addr, length):
                raise QueueAreaOutOfRegion(
                    f"{name} [{addr:#x}, +{length}) is not inside the region "
                    f"[{region.base:#x}, {region.end:#x})"
                )
        layout = PackedLayout(size, desc_addr, driver_addr, device_addr)
        return cls(_CREATE_KEY, region, layout, features)

    # --- state --------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of descriptors in the ring."""
        return self._size

    @property
    def layout(self) -> PackedLayout:
        """Area addresses of the queue."""
        return self._layout

    @property
    def features(self) -> int:
        """The negotiated feature mask the queue was created with."""
        return self._features

    @property
    def broken(self) -> bool:
        """Whether a violation was found; the queue needs a reset."""
        return self._broken is not None

    @property
    def broken_reason(self) -> DriverViolation | None:
        """The violation that broke the queue, if any."""
        return self._broken

    @property
    def next_avail(self) -> int:
        """The device's next ring position with its avail wrap counter in bit 15."""
        return self._next_avail | self._avail_wrap << 15

    @property
    def next_used(self) -> int:
        """The next used position with the used wrap counter in bit 15."""
        return self._next_used | self._used_wrap << 15

    @property
    def in_flight(self) -> int:
        """Chains popped but not yet given to :meth:`add_used`."""
        return len(self._in_flight) - len(self._done)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise QueueBroken(f"queue is broken: {self._broken}")

    def _fail(self, exc: DriverViolation) -> DriverViolation:
        self._broken = exc
        return exc

    # --- popping chains -----------------------------------------------------

    def _is_avail(self, flags: int, wrap: int) -> bool:
        return bool(flags & VIRTQ_DESC_F_AVAIL) == bool(wrap) and bool(
            flags & VIRTQ_DESC_F_USED
        ) != bool(wrap)

    def pop(self) -> DescriptorChain | None:
        """Return the next available chain, validated, or ``None`` if there is none.

        Raises a :class:`DriverViolation` subclass (and marks the queue broken)
        when the ring contents break a rule.
        """
        self._check_usable()
        region = self._region
        pos = self._next_avail
        wrap = self._avail_wrap
        at = self._desc + _DESC_SIZE * pos
        # The flags alone first: the driver writes them last, so a descriptor read
        # whole could pair new flags with the previous lap's addr and len.
        flags = region.read_u16(at + PACKED_FLAGS_OFFSET)
        if not self._is_avail(flags, wrap):
            return None
        addr, length, buf_id = region.unpack(PACKED_DESC_BODY, at)
        try:
            chain, count, end, end_wrap = self._walk(pos, wrap, addr, length, buf_id, flags)
        except DriverViolation as exc:
            raise self._fail(exc) from None
        self._next_avail = end
        self._avail_wrap = end_wrap
        self._in_flight[chain.head] = (chain.writable_len, count, bool(chain.writable))
        if self._in_order:
            self._order.append(chain.head)
        if self._event_idx and self._notify_enabled:
            self._write_device_event(RING_EVENT_FLAGS_DESC)
        return chain

    def _walk(
        self, pos: int, wrap: int, addr: int, length: int, buf_id: int, flags: int
    ) -> tuple[DescriptorChain, int, int, int]:
        region = self._region
        size = self._size
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        rlen = wlen = 0
        count = 0
        indirect = False
        start = pos
        while True:
            count += 1
            if count > size:
                raise ChainTooLong(f"chain at {start} runs around the whole ring of {size}")
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self._indirect:
                    raise IndirectNotNegotiated(
                        f"descriptor {pos} is indirect but VIRTIO_F_INDIRECT_DESC is not negotiated"
                    )
                if flags & VIRTQ_DESC_F_NEXT:
                    raise DescriptorAfterIndirect(f"indirect descriptor {pos} also sets NEXT")
                if count > 1:
                    raise IndirectInChain(f"indirect descriptor {pos} is inside a NEXT-linked list")
                rlen, wlen = self._read_indirect(pos, addr, length, readable, writable)
                indirect = True
            else:
                if flags & VIRTQ_DESC_F_WRITE:
                    writable.append((addr, length))
                    wlen += length
                elif writable:
                    raise ReadableAfterWritable(
                        f"descriptor {pos} is readable after a writable one"
                    )
                else:
                    readable.append((addr, length))
                    rlen += length
                if not region.contains(addr, length):
                    raise BufferOutOfRegion(
                        f"descriptor {pos}: buffer [{addr:#x}, +{length}) is outside the region"
                    )
            pos += 1
            if pos == size:
                pos = 0
                wrap ^= 1
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            at = self._desc + _DESC_SIZE * pos
            flags = region.read_u16(at + PACKED_FLAGS_OFFSET)
            if not self._is_avail(flags, wrap):
                raise ChainDescriptorNotAvailable(
                    f"chain at {start} continues into descriptor {pos}, which is not available"
                )
            addr, length, buf_id = region.unpack(PACKED_DESC_BODY, at)
        if rlen + wlen >= MAX_CHAIN_BYTES:
            raise ChainTooLarge(f"chain at {start} totals {rlen + wlen} bytes (>= 2**32)")
        if buf_id in self._in_flight:
            raise HeadInFlight(f"chain at {start} reuses buffer id {buf_id}, still in flight")
        chain = DescriptorChain(region, buf_id, readable, writable, rlen, wlen, indirect)
        return chain, count, pos, wrap

    def _read_indirect(
        self,
        pos: int,
        addr: int,
        length: int,
        readable: list[tuple[int, int]],
        writable: list[tuple[int, int]],
    ) -> tuple[int, int]:
        # Validate the table's placement, read it once, then parse the copy.
        region = self._region
        if length == 0 or length % _DESC_SIZE:
            raise IndirectBadLength(
                f"indirect descriptor {pos}: table length {length} is not a non-zero "
                f"multiple of {_DESC_SIZE}"
            )
        if not region.contains(addr, length):
            raise IndirectOutOfRegion(
                f"indirect descriptor {pos}: table [{addr:#x}, +{length}) is outside the region"
            )
        entries = length // _DESC_SIZE
        if entries > self._size:
            raise ChainTooLong(
                f"indirect table at {addr:#x} holds {entries} descriptors; the queue holds "
                f"{self._size}"
            )
        rlen = wlen = 0
        for i, (d_addr, d_len, _id, d_flags) in enumerate(
            PACKED_DESC.iter_unpack(region.read(addr, length))
        ):
            if d_flags & VIRTQ_DESC_F_INDIRECT:
                raise NestedIndirect(f"entry {i} of indirect table {addr:#x} is indirect")
            if d_flags & ~_ALLOWED_IN_TABLE:
                raise IndirectEntryInvalid(
                    f"entry {i} of indirect table {addr:#x} sets flags {d_flags:#x}; only "
                    "WRITE is allowed"
                )
            if d_flags & VIRTQ_DESC_F_WRITE:
                writable.append((d_addr, d_len))
                wlen += d_len
            elif writable:
                raise ReadableAfterWritable(
                    f"entry {i} of indirect table {addr:#x} is readable after a writable one"
                )
            else:
                readable.append((d_addr, d_len))
                rlen += d_len
            if not region.contains(d_addr, d_len):
                raise BufferOutOfRegion(
                    f"entry {i} of indirect table {addr:#x}: buffer [{d_addr:#x}, +{d_len}) "
                    "is outside the region"
                )
        return rlen, wlen

    # --- returning chains ---------------------------------------------------

    def add_used(self, head: int, written_len: int) -> None:
        """Mark buffer ``head`` used with ``written_len`` bytes written by the device.

        ``head`` must be a chain popped and not yet returned, and
        ``written_len`` at most its writable length (``ValueError`` otherwise:
        device-model bugs).  With VIRTIO_F_IN_ORDER the used descriptor is
        written once every buffer made available before it is used.
        """
        self._check_usable()
        entry = self._in_flight.get(head)
        if entry is None or head in self._done:
            raise ValueError(f"buffer id {head} is not an in-flight chain of this queue")
        if not 0 <= written_len <= entry[0]:
            raise ValueError(
                f"written length {written_len} exceeds the chain's {entry[0]} writable bytes"
            )
        if not self._in_order:
            self._publish(head, written_len)
            return
        self._done[head] = written_len
        order = self._order
        while order and order[0] in self._done:
            first = order.popleft()
            self._publish(first, self._done.pop(first))

    def _publish(self, head: int, written_len: int) -> None:
        _writable, count, has_writable = self._in_flight.pop(head)
        region = self._region
        at = self._desc + _DESC_SIZE * self._next_used
        wrap = self._used_wrap
        flags = (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) if wrap else 0
        if has_writable:
            flags |= VIRTQ_DESC_F_WRITE
        # id and len first, the flags (which hand the descriptor back) last.
        region.write(at + 8, written_len.to_bytes(4, "little") + head.to_bytes(2, "little"))
        region.write_u16(at + 14, flags)
        used = self._next_used + count
        if used >= self._size:
            used -= self._size
            self._used_wrap ^= 1
        self._next_used = used
        self._advanced += count

    # --- notifications ------------------------------------------------------

    def needs_notification(self) -> bool:
        """Return whether the driver wants a used-buffer notification (EVENT_USED) now.

        Reads the driver event suppression area once: disabled, enabled, or
        (EVENT_IDX) whether the event descriptor was among those marked used
        since the last call.  Raises :class:`EventSuppressionInvalid` (and
        breaks the queue) for reserved flags, descriptor mode without
        EVENT_IDX, or an event offset past the ring.
        """
        self._check_usable()
        advanced = self._advanced
        self._advanced = 0
        if advanced == 0:
            return False
        off_wrap, flags = self._region.unpack(EVENT_SUPPRESSION, self._layout.driver)
        if flags == RING_EVENT_FLAGS_ENABLE:
            return True
        if flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if flags != RING_EVENT_FLAGS_DESC:
            raise self._fail(EventSuppressionInvalid(f"driver event flags {flags} are reserved"))
        if not self._event_idx:
            raise self._fail(
                EventSuppressionInvalid("descriptor-specific events without VIRTIO_F_EVENT_IDX")
            )
        if off_wrap & 0x7FFF >= self._size:
            raise self._fail(
                EventSuppressionInvalid(
                    f"driver event offset {off_wrap & 0x7FFF} is past the ring of {self._size}"
                )
            )
        return packed_need_event(off_wrap, self._used_wrap, self._size, self._next_used, advanced)

    def _write_device_event(self, flags: int) -> None:
        off_wrap = self._next_avail | self._avail_wrap << 15
        self._region.pack(EVENT_SUPPRESSION, self._layout.device, off_wrap, flags)

    def disable_notification(self) -> None:
        """Ask the driver not to send available-buffer notifications (device area DISABLE)."""
        self._check_usable()
        self._notify_enabled = False
        self._write_device_event(RING_EVENT_FLAGS_DISABLE)

    def enable_notification(self) -> bool:
        """Ask for available-buffer notifications again; return whether buffers are pending.

        With EVENT_IDX the device area names the next position the device will
        read (descriptor-specific mode); without, it is set to ENABLE.
        """
        self._check_usable()
        self._notify_enabled = True
        self._write_device_event(
            RING_EVENT_FLAGS_DESC if self._event_idx else RING_EVENT_FLAGS_ENABLE
        )
        return self.has_available()

    def has_available(self) -> bool:
        """Return whether the descriptor at the device's position is available."""
        self._check_usable()
        flags = self._region.read_u16(self._desc + _DESC_SIZE * self._next_avail + 14)
        return self._is_avail(flags, self._avail_wrap)

    def check_notification(self, next_offset: int) -> None:
        """Check EVENT_AVAIL notification data against the ring (VIRTIO_F_NOTIFICATION_DATA).

        ``next_offset`` carries the driver's next offset in bits 0..30 and its
        wrap counter in bit 31.  The offset must be below the ring size, and
        if it lies ahead of the device's position (by less than a ring) the
        descriptor there must be available.  A stale notification (the device
        already popped past it) is accepted.
        """
        self._check_usable()
        off = next_offset & 0x7FFFFFFF
        wrap = next_offset >> 31 & 1
        size = self._size
        if off >= size:
            raise self._fail(
                NotificationDataInvalid(f"notification offset {off} is past the ring of {size}")
            )
        mine = self._next_avail + (0 if self._avail_wrap else size)
        theirs = off + (0 if wrap else size)
        ahead = (theirs - mine) % (2 * size)
        if 0 < ahead < size and not self.has_available():
            raise self._fail(
                NotificationDataInvalid(
                    f"notification says the driver reached {off} (wrap {wrap}), {ahead} "
                    f"descriptors past the device's {self._next_avail}, but nothing is available"
                )
            )

    def __repr__(self) -> str:
        """Show size, positions and state."""
        state = " broken" if self._broken is not None else ""
        return (
            f"<PackedDeviceQueue size={self._size} avail={self._next_avail}/{self._avail_wrap} "
            f"used={self._next_used}/{self._used_wrap} in_flight={len(self._in_flight)}{state}>"
        )
