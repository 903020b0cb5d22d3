"""The driver side of a split virtqueue, with every buffer bounced through the DmaPool.

Strategy (after Linux ``virtio_ring.c`` with the DMA API in use):

* The three ring areas are one coherent allocation from the pool (descriptor
  table, then the available ring, then the used ring at a 4-byte boundary).
  Buffers are streaming mappings: readable data is bounced into the pool on
  :meth:`DriverQueue.add`; writable buffers are zero-filled pool slots whose
  contents are copied back, once, when the used entry is reaped.
* With VIRTIO_F_INDIRECT_DESC negotiated, a chain of more than one descriptor
  goes through an indirect table, itself a ``TO_DEVICE`` streaming mapping
  (Linux kmallocs the table and maps it, so under a restricted pool it is
  bounced too).  If the pool cannot hold the table the chain falls back to
  direct descriptors when enough are free.
* The driver keeps **shadow state** per head (token, mappings, writable
  length, descriptor indices) and never reads back the descriptor table or
  the available ring.  Device-writable memory (the used ring,
  ``avail_event``, the used flags) is read once per use into locals and
  checked against the shadow: used index at most the outstanding count ahead,
  each id in range and outstanding, each length within the writable space.
  A lie raises a :class:`DeviceLied` subclass and marks the queue broken;
  later calls raise :class:`QueueBroken` until :meth:`DriverQueue.reset`.
* :meth:`DriverQueue.add` writes the ring entry; :meth:`kick_prepare`
  publishes ``avail.idx`` for the whole batch and decides, with EVENT_IDX or
  ``VRING_USED_F_NO_NOTIFY``, whether the device needs EVENT_AVAIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from virtio_msg.memory import DmaDirection, DmaPool, Mapping, PoolError, wrap16
from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC
from virtio_msg.virtqueue.errors import (
    DeviceLied,
    QueueBroken,
    QueueFull,
    UsedIdNotOutstanding,
    UsedIdOutOfRange,
    UsedIndexTooFar,
    UsedLengthTooLarge,
)
from virtio_msg.virtqueue.layout import (
    DESC,
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

__all__ = ["DriverQueue", "ring_bytes"]

_EVENT_PARK: Final = 0x6000
"""Linux's ``virtqueue_disable_cb_split`` parks ``used_event`` this far ahead."""
_MAX_CHAIN_BYTES: Final = 1 << 32

Buffer = bytes | bytearray | memoryview


def ring_bytes(size: int) -> int:
    """Bytes of the single coherent allocation holding a queue of ``size`` entries."""
    return _used_offset(size) + used_ring_size(size)


def _used_offset(size: int) -> int:
    end = desc_table_size(size) + avail_ring_size(size)
    return (end + USED_ALIGN - 1) // USED_ALIGN * USED_ALIGN



def written_parts(parts: list[bytes], length: int) -> list[bytes]:
    """The first ``length`` bytes of ``parts``, kept part by part (one entry per part).

    The part the length ends in is cut there and every later part is empty,
    so ``b"".join(written_parts(p, n)) == b"".join(p)[:n]``.
    """
    out: list[bytes] = []
    for part in parts:
        if length >= len(part):
            out.append(part)
            length -= len(part)
        else:
            out.append(part[:length])
            length = 0
    return out


def reap_used(
    pop: Callable[[], tuple[object, bytes] | None],
) -> list[tuple[object, bytes]]:
    """Every used chain ``pop`` returns until None; on a lie, those before it in ``completed``."""
    done: list[tuple[object, bytes]] = []
    try:
        while (item := pop()) is not None:
            done.append(item)
    except DeviceLied as exc:
        exc.completed = done
        raise
    return done


def reap_used_parts(
    pop: Callable[[], tuple[object, list[bytes]] | None],
) -> list[tuple[object, list[bytes]]]:
    """Like :func:`reap_used` with the written bytes per buffer (joined in ``completed``)."""
    done: list[tuple[object, list[bytes]]] = []
    try:
        while (item := pop()) is not None:
            done.append(item)
    except DeviceLied as exc:
        exc.completed = [(token, b"".join(parts)) for token, parts in done]
        raise
    return done


class _Outstanding:
    """Shadow state of one chain the device owns."""

    __slots__ = ("descs", "readable", "table", "token", "writable", "writable_len")

    def __init__(
        self,
        token: object,
        readable: list[Mapping],
        writable: list[Mapping],
        writable_len: int,
        descs: list[int],
        table: Mapping | None,
    ) -> None:
        self.token = token
        self.readable = readable
        self.writable = writable
        self.writable_len = writable_len
        self.descs = descs
        self.table = table


