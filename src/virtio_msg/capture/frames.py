"""Reading virtio-msg captures: pcapng frames, their pseudo-header and the message in them.

:func:`read_capture` opens a pcapng file (dpkt's reader) and yields one
:class:`Frame` per packet, checking the link type and the 12-byte
pseudo-header of :mod:`virtio_msg.bus.capture`.  :func:`decode_frame` turns a
frame into the JSON form ``virtio-msg decode`` prints, plus where and when the
message crossed: the wire codec of the frame's profile decodes it strictly,
the socket channel's own messages (ANNOUNCE, ADD, REMOVE; flagged as control
frames in the pseudo-header, an empty one being END, the connection's hang-up)
get their names and fields, and bytes after ``msg_size`` (the seed kernel's stale residue) are
reported as ``trailing``.  A capture file is peer data: every problem is a
:class:`CaptureError` or a per-frame :class:`~virtio_msg.errors.MalformedMessage`
that names what was wrong.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dpkt

from virtio_msg.bus.capture import (
    FLAG_CONTROL,
    LINKTYPE,
    PROFILES_BY_CODE,
    PSEUDO_HEADER,
    PSEUDO_HEADER_VERSION,
    ChannelKind,
    Direction,
    Side,
)
from virtio_msg.bus.protocol import (
    ANNOUNCE_LAYOUT,
    CONTROL_REQUEST_LAYOUT,
    CONTROL_RESPONSE_LAYOUT,
    MSG_ADD,
    MSG_ANNOUNCE,
    MSG_REMOVE,
)
from virtio_msg.errors import MalformedMessage, VirtioMsgError
from virtio_msg.wire import Codec, Profile, profile_limits, to_json
from virtio_msg.wire.compat import kernel_frame

CHANNEL_MESSAGES: Final[dict[tuple[int, bool], tuple[str, struct.Struct, tuple[str, ...]]]] = {
    (MSG_ANNOUNCE, False): (
        "ANNOUNCE",
        ANNOUNCE_LAYOUT,
        (
            "version",
            "profile",
            "max_msg_size",
            "revision",
            "transport_features",
            "region_base",
            "region_size",
            "timeout_ms",
            "max_devices",
        ),
    ),
    (MSG_ADD, False): ("ADD", CONTROL_REQUEST_LAYOUT, ("dev_num", "reserved")),
    (MSG_ADD, True): ("ADD", CONTROL_RESPONSE_LAYOUT, ("dev_num", "reserved", "status")),
    (MSG_REMOVE, False): ("REMOVE", CONTROL_REQUEST_LAYOUT, ("dev_num", "reserved")),
    (MSG_REMOVE, True): ("REMOVE", CONTROL_RESPONSE_LAYOUT, ("dev_num", "reserved", "status")),
}
"""The socket channel's bus messages (docs/socket-protocol.md): (msg_id, response) ->
(name, payload layout, field names).  Payload sizes are exact."""


END_RECORD: Final[dict[str, Any]] = {
    "name": "END",
    "type": None,
    "msg_id": None,
    "response": False,
    "bus": True,
    "dev_num": 0,
    "token": None,
    "msg_size": 0,
    "fields": {},
}
"""What an empty control frame decodes to: the side in its direction hung up."""


class CaptureError(VirtioMsgError):
    """A capture file that cannot be read (not pcapng, another link type, truncated)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured message and its pseudo-header."""

    number: int
    """1-based, as Wireshark numbers frames."""
    time: float
    """Seconds since the epoch (microsecond resolution)."""
    direction: Direction
    channel: ChannelKind
    profile: Profile
    bus: int
    """Bus instance number."""
    connection: int
    max_size: int
    """The bus's maximum message size (0: not recorded; the profile's largest is used)."""
    side: Side
    data: bytes
    """The message bytes exactly as they crossed."""
    control: bool = False
    """The channel's own protocol frame (pseudo-header flag), not a relayed message."""


def parse_frame(number: int, ts: float, packet: bytes) -> Frame:
    """Split one packet into pseudo-header and message; MalformedMessage if it is bad."""
    if len(packet) < PSEUDO_HEADER.size:
        raise MalformedMessage(
            f"frame {number}: {len(packet)} bytes, shorter than the 12-byte pseudo-header",
            "pseudo-header",
        )
    version, direction, channel, profile, bus, conn, max_size, side, flags = (
        PSEUDO_HEADER.unpack_from(packet)
    )
    if version != PSEUDO_HEADER_VERSION:
        raise MalformedMessage(
            f"frame {number}: pseudo-header version {version} (this reader knows 1)",
            "pseudo-header",
        )
    if flags & ~FLAG_CONTROL:
        raise MalformedMessage(
            f"frame {number}: unknown pseudo-header flags {flags:#04x}", "pseudo-header"
        )
    try:
        return Frame(
            number,
            ts,
            Direction(direction),
            ChannelKind(channel),
            PROFILES_BY_CODE[profile],
            bus,
            conn,
            max_size,
            Side(side),
            bytes(packet[PSEUDO_HEADER.size :]),
            bool(flags & FLAG_CONTROL),
        )
    except (ValueError, KeyError):
        raise MalformedMessage(
            f"frame {number}: unknown direction {direction}, channel {channel}, profile "
            f"{profile} or side {side} in the pseudo-header",
            "pseudo-header",
        ) from None


