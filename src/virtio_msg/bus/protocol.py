"""The socket channel's own bus messages: ANNOUNCE, ADD and REMOVE (no I/O).

Strategy.  The socket channel carries ordinary virtio-msg messages, one per
datagram, in the bus's wire profile.  Three things have no standard message,
so the channel defines them in the implementation-defined id space (msg_id
bit 7 set, bus messages: ``type`` bit 1 set, ``dev_num`` 0):

=====  ===========  ===================  =========================================
id     name         direction            payload (little-endian)
=====  ===========  ===================  =========================================
0x80   ANNOUNCE     bus -> backend       :data:`ANNOUNCE_LAYOUT`, 38 bytes, first
                                         datagram, carries the region memfd
0x81   ADD          backend -> bus       ``dev_num`` u16, ``reserved`` u16 (0)
0x81   ADD resp     bus -> backend       ``dev_num`` u16, ``reserved`` u16,
                                         ``status`` u32 (:class:`Status`)
0x82   REMOVE       backend -> bus       as ADD
0x82   REMOVE resp  bus -> backend       as ADD resp
=====  ===========  ===================  =========================================

The ANNOUNCE payload is 38 bytes so that it fits the smallest bus there is:
linux-rfc1's 44-byte messages (6-byte header + 38).  Before a backend knows
the profile it tells the two headers apart by bytes 4-5 of the announcement:
the spec header has the token there, which the bus sets to 0; linux-rfc1 has
``msg_size`` there, which is never 0 (:func:`sniff_profile`).

Everything here is pure: the functions turn :class:`GenericMessage` payloads
into frozen objects and back, and every check on peer data raises
:class:`~virtio_msg.errors.MalformedMessage` naming the field.  The full
channel protocol (lifecycle, fd passing, limits) is documented in
``docs/socket-protocol.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import virtio_msg.spec as C
from virtio_msg.errors import BusError, EncodeError, MalformedMessage
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Codec, GenericMessage, Profile, profile_limits

CHANNEL_VERSION: Final = 1
"""Version of the socket channel protocol this module speaks."""

MSG_ANNOUNCE: Final = 0x80
"""Bus -> backend, first datagram of a connection, with the region memfd."""
MSG_ADD: Final = 0x81
"""Backend -> bus: make a device number present and probe it; answered with a status."""
MSG_REMOVE: Final = 0x82
"""Backend -> bus: remove a device number; answered with a status."""
CONTROL_IDS: Final = frozenset({MSG_ADD, MSG_REMOVE})
"""The request/response pairs of the channel."""

ANNOUNCE_LAYOUT: Final = struct.Struct("<BBHIQQQIH")
"""version u8, profile u8, max_msg_size u16, revision u32, transport_features u64,
region_base u64, region_size u64, timeout_ms u32, max_devices u16 (38 bytes)."""
CONTROL_REQUEST_LAYOUT: Final = struct.Struct("<HH")
"""dev_num u16, reserved u16 (4 bytes)."""
CONTROL_RESPONSE_LAYOUT: Final = struct.Struct("<HHI")
"""dev_num u16, reserved u16, status u32 (8 bytes)."""

PROFILE_CODES: Final[dict[Profile, int]] = {Profile.SPEC: 0, Profile.LINUX_RFC1: 1}
"""``profile`` byte of ANNOUNCE."""
_PROFILES_BY_CODE: Final = {code: p for p, code in PROFILE_CODES.items()}
_U64: Final = 1 << 64


class Status(IntEnum):
    """Status of an ADD or REMOVE response (u32)."""

    OK = 0
    """Done: ADD probed the device and a driver is bound; REMOVE removed it."""
    EXISTS = 1
    """ADD: the device number is already present on the bus."""
    NOT_FOUND = 2
    """REMOVE: the device number is not present."""
    NOT_OWNER = 3
    """REMOVE: the device number is served by another connection."""
    INVALID = 4
    """The request was malformed (payload size, reserved field)."""
    LIMIT = 5
    """ADD: this connection already serves the maximum number of devices."""
    PROBE_FAILED = 6
    """ADD: the device is present but the driver side could not probe or bind it;
    it stays present (its error is visible on the bus) until REMOVE."""
    BUSY = 7
    """Too many ADD/REMOVE requests are queued on this connection."""
    CLOSED = 8
    """The bus is shutting down."""


STATUS_TEXT: Final[dict[Status, str]] = {
    Status.OK: "ok",
    Status.EXISTS: "device number already present on the bus",
    Status.NOT_FOUND: "device number not present on the bus",
    Status.NOT_OWNER: "device number served by another backend",
    Status.INVALID: "malformed request",
    Status.LIMIT: "too many devices on this connection",
    Status.PROBE_FAILED: "added, but the driver side could not probe it",
    Status.BUSY: "too many ADD/REMOVE requests pending",
    Status.CLOSED: "the bus is shutting down",
}
"""One-line explanation of each status, for error messages."""


class ControlError(BusError):
    """An ADD or REMOVE was refused by the bus (``status`` says why) or not answered."""

    def __init__(self, op: str, dev_num: int, status: Status | None, detail: str = "") -> None:
        """Describe the refused operation; ``status`` None means no answer came."""
        what = STATUS_TEXT[status] if status is not None else detail
        if status is not None and detail:
            what = f"{what} ({detail})"
        super().__init__(f"{op} of device {dev_num} failed: {what}")
        self.op = op
        self.dev_num = dev_num
        self.status = status


def op_name(msg_id: int) -> str:
    """"ADD" or "REMOVE" for a control message id."""
    return {MSG_ADD: "ADD", MSG_REMOVE: "REMOVE"}.get(msg_id, f"msg {msg_id:#04x}")


# --- ANNOUNCE ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announcement:
    """What the bus tells a backend when it connects (ANNOUNCE).

    With the memfd passed alongside, it is everything a backend needs: the
    wire profile and message size limit, the transport revision and feature
    bits (BUS-08), where the region sits in bus address space (the seed hid
    the base, defect 15), the bus's request timeout and how many devices one
    connection may serve.
    """

    profile: Profile
    max_msg_size: int
    revision: int
    transport_features: int
    region_base: int
    region_size: int
    timeout_ms: int
    max_devices: int
    version: int = CHANNEL_VERSION

    @classmethod
    def for_bus(
        cls, params: BusParams, region_base: int, region_size: int, max_devices: int
    ) -> Announcement:
        """Build the announcement of a bus with ``params`` and the given region."""
        return cls(
            params.profile, params.max_size, params.revision, params.transport_features,
            region_base, region_size, params.timeout_ms, max_devices,
        )

    def params(self) -> BusParams:
        """The bus parameters a backend uses (the transport engines' view)."""
        return BusParams(
            self.profile, self.max_msg_size, transport_features=self.transport_features,
            revision=self.revision, timeout_ms=self.timeout_ms,
        )

    def encode(self) -> bytes:
        """The ANNOUNCE datagram in the announced profile (token 0)."""
        try:
            payload = ANNOUNCE_LAYOUT.pack(
                self.version, PROFILE_CODES[self.profile], self.max_msg_size, self.revision,
                self.transport_features, self.region_base, self.region_size, self.timeout_ms,
                self.max_devices,
            )
        except struct.error as exc:
            raise EncodeError(f"announcement field out of range: {exc}") from None
        codec = Codec(self.profile, self.max_msg_size)
        return codec.encode(GenericMessage(MSG_ANNOUNCE, False, True, payload))


def sniff_profile(data: bytes | bytearray | memoryview) -> Profile:
    """Tell the wire profile of an ANNOUNCE datagram from its header.

    Bytes 4-5 are the spec header's token (0 in ANNOUNCE) or linux-rfc1's
    ``msg_size`` (at least 6).
    """
    if len(data) < C.RFC1_HEADER_SIZE:
        raise MalformedMessage(f"truncated announcement: {len(data)} bytes", "header")
    return Profile.SPEC if data[4] == 0 and data[5] == 0 else Profile.LINUX_RFC1


def decode_announcement(data: bytes | bytearray | memoryview) -> Announcement:
    """Decode and validate an ANNOUNCE datagram; MalformedMessage names the bad field."""
    profile = sniff_profile(data)
    lo, hi, _ = profile_limits(profile)
    msg = Codec(profile, hi).decode(data)
    hdr_size = C.SPEC_HEADER_SIZE if profile is Profile.SPEC else C.RFC1_HEADER_SIZE
    if type(msg) is not GenericMessage or msg.msg_id != MSG_ANNOUNCE or not msg.bus:
        raise MalformedMessage("first datagram is not ANNOUNCE (bus msg_id 0x80)", "msg_id")
    if msg.response:
        raise MalformedMessage("ANNOUNCE carries the response bit", "type")
    if data[0] != C.TYPE_BUS:
        raise MalformedMessage(f"reserved type bits set: {data[0]:#04x}", "type")
    if len(data) != hdr_size + len(msg.payload):
        raise MalformedMessage(
            f"datagram of {len(data)} bytes holds a {hdr_size + len(msg.payload)}-byte message",
            "msg_size",
        )
    if len(msg.payload) != ANNOUNCE_LAYOUT.size:
        raise MalformedMessage(
            f"ANNOUNCE payload is {len(msg.payload)} bytes, expected {ANNOUNCE_LAYOUT.size}",
            "msg_size",
        )
    (version, code, max_size, revision, features, base, size, timeout_ms,
     max_devices) = ANNOUNCE_LAYOUT.unpack(msg.payload)
    if version != CHANNEL_VERSION:
        raise MalformedMessage(
            f"channel protocol version {version} (this backend speaks {CHANNEL_VERSION})",
            "version",
        )
    announced = _PROFILES_BY_CODE.get(code)
    if announced is None:
        raise MalformedMessage(f"unknown profile code {code}", "profile")
    if announced is not profile:
        raise MalformedMessage(
            f"profile code says {announced.value} but the header is {profile.value}", "profile"
        )
    if not lo <= max_size <= hi:
        raise MalformedMessage(
            f"{max_size} outside {lo}..{hi} for profile {profile.value}", "max_msg_size"
        )
    if len(data) > max_size:
        raise MalformedMessage(
            f"the announcement itself ({len(data)} bytes) exceeds it ({max_size})", "max_msg_size"
        )
    if revision != C.REVISION_1:
        raise MalformedMessage(f"transport revision {revision} (only 1 is known)", "revision")
    if size == 0:
        raise MalformedMessage("region size 0", "region_size")
    if base + size > _U64:
        raise MalformedMessage(
            f"region [{base:#x}, +{size:#x}) does not fit in 64-bit bus addresses", "region_size"
        )
    if timeout_ms == 0:
        raise MalformedMessage("timeout 0 ms", "timeout_ms")
    if max_devices == 0:
        raise MalformedMessage("a connection may serve no device", "max_devices")
    return Announcement(profile, max_size, revision, features, base, size, timeout_ms,
                        max_devices, version)


# --- ADD / REMOVE ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """ADD or REMOVE of ``dev_num``, as sent by a backend."""

    op: int
    dev_num: int
    token: int = 0

    def to_message(self) -> GenericMessage:
        """The request as a bus message (encode it with the bus's codec)."""
        if self.op not in CONTROL_IDS:
            raise EncodeError(f"msg_id {self.op:#04x} is not ADD or REMOVE")
        try:
            payload = CONTROL_REQUEST_LAYOUT.pack(self.dev_num, 0)
        except struct.error:
            raise EncodeError(f"device number {self.dev_num!r} is outside 0..65535") from None
        return GenericMessage(self.op, False, True, payload, 0, self.token)

    def response(self, status: Status) -> ControlResponse:
        """The response carrying ``status`` (same op, device number and token)."""
        return ControlResponse(self.op, self.dev_num, status, self.token)


@dataclass(frozen=True, slots=True)
class ControlResponse:
    """The bus's answer to ADD or REMOVE."""

    op: int
    dev_num: int
    status: Status
    token: int = 0

    def to_message(self) -> GenericMessage:
        """The response as a bus message (encode it with the bus's codec)."""
        payload = CONTROL_RESPONSE_LAYOUT.pack(self.dev_num, 0, int(self.status))
        return GenericMessage(self.op, True, True, payload, 0, self.token)


def _check_control(msg: GenericMessage, response: bool) -> None:
    if type(msg) is not GenericMessage or msg.msg_id not in CONTROL_IDS:
        raise MalformedMessage("not an ADD or REMOVE message", "msg_id")
    if not msg.bus:
        raise MalformedMessage(f"{op_name(msg.msg_id)} must be a bus message", "type")
    if msg.response is not response:
        kind = "response" if response else "request"
        raise MalformedMessage(f"expected an {op_name(msg.msg_id)} {kind}", "type")
    layout = CONTROL_RESPONSE_LAYOUT if response else CONTROL_REQUEST_LAYOUT
    if len(msg.payload) != layout.size:
        raise MalformedMessage(
            f"{op_name(msg.msg_id)} payload is {len(msg.payload)} bytes, expected {layout.size}",
            "msg_size",
        )


def parse_control_request(msg: GenericMessage) -> ControlRequest:
    """Validate an ADD/REMOVE request from a backend."""
    _check_control(msg, response=False)
    dev_num, reserved = CONTROL_REQUEST_LAYOUT.unpack(msg.payload)
    if reserved:
        raise MalformedMessage(f"reserved field is {reserved:#x}, must be 0", "reserved")
    return ControlRequest(msg.msg_id, dev_num, msg.token)


def parse_control_response(msg: GenericMessage) -> ControlResponse:
    """Validate an ADD/REMOVE response from the bus."""
    _check_control(msg, response=True)
    dev_num, reserved, status = CONTROL_RESPONSE_LAYOUT.unpack(msg.payload)
    if reserved:
        raise MalformedMessage(f"reserved field is {reserved:#x}, must be 0", "reserved")
    try:
        return ControlResponse(msg.msg_id, dev_num, Status(status), msg.token)
    except ValueError:
        raise MalformedMessage(f"unknown status {status}", "status") from None


__all__ = [
    "ANNOUNCE_LAYOUT",
    "CHANNEL_VERSION",
    "CONTROL_IDS",
    "CONTROL_REQUEST_LAYOUT",
    "CONTROL_RESPONSE_LAYOUT",
    "MSG_ADD",
    "MSG_ANNOUNCE",
    "MSG_REMOVE",
    "PROFILE_CODES",
    "STATUS_TEXT",
    "Announcement",
    "ControlError",
    "ControlRequest",
    "ControlResponse",
    "Status",
    "decode_announcement",
    "op_name",
    "parse_control_request",
    "parse_control_response",
    "sniff_profile",
]