class DriverQueue:
    """The driver's side of split virtqueue ``index``, rings and buffers in ``pool``.

    ``features`` is the negotiated 64-bit mask; INDIRECT_DESC and EVENT_IDX
    are honoured.  ``start_index`` (default 0) starts both ring indices
    elsewhere, for resuming a queue and for exercising 16-bit wraparound; the
    device side must be created with the same value.
    """

    def __init__(
        self, pool: DmaPool, index: int, size: int, features: int, *, start_index: int = 0
    ) -> None:
        """Allocate the rings from ``pool`` and initialise them."""
        if not is_valid_queue_size(size):
            raise ValueError(f"queue size {size} is not a power of two in 1..32768")
        if not 0 <= start_index <= 0xFFFF:
            raise ValueError(f"start_index {start_index} is not a 16-bit index")
        self._pool = pool
        self._region = pool.region
        self._index = index
        self._size = size
        self._mask = size - 1
        self._features = features
        self._event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)
        self._in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self._ring_addr = pool.alloc_coherent(ring_bytes(size))
        base = self._ring_addr
        self._layout = SplitLayout(
            size, base, base + desc_table_size(size), base + _used_offset(size)
        )
        self._start = start_index
        self._closed = False
        self._init_state()

    def _init_state(self) -> None:
        layout = self._layout
        self._region.fill(self._ring_addr, ring_bytes(self._size))
        self._region.write_u16(layout.avail_idx, self._start)
        # The device-area fields start at the start index too: a zero avail_event
        # with a non-zero start would swallow the first notification.
        self._region.write_u16(layout.used_idx, self._start)
        self._region.write_u16(layout.avail_event, self._start)
        self._region.write_u16(layout.used_event, self._start)
        # IN_ORDER: descriptors are taken in table order (FIFO) and come back in
        # order, so a chain at offset x links to x + 1 (0 after the last entry).
        self._free: deque[int] = deque(range(self._size - 1, -1, -1))
        self._take = self._free.pop
        if self._in_order:
            self._free = deque(range(self._size))
            self._take = self._free.popleft
        self._order: deque[int] = deque()  # IN_ORDER: heads in the order made available
        self._ready: deque[tuple[object, list[bytes]]] = deque()  # IN_ORDER batch leftovers
        self._chains: list[_Outstanding | None] = [None] * self._size
        self._outstanding = 0
        self._avail_idx = self._start
        self._num_added = 0
        self._last_used = self._start
        self._used_shadow = self._start
        self._callbacks = True
        self._broken: DeviceLied | None = None

    # --- configuration ------------------------------------------------------

    @property
    def index(self) -> int:
        """The virtqueue index on its device."""
        return self._index

    @property
    def size(self) -> int:
        """Number of descriptors."""
        return self._size

    @property
    def features(self) -> int:
        """The negotiated feature mask."""
        return self._features

    @property
    def layout(self) -> SplitLayout:
        """Field addresses of the queue."""
        return self._layout

    @property
    def desc_addr(self) -> int:
        """Bus address of the descriptor table (SET_VQUEUE ``desc_addr``)."""
        return self._layout.desc

    @property
    def driver_addr(self) -> int:
        """Bus address of the available ring (SET_VQUEUE ``driver_addr``)."""
        return self._layout.avail

    @property
    def device_addr(self) -> int:
        """Bus address of the used ring (SET_VQUEUE ``device_addr``)."""
        return self._layout.used

    @property
    def num_free(self) -> int:
        """Free descriptors in the table."""
        return len(self._free)

    @property
    def outstanding(self) -> int:
        """Chains made available and not yet reaped."""
        return self._outstanding

    @property
    def start_index(self) -> int:
        """The index both rings started from (0 unless resumed)."""
        return self._start

    @property
    def next_avail(self) -> int:
        """The available index the next chain will get (EVENT_AVAIL ``next_off``)."""
        return self._avail_idx

    @property
    def notification_data(self) -> int:
        """EVENT_AVAIL ``next_offset`` for a split ring: the 16-bit avail index, bit 31 clear."""
        return self._avail_idx

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
        """Make one chain available: ``readable`` buffers then ``writable`` buffer sizes.

        The data is bounced into the pool now; the entry becomes visible to
        the device at the next :meth:`kick_prepare`.  Raises
        :class:`QueueFull` when descriptors run out, the pool's
        :class:`~virtio_msg.memory.PoolError` subclasses when it cannot map a
        buffer, ``ValueError`` for an empty or over-long chain.  A failed add
        changes nothing.
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
        if len(self._free) < (1 if use_indirect else count):
            raise QueueFull(
                f"queue {self._index}: {len(self._free)} free descriptors, chain needs "
                f"{1 if use_indirect else count}"
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
                if table is None and len(self._free) < count:
                    raise QueueFull(
                        f"queue {self._index}: no pool room for an indirect table and "
                        f"{len(self._free)} free descriptors for {count} direct ones"
                    )
        except BaseException:
            for m in read_maps + write_maps:
                pool.unmap(m)
            raise
        region = self._region
        layout = self._layout
        if table is not None:
            head = self._take()
            descs = [head]
            region.pack(
                DESC, layout.descriptor(head), table.addr, table.length, VIRTQ_DESC_F_INDIRECT, 0
            )
        else:
            descs = [self._take() for _ in range(count)]
            head = descs[0]
            last = count - 1
            for i, (addr, length, flags) in enumerate(entries):
                if i < last:
                    region.pack(
                        DESC,
                        layout.descriptor(descs[i]),
                        addr,
                        length,
                        flags | VIRTQ_DESC_F_NEXT,
                        descs[i + 1],
                    )
                else:
                    region.pack(DESC, layout.descriptor(descs[i]), addr, length, flags, 0)
        writable_len = sum(m.length for m in write_maps)
        self._chains[head] = _Outstanding(token, read_maps, write_maps, writable_len, descs, table)
        self._outstanding += 1
        if self._in_order:
            self._order.append(head)
        region.write_u16(layout.avail_ring + 2 * (self._avail_idx & self._mask), head)
        self._avail_idx = wrap16(self._avail_idx + 1)
        self._num_added += 1

    def _map_table(self, entries: list[tuple[int, int, int]]) -> Mapping | None:
        # Build the indirect table (entry i links to i + 1) and bounce it into the pool.
        last = len(entries) - 1
        table = b"".join(
            DESC.pack(addr, length, flags | VIRTQ_DESC_F_NEXT, i + 1)
            if i < last
            else DESC.pack(addr, length, flags, 0)
            for i, (addr, length, flags) in enumerate(entries)
        )
        try:
            return self._pool.map(table, DmaDirection.TO_DEVICE)
        except PoolError:
            return None

    def kick_prepare(self) -> bool:
        """Publish ``avail.idx``; return whether the device needs EVENT_AVAIL.

        Covers the chains added since the last call; the answer follows
        ``avail_event`` (EVENT_IDX) or ``VRING_USED_F_NO_NOTIFY``.
        """
        self._check_usable()
        region = self._region
        new = self._avail_idx
        added = self._num_added
        self._num_added = 0
        region.write_u16(self._layout.avail_idx, new)
        if added == 0:
            return False
        if self._event_idx:
            avail_event = region.read_u16(self._layout.avail_event)
            return vring_need_event(avail_event, new, wrap16(new - added))
        return not region.read_u16(self._layout.used_flags) & VRING_USED_F_NO_NOTIFY

    # --- reaping used buffers -----------------------------------------------

    def pop_used(self) -> tuple[object, bytes] | None:
        """Reap one used chain: its token and the bytes the device wrote, or ``None``.

        The data is the first ``len`` bytes of the writable buffers, copied
        back from the pool once.  Raises a :class:`DeviceLied` subclass (and
        marks the queue broken) when the used ring contradicts the shadow state.
        """
        item = self.pop_used_parts()
        if item is None:
            return None
        parts = item[1]
        return item[0], parts[0] if len(parts) == 1 else b"".join(parts)

    def pop_used_parts(self) -> tuple[object, list[bytes]] | None:
        """Like :meth:`pop_used`, the written bytes kept per writable buffer (no join).

        One entry per writable buffer of the chain, in order, together the
        first ``len`` bytes the device wrote (:func:`written_parts`): a driver
        that wants its data and its status byte apart saves the join and the
        slice of :meth:`pop_used`.
        """
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
        last = self._last_used
        if last == self._used_shadow:
            idx = region.read_u16(self._layout.used_idx)
            ahead = wrap16(idx - last)
            if ahead > self._outstanding:
                raise UsedIndexTooFar(
                    f"queue {self._index}: used.idx {idx} is {ahead} entries past {last}, "
                    f"but only {self._outstanding} chains are outstanding"
                )
            self._used_shadow = idx
            if ahead == 0:
                return None
        used_id, length = region.unpack(USED_ELEM, self._layout.used_ring + 8 * (last & self._mask))
        if used_id >= self._size:
            raise UsedIdOutOfRange(
                f"queue {self._index}: used.ring[{last & self._mask}].id {used_id} "
                f">= size {self._size}"
            )
        chain = self._chains[used_id]
        if chain is None:
            raise UsedIdNotOutstanding(
                f"queue {self._index}: used.ring[{last & self._mask}].id {used_id} "
                "is not outstanding"
            )
        if length > chain.writable_len:
            raise UsedLengthTooLarge(
                f"queue {self._index}: used length {length} for head {used_id} exceeds its "
                f"{chain.writable_len} writable bytes"
            )
        batch = [used_id]
        if self._in_order:
            # One used entry may stand for a batch ending at used_id; used.idx moved
            # by the batch size (VIRTIO_F_IN_ORDER, §2.7.9).
            batch = list(self._order)[: self._order.index(used_id) + 1]
            if len(batch) > wrap16(self._used_shadow - last):
                raise UsedIndexTooFar(
                    f"queue {self._index}: used id {used_id} ends a batch of {len(batch)}, "
                    f"but used.idx moved only {wrap16(self._used_shadow - last)}"
                )
            for _ in batch:
                self._order.popleft()
        out: list[tuple[object, list[bytes]]] = []
        for head in batch:
            item = self._chains[head]
            assert item is not None
            self._chains[head] = None
            self._outstanding -= 1
            out.append((item.token, self._release(item, length if head == used_id else -1)))
        self._last_used = last = wrap16(last + len(batch))
        if self._event_idx and self._callbacks:
            region.write_u16(self._layout.used_event, last)
        self._ready.extend(out[1:])
        return out[0]

    def _release(self, chain: _Outstanding, length: int) -> list[bytes]:
        pool = self._pool
        for m in chain.readable:
            pool.unmap(m)
        if chain.table is not None:
            pool.unmap(chain.table)
        parts = [pool.unmap(m) or b"" for m in chain.writable]
        self._free.extend(chain.descs)
        return written_parts(parts, chain.writable_len if length < 0 else length)

    def get_used(self) -> list[tuple[object, bytes]]:
        """Reap every used chain now visible, in used-ring order.

        On a lie, the pairs reaped before it are attached to the raised
        error's ``completed`` list.
        """
        return reap_used(self.pop_used)

    def get_used_parts(self) -> list[tuple[object, list[bytes]]]:
        """Like :meth:`get_used`, with :meth:`pop_used_parts` (on a lie, see there)."""
        return reap_used_parts(self.pop_used_parts)

    # --- used-buffer notifications ------------------------------------------

    def disable_callbacks(self) -> None:
        """Ask the device not to send used-buffer notifications (best effort)."""
        self._check_usable()
        self._callbacks = False
        if self._event_idx:
            self._region.write_u16(self._layout.used_event, wrap16(self._last_used + _EVENT_PARK))
        else:
            self._region.write_u16(self._layout.avail_flags, VRING_AVAIL_F_NO_INTERRUPT)

    def enable_callbacks(self) -> bool:
        """Ask for used-buffer notifications again; return whether used entries are pending.

        A True result means the device used buffers meanwhile: reap them now
        rather than wait for a notification.
        """
        self._check_usable()
        self._callbacks = True
        if self._event_idx:
            self._region.write_u16(self._layout.used_event, self._last_used)
        else:
            self._region.write_u16(self._layout.avail_flags, 0)
        if self._ready or self._used_shadow != self._last_used:
            return True
        return self._region.read_u16(self._layout.used_idx) != self._last_used

    # --- teardown -----------------------------------------------------------

    def detach_unused(self) -> list[object]:
        """Take back every outstanding chain (after a device or queue reset).

        Unmaps their buffers, frees their descriptors and returns their
        tokens.  Works on a broken queue.
        """
        tokens: list[object] = [token for token, _data in self._ready]
        self._ready.clear()
        heads = list(self._order) if self._in_order else range(self._size)
        for head in heads:
            chain = self._chains[head]
            if chain is not None:
                self._chains[head] = None
                self._release(chain, 0)
                tokens.append(chain.token)
        self._order.clear()
        self._outstanding = 0
        return tokens

    def reset(self) -> list[object]:
        """Detach everything, zero the rings and start over (also clears ``broken``).

        Returns the detached tokens.  Use after RESET_VQUEUE or a device reset.
        """
        if self._closed:
            raise QueueBroken(f"queue {self._index} is closed")
        tokens = self.detach_unused()
        self._init_state()
        return tokens

    def close(self) -> list[object]:
        """Detach everything and free the rings; returns the detached tokens."""
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
            f"<DriverQueue {self._index} size={self._size} free={len(self._free)} "
            f"outstanding={self._outstanding} avail={self._avail_idx} "
            f"used={self._last_used}{state}>"
        )
