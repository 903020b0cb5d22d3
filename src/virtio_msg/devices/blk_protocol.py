"""virtio-blk protocol: constants, config layout and pure request parsing.

Everything here is pure (no memory, no file): :func:`parse_request` turns a
request header, the chain's lengths and the device's limits into a
:class:`BlkRequest` or a :class:`Rejection`.  The device model
(:mod:`virtio_msg.devices.blk`) executes what this module accepts; the driver
(:mod:`virtio_msg.drivers.blk`) builds requests with the same layouts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from virtio_msg.memory import DEFAULT_MAX_SEGMENT_SLOTS, DEFAULT_SLOT_SIZE

# --- protocol constants (virtio 1.x §5.2) ------------------------------------------------

SECTOR_SIZE: Final = 512
"""The protocol's unit: ``sector`` and every length count 512-byte sectors (§5.2.6)."""
SECTOR_SHIFT: Final = 9
ID_BYTES: Final = 20
"""GET_ID returns a NUL-padded ASCII string of at most 20 bytes."""

VIRTIO_BLK_F_SIZE_MAX: Final = 1
VIRTIO_BLK_F_SEG_MAX: Final = 2
VIRTIO_BLK_F_GEOMETRY: Final = 4
VIRTIO_BLK_F_RO: Final = 5
VIRTIO_BLK_F_BLK_SIZE: Final = 6
VIRTIO_BLK_F_FLUSH: Final = 9
VIRTIO_BLK_F_TOPOLOGY: Final = 10
VIRTIO_BLK_F_CONFIG_WCE: Final = 11
VIRTIO_BLK_F_MQ: Final = 12
VIRTIO_BLK_F_DISCARD: Final = 13
VIRTIO_BLK_F_WRITE_ZEROES: Final = 14

VIRTIO_BLK_T_IN: Final = 0
VIRTIO_BLK_T_OUT: Final = 1
VIRTIO_BLK_T_FLUSH: Final = 4
VIRTIO_BLK_T_GET_ID: Final = 8
VIRTIO_BLK_T_GET_LIFETIME: Final = 10
VIRTIO_BLK_T_DISCARD: Final = 11
VIRTIO_BLK_T_WRITE_ZEROES: Final = 13
VIRTIO_BLK_T_SECURE_ERASE: Final = 14

VIRTIO_BLK_S_OK: Final = 0
VIRTIO_BLK_S_IOERR: Final = 1
VIRTIO_BLK_S_UNSUPP: Final = 2

VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: Final = 1 << 0
"""``flags.unmap`` of a discard/write-zeroes segment; the other 31 bits are reserved."""

REQUEST_TYPE_NAMES: Final[dict[int, str]] = {
    VIRTIO_BLK_T_IN: "IN",
    VIRTIO_BLK_T_OUT: "OUT",
    VIRTIO_BLK_T_FLUSH: "FLUSH",
    VIRTIO_BLK_T_GET_ID: "GET_ID",
    VIRTIO_BLK_T_DISCARD: "DISCARD",
    VIRTIO_BLK_T_WRITE_ZEROES: "WRITE_ZEROES",
}
"""Names of the request types this model implements (for statistics)."""

REQ_HEADER: Final = struct.Struct("<IIQ")
"""``struct virtio_blk_req`` header: type, reserved, sector."""
SEGMENT: Final = struct.Struct("<QII")
"""``struct virtio_blk_discard_write_zeroes``: sector, num_sectors, flags."""
CONFIG: Final = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
"""``struct virtio_blk_config`` up to ``unused1`` (60 bytes; offsets in :class:`BlkConfig`)."""

Executor = Callable[[Callable[[], None]], object]
"""Runs a function later on another thread (``ThreadPoolExecutor.submit`` is one)."""

POOL_MAPPING_CAP: Final = DEFAULT_MAX_SEGMENT_SLOTS * DEFAULT_SLOT_SIZE
"""256 KiB: the restricted pool maps at most this much in one segment, so ``size_max`` <= it."""
DEFAULT_TEMP_SIZE: Final = 16 << 20
"""Size of the temporary image a device gets when no path is given (16 MiB, sparse)."""
DEFAULT_SERIAL: Final = "virtio-msg-blk"
DEFAULT_MAX_DISCARD_SECTORS: Final = 1 << 22
"""2 GiB per discard/write-zeroes segment."""
DEFAULT_MAX_DISCARD_SEG: Final = 32
"""Segments per discard/write-zeroes request (512 readable bytes)."""
ZERO_CHUNK: Final = 1 << 20
"""Write-zeroes without fallocate writes zeros in chunks of this many bytes (bounded memory)."""
IOV_BATCH: Final = 512
"""Buffers per preadv/pwritev call (well under Linux's IOV_MAX of 1024)."""


