"""One virtio-blk request for :meth:`~virtio_msg.drivers.blk.BlkDriver.execute`: :class:`BlkOp`.

A ``BlkOp`` is built with its class methods (``read_sectors``, ``write``,
``flush``, ``get_id``, ``discard``, ``write_zeroes``) and carries its outcome
after ``execute``: the status byte and the bytes read.  Sector numbers and
counts are 512-byte sectors, as in :class:`~virtio_msg.drivers.blk.BlkDriver`'s
methods; ``BlkOp.read(sector, nbytes)``, which took a byte count, is kept as a
deprecated alias.  Re-exported by :mod:`virtio_msg.drivers.blk`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Final

from virtio_msg.devices.blk_protocol import (
    ID_BYTES,
    SECTOR_SHIFT,
    SEGMENT,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)

Buffer = bytes | bytearray | memoryview
_STATUS_NAMES: Final = {
    VIRTIO_BLK_S_OK: "OK",
    VIRTIO_BLK_S_IOERR: "IOERR",
    VIRTIO_BLK_S_UNSUPP: "UNSUPP",
}


class BlkOp:
    """One virtio-blk request for :meth:`BlkDriver.execute`, and its outcome.

    Build one with the class methods; after ``execute`` ``status`` holds the
    status byte and ``result`` the bytes read (IN) or the id (GET_ID).
    """

    __slots__ = ("data", "in_len", "payload", "result", "sector", "status", "type")

    def __init__(
        self,
        rtype: int,
        sector: int = 0,
        *,
        data: Buffer = b"",
        in_len: int = 0,
        payload: bytes = b"",
    ) -> None:
        """A raw request: ``data`` to write, ``in_len`` bytes to read, ``payload`` segments."""
        self.type = rtype
        self.sector = sector
        self.data = memoryview(data).cast("B")
        self.in_len = in_len
        self.payload = payload
        self.status: int | None = None
        self.result = b""

    @classmethod
    def read_sectors(cls, sector: int, count: int) -> BlkOp:
        """VIRTIO_BLK_T_IN of ``count`` 512-byte sectors (as :meth:`BlkDriver.read_sectors`)."""
        if count < 0:
            raise ValueError(f"sector count {count} is negative")
        return cls(VIRTIO_BLK_T_IN, sector, in_len=count << SECTOR_SHIFT)

    @classmethod
    def read(cls, sector: int, nbytes: int) -> BlkOp:
        """Deprecated (warns): ``nbytes`` is a byte count; use :meth:`read_sectors`."""
        message = "BlkOp.read(sector, nbytes) takes a byte count; use BlkOp.read_sectors"
        warnings.warn(message + "(sector, count), which takes 512-byte sectors",
                      DeprecationWarning, stacklevel=2)
        return cls(VIRTIO_BLK_T_IN, sector, in_len=nbytes)

    @classmethod
    def write(cls, sector: int, data: Buffer) -> BlkOp:
        """VIRTIO_BLK_T_OUT of ``data`` (a multiple of 512 bytes) at ``sector``."""
        return cls(VIRTIO_BLK_T_OUT, sector, data=data)

    @classmethod
    def flush(cls) -> BlkOp:
        """VIRTIO_BLK_T_FLUSH."""
        return cls(VIRTIO_BLK_T_FLUSH)

    @classmethod
    def get_id(cls) -> BlkOp:
        """VIRTIO_BLK_T_GET_ID (20 bytes)."""
        return cls(VIRTIO_BLK_T_GET_ID, in_len=ID_BYTES)

    @classmethod
    def discard(cls, segments: Sequence[tuple[int, int]]) -> BlkOp:
        """VIRTIO_BLK_T_DISCARD of (sector, count) segments."""
        return cls(VIRTIO_BLK_T_DISCARD, payload=_segments(segments, 0))

    @classmethod
    def write_zeroes(cls, segments: Sequence[tuple[int, int]], *, unmap: bool = False) -> BlkOp:
        """VIRTIO_BLK_T_WRITE_ZEROES of (sector, count) segments; ``unmap`` may deallocate."""
        flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if unmap else 0
        return cls(VIRTIO_BLK_T_WRITE_ZEROES, payload=_segments(segments, flags))

    @property
    def ok(self) -> bool:
        """Whether the request completed with VIRTIO_BLK_S_OK."""
        return self.status == VIRTIO_BLK_S_OK

    def __repr__(self) -> str:
        """Show type, sector, sizes and status."""
        status = "pending" if self.status is None else _STATUS_NAMES.get(self.status, self.status)
        return (
            f"<BlkOp type={self.type} sector={self.sector} out={self.data.nbytes} "
            f"in={self.in_len} {status}>"
        )


def _segments(segments: Sequence[tuple[int, int]], flags: int) -> bytes:
    return b"".join(SEGMENT.pack(sector, count, flags) for sector, count in segments)


__all__ = ["BlkOp", "Buffer"]
