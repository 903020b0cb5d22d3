"""Shared memory: the bounds-checked :class:`Region` and the restricted :class:`DmaPool`.

A bus instance owns one region (a memfd both sides map); the driver side
allocates rings (coherent) and bounces buffers (streaming) through the pool,
and the device side touches only what the region's bounds checks allow.
See ``docs/memory.md`` for the design and every rule.
"""

from __future__ import annotations

from virtio_msg.memory.pool import (
    DEFAULT_COHERENT_ALIGN,
    DEFAULT_MAX_SEGMENT_SLOTS,
    DEFAULT_SLOT_SIZE,
    DmaDirection,
    DmaPool,
    EmptyMapping,
    Mapping,
    MappingTooLarge,
    PoolError,
    PoolExhausted,
    PoolStats,
    UnknownMapping,
)
from virtio_msg.memory.region import (
    ADDRESS_LIMIT,
    DEFAULT_BASE,
    DEFAULT_SIZE,
    Region,
    RegionAccessError,
    RegionClosed,
    wrap16,
)

__all__ = [
    "ADDRESS_LIMIT",
    "DEFAULT_BASE",
    "DEFAULT_COHERENT_ALIGN",
    "DEFAULT_MAX_SEGMENT_SLOTS",
    "DEFAULT_SIZE",
    "DEFAULT_SLOT_SIZE",
    "DmaDirection",
    "DmaPool",
    "EmptyMapping",
    "Mapping",
    "MappingTooLarge",
    "PoolError",
    "PoolExhausted",
    "PoolStats",
    "Region",
    "RegionAccessError",
    "RegionClosed",
    "UnknownMapping",
    "wrap16",
]