@dataclass(frozen=True, slots=True)
class BlkConfig:
    """The fields of ``struct virtio_blk_config`` this project uses.

    Offsets: capacity 0, size_max 8, seg_max 12, geometry 16, blk_size 20,
    topology 24, writeback 32, num_queues 34, max_discard_sectors 36,
    max_discard_seg 40, discard_sector_alignment 44, max_write_zeroes_sectors 48,
    max_write_zeroes_seg 52, write_zeroes_may_unmap 56.
    """

    capacity: int
    size_max: int = 0
    seg_max: int = 0
    blk_size: int = 0
    writeback: int = 0
    num_queues: int = 0
    max_discard_sectors: int = 0
    max_discard_seg: int = 0
    discard_sector_alignment: int = 0
    max_write_zeroes_sectors: int = 0
    max_write_zeroes_seg: int = 0
    write_zeroes_may_unmap: int = 0

    def pack(self) -> bytes:
        """Encode as the 60-byte little-endian config space (geometry, topology zero)."""
        return CONFIG.pack(
            self.capacity, self.size_max, self.seg_max, 0, 0, 0, self.blk_size,
            0, 0, 0, 0, self.writeback, 0, self.num_queues,
            self.max_discard_sectors, self.max_discard_seg, self.discard_sector_alignment,
            self.max_write_zeroes_sectors, self.max_write_zeroes_seg,
            self.write_zeroes_may_unmap,
        )

    @classmethod
    def unpack(cls, data: bytes) -> BlkConfig:
        """Decode config bytes; a shorter config space reads as zeros past its end."""
        raw = bytes(data[: CONFIG.size]).ljust(CONFIG.size, b"\0")
        f = CONFIG.unpack(raw)
        return cls(
            capacity=f[0], size_max=f[1], seg_max=f[2], blk_size=f[6], writeback=f[11],
            num_queues=f[13], max_discard_sectors=f[14], max_discard_seg=f[15],
            discard_sector_alignment=f[16], max_write_zeroes_sectors=f[17],
            max_write_zeroes_seg=f[18], write_zeroes_may_unmap=f[19],
        )


# --- pure request parsing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """What the device accepts: negotiated features and advertised limits."""

    capacity: int
    read_only: bool
    flush: bool
    discard: bool
    write_zeroes: bool
    max_transfer: int
    """Largest IN/OUT data length in bytes (``seg_max`` * ``size_max``)."""
    max_discard_sectors: int
    max_discard_seg: int
    max_write_zeroes_sectors: int
    max_write_zeroes_seg: int


