"""The NBD protocol as the export speaks it: magic numbers, options, commands, limits.

Numbers are those of the NBD protocol document (doc/proto.md of the NBD
project): handshake magics and flags, option and reply codes, info types,
transmission flags, commands, command flags and errors, and the wire
structures (big-endian).  The limits bound what a client can make the
server buffer or wait for.  :class:`BlockTarget` is what the server exports.
Pure data; the server is :mod:`virtio_msg.exports.nbd`.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

NBDMAGIC: Final = 0x4E42444D41474943
"""``"NBDMAGIC"``: the first 8 bytes the server sends."""
IHAVEOPT: Final = 0x49484156454F5054
"""``"IHAVEOPT"``: newstyle magic; also starts every client option."""
OPTION_REPLY_MAGIC: Final = 0x0003E889045565A9
REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698

NBD_FLAG_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_NO_ZEROES: Final = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_C_NO_ZEROES: Final = 1 << 1

NBD_OPT_EXPORT_NAME: Final = 1
NBD_OPT_ABORT: Final = 2
NBD_OPT_LIST: Final = 3
NBD_OPT_STARTTLS: Final = 5
NBD_OPT_INFO: Final = 6
NBD_OPT_GO: Final = 7
NBD_OPT_STRUCTURED_REPLY: Final = 8

NBD_REP_ACK: Final = 1
NBD_REP_SERVER: Final = 2
NBD_REP_INFO: Final = 3
NBD_REP_FLAG_ERROR: Final = 1 << 31
NBD_REP_ERR_UNSUP: Final = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY: Final = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID: Final = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_UNKNOWN: Final = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_TOO_BIG: Final = NBD_REP_FLAG_ERROR | 9

NBD_INFO_EXPORT: Final = 0
NBD_INFO_NAME: Final = 1
NBD_INFO_DESCRIPTION: Final = 2
NBD_INFO_BLOCK_SIZE: Final = 3

NBD_FLAG_HAS_FLAGS: Final = 1 << 0
NBD_FLAG_READ_ONLY: Final = 1 << 1
NBD_FLAG_SEND_FLUSH: Final = 1 << 2
NBD_FLAG_SEND_FUA: Final = 1 << 3
NBD_FLAG_SEND_TRIM: Final = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES: Final = 1 << 6

NBD_CMD_READ: Final = 0
NBD_CMD_WRITE: Final = 1
NBD_CMD_DISC: Final = 2
NBD_CMD_FLUSH: Final = 3
NBD_CMD_TRIM: Final = 4
NBD_CMD_WRITE_ZEROES: Final = 6

NBD_CMD_FLAG_FUA: Final = 1 << 0
NBD_CMD_FLAG_NO_HOLE: Final = 1 << 1

NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28

# --- limits --------------------------------------------------------------------------------

MAX_STRING: Final = 4096
"""NBD strings (export names) MUST be at most 4096 bytes."""
MAX_OPTION_LENGTH: Final = 4 + MAX_STRING + 2 + 2 * 64
"""GO/INFO: name length, name, info count and up to 64 info requests."""
MAX_DRAIN: Final = 64 << 10
"""An over-long option is read and dropped up to this size; beyond it the client is cut off."""
MAX_OPTIONS: Final = 64
"""Options per handshake; a client that keeps negotiating is disconnected."""
DEFAULT_MAX_REQUEST: Final = 32 << 20
"""Largest READ/WRITE payload (the protocol's customary 32 MiB), announced as max block size."""
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client may take over the handshake."""
PREFERRED_BLOCK: Final = 4096

HANDSHAKE = struct.Struct(">QQH")
OPTION = struct.Struct(">QII")
OPTION_REPLY = struct.Struct(">QIII")
EXPORT_REPLY = struct.Struct(">QH")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")


class BlockTarget(Protocol):
    """What the server exports: a byte-addressed disk (``BlkDriver`` is one)."""

    @property
    def size(self) -> int:
        """Size in bytes."""

    @property
    def read_only(self) -> bool:
        """Whether writes are refused."""

    @property
    def supports_discard(self) -> bool:
        """Whether trimming can do anything."""

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``."""

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``."""

    def flush(self) -> None:
        """Make writes stable."""

    def discard_range(self, offset: int, length: int) -> None:
        """Discard a byte range (advisory)."""

    def zero_range(self, offset: int, length: int, *, unmap: bool = False) -> None:
        """Zero a byte range."""


COMMAND_NAMES: Final = {
    NBD_CMD_READ: "READ",
    NBD_CMD_WRITE: "WRITE",
    NBD_CMD_DISC: "DISC",
    NBD_CMD_FLUSH: "FLUSH",
    NBD_CMD_TRIM: "TRIM",
    NBD_CMD_WRITE_ZEROES: "WRITE_ZEROES",
}
COMMAND_FLAGS: Final = {
    NBD_CMD_READ: 0,
    NBD_CMD_WRITE: NBD_CMD_FLAG_FUA,
    NBD_CMD_FLUSH: 0,
    NBD_CMD_TRIM: NBD_CMD_FLAG_FUA,
    NBD_CMD_WRITE_ZEROES: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
}
"""Commands served and the flags each accepts (anything else: EINVAL)."""


__all__ = [
    "COMMAND_FLAGS",
    "COMMAND_NAMES",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_REQUEST",
    "EXPORT_REPLY",
    "HANDSHAKE",
    "IHAVEOPT",
    "MAX_DRAIN",
    "MAX_OPTIONS",
    "MAX_OPTION_LENGTH",
    "MAX_STRING",
    "NBDMAGIC",
    "NBD_CMD_DISC",
    "NBD_CMD_FLAG_FUA",
    "NBD_CMD_FLAG_NO_HOLE",
    "NBD_CMD_FLUSH",
    "NBD_CMD_READ",
    "NBD_CMD_TRIM",
    "NBD_CMD_WRITE",
    "NBD_CMD_WRITE_ZEROES",
    "NBD_EINVAL",
    "NBD_EIO",
    "NBD_ENOSPC",
    "NBD_EPERM",
    "NBD_FLAG_C_FIXED_NEWSTYLE",
    "NBD_FLAG_C_NO_ZEROES",
    "NBD_FLAG_FIXED_NEWSTYLE",
    "NBD_FLAG_HAS_FLAGS",
    "NBD_FLAG_NO_ZEROES",
    "NBD_FLAG_READ_ONLY",
    "NBD_FLAG_SEND_FLUSH",
    "NBD_FLAG_SEND_FUA",
    "NBD_FLAG_SEND_TRIM",
    "NBD_FLAG_SEND_WRITE_ZEROES",
    "NBD_INFO_BLOCK_SIZE",
    "NBD_INFO_DESCRIPTION",
    "NBD_INFO_EXPORT",
    "NBD_INFO_NAME",
    "NBD_OPT_ABORT",
    "NBD_OPT_EXPORT_NAME",
    "NBD_OPT_GO",
    "NBD_OPT_INFO",
    "NBD_OPT_LIST",
    "NBD_OPT_STARTTLS",
    "NBD_OPT_STRUCTURED_REPLY",
    "NBD_REP_ACK",
    "NBD_REP_ERR_INVALID",
    "NBD_REP_ERR_POLICY",
    "NBD_REP_ERR_TOO_BIG",
    "NBD_REP_ERR_UNKNOWN",
    "NBD_REP_ERR_UNSUP",
    "NBD_REP_FLAG_ERROR",
    "NBD_REP_INFO",
    "NBD_REP_SERVER",
    "OPTION",
    "OPTION_REPLY",
    "OPTION_REPLY_MAGIC",
    "PREFERRED_BLOCK",
    "REQUEST",
    "REQUEST_MAGIC",
    "SIMPLE_REPLY",
    "SIMPLE_REPLY_MAGIC",
    "BlockTarget",
]
