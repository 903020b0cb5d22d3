"""The driver side of a packed virtqueue (virtio 1.2 §2.8), every buffer bounced through the pool.

Strategy (after Linux ``virtio_ring.c``'s packed path with the DMA API):

* One coherent allocation holds the descriptor ring and both event
  suppression areas.  Buffers are streaming mappings, as for split rings;
  with VIRTIO_F_INDIRECT_DESC a chain of more than one buffer goes through an
  indirect table (a ``TO_DEVICE`` mapping), falling back to direct
  descriptors when the pool cannot hold the table.
* :meth:`PackedDriverQueue.add` writes the chain's descriptors in ring order
  (wrapping at the end, each with the AVAIL/USED bits of its lap) and gives
  every chain a buffer id below the ring size.  The first descriptor's flags,
  which hand the chain to the device, are written by :meth:`kick_prepare` for
  the whole batch, so a batch becomes visible exactly when a split ring's
  ``avail.idx`` would.
* The driver keeps shadow state per buffer id and never trusts the ring: at
  its used position it reads one descriptor once; it is used when both flag
  bits equal the used wrap counter.  Its id must be an outstanding buffer id
  (:class:`UsedIdOutOfRange`, :class:`UsedIdNotOutstanding`) and its length
  within the chain's writable bytes (:class:`UsedLengthTooLarge`); the used
  position then skips the chain's descriptor count.  With VIRTIO_F_IN_ORDER
  a used id further along the outstanding order completes the batch before
  it (the device wrote one descriptor for the batch); the skipped buffers are
  reported with their full writable length.
* Event suppression: kicks follow the device area (enable, disable, or the
  descriptor-specific offset with EVENT_IDX); the driver area asks for
  used-buffer notifications the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from virtio_msg.memory import DmaDirection, DmaPool, Mapping, PoolError
from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC
from virtio_msg.virtqueue.driver import reap_used, reap_used_parts, written_parts
from virtio_msg.virtqueue.errors import (
    DeviceLied,
    QueueBroken,
    QueueFull,
    UsedIdNotOutstanding,
    UsedIdOutOfRange,
    UsedLengthTooLarge,
)
from virtio_msg.virtqueue.layout import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from virtio_msg.virtqueue.packed_layout import (
    EVENT_SUPPRESSION,
    PACKED_DESC,
    PACKED_DESC_BODY,
    PACKED_FLAGS_OFFSET,
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_USED,
    PackedLayout,
    avail_used_flags,
    is_valid_packed_size,
    packed_need_event,
    packed_ring_bytes,
)

__all__ = ["PackedDriverQueue"]

_MAX_CHAIN_BYTES: Final = 1 << 32
_DESC_SIZE: Final = PACKED_DESC.size
_BOTH: Final = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED

Buffer = bytes | bytearray | memoryview


class _Chain:
    """Shadow state of one buffer id the device owns."""

    __slots__ = ("count", "readable", "table", "token", "writable", "writable_len")

    def __init__(
        self,
        token: object,
        readable: list[Mapping],
        writable: list[Mapping],
        writable_len: int,
        count: int,
        table: Mapping | None,
    ) -> None:
        self.token = token
        self.readable = readable
        self.writable = writable
        self.writable_len = writable_len
        self.count = count
        self.table = table


class PackedDriverQueue:
    """The driver's side of packed virtqueue ``index``, ring and buffers in ``pool``.

    The public surface matches the split :class:`~virtio_msg.virtqueue.DriverQueue`.
    ``size`` is 1..32768 (no power-of-two rule); INDIRECT_DESC, EVENT_IDX and
    IN_ORDER in ``features`` are honoured.
    """

    def __init__(self, pool: DmaPool, index: int, size: int, features: int) -> None:
        """Allocate the ring and event areas from ``pool`` and initialise them."""
        if not is_valid_packed_size(size):
            raise ValueError(f"packed queue size {size} is not in 1..32768")
        self._pool = pool
        self._region = pool.region
        self._index = index
        self._size = size
        self._features = features
        self._event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)
        self._in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self._ring_addr = pool.alloc_coherent(packed_ring_bytes(size))
        base = self._ring_addr
        ring = _DESC_SIZE * size
        self._layout = PackedLayout(size, base, base + ring, base + ring + EVENT_SUPPRESSION.size)
        self._closed = False
        self._init_state()

    def _init_state(self) -> None:
        self._region.fill(self._ring_addr, packed_ring_bytes(self._size))
        self._free_ids = list(range(self._size - 1, -1, -1))
        self._num_free = self._size
        self._chains: list[_Chain | None] = [None] * self._size
        self._order: deque[int] = deque()  # ids in the order they were made available
        self._outstanding = 0
        self._next_avail = 0
        self._avail_wrap = 1
        self._pending: list[tuple[int, int]] = []  # (head address, flags) not yet published
        self._added = 0  # descriptors added since the last kick
        self._last_used = 0
        self._used_wrap = 1
        self._ready: deque[tuple[object, list[bytes]]] = deque()  # IN_ORDER batch leftovers
        self._callbacks = True
        self._broken: DeviceLied | None = None

    # --- configuration ------------------------------------------------------

    @property
    def index(self) -> int:
        """The virtqueue index on its device."""
        return self._index

    @property
    def size(self) -> int:
        """Number of descriptors in the ring."""
        return self._size

    @property
    def features(self) -> int:
        """The negotiated feature mask."""
        return self._features

    @property
    def layout(self) -> PackedLayout:
        """Area addresses of the queue."""
        return self._layout

    @property
    def desc_addr(self) -> int:
        """Bus address of the descriptor ring (SET_VQUEUE ``desc_addr``)."""
        return self._layout.desc

    @property
    def driver_addr(self) -> int:
        """Bus address of the driver event suppression area (SET_VQUEUE ``driver_addr``)."""
        return self._layout.driver

    @property
    def device_addr(self) -> int:
        """Bus address of the device event suppression area (SET_VQUEUE ``device_addr``)."""
        return self._layout.device

    @property
    def num_free(self) -> int:
        """Free descriptors in the ring."""
        return self._num_free

    @property
    def outstanding(self) -> int:
        """Chains made available and not yet reaped."""
        return self._outstanding

    @property
    def notification_data(self) -> int:
        """EVENT_AVAIL ``next_offset``: next ring offset, driver wrap counter in bit 31."""
        return self._next_avail | self._avail_wrap << 31

    @property
    def broken(self) -> bool:
        """Whether the device lied; the queue needs :meth:`reset`."""
        return self._broken is not None

    @property
    def broken_reason(self) -> DeviceLied | None:
        """The lie that broke the queue, if any."""
        return self._broken

    def _check_usable(self) -> None:
        if self._closed:
            raise QueueBroken(f"queue {self._index} is closed")
        if self._broken is not None:
            raise QueueBroken(f"queue {self._index} is broken: {self._broken}")

    # --- adding buffers -----------------------------------------------------

    def add(self, readable: Sequence[Buffer], writable: Sequence[int], token: object) -> None:
        """Make one chain available at the next :meth:`kick_prepare` (see the split queue).

        Raises :class:`QueueFull`, the pool's errors, or ``ValueError`` for an
        empty or over-long chain; a failed add changes nothing.
        """
        self._check_usable()
        count = len(readable) + len(writable)
        if count == 0:
            raise ValueError("a chain needs at least one buffer")
        if count > self._size:
            raise ValueError(
                f"a chain of {count} buffers is longer than the queue size {self._size}"
            )
        use_indirect = self._indirect and count > 1
        need = 1 if use_indirect else count
        if self._num_free < need or not self._free_ids:
            raise QueueFull(
                f"queue {self._index}: {self._num_free} free descriptors, chain needs {need}"
            )
        total = sum(len(memoryview(b).cast("B")) for b in readable) + sum(writable)
        if total >= _MAX_CHAIN_BYTES:
            raise ValueError(f"a chain of {total} bytes is not below 2**32")
        pool = self._pool
        read_maps: list[Mapping] = []
        write_maps: list[Mapping] = []
        try:
            for data in readable:
                read_maps.append(pool.map(data, DmaDirection.TO_DEVICE))
            for length in writable:
                write_maps.append(pool.map(length, DmaDirection.FROM_DEVICE))
            entries = [(m.addr, m.length, 0) for m in read_maps]
            entries += [(m.addr, m.length, VIRTQ_DESC_F_WRITE) for m in write_maps]
            table: Mapping | None = None
            if use_indirect:
                table = self._map_table(entries)
                if table is None and self._num_free < count:
                    raise QueueFull(
                        f"queue {self._index}: no pool room for an indirect table and "
                        f"{self._num_free} free descriptors for {count} direct ones"
                    )
        except BaseException:
            for m in read_maps + write_maps:
                pool.unmap(m)
            raise
        if table is not None:
            entries = [(table.addr, table.length, VIRTQ_DESC_F_INDIRECT)]
        buf_id = self._free_ids.pop()
        self._write_chain(entries, buf_id)
        writable_len = sum(m.length for m in write_maps)
        self._chains[buf_id] = _Chain(
            token, read_maps, write_maps, writable_len, len(entries), table
        )
        self._outstanding += 1
        if self._in_order:
            self._order.append(buf_id)

    def _write_chain(self, entries: list[tuple[int, int, int]], buf_id: int) -> None:
        region = self._region
        desc = self._layout.desc
        pos = self._next_avail
        wrap = self._avail_wrap
        last = len(entries) - 1
        head_at = desc + _DESC_SIZE * pos
        head_flags = 0
        for i, (addr, length, flags) in enumerate(entries):
            flags |= avail_used_flags(wrap)
            if i < last:
                flags |= VIRTQ_DESC_F_NEXT
            at = desc + _DESC_SIZE * pos
            if i == 0:
                # The head keeps its old flags until the batch is published.
                region.write(at, PACKED_DESC.pack(addr, length, buf_id, 0)[:14])
                head_flags = flags
            else:
                region.pack(PACKED_DESC, at, addr, length, buf_id, flags)
            pos += 1
            if pos == self._size:
                pos = 0
                wrap ^= 1
        self._next_avail = pos
        self._avail_wrap = wrap
        self._num_free -= len(entries)
        self._added += len(entries)
        self._pending.append((head_at + 14, head_flags))

    def _map_table(self, entries: list[tuple[int, int, int]]) -> Mapping | None:
        # A packed indirect table: entries used in order, only WRITE in their flags.
        table = b"".join(PACKED_DESC.pack(addr, n, 0, flags) for addr, n, flags in entries)
        try:
            return self._pool.map(table, DmaDirection.TO_DEVICE)
        except PoolError:
            return None

    def kick_prepare(self) -> bool:
        """Publish the chains added since the last call; return whether to send EVENT_AVAIL.

        The answer follows the device event suppression area: enabled,
        disabled, or (EVENT_IDX) whether its descriptor was among those just
        made available.  Reserved flags from the device count as enabled.
        """
        self._check_usable()
        region = self._region
        for at, flags in self._pending:
            region.write_u16(at, flags)
        self._pending.clear()
        added = self._added
        self._added = 0
        if added == 0:
            return False
        off_wrap, flags = region.unpack(EVENT_SUPPRESSION, self._layout.device)
        if flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if flags == RING_EVENT_FLAGS_DESC and self._event_idx:
            return packed_need_event(
                off_wrap, self._avail_wrap, self._size, self._next_avail, added
            )
        return True

    # --- reaping used buffers -----------------------------------------------

    def pop_used(self) -> tuple[object, bytes] | None:
        """Reap one used chain: its token and the bytes the device wrote, or ``None``.

        Raises a :class:`DeviceLied` subclass (and marks the queue broken) when
        the used descriptor contradicts the shadow state.
        """
        item = self.pop_used_parts()
        if item is None:
            return None
        parts = item[1]
        return item[0], parts[0] if len(parts) == 1 else b"".join(parts)

    def pop_used_parts(self) -> tuple[object, list[bytes]] | None:
        """Like :meth:`pop_used`, the written bytes kept per writable buffer (split queue: same)."""
        self._check_usable()
        if self._ready:
            return self._ready.popleft()
        try:
            return self._pop_used()
        except DeviceLied as exc:
            self._broken = exc
            raise

    def _pop_used(self) -> tuple[object, list[bytes]] | None:
        region = self._region
        pos = self._last_used
        at = self._layout.desc + _DESC_SIZE * pos
        # The flags alone first: the device writes them last, so a descriptor read
        # whole could pair the used flags with our own stale id and len.
        flags = region.read_u16(at + PACKED_FLAGS_OFFSET)
        want = _BOTH if self._used_wrap else 0
        if flags & _BOTH != want:
            return None
        _addr, length, buf_id = region.unpack(PACKED_DESC_BODY, at)
        if buf_id >= self._size:
            raise UsedIdOutOfRange(
                f"queue {self._index}: used descriptor {pos} has id {buf_id} >= size {self._size}"
            )
        chain = self._chains[buf_id]
        if chain is None:
            raise UsedIdNotOutstanding(
                f"queue {self._index}: used descriptor {pos} has id {buf_id}, not outstanding"
            )
        if length > chain.writable_len:
            raise UsedLengthTooLarge(
                f"queue {self._index}: used length {length} for id {buf_id} exceeds its "
                f"{chain.writable_len} writable bytes"
            )
        batch = [buf_id]
        if self._in_order:
            # One used descriptor may stand for a batch: every id made available
            # before it is used too (VIRTIO_F_IN_ORDER, §2.8.20).
            batch = []
            while not batch or batch[-1] != buf_id:
                batch.append(self._order.popleft())
        out: list[tuple[object, list[bytes]]] = []
        for done in batch:
            item = self._chains[done]
            assert item is not None
            self._chains[done] = None
            self._free_ids.append(done)
            self._outstanding -= 1
            self._num_free += item.count
            self._advance_used(item.count)
            out.append((item.token, self._release(item, length if done == buf_id else -1)))
        if self._event_idx and self._callbacks:
            self._write_driver_event(RING_EVENT_FLAGS_DESC)
        self._ready.extend(out[1:])
        return out[0]

    def _advance_used(self, count: int) -> None:
        pos = self._last_used + count
        if pos >= self._size:
            pos -= self._size
            self._used_wrap ^= 1
        self._last_used = pos

    def _release(self, chain: _Chain, length: int) -> list[bytes]:
        pool = self._pool
        for m in chain.readable:
            pool.unmap(m)
        if chain.table is not None:
            pool.unmap(chain.table)
        parts = [pool.unmap(m) or b"" for m in chain.writable]
        return written_parts(parts, chain.writable_len if length < 0 else length)

    def get_used(self) -> list[tuple[object, bytes]]:
        """Reap every used chain now visible, in ring order (see the split queue)."""
        return reap_used(self.pop_used)

    def get_used_parts(self) -> list[tuple[object, list[bytes]]]:
        """Like :meth:`get_used`, with :meth:`pop_used_parts` (on a lie, see there)."""
        return reap_used_parts(self.pop_used_parts)

    # --- used-buffer notifications ------------------------------------------

    def _write_driver_event(self, flags: int) -> None:
        off_wrap = self._last_used | self._used_wrap << 15
        self._region.pack(EVENT_SUPPRESSION, self._layout.driver, off_wrap, flags)

    def disable_callbacks(self) -> None:
        """Ask the device not to send used-buffer notifications (driver area DISABLE)."""
        self._check_usable()
        self._callbacks = False
        self._write_driver_event(RING_EVENT_FLAGS_DISABLE)

    def enable_callbacks(self) -> bool:
        """Ask for used-buffer notifications again; return whether used chains are pending."""
        self._check_usable()
        self._callbacks = True
        self._write_driver_event(
            RING_EVENT_FLAGS_DESC if self._event_idx else RING_EVENT_FLAGS_ENABLE
        )
        if self._ready:
            return True
        flags = self._region.read_u16(self._layout.desc + _DESC_SIZE * self._last_used + 14)
        return flags & _BOTH == (_BOTH if self._used_wrap else 0)

    # --- teardown -----------------------------------------------------------

    def detach_unused(self) -> list[object]:
        """Take back every outstanding chain (after a device or queue reset); returns tokens."""
        tokens: list[object] = [token for token, _data in self._ready]
        self._ready.clear()
        for buf_id, chain in enumerate(self._chains):
            if chain is not None:
                self._chains[buf_id] = None
                self._release(chain, 0)
                tokens.append(chain.token)
        self._outstanding = 0
        return tokens

    def reset(self) -> list[object]:
        """Detach everything, zero the ring and start over (also clears ``broken``)."""
        if self._closed:
            raise QueueBroken(f"queue {self._index} is closed")
        tokens = self.detach_unused()
        self._init_state()
        return tokens

    def close(self) -> list[object]:
        """Detach everything and free the ring; returns the detached tokens."""
        if self._closed:
            return []
        tokens = self.detach_unused()
        self._pool.free_coherent(self._ring_addr)
        self._closed = True
        return tokens

    def __repr__(self) -> str:
        """Show index, size and state."""
        state = " broken" if self._broken is not None else ""
        return (
            f"<PackedDriverQueue {self._index} size={self._size} free={self._num_free} "
            f"outstanding={self._outstanding} avail={self._next_avail}/{self._avail_wrap} "
            f"used={self._last_used}/{self._used_wrap}{state}>"
        )
