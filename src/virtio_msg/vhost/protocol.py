"""The vhost-user wire protocol, front-end side: message layouts and strict reply checks.

Strategy (``docs/interop/vhost-user.rst`` of QEMU, the protocol's reference).
A message is a 12-byte header -- ``request u32, flags u32, size u32`` in the
host's byte order -- followed by ``size`` payload bytes; file descriptors
travel as ``SCM_RIGHTS`` ancillary data with the header.  This module holds
no I/O: it builds request bytes and checks reply bytes, so every rule is
tested without a socket.

Everything a back end sends is untrusted peer data and is checked before it is
used: the header's version must be 1 and its REPLY bit set, the request code
must be the one asked, the size must be exactly what that reply carries
(a u64, a vring state for the ring asked, a config block echoing the offset and
size asked), and every value must be in range.  Any violation raises
:class:`VhostUserProtocolError`, which the connection treats as fatal: after a
reply that cannot be trusted, the byte stream cannot be trusted either.
A well-formed reply that says "failed" (a non-zero REPLY_ACK, an empty
GET_CONFIG) raises :class:`VhostUserRefused` instead; the connection survives it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from virtio_msg.errors import VirtioMsgError

__all__ = [
    "CONFIG_HEADER",
    "FLAG_NEED_REPLY",
    "FLAG_REPLY",
    "HEADER",
    "MAX_CONFIG_SIZE",
    "MAX_MEM_REGIONS",
    "MAX_PAYLOAD",
    "MAX_QUEUES",
    "PROTOCOL_FEATURE_NAMES",
    "VERSION",
    "VHOST_F_LOG_ALL",
    "VHOST_USER_F_PROTOCOL_FEATURES",
    "Header",
    "MemoryRegion",
    "ProtocolFeature",
    "Request",
    "VhostUserDisconnected",
    "VhostUserError",
    "VhostUserProtocolError",
    "VhostUserRefused",
    "VhostUserTimeout",
    "check_ack",
    "decode_header",
    "encode",
    "encode_config",
    "encode_mem_table",
    "encode_u64",
    "encode_vring_addr",
    "encode_vring_state",
    "parse_config",
    "parse_u64",
    "parse_vring_state",
    "protocol_feature_names",
    "with_need_reply",
]

# --- constants -----------------------------------------------------------------------------

HEADER: Final = struct.Struct("=III")
"""request, flags, size -- native byte order, as the protocol says."""
U64: Final = struct.Struct("=Q")
VRING_STATE: Final = struct.Struct("=II")
"""index, num (SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE)."""
VRING_ADDR: Final = struct.Struct("=IIQQQQ")
"""index, flags, desc, used, avail, log -- note: used before avail."""
MEM_HEADER: Final = struct.Struct("=II")
"""nregions, padding."""
MEM_REGION: Final = struct.Struct("=QQQQ")
"""guest_phys_addr, memory_size, userspace_addr, mmap_offset."""
CONFIG_HEADER: Final = struct.Struct("=III")
"""offset, size, flags of GET_CONFIG / SET_CONFIG."""

VERSION: Final = 0x1
"""The only protocol version: flags bits 0-1."""
FLAG_VERSION_MASK: Final = 0x3
FLAG_REPLY: Final = 0x4
"""Set in every reply."""
FLAG_NEED_REPLY: Final = 0x8
"""Asks for a REPLY_ACK u64 (only with the REPLY_ACK protocol feature)."""

MAX_CONFIG_SIZE: Final = 256
"""VHOST_USER_MAX_CONFIG_SIZE: the largest config block one message carries."""
MAX_MEM_REGIONS: Final = 8
"""SET_MEM_TABLE carries at most 8 regions (VHOST_MEMORY_BASELINE_NREGIONS)."""
MAX_PAYLOAD: Final = 4096
"""No reply we ask for is this large; a bigger size field is a lie, not a message to read."""
MAX_QUEUES: Final = 1024
"""GET_QUEUE_NUM above this is not believed (QEMU's VIRTIO_QUEUE_MAX)."""
VRING_FD_NOFD: Final = 0x100
"""SET_VRING_KICK/CALL u64 bit 8: no fd attached (polling); never sent here."""

VHOST_USER_F_PROTOCOL_FEATURES: Final = 30
"""Feature bit (in GET_FEATURES) saying the back end speaks protocol features."""
VHOST_F_LOG_ALL: Final = 26
"""Feature bit for dirty logging (migration); never a device feature."""


class Request(IntEnum):
    """Front-end request codes (vhost-user "front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    GET_MAX_MEM_SLOTS = 36
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(IntEnum):
    """Protocol feature bit numbers (GET_/SET_PROTOCOL_FEATURES)."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


PROTOCOL_FEATURE_NAMES: Final[dict[int, str]] = {int(f): f.name for f in ProtocolFeature}
"""Names of the protocol feature bits, for reports."""

_HAS_REPLY: Final = frozenset(
    {
        Request.GET_FEATURES,
        Request.GET_PROTOCOL_FEATURES,
        Request.GET_QUEUE_NUM,
        Request.GET_VRING_BASE,
        Request.GET_CONFIG,
        Request.GET_MAX_MEM_SLOTS,
        Request.GET_STATUS,
    }
)
"""Requests the back end always answers; NEED_REPLY is never set on them."""


def protocol_feature_names(bits: int) -> list[str]:
    """Readable names of the protocol feature bits set in ``bits``."""
    names = [PROTOCOL_FEATURE_NAMES.get(b, f"bit{b}") for b in range(64) if bits >> b & 1]
    return names


# --- errors -----------------------------------------------------------------------------------


class VhostUserError(VirtioMsgError):
    """Base class of vhost-user failures (any of them fails the device, never the bus)."""


class VhostUserProtocolError(VhostUserError):
    """The back end sent something the protocol does not allow (fatal for the connection)."""


class VhostUserRefused(VhostUserError):
    """The back end answered a request with failure (REPLY_ACK non-zero, empty GET_CONFIG)."""


class VhostUserDisconnected(VhostUserError):
    """The back end closed its socket (or it was closed here)."""


class VhostUserTimeout(VhostUserError):
    """A reply did not arrive within the bound (fatal: the stream is out of step)."""


# --- building requests -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """One SET_MEM_TABLE entry; its fd travels separately, in the same order."""

    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int = 0


def _flags(need_reply: bool) -> int:
    return VERSION | (FLAG_NEED_REPLY if need_reply else 0)


def encode(request: Request, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    """Header plus ``payload``; ``need_reply`` asks for a REPLY_ACK (never on a GET)."""
    if need_reply and request in _HAS_REPLY:
        raise ValueError(f"{request.name} always has a reply; NEED_REPLY is not for it")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{request.name}: payload of {len(payload)} bytes is too large")
    return HEADER.pack(request, _flags(need_reply), len(payload)) + payload


def with_need_reply(data: bytes) -> bytes:
    """The same encoded request with NEED_REPLY set (the caller negotiated REPLY_ACK)."""
    request, flags, size = HEADER.unpack_from(data)
    if request in _HAS_REPLY:
        raise ValueError(f"{Request(request).name} always has a reply; NEED_REPLY is not for it")
    return HEADER.pack(request, flags | FLAG_NEED_REPLY, size) + data[HEADER.size :]


def encode_u64(request: Request, value: int, *, need_reply: bool = False) -> bytes:
    """A request whose payload is one u64 (SET_FEATURES, SET_VRING_KICK, ...)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{request.name}: {value:#x} is not a u64")
    return encode(request, U64.pack(value), need_reply=need_reply)


def encode_vring_state(
    request: Request, index: int, num: int, *, need_reply: bool = False
) -> bytes:
    """A request whose payload is a vring state: ``index``, ``num``."""
    if not 0 <= index < MAX_QUEUES or not 0 <= num <= 0xFFFFFFFF:
        raise ValueError(f"{request.name}: vring state ({index}, {num}) out of range")
    return encode(request, VRING_STATE.pack(index, num), need_reply=need_reply)


def encode_vring_addr(
    index: int,
    desc: int,
    used: int,
    avail: int,
    *,
    flags: int = 0,
    log: int = 0,
    need_reply: bool = False,
) -> bytes:
    """SET_VRING_ADDR: the three ring addresses (user addresses; used before avail)."""
    if not 0 <= index < MAX_QUEUES:
        raise ValueError(f"SET_VRING_ADDR: ring index {index} out of range")
    payload = VRING_ADDR.pack(index, flags, desc, used, avail, log)
    return encode(Request.SET_VRING_ADDR, payload, need_reply=need_reply)


def encode_mem_table(regions: list[MemoryRegion], *, need_reply: bool = False) -> bytes:
    """SET_MEM_TABLE with 1..8 regions (their fds go with the message, in order)."""
    if not 1 <= len(regions) <= MAX_MEM_REGIONS:
        raise ValueError(f"SET_MEM_TABLE takes 1..{MAX_MEM_REGIONS} regions, not {len(regions)}")
    body = MEM_HEADER.pack(len(regions), 0) + b"".join(
        MEM_REGION.pack(r.guest_addr, r.size, r.user_addr, r.mmap_offset) for r in regions
    )
    return encode(Request.SET_MEM_TABLE, body, need_reply=need_reply)


def encode_config(
    request: Request, offset: int, data: bytes, *, flags: int = 0, need_reply: bool = False
) -> bytes:
    """GET_CONFIG (``data`` = zeros of the size asked) or SET_CONFIG (the bytes to write)."""
    if request not in (Request.GET_CONFIG, Request.SET_CONFIG):
        raise ValueError(f"{request.name} is not a config request")
    if not 1 <= len(data) <= MAX_CONFIG_SIZE:
        raise ValueError(f"config access of {len(data)} bytes (1..{MAX_CONFIG_SIZE} allowed)")
    if not 0 <= offset <= MAX_CONFIG_SIZE - len(data):
        raise ValueError(f"config access at {offset}+{len(data)} past {MAX_CONFIG_SIZE} bytes")
    payload = CONFIG_HEADER.pack(offset, len(data), flags) + bytes(data)
    return encode(request, payload, need_reply=need_reply)


# --- checking replies ----------------------------------------------------------------------------


class Header(NamedTuple):
    """A decoded reply header."""

    request: int
    flags: int
    size: int


def decode_header(data: bytes, expected: Request) -> Header:
    """Check a reply header against the request it must answer.

    Raises :class:`VhostUserProtocolError` for a wrong length, version,
    missing REPLY bit, another request's code or an impossible size.
    """
    if len(data) != HEADER.size:
        raise VhostUserProtocolError(f"reply header of {len(data)} bytes, not {HEADER.size}")
    request, flags, size = HEADER.unpack(data)
    if flags & FLAG_VERSION_MASK != VERSION:
        raise VhostUserProtocolError(
            f"reply to {expected.name}: version {flags & FLAG_VERSION_MASK}, not {VERSION}"
        )
    if not flags & FLAG_REPLY:
        raise VhostUserProtocolError(f"reply to {expected.name} lacks the REPLY flag")
    if request != expected:
        raise VhostUserProtocolError(
            f"reply carries request {request} ({_name(request)}), expected {expected.name}"
        )
    if size > MAX_PAYLOAD:
        raise VhostUserProtocolError(f"reply to {expected.name} claims {size} payload bytes")
    return Header(request, flags, size)


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return "unknown"


def parse_u64(payload: bytes, request: Request) -> int:
    """The u64 of a GET_FEATURES / GET_PROTOCOL_FEATURES / GET_QUEUE_NUM reply."""
    if len(payload) != U64.size:
        raise VhostUserProtocolError(
            f"reply to {request.name} has {len(payload)} payload bytes, not {U64.size}"
        )
    value: int = U64.unpack(payload)[0]
    return value


def check_ack(payload: bytes, request: Request) -> None:
    """A REPLY_ACK: u64 0 is success; anything else raises :class:`VhostUserRefused`."""
    status = parse_u64(payload, request)
    if status:
        raise VhostUserRefused(f"back end refused {request.name} (status {status:#x})")


def parse_vring_state(payload: bytes, index: int) -> int:
    """GET_VRING_BASE's reply: the ring must be the one asked, the index a 16-bit value."""
    if len(payload) != VRING_STATE.size:
        raise VhostUserProtocolError(
            f"GET_VRING_BASE reply has {len(payload)} payload bytes, not {VRING_STATE.size}"
        )
    got, num = VRING_STATE.unpack(payload)
    if got != index:
        raise VhostUserProtocolError(f"GET_VRING_BASE for ring {index} answered for ring {got}")
    if num > 0xFFFF:
        raise VhostUserProtocolError(
            f"GET_VRING_BASE ring {index}: {num:#x} is not a split-ring index"
        )
    base: int = num
    return base


def parse_config(payload: bytes, offset: int, size: int) -> bytes:
    """GET_CONFIG's reply: the header must echo ``offset`` and ``size``; then the bytes.

    An empty payload is the back end's way to refuse (libvhost-user), raised as
    :class:`VhostUserRefused`.
    """
    if not payload:
        raise VhostUserRefused(f"back end refused GET_CONFIG of {size} bytes at {offset}")
    if len(payload) != CONFIG_HEADER.size + size:
        raise VhostUserProtocolError(
            f"GET_CONFIG reply has {len(payload)} payload bytes, not "
            f"{CONFIG_HEADER.size} + {size}"
        )
    got_offset, got_size, _flags = CONFIG_HEADER.unpack_from(payload)
    if (got_offset, got_size) != (offset, size):
        raise VhostUserProtocolError(
            f"GET_CONFIG reply describes {got_size} bytes at {got_offset}, "
            f"asked {size} at {offset}"
        )
    return bytes(payload[CONFIG_HEADER.size :])
