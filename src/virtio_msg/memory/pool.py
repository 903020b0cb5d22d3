r"""The restricted DMA pool: swiotlb-style bounce buffers inside one Region.

Strategy (modelled on Linux's ``restricted-dma-pool`` / swiotlb, see
``linux-rfc1.md`` §8): the pool's span of the region is cut into slots of
``slot_size`` bytes (2 KiB).  One ``bytearray`` holds one byte per slot, 0 for
free and 1 for used, so finding a run of *n* free slots is a single C-speed
``bytearray.find(b"\\0" * n)`` -- no Python loop over slots.

* **Streaming mappings** (:meth:`DmaPool.map`) take the lowest run (first
  fit) of at most ``max_segment_slots`` (128, i.e. 256 KiB, swiotlb's
  ``IO_TLB_SEGSIZE``) free slots and *bounce* the caller's bytes into them.
  Linux rotates its search index through the pool; we search from the lowest
  free slot instead (a hint below which every slot is in use), so a
  map/unmap cycle reuses the same cache-hot slots (that roughly halved the
  bounce overhead of 64 KiB mappings in ``benchmarks/bench_pool.py``).  An
  ``int`` instead of data means that many zero bytes: the slots are always
  overwritten on map, so a device never sees stale pool contents (Linux
  bounces even for ``DMA_FROM_DEVICE`` for the same reason).
  :meth:`DmaPool.unmap` frees the run and, for ``FROM_DEVICE`` and
  ``BIDIRECTIONAL``, copies the device-written bytes back: it returns them,
  and also copies them into the caller's original buffer when that was
  writable (a ``bytearray`` or writable ``memoryview``), as swiotlb does.
* **Coherent allocations** (:meth:`DmaPool.alloc_coherent`) are carved from the
  *same* slot space, first fit too, in runs aligned to ``coherent_align`` (a
  page), zeroed.  Unlike Linux they are not capped at 128 slots, so rings of
  large queues fit.
* **Failure is immediate.**  No run large enough: :class:`PoolExhausted`
  ("swiotlb full"); over the segment cap: :class:`MappingTooLarge`; an address
  or mapping that is not live (double unmap, unknown address, stale mapping
  object whose address was reused): :class:`UnknownMapping`.  Nothing blocks,
  and a failed call changes no state.

The pool computes offsets only from slot indices it owns, inside one
zero-copy view of its span obtained through :meth:`Region.view`, so every byte
it touches was bounds-checked by the region once, at construction.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Final, NamedTuple, NoReturn

from virtio_msg.errors import MemoryAccessError
from virtio_msg.memory.region import Region

__all__ = [
    "DEFAULT_COHERENT_ALIGN",
    "DEFAULT_MAX_SEGMENT_SLOTS",
    "DEFAULT_SLOT_SIZE",
    "DmaDirection",
    "DmaPool",
    "EmptyMapping",
    "Mapping",
    "MappingTooLarge",
    "PoolError",
    "PoolExhausted",
    "PoolStats",
    "UnknownMapping",
]

DEFAULT_SLOT_SIZE: Final = 2048
"""swiotlb's ``IO_TLB_SIZE``: the pool is cut into 2 KiB slots."""
DEFAULT_MAX_SEGMENT_SLOTS: Final = 128
"""swiotlb's ``IO_TLB_SEGSIZE``: one mapping spans at most 128 slots (256 KiB)."""
DEFAULT_COHERENT_ALIGN: Final = 4096
"""Coherent allocations are page-aligned, like ``dma_alloc_coherent``."""

_FREE: Final = 0
_USED: Final = 1

BufferLike = bytes | bytearray | memoryview


class PoolError(MemoryAccessError):
    """Base class of DMA-pool errors."""


class PoolExhausted(PoolError):
    """No run of free slots is large enough ("swiotlb full"); nothing was allocated."""


class MappingTooLarge(PoolError):
    """A streaming mapping needs more than ``max_segment_slots`` slots."""


class UnknownMapping(PoolError):
    """The address or mapping is not live: double unmap/free, never mapped, or stale."""


class EmptyMapping(PoolError, ValueError):
    """A mapping or allocation of zero bytes was requested."""


class DmaDirection(enum.Enum):
    """Direction of a streaming mapping (the Linux ``dma_data_direction`` values)."""

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2


_TO_DEVICE: Final = DmaDirection.TO_DEVICE


def _source(
    data: BufferLike | int, direction: DmaDirection
) -> tuple[BufferLike | None, int, memoryview | None]:
    # The slow path of DmaPool.map: anything but bytes or int.
    if isinstance(data, int):  # bool or an int subclass
        return None, int(data), None
    if isinstance(data, bytes):
        return data, len(data), None
    src = memoryview(data).cast("B")
    target = None if src.readonly or direction is _TO_DEVICE else src
    return src, src.nbytes, target