@dataclass(frozen=True, slots=True)
class BlkRequest:
    """A request that passed every check; ``data_len`` in bytes (IN/OUT/GET_ID)."""

    type: int
    sector: int
    data_len: int = 0
    segments: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the device refuses: the status to report and why."""

    status: int
    reason: str


def parse_request(
    header: bytes, readable_len: int, writable_len: int, limits: Limits
) -> BlkRequest | Rejection:
    """Check a request's header and shape (pure); segments are checked by :func:`parse_segments`.

    ``header`` is the first 16 readable bytes (shorter if the chain is short),
    ``writable_len`` includes the status byte (at least 1).
    """
    if len(header) < REQ_HEADER.size:
        return Rejection(VIRTIO_BLK_S_IOERR, "short-header")
    rtype, _reserved, sector = REQ_HEADER.unpack(header)
    data_out = readable_len - REQ_HEADER.size
    data_in = writable_len - 1
    if rtype in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
        if rtype == VIRTIO_BLK_T_IN:
            length, stray = data_in, data_out
        else:
            if limits.read_only:  # §5.2.6.2: IOERR, and no data written
                return Rejection(VIRTIO_BLK_S_IOERR, "write-on-read-only")
            length, stray = data_out, data_in
        if stray:
            return Rejection(VIRTIO_BLK_S_IOERR, "data-in-wrong-direction")
        if length % SECTOR_SIZE:
            return Rejection(VIRTIO_BLK_S_IOERR, "data-not-sector-multiple")
        if length > limits.max_transfer:
            return Rejection(VIRTIO_BLK_S_IOERR, "data-too-large")
        if sector + (length >> SECTOR_SHIFT) > limits.capacity:
            return Rejection(VIRTIO_BLK_S_IOERR, "sector-out-of-range")
        return BlkRequest(rtype, sector, length)
    if rtype == VIRTIO_BLK_T_FLUSH:
        if not limits.flush:
            return Rejection(VIRTIO_BLK_S_UNSUPP, "flush-not-negotiated")
        return BlkRequest(rtype, 0)  # data "SHOULD NOT" be there; ignored if it is
    if rtype == VIRTIO_BLK_T_GET_ID:
        if data_out:
            return Rejection(VIRTIO_BLK_S_IOERR, "data-in-wrong-direction")
        if data_in == 0:
            return Rejection(VIRTIO_BLK_S_IOERR, "get-id-without-buffer")
        return BlkRequest(rtype, 0, min(data_in, ID_BYTES))
    if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        discard = rtype == VIRTIO_BLK_T_DISCARD
        if not (limits.discard if discard else limits.write_zeroes):
            return Rejection(VIRTIO_BLK_S_UNSUPP, "feature-not-negotiated")
        if data_in:
            return Rejection(VIRTIO_BLK_S_IOERR, "data-in-wrong-direction")
        if data_out == 0 or data_out % SEGMENT.size:
            return Rejection(VIRTIO_BLK_S_IOERR, "segments-bad-length")
        max_seg = limits.max_discard_seg if discard else limits.max_write_zeroes_seg
        if data_out // SEGMENT.size > max_seg:
            return Rejection(VIRTIO_BLK_S_IOERR, "too-many-segments")
        return BlkRequest(rtype, 0, data_out)
    return Rejection(VIRTIO_BLK_S_UNSUPP, "unsupported-type")


def parse_segments(
    rtype: int, payload: bytes, limits: Limits
) -> tuple[tuple[int, int, int], ...] | Rejection:
    """Decode and check discard/write-zeroes segments (pure); all are checked before any runs."""
    discard = rtype == VIRTIO_BLK_T_DISCARD
    segments = tuple(SEGMENT.iter_unpack(payload))
    for _sector, _num, flags in segments:
        # §5.2.6.2: UNSUPP for an unknown flag, and for unmap on a discard.
        if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
            return Rejection(VIRTIO_BLK_S_UNSUPP, "unknown-segment-flag")
        if discard and flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
            return Rejection(VIRTIO_BLK_S_UNSUPP, "unmap-on-discard")
    if limits.read_only:
        return Rejection(VIRTIO_BLK_S_IOERR, "write-on-read-only")
    max_sectors = limits.max_discard_sectors if discard else limits.max_write_zeroes_sectors
    for sector, num, _flags in segments:
        if num > max_sectors:
            return Rejection(VIRTIO_BLK_S_IOERR, "segment-too-large")
        if sector + num > limits.capacity:
            return Rejection(VIRTIO_BLK_S_IOERR, "sector-out-of-range")
    return segments


__all__ = [
    "CONFIG",
    "DEFAULT_MAX_DISCARD_SECTORS",
    "DEFAULT_MAX_DISCARD_SEG",
    "DEFAULT_SERIAL",
    "DEFAULT_TEMP_SIZE",
    "ID_BYTES",
    "IOV_BATCH",
    "POOL_MAPPING_CAP",
    "REQUEST_TYPE_NAMES",
    "REQ_HEADER",
    "SECTOR_SHIFT",
    "SECTOR_SIZE",
    "SEGMENT",
    "VIRTIO_BLK_F_BLK_SIZE",
    "VIRTIO_BLK_F_CONFIG_WCE",
    "VIRTIO_BLK_F_DISCARD",
    "VIRTIO_BLK_F_FLUSH",
    "VIRTIO_BLK_F_GEOMETRY",
    "VIRTIO_BLK_F_MQ",
    "VIRTIO_BLK_F_RO",
    "VIRTIO_BLK_F_SEG_MAX",
    "VIRTIO_BLK_F_SIZE_MAX",
    "VIRTIO_BLK_F_TOPOLOGY",
    "VIRTIO_BLK_F_WRITE_ZEROES",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_T_DISCARD",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_GET_LIFETIME",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_SECURE_ERASE",
    "VIRTIO_BLK_T_WRITE_ZEROES",
    "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP",
    "ZERO_CHUNK",
    "BlkConfig",
    "BlkRequest",
    "Executor",
    "Limits",
    "Rejection",
    "parse_request",
    "parse_segments",
]