def read_capture(path: str | Path) -> Iterator[Frame | MalformedMessage]:
    """Yield the frames of a capture file; a bad frame is yielded as its MalformedMessage.

    Raises CaptureError for a file that is not a readable virtio-msg pcapng.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        try:
            reader = dpkt.pcapng.Reader(f)
        except (ValueError, struct.error, dpkt.Error) as exc:
            raise CaptureError(f"{path} is not a pcapng file: {exc}") from None
        if reader.datalink() != LINKTYPE:
            raise CaptureError(
                f"{path}: link type {reader.datalink()}, not virtio-msg "
                f"(LINKTYPE_USER5 = {LINKTYPE})"
            )
        number = 0
        packets = iter(reader)
        while True:
            try:
                item = next(packets, None)
            except (ValueError, struct.error, dpkt.Error) as exc:
                raise CaptureError(
                    f"{path}: truncated or damaged after frame {number}: {exc}"
                ) from None
            if item is None:
                return
            number += 1
            ts, packet = item
            try:
                yield parse_frame(number, ts, bytes(packet))
            except MalformedMessage as exc:
                yield exc
    finally:
        f.close()


@functools.lru_cache(maxsize=64)
def codec_for(profile: Profile, max_size: int) -> Codec:
    """The strict codec for a frame: its bus's maximum size, or the profile's largest."""
    lo, hi, _ = profile_limits(profile)
    return Codec(profile, max_size if lo <= max_size <= hi else hi)


def decode_frame(frame: Frame, *, kernel_compat: bool = False) -> dict[str, Any]:
    """The JSON form of a frame's message (as ``decode``), with time, direction and channel.

    ``kernel_compat`` applies the seed kernel's documented size rule to
    linux-rfc1 frames (``decode --kernel-compat``, :mod:`virtio_msg.wire.compat`):
    a corrected frame gets ``"kernel_compat": {"wire_msg_size", "msg_size"}``.
    Raises MalformedMessage, naming the field, if the message does not decode.
    """
    codec = codec_for(frame.profile, frame.max_size)
    data = frame.data
    corrected: dict[str, int] | None = None
    if kernel_compat and codec.profile is Profile.LINUX_RFC1 and not frame.control:
        fixed = bytes(kernel_frame(data))
        if fixed != data:
            corrected = {
                "wire_msg_size": data[4] | data[5] << 8,
                "msg_size": fixed[4] | fixed[5] << 8,
            }
            data = fixed
    record: dict[str, Any] = {
        "frame": frame.number,
        "time": frame.time,
        "direction": frame.direction.label,
        "channel": frame.channel.label,
        "bus_instance": frame.bus,
        "connection": frame.connection,
        "side": frame.side.name.lower(),
        "control": frame.control,
    }
    if frame.control and not data:
        record.update(END_RECORD, profile=codec.profile.value)
        return record
    header = codec.decode_header(data)
    out: dict[str, Any] | None = None
    if (frame.control or frame.channel is ChannelKind.SOCKET) and header.bus:
        out = _channel_message(codec, header.msg_id, header.response, data, header)
    if out is None and frame.control:
        raise MalformedMessage(
            f"control frame with {'bus' if header.bus else 'transport'} msg_id "
            f"{header.msg_id:#04x}, not a socket channel message",
            "msg_id",
        )
    if out is None:
        out = to_json(codec, codec.decode(data), msg_size=header.msg_size)
    out["type"] = header.type
    record.update(out)
    if corrected is not None:
        record["kernel_compat"] = corrected
    if len(data) > header.msg_size:
        record["trailing"] = data[header.msg_size :].hex()
    return record


def _channel_message(
    codec: Codec, msg_id: int, response: bool, data: bytes, header: Any
) -> dict[str, Any] | None:
    spec = CHANNEL_MESSAGES.get((msg_id, response))
    if spec is None:
        return None
    name, layout, names = spec
    payload = data[codec.header_size : header.msg_size]
    if len(payload) != layout.size:
        raise MalformedMessage(
            f"{name} payload is {len(payload)} bytes, expected {layout.size}", "msg_size"
        )
    return {
        "profile": codec.profile.value,
        "name": name,
        "msg_id": msg_id,
        "response": response,
        "bus": True,
        "dev_num": header.dev_num,
        "token": header.token if codec.has_token else None,
        "msg_size": header.msg_size,
        "fields": dict(zip(names, layout.unpack(payload), strict=True)),
    }


__all__ = [
    "CHANNEL_MESSAGES",
    "END_RECORD",
    "CaptureError",
    "Frame",
    "codec_for",
    "decode_frame",
    "parse_frame",
    "read_capture",
]