class Mapping(NamedTuple):
    """A live streaming mapping: the bus address and length the device sees.

    ``slot``/``nslots`` locate it in the pool; ``target`` is the caller's
    writable buffer that :meth:`DmaPool.unmap` copies device data back into
    (``None`` for immutable data or ``TO_DEVICE``).  The pool tells mappings
    apart by identity: a stale ``Mapping`` whose address was reused by a
    later mapping is rejected by :meth:`DmaPool.unmap` even if it compares
    equal.
    """

    addr: int
    length: int
    direction: DmaDirection
    slot: int
    nslots: int
    target: memoryview | None


_new_mapping: Final = tuple.__new__
"""Build a :class:`Mapping` without the Python-level ``NamedTuple.__new__`` (hot path)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of pool usage (for the CLI and the benchmarks).

    ``slots_used`` counts streaming and coherent slots; ``high_water`` is the
    largest ``slots_used`` seen; ``bytes_bounced_*`` count bytes copied into the
    pool on map and out of it on unmap.
    """

    slot_size: int
    slots_total: int
    slots_used: int
    high_water: int
    live_mappings: int
    coherent_allocations: int
    coherent_bytes: int
    bytes_bounced_to_device: int
    bytes_bounced_from_device: int
    map_failures: int


class DmaPool:
    """A restricted DMA pool over (part of) a :class:`Region`.

    ``pool_base``/``pool_size`` select the span (default: the whole region,
    rounded down to whole slots); the span must start on a slot boundary.
    """

    def __init__(
        self,
        region: Region,
        slot_size: int = DEFAULT_SLOT_SIZE,
        max_segment_slots: int = DEFAULT_MAX_SEGMENT_SLOTS,
        coherent_align: int = DEFAULT_COHERENT_ALIGN,
        *,
        pool_base: int | None = None,
        pool_size: int | None = None,
    ) -> None:
        """Cut ``region`` (or the given span of it) into slots."""
        if slot_size <= 0 or slot_size & (slot_size - 1):
            raise ValueError(f"slot_size must be a power of two, not {slot_size}")
        if max_segment_slots <= 0:
            raise ValueError(f"max_segment_slots must be positive, not {max_segment_slots}")
        if coherent_align <= 0 or coherent_align & (coherent_align - 1):
            raise ValueError(f"coherent_align must be a power of two, not {coherent_align}")
        base = region.base if pool_base is None else pool_base
        span = region.end - base if pool_size is None else pool_size
        if base % slot_size:
            raise ValueError(f"pool base {base:#x} is not aligned to the slot size {slot_size}")
        nslots = span // slot_size
        if nslots <= 0:
            raise ValueError(f"pool span of {span} bytes holds no {slot_size}-byte slot")
        self._region = region
        self._base = base
        self._view = region.view(base, nslots * slot_size)  # bounds-checked once, here
        self._slot_size = slot_size
        self._shift = slot_size.bit_length() - 1
        self._nslots = nslots
        self._max_slots = max_segment_slots
        self._align = coherent_align
        self._used_map = bytearray(nslots)
        # Slice assignment through a memoryview is ~2x faster than on the bytearray.
        self._used_mv = memoryview(self._used_map)
        self._free_runs = [bytes(n) for n in range(max_segment_slots + 1)]
        self._used_runs = [bytes([_USED]) * n for n in range(max_segment_slots + 1)]
        self._zeros = memoryview(bytes(max_segment_slots * slot_size))
        self._hint = 0  # every slot below the hint is in use: first fit searches from it
        self._live: dict[int, Mapping] = {}
        self._lock = threading.Lock()  # drivers on several threads share one pool
        self._coherent: dict[int, tuple[int, int, int]] = {}  # addr -> (slot, nslots, size)
        self._slots_used = 0
        self._high_water = 0
        self._coherent_bytes = 0
        self._to_device = 0
        self._from_device = 0
        self._failures = 0

    # --- geometry -----------------------------------------------------------

    @property
    def region(self) -> Region:
        """The region the pool lives in."""
        return self._region

    @property
    def base(self) -> int:
        """Bus address of slot 0."""
        return self._base

    @property
    def slot_size(self) -> int:
        """Bytes per slot."""
        return self._slot_size

    @property
    def max_segment_slots(self) -> int:
        """Largest number of slots one streaming mapping may span."""
        return self._max_slots

    @property
    def max_mapping_size(self) -> int:
        """Largest streaming mapping in bytes (``dma_max_mapping_size``)."""
        return self._max_slots * self._slot_size

    # --- streaming mappings -------------------------------------------------

    def map(self, data: BufferLike | int, direction: DmaDirection) -> Mapping:
        """Bounce ``data`` into free slots and return the mapping the device will use.

        ``data`` may be an ``int`` *n*, meaning *n* zero bytes (the natural
        form for ``FROM_DEVICE``).  Raises :class:`EmptyMapping`,
        :class:`MappingTooLarge` or :class:`PoolExhausted`; on error nothing
        is allocated.
        """
        # The bounce hot path, written out in one frame (no helper calls): the
        # argument checks need no pool state and run before the lock; the slot
        # search, the slot map, the copy and the live record run under it.
        kind = type(data)
        target: memoryview | None = None
        src: BufferLike | None
        if kind is bytes:
            src = data  # type: ignore[assignment]
            length = len(src)  # type: ignore[arg-type]
        elif kind is int:
            src = None
            length = data  # type: ignore[assignment]
        else:
            src, length, target = _source(data, direction)
        if length <= 0:
            raise EmptyMapping(f"cannot map {length} bytes")
        nslots = (length + self._slot_size - 1) >> self._shift
        if nslots > self._max_slots:
            raise MappingTooLarge(
                f"mapping of {length} bytes needs {nslots} slots; the limit is "
                f"{self._max_slots} slots ({self.max_mapping_size} bytes)"
            )
        with self._lock:
            hint = self._hint
            slot = self._used_map.find(self._free_runs[nslots], hint)
            if slot < 0:
                self._exhausted(nslots)
            end = slot + nslots
            self._used_mv[slot:end] = self._used_runs[nslots]
            if slot == hint:
                self._hint = end
            used = self._slots_used + nslots
            self._slots_used = used
            if used > self._high_water:
                self._high_water = used
            off = slot << self._shift
            if src is None:
                self._view[off : off + length] = self._zeros[:length]
            else:
                self._view[off : off + length] = src
                self._to_device += length
            addr = self._base + off
            mapping: Mapping = _new_mapping(
                Mapping, (addr, length, direction, slot, nslots, target)
            )
            self._live[addr] = mapping
        return mapping

    def unmap(self, mapping: Mapping | int) -> bytes | None:
        """Release a streaming mapping; return the device-written bytes, if any.

        For ``FROM_DEVICE`` and ``BIDIRECTIONAL`` mappings the bounce copy is
        returned (and copied into the original buffer when that was writable);
        ``TO_DEVICE`` returns ``None``.  ``mapping`` is the :class:`Mapping`
        from :meth:`map` or its bus address.  Raises :class:`UnknownMapping`
        for anything that is not live.
        """
        with self._lock:  # one frame, like map
            live_maps = self._live
            if type(mapping) is Mapping:
                addr, length, direction, slot, nslots, target = mapping
                if live_maps.get(addr) is not mapping:
                    raise UnknownMapping(f"{mapping!r} is not live (double unmap or stale)")
            elif isinstance(mapping, int):
                live = live_maps.get(mapping)
                if live is None:
                    raise UnknownMapping(self._unknown(mapping))
                addr, length, direction, slot, nslots, target = live
            else:
                raise TypeError(f"unmap takes a Mapping or a bus address, not {mapping!r}")
            del live_maps[addr]
            self._used_mv[slot : slot + nslots] = self._free_runs[nslots]
            self._slots_used -= nslots
            if slot < self._hint:
                self._hint = slot
            if direction is _TO_DEVICE:
                return None
            off = slot << self._shift
            data = bytes(self._view[off : off + length])
            self._from_device += length
        if target is not None:
            target[:] = data
        return data

    def alloc_coherent(self, size: int, align: int | None = None) -> int:
        """Allocate ``size`` zeroed bytes and return their bus address.

        The run is aligned to ``align`` (default: the pool's ``coherent_align``).
        Raises :class:`EmptyMapping` or :class:`PoolExhausted`.
        """
        with self._lock:
            return self._alloc_coherent(size, align)

    def free_coherent(self, addr: int) -> None:
        """Free a coherent allocation by its bus address (:class:`UnknownMapping` if not live)."""
        with self._lock:
            return self._free_coherent(addr)

    def sync_for_cpu(self, mapping: Mapping) -> bytes:
        """Return the current bounce-buffer contents of a live mapping without unmapping."""
        with self._lock:
            return self._sync_for_cpu(mapping)

    def sync_for_device(self, mapping: Mapping, data: BufferLike) -> None:
        """Bounce ``data`` again into a live mapping (at most its length)."""
        with self._lock:
            return self._sync_for_device(mapping, data)


    def _exhausted(self, nslots: int) -> NoReturn:
        self._failures += 1
        raise PoolExhausted(
            f"swiotlb full: no run of {nslots} free slots "
            f"({self._slots_used}/{self._nslots} slots in use, {len(self._live)} live mappings)"
        )

    def _unknown(self, addr: int) -> str:
        if addr in self._coherent:
            return f"{addr:#x} is a coherent allocation, not a streaming mapping"
        return f"no live mapping at {addr:#x} (double unmap or never mapped)"

    def _sync_for_cpu(self, mapping: Mapping) -> bytes:
        live = self._check_live(mapping)
        off = live.slot << self._shift
        data = bytes(self._view[off : off + live.length])
        self._from_device += live.length
        return data

    def _sync_for_device(self, mapping: Mapping, data: BufferLike) -> None:
        live = self._check_live(mapping)
        src = memoryview(data).cast("B")
        if src.nbytes > live.length:
            raise ValueError(f"{src.nbytes} bytes do not fit {live!r}")
        off = live.slot << self._shift
        self._view[off : off + src.nbytes] = src
        self._to_device += src.nbytes

    def _check_live(self, mapping: Mapping) -> Mapping:
        if self._live.get(mapping.addr) is not mapping:
            raise UnknownMapping(f"{mapping!r} is not live")
        return mapping

    def is_mapped(self, addr: int) -> bool:
        """Return whether a live streaming mapping starts at ``addr``."""
        return addr in self._live

    # --- coherent allocations -----------------------------------------------

    def _alloc_coherent(self, size: int, align: int | None = None) -> int:
        if size <= 0:
            raise EmptyMapping(f"cannot allocate {size} bytes")
        align = self._align if align is None else align
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment must be a power of two, not {align}")
        nslots = (size + self._slot_size - 1) >> self._shift
        step = max(1, align >> self._shift)
        # The first slot index whose bus address is a multiple of ``align``.
        phase = ((-self._base) % max(align, self._slot_size)) >> self._shift
        run = bytes(nslots)
        hint = self._hint
        pos = hint + (phase - hint) % step  # first aligned slot at or after the hint
        while True:
            slot = self._used_map.find(run, pos)
            if slot < 0:
                self._failures += 1
                raise PoolExhausted(
                    f"swiotlb full: no {align}-aligned run of {nslots} free slots for a "
                    f"{size}-byte coherent allocation ({self._slots_used}/{self._nslots} used)"
                )
            aligned = slot + (-(slot - phase)) % step
            if aligned == slot:
                break
            pos = aligned
        self._used_map[slot : slot + nslots] = bytes([_USED]) * nslots
        if slot == hint:
            self._hint = slot + nslots
        self._slots_used += nslots
        self._high_water = max(self._high_water, self._slots_used)
        off = slot << self._shift
        self._view[off : off + nslots * self._slot_size] = bytes(nslots * self._slot_size)
        addr = self._base + off
        self._coherent[addr] = (slot, nslots, size)
        self._coherent_bytes += size
        return addr

    def _free_coherent(self, addr: int) -> None:
        entry = self._coherent.pop(addr, None)
        if entry is None:
            what = "a streaming mapping" if addr in self._live else "not a live allocation"
            raise UnknownMapping(f"coherent free of {addr:#x}: {what}")
        slot, nslots, size = entry
        self._used_map[slot : slot + nslots] = bytes(nslots)
        self._hint = min(self._hint, slot)
        self._slots_used -= nslots
        self._coherent_bytes -= size

    # --- statistics ---------------------------------------------------------

    def stats(self) -> PoolStats:
        """Return a snapshot of the pool's usage counters."""
        with self._lock:
            return self._stats()

    def _stats(self) -> PoolStats:
        return PoolStats(
            slot_size=self._slot_size,
            slots_total=self._nslots,
            slots_used=self._slots_used,
            high_water=self._high_water,
            live_mappings=len(self._live),
            coherent_allocations=len(self._coherent),
            coherent_bytes=self._coherent_bytes,
            bytes_bounced_to_device=self._to_device,
            bytes_bounced_from_device=self._from_device,
            map_failures=self._failures,
        )

    def check_consistency(self) -> None:
        """Verify the slot map against the live mappings and allocations (for tests).

        Raises :class:`PoolError` if a slot is marked used by nobody, a slot has
        two owners, or the used-slot count is wrong.
        """
        owners = bytearray(self._nslots)
        runs = [(m.slot, m.nslots) for m in self._live.values()]
        runs += [(slot, n) for slot, n, _ in self._coherent.values()]
        for slot, n in runs:
            for i in range(slot, slot + n):
                if owners[i]:
                    raise PoolError(f"slot {i} has two owners")
                owners[i] = _USED
        if owners != self._used_map or sum(n for _, n in runs) != self._slots_used:
            raise PoolError("slot map does not match the live mappings and allocations")

    def close(self) -> None:
        """Release the pool's view of the region (the region itself stays open)."""
        self._view.release()

    def __repr__(self) -> str:
        """Show the pool's span and usage."""
        return (
            f"<DmaPool {self._base:#x} {self._nslots}x{self._slot_size} "
            f"used={self._slots_used} live={len(self._live)}>"
        )
