"""The device side of a split virtqueue: untrusted parameters in, validated chains out.

Strategy (after rust-vmm virtio-queue and vhost): everything the driver
controls is untrusted -- the SET_VQUEUE parameters and every byte of the
descriptor table and the available ring.

* A :class:`DeviceQueue` exists only through :meth:`DeviceQueue.create`, the
  one validating constructor: size a power of two within both the spec's
  32768 and the device's maximum, each area aligned and entirely inside the
  region.  After that, every *fixed* ring field address is known to be inside
  the region.
* :meth:`DeviceQueue.pop` walks one chain and validates it as it goes, reading
  each descriptor exactly once into locals (no time-of-check-to-time-of-use):
  avail index at most ``size`` ahead, head and every ``next`` below the table
  size, head not already in flight, at most ``size`` descriptors (loop detection), indirect tables
  negotiated, inside the region, a non-zero multiple of 16 bytes, not nested
  and not followed by anything, total length below 2**32, no readable buffer
  after a writable one, and every buffer inside the region.  The returned
  :class:`DescriptorChain` holds only validated ``(addr, len)`` pairs.
* The first violation raises its own :class:`DriverViolation` subclass and
  marks the queue broken; from then on every call raises :class:`QueueBroken`
  (the transport answers with DEVICE_NEEDS_RESET).  The region's own bounds
  checks stay underneath as a second line: no ring contents can make this
  module touch memory outside the region.

Notification suppression follows QEMU/vhost: with VIRTIO_F_EVENT_IDX the
device publishes ``avail_event`` as it pops (while notifications are enabled)
and decides used-buffer notifications with ``vring_need_event`` against the
driver's ``used_event``; without it, the ``VRING_USED_F_NO_NOTIFY`` /
``VRING_AVAIL_F_NO_INTERRUPT`` flags are used.  All index arithmetic wraps
through :func:`wrap16`.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from virtio_msg.memory import Region, wrap16
from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VQ_MAX_SIZE,
)
from virtio_msg.virtqueue.chain import MAX_CHAIN_BYTES, DescriptorChain
from virtio_msg.virtqueue.errors import (
    AvailIndexTooFar,
    BufferOutOfRegion,
    ChainTooLarge,
    ChainTooLong,
    DescriptorAfterIndirect,
    DescriptorIndexOutOfRange,
    DriverViolation,
    HeadInFlight,
    IndirectBadLength,
    IndirectNotNegotiated,
    IndirectOutOfRegion,
    NestedIndirect,
    NotificationDataInvalid,
    OutOfOrderDescriptor,
    QueueAreaMisaligned,
    QueueAreaOutOfRegion,
    QueueBroken,
    QueueFeaturesInvalid,
    QueueSizeInvalid,
    ReadableAfterWritable,
)
from virtio_msg.virtqueue.layout import (
    AVAIL_ALIGN,
    DESC,
    DESC_ALIGN,
    DESC_SIZE,
    USED_ALIGN,
    USED_ELEM,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    SplitLayout,
    avail_ring_size,
    desc_table_size,
    is_valid_queue_size,
    used_ring_size,
    vring_need_event,
)

__all__ = ["MAX_CHAIN_BYTES", "DescriptorChain", "DeviceQueue"]

_CREATE_KEY: Final = object()


class DeviceQueue:
    """The device's view of one split virtqueue (create it with :meth:`create`)."""

    def __init__(
        self,
        key: object,
        region: Region,
        layout: SplitLayout,
        features: int,
        start_index: int,
    ) -> None:
        """Private: use :meth:`DeviceQueue.create`, the validating constructor."""
        if key is not _CREATE_KEY:
            raise TypeError("DeviceQueue is created only by DeviceQueue.create()")
        self._region = region
        self._layout = layout
        self._size = layout.size
        self._mask = layout.size - 1
        self._features = features
        self._event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)
        self._last_avail = start_index
        self._avail_shadow = start_index
        self._next_used = start_index
        self._signalled_used = start_index
        self._notify_enabled = True
        self._in_flight: dict[int, int] = {}
        self._in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self._order: deque[int] = deque()  # IN_ORDER: heads in the order they were popped
        self._done: dict[int, int] = {}  # IN_ORDER: completed heads waiting for earlier ones
        self._expect_head = 0  # IN_ORDER: the descriptor the next chain must start at
        self._walked = 0  # direct descriptors of the last chain walked
        self._broken: DriverViolation | None = None
        # Fixed addresses, checked inside the region by create().
        self._desc_addr = layout.desc
        self._avail_idx_addr = layout.avail_idx
        self._avail_ring_addr = layout.avail_ring
        self._used_idx_addr = layout.used_idx
        self._used_ring_addr = layout.used_ring
        self._avail_event_addr = layout.avail_event

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
        *,
        start_index: int = 0,
    ) -> DeviceQueue:
        """Validate untrusted queue parameters (from SET_VQUEUE) and build the queue.

        Raises :class:`QueueSizeInvalid`, :class:`QueueAreaMisaligned`,
        :class:`QueueAreaOutOfRegion` or :class:`QueueFeaturesInvalid`.
        ``start_index`` (default 0, the value after reset) sets the first
        available and used index, for resuming a queue.
        """
        if not is_valid_queue_size(size, max_size):
            raise QueueSizeInvalid(
                f"queue size {size} is not a power of two in 1..{min(max_size, VQ_MAX_SIZE)}"
            )
        if features >> VIRTIO_F_RING_PACKED & 1:
            raise QueueFeaturesInvalid("VIRTIO_F_RING_PACKED is negotiated; this is a split queue")
        if not 0 <= start_index <= 0xFFFF:
            raise ValueError(f"start_index {start_index} is not a 16-bit index")
        areas = (
            ("descriptor table", desc_addr, desc_table_size(size), DESC_ALIGN),
            ("available ring", driver_addr, avail_ring_size(size), AVAIL_ALIGN),
            ("used ring", device_addr, used_ring_size(size), USED_ALIGN),
        )
        for name, addr, length, align in areas:
            if addr % align:
                raise QueueAreaMisaligned(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not region.contains(addr, length):
                raise QueueAreaOutOfRegion(
                    f"{name} [{addr:#x}, +{length}) is not inside the region "
                    f"[{region.base:#x}, {region.end:#x})"
                )
        layout = SplitLayout(size, desc_addr, driver_addr, device_addr)
        return cls(_CREATE_KEY, region, layout, features, start_index)

    # --- state --------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of descriptors."""
        return self._size

    @property
    def layout(self) -> SplitLayout:
        """Field addresses of the queue."""
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
        """The next available-ring index the device will read."""
        return self._last_avail

    @property
    def next_used(self) -> int:
        """The next used-ring index the device will write."""
        return self._next_used

    @property
    def in_flight(self) -> int:
        """Chains popped but not yet returned with :meth:`add_used`."""
        return len(self._in_flight) - len(self._done)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise QueueBroken(f"queue is broken: {self._broken}")

    # --- popping chains -----------------------------------------------------

    def pop(self) -> DescriptorChain | None:
        """Return the next available chain, validated, or ``None`` if there is none.

        Raises a :class:`DriverViolation` subclass (and marks the queue broken)
        when the ring contents break a rule.
        """
        if self._broken is not None:
            raise QueueBroken(f"queue is broken: {self._broken}")
        region = self._region
        last = self._last_avail
        try:
            if last == self._avail_shadow:
                # Read avail.idx once, check it, then trust the checked copy until consumed.
                idx = region.read_u16(self._avail_idx_addr)
                ahead = wrap16(idx - last)
                if ahead > self._size:
                    raise AvailIndexTooFar(
                        f"avail.idx is {idx}, {ahead} entries past {last}; "
                        f"the queue holds {self._size}"
                    )
                self._avail_shadow = idx
                if ahead == 0:
                    return None
            slot = last & self._mask
            head = region.read_u16(self._avail_ring_addr + 2 * slot)
            if head >= self._size:
                raise DescriptorIndexOutOfRange(
                    f"avail.ring[{slot}] names head {head}; the queue holds {self._size}"
                )
            if head in self._in_flight:
                raise HeadInFlight(f"avail.ring[{slot}] names head {head}, still in flight")
            if self._in_order and head != self._expect_head:
                raise OutOfOrderDescriptor(
                    f"avail.ring[{slot}] names head {head}; in order it must be {self._expect_head}"
                )
            chain = self._walk(head)
        except DriverViolation as exc:
            self._broken = exc
            raise
        self._last_avail = last = wrap16(last + 1)
        if self._event_idx and self._notify_enabled:
            region.write_u16(self._avail_event_addr, last)
        self._in_flight[head] = chain.writable_len
        if self._in_order:
            self._order.append(head)
            self._expect_head = (head + self._walked) % self._size
        return chain

    def _walk(self, head: int) -> DescriptorChain:
        region = self._region
        size = self._size
        desc_base = self._desc_addr
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        rlen = wlen = 0
        count = 0
        index = head
        indirect = False
        self._walked = 0
        while True:
            count += 1
            self._walked += 1
            if count > size:
                raise ChainTooLong(f"chain from head {head} is longer than the queue size {size}")
            addr, length, flags, nxt = region.unpack(DESC, desc_base + DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self._indirect:
                    raise IndirectNotNegotiated(
                        f"descriptor {index} is indirect but VIRTIO_F_INDIRECT_DESC "
                        "is not negotiated"
                    )
                if flags & VIRTQ_DESC_F_NEXT:
                    raise DescriptorAfterIndirect(f"indirect descriptor {index} also sets NEXT")
                table = self._read_indirect(index, addr, length, size - (count - 1))
                indirect = True
                count = 0
                entries = len(table)
                index = 0
                while True:
                    count += 1
                    if count > entries:
                        raise ChainTooLong(f"indirect table at {addr:#x} loops")
                    d_addr, d_len, d_flags, d_next = table[index]
                    if d_flags & VIRTQ_DESC_F_INDIRECT:
                        raise NestedIndirect(
                            f"entry {index} of indirect table {addr:#x} is indirect"
                        )
                    if d_flags & VIRTQ_DESC_F_WRITE:
                        writable.append((d_addr, d_len))
                        wlen += d_len
                    elif writable:
                        raise ReadableAfterWritable(
                            f"entry {index} of indirect table {addr:#x} is readable "
                            "after a writable one"
                        )
                    else:
                        readable.append((d_addr, d_len))
                        rlen += d_len
                    if not region.contains(d_addr, d_len):
                        raise BufferOutOfRegion(
                            f"entry {index} of indirect table {addr:#x}: buffer "
                            f"[{d_addr:#x}, +{d_len}) is outside the region"
                        )
                    if not d_flags & VIRTQ_DESC_F_NEXT:
                        break
                    if d_next >= entries:
                        raise DescriptorIndexOutOfRange(
                            f"entry {index} of indirect table {addr:#x} links to {d_next}; "
                            f"the table holds {entries}"
                        )
                    index = d_next
                break
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append((addr, length))
                wlen += length
            elif writable:
                raise ReadableAfterWritable(f"descriptor {index} is readable after a writable one")
            else:
                readable.append((addr, length))
                rlen += length
            if not region.contains(addr, length):
                raise BufferOutOfRegion(
                    f"descriptor {index}: buffer [{addr:#x}, +{length}) is outside the region"
                )
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if nxt >= size:
                raise DescriptorIndexOutOfRange(
                    f"descriptor {index} links to {nxt}; the queue holds {size}"
                )
            if self._in_order and nxt != (index + 1) % size:
                raise OutOfOrderDescriptor(
                    f"descriptor {index} links to {nxt}; in order it must link to "
                    f"{(index + 1) % size}"
                )
            index = nxt
        if rlen + wlen >= MAX_CHAIN_BYTES:
            raise ChainTooLarge(f"chain from head {head} totals {rlen + wlen} bytes (>= 2**32)")
        return DescriptorChain(region, head, readable, writable, rlen, wlen, indirect)

    def _read_indirect(
        self, index: int, addr: int, length: int, room: int
    ) -> list[tuple[int, int, int, int]]:
        # Validate an indirect table's placement and read it once (copy-out before parse).
        if length == 0 or length % DESC_SIZE:
            raise IndirectBadLength(
                f"indirect descriptor {index}: table length {length} is not a non-zero multiple "
                f"of {DESC_SIZE}"
            )
        if not self._region.contains(addr, length):
            raise IndirectOutOfRegion(
                f"indirect descriptor {index}: table [{addr:#x}, +{length}) is outside the region"
            )
        entries = length // DESC_SIZE
        if entries > room:
            raise ChainTooLong(
                f"indirect table at {addr:#x} holds {entries} descriptors; the chain may "
                f"have at most {room} more (queue size {self._size})"
            )
        return list(DESC.iter_unpack(self._region.read(addr, length)))

    # --- returning chains ---------------------------------------------------

    def add_used(self, head: int, written_len: int) -> None:
        """Publish chain ``head`` as used, with ``written_len`` bytes written by the device.

        ``head`` must be a chain popped and not yet returned, and
        ``written_len`` at most its writable length (``ValueError`` otherwise:
        those are device-model bugs, never driver input).
        """
        if self._broken is not None:
            raise QueueBroken(f"queue is broken: {self._broken}")
        limit = self._in_flight.get(head)
        if limit is None or head in self._done:
            raise ValueError(f"head {head} is not an in-flight chain of this queue")
        if not 0 <= written_len <= limit:
            raise ValueError(
                f"written length {written_len} exceeds the chain's {limit} writable bytes"
            )
        if not self._in_order:
            self._publish(head, written_len)
            return
        # IN_ORDER: publish in the order the chains were made available.
        self._done[head] = written_len
        order = self._order
        while order and order[0] in self._done:
            first = order.popleft()
            self._publish(first, self._done.pop(first))

    def _publish(self, head: int, written_len: int) -> None:
        del self._in_flight[head]
        used = self._next_used
        region = self._region
        region.pack(USED_ELEM, self._used_ring_addr + 8 * (used & self._mask), head, written_len)
        self._next_used = used = wrap16(used + 1)
        region.write_u16(self._used_idx_addr, used)

    # --- notifications ------------------------------------------------------

    def needs_notification(self) -> bool:
        """Return whether the driver wants a used-buffer notification (EVENT_USED) now.

        With EVENT_IDX: whether ``used_event`` lies among the used entries
        published since the last call (``vring_need_event``, wrap-correct).
        Without: whether entries were used and ``VRING_AVAIL_F_NO_INTERRUPT``
        is clear.  Each call consumes the entries it judged, so call it once
        per batch of :meth:`add_used`.
        """
        self._check_usable()
        new = self._next_used
        old = self._signalled_used
        self._signalled_used = new
        if old == new:
            return False
        if self._event_idx:
            used_event = self._region.read_u16(self._layout.used_event)
            return vring_need_event(used_event, new, old)
        flags = self._region.read_u16(self._layout.avail_flags)
        return not flags & VRING_AVAIL_F_NO_INTERRUPT

    def disable_notification(self) -> None:
        """Ask the driver not to send available-buffer notifications (best effort).

        Without EVENT_IDX this sets ``VRING_USED_F_NO_NOTIFY``; with it, the
        device simply stops advancing ``avail_event``.
        """
        self._check_usable()
        self._notify_enabled = False
        if not self._event_idx:
            self._region.write_u16(self._layout.used_flags, VRING_USED_F_NO_NOTIFY)

    def enable_notification(self) -> bool:
        """Ask for available-buffer notifications again; return whether buffers are pending.

        Publishes ``avail_event = next_avail`` (EVENT_IDX) or clears
        ``VRING_USED_F_NO_NOTIFY``, then re-reads ``avail.idx``: a True result
        means the driver added buffers meanwhile and the device must keep
        popping rather than wait for a notification.
        """
        self._check_usable()
        self._notify_enabled = True
        if self._event_idx:
            self._region.write_u16(self._avail_event_addr, self._last_avail)
        else:
            self._region.write_u16(self._layout.used_flags, 0)
        return self.has_available()

    def check_notification(self, next_offset: int) -> None:
        """Check EVENT_AVAIL notification data against the ring (VIRTIO_F_NOTIFICATION_DATA).

        The split encoding is the 16-bit ``avail.idx`` (the draft's and Linux's,
        bits 0..15, bit 31 clear); the core spec's (15 bits plus the wrap in
        bit 31) is accepted too.  Bits 16..30 must be clear, and the index may
        not lie ahead of ``avail.idx`` as the ring shows it (read here, checked
        as in :meth:`pop`, and then used by the next pops).
        """
        self._check_usable()
        try:
            if next_offset & 0x7FFF0000:
                raise NotificationDataInvalid(
                    f"notification data {next_offset:#x} sets bits 16..30 for a split ring"
                )
            notified = (next_offset & 0xFFFF) | (next_offset >> 31) << 15
            idx = self._region.read_u16(self._avail_idx_addr)
            ahead = wrap16(idx - self._last_avail)
            if ahead > self._size:
                raise AvailIndexTooFar(
                    f"avail.idx is {idx}, {ahead} entries past {self._last_avail}; "
                    f"the queue holds {self._size}"
                )
            self._avail_shadow = idx
            if wrap16(idx - notified) > self._size:
                raise NotificationDataInvalid(
                    f"notification says avail index {notified}, but avail.idx is {idx}"
                )
        except DriverViolation as exc:
            self._broken = exc
            raise

    def has_available(self) -> bool:
        """Return whether ``avail.idx`` is ahead of the next index the device will pop."""
        self._check_usable()
        if self._avail_shadow != self._last_avail:
            return True
        return self._region.read_u16(self._avail_idx_addr) != self._last_avail

    def __repr__(self) -> str:
        """Show size, indices and state."""
        state = " broken" if self._broken is not None else ""
        return (
            f"<DeviceQueue size={self._size} avail={self._last_avail} used={self._next_used} "
            f"in_flight={len(self._in_flight)}{state}>"
        )
