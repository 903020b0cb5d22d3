"""The codec: header handling, profile selection, strict decoding, encoding.

Decoding happens in two steps (header, then payload) and fails in one way:
:class:`~virtio_msg.errors.MalformedMessage` naming the field.  The header
checks are the same for every message; the payload is handed to the message's
:class:`~virtio_msg.wire._layout.Layout` row.  Bytes after ``msg_size`` are bus
padding and are ignored (the seed kernel always moves 44-byte buffers).

A :class:`Codec` is immutable configuration (profile and maximum message size)
and holds no per-message state, so one codec can serve any number of threads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple, TypeAlias

import virtio_msg.spec as C
from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import rfc1, spec
from virtio_msg.wire._fastpath import Encoder, make_decoder, make_dispatch, make_encoder
from virtio_msg.wire._layout import Layout, build_registry

Message: TypeAlias = Any
"""Any message: an immutable tuple subclass from ``wire.spec``/``wire.rfc1`` (or
:class:`GenericMessage`), whose last two fields are the header's ``dev_num`` and
``token``.  Typed ``Any`` because the engines dispatch on the concrete class."""

Buffer = bytes | bytearray | memoryview


class Profile(StrEnum):
    """Wire profiles: the newest draft, and the seed kernel's Linux RFC v1 layout."""

    SPEC = "spec"
    LINUX_RFC1 = "linux-rfc1"


class GenericMessage(NamedTuple):
    """An implementation-defined message (``msg_id`` bit 7 set) with its raw payload.

    Buses define their own messages in this space (the loopback bus does); the
    codec carries them without interpreting the payload.
    """

    msg_id: int
    response: bool
    bus: bool
    payload: bytes
    dev_num: int = 0
    token: int = 0


def _generic_eq(self: Any, other: Any) -> bool:
    return type(other) is GenericMessage and tuple.__eq__(self, other)


def _generic_ne(self: Any, other: Any) -> bool:
    return not _generic_eq(self, other)


def _generic_hash(self: Any) -> int:
    return hash(("GenericMessage", tuple(self)))


GenericMessage.__eq__ = _generic_eq  # type: ignore[method-assign]
GenericMessage.__ne__ = _generic_ne  # type: ignore[method-assign]
GenericMessage.__hash__ = _generic_hash  # type: ignore[method-assign]


class Header(NamedTuple):
    """A decoded, validated message header (``token`` is 0 in linux-rfc1)."""

    type: int
    msg_id: int
    dev_num: int
    token: int
    msg_size: int

    @property
    def response(self) -> bool:
        """True if ``type`` bit 0 marks a response."""
        return bool(self.type & C.TYPE_RESPONSE)

    @property
    def bus(self) -> bool:
        """True if ``type`` bit 1 marks a bus message."""
        return bool(self.type & C.TYPE_BUS)

    @property
    def event(self) -> bool:
        """True if ``msg_id`` bit 6 marks an event."""
        return bool(self.msg_id & C.MSG_ID_EVENT)


class _ProfileInfo(NamedTuple):
    header: struct.Struct
    min_max: int
    max_max: int
    default_max: int
    by_key: dict[int, Layout]
    by_cls: dict[type, Layout]


def _profile_info(profile: Profile) -> _ProfileInfo:
    if profile is Profile.SPEC:
        key, cls = build_registry(spec.LAYOUTS)
        return _ProfileInfo(
            struct.Struct("<BBHHH"),
            C.SPEC_MIN_MAX_SIZE,
            C.SPEC_MAX_MAX_SIZE,
            C.SPEC_DEFAULT_MAX_SIZE,
            key,
            cls,
        )
    key, cls = build_registry(rfc1.LAYOUTS)
    return _ProfileInfo(
        struct.Struct("<BBHH"), C.RFC1_MIN_SIZE, C.RFC1_MAX_SIZE, C.RFC1_MIN_SIZE, key, cls
    )


_PROFILES = {p: _profile_info(p) for p in Profile}


def profile_limits(profile: Profile | str) -> tuple[int, int, int]:
    """Return (smallest allowed, largest allowed, default) maximum message size."""
    info = _PROFILES[Profile(profile)]
    return info.min_max, info.max_max, info.default_max


_new_tuple = tuple.__new__


def with_header(msg: Message, dev_num: int, token: int) -> Message:
    """Return ``msg`` with its header fields ``dev_num`` and ``token`` replaced.

    The same as ``msg._replace(dev_num=..., token=...)``, several times faster:
    the transports and the bus do this on every message.
    """
    return _new_tuple(type(msg), msg[:-2] + (dev_num, token))


class Codec:
    """Encoder/decoder for one wire profile and one maximum message size.

    ``profile`` is ``"spec"`` (8-byte header with token; max size 52..65535,
    default 264) or ``"linux-rfc1"`` (6-byte header, no token; 44..65535,
    default 44).
    """

    __slots__ = (
        "_by_cls",
        "_by_key",
        "_hdr",
        "decode",
        "encode",
        "header_size",
        "max_size",
        "profile",
    )

    encode: Callable[[Message], bytes]
    """Encode one message of this profile; raise EncodeError if it cannot be sent.

    A specialised encoder per message class (one dict lookup by class) handles
    valid messages; anything unusual goes to the general path, which raises the
    precise error.
    """
    decode: Callable[[Buffer], Message]
    """Decode one message; raise MalformedMessage (and nothing else) if invalid.

    The first two bytes select a decoder generated for that message key, which
    unpacks the whole message with one struct and repeats every check of
    :meth:`decode_header` and of the payload that can fail for the key; anything
    unusual (an error, an implementation-defined id) takes the general path,
    which names the field.
    """

    def __init__(self, profile: Profile | str = Profile.SPEC, max_size: int | None = None) -> None:
        """Select the profile and validate ``max_size`` against its limits."""
        try:
            self.profile = Profile(profile)
        except ValueError:
            names = ", ".join(p.value for p in Profile)
            raise ValueError(
                f"unknown wire profile {profile!r} (expected one of: {names})"
            ) from None
        info = _PROFILES[self.profile]
        if max_size is None:
            max_size = info.default_max
        if not info.min_max <= max_size <= info.max_max:
            raise ValueError(
                f"max message size {max_size} outside {info.min_max}..{info.max_max} "
                f"for profile {self.profile.value}"
            )
        self.max_size = max_size
        self._hdr = info.header
        self.header_size = info.header.size
        self._by_key = info.by_key
        self._by_cls = info.by_cls
        hdr_fmt = info.header.format.lstrip("<")
        slow_encode = self._encode_slow
        encoders: dict[type, Encoder] = {}
        for lay in info.by_key.values():
            enc = make_encoder(lay, hdr_fmt, self.header_size == 8, max_size, slow_encode)
            if enc is not None:
                encoders[lay.cls] = enc
        self.encode = make_dispatch(encoders, slow_encode)
        self.decode = make_decoder(
            hdr_fmt, self.header_size == 8, max_size, self._by_key, self._decode_slow
        )

    def __repr__(self) -> str:
        """Show the profile and size."""
        return f"Codec({self.profile.value!r}, max_size={self.max_size})"

    @property
    def has_token(self) -> bool:
        """True when the header carries a token (profile ``spec``)."""
        return self.profile is Profile.SPEC

    def layouts(self) -> tuple[Layout, ...]:
        """Every message layout of this profile."""
        return tuple(self._by_key.values())

    def layout_for(self, msg_or_cls: object) -> Layout:
        """Return the layout row of a message object or class of this profile."""
        cls = msg_or_cls if isinstance(msg_or_cls, type) else type(msg_or_cls)
        try:
            return self._by_cls[cls]
        except KeyError:
            raise EncodeError(
                f"{cls.__name__} is not a message of profile {self.profile.value}"
            ) from None

    def layout_by_id(self, msg_id: int, *, response: bool, bus: bool) -> Layout | None:
        """Return the standard layout for an id and namespace, or None."""
        return self._by_key.get((((1 if response else 0) | (2 if bus else 0)) << 8) | msg_id)

    # --- decoding -------------------------------------------------------------------

    def _event_ack(self, typ: int, msg_id: int) -> bool:
        """True for the one event response a profile defines: linux-rfc1's EVENT_AVAIL ack."""
        return (
            self.header_size != 8 and not typ & C.TYPE_BUS and msg_id == C.TransportMsg.EVENT_AVAIL
        )

    def decode_header(self, data: Buffer) -> Header:
        """Decode and validate the header of ``data`` (sizes, bus dev_num)."""
        n = len(data)
        hs = self.header_size
        if n < hs:
            raise MalformedMessage(f"truncated header: {n} bytes, the header is {hs}", "header")
        if hs == 8:
            typ, msg_id, dev_num, token, size = self._hdr.unpack_from(data)
        else:
            typ, msg_id, dev_num, size = self._hdr.unpack_from(data)
            token = 0
        if size < hs:
            raise MalformedMessage(f"{size} is smaller than the {hs}-byte header", "msg_size")
        if size > n:
            raise MalformedMessage(f"{size} is larger than the {n}-byte buffer", "msg_size")
        if size > self.max_size:
            raise MalformedMessage(
                f"{size} exceeds the maximum message size {self.max_size}", "msg_size"
            )
        if typ & C.TYPE_BUS and dev_num:
            raise MalformedMessage(f"bus message with dev_num {dev_num} (must be 0)", "dev_num")
        if typ & C.TYPE_RESPONSE and msg_id & C.MSG_ID_EVENT and not self._event_ack(typ, msg_id):
            raise MalformedMessage(f"event id {msg_id:#04x} carries the response bit", "type")
        return Header(typ, msg_id, dev_num, token, size)

    def _decode_slow(self, data: Buffer) -> Message:
        typ, msg_id, dev_num, token, size = self.decode_header(data)
        lay = self._by_key.get(((typ & 3) << 8) | msg_id)
        if lay is not None:
            return lay.decode_payload(data, self.header_size, size, dev_num, token)
        if msg_id & C.MSG_ID_IMPL:
            return GenericMessage(
                msg_id,
                bool(typ & C.TYPE_RESPONSE),
                bool(typ & C.TYPE_BUS),
                bytes(data[self.header_size : size]),
                dev_num,
                token,
            )
        space = "bus" if typ & C.TYPE_BUS else "transport"
        kind = "response" if typ & C.TYPE_RESPONSE else "request/event"
        raise MalformedMessage(f"unknown {space} {kind} msg_id {msg_id:#04x}", "msg_id")

    # --- encoding -------------------------------------------------------------------

    def _encode_slow(self, msg: Message) -> bytes:
        """General encoder: validates everything and raises the precise EncodeError."""
        cls = type(msg)
        if cls is GenericMessage:
            g: GenericMessage = msg
            if not 0x80 <= g.msg_id <= 0xFF:
                raise EncodeError(f"msg_id {g.msg_id!r}: generic messages need bit 7 set")
            if g.response and g.msg_id & C.MSG_ID_EVENT:
                raise EncodeError(f"msg_id {g.msg_id:#04x} is an event and cannot be a response")
            if not isinstance(g.payload, (bytes, bytearray, memoryview)):
                raise EncodeError("payload must be bytes")
            payload = bytes(g.payload)
            msg_id = g.msg_id
            type_bits = (1 if g.response else 0) | (2 if g.bus else 0)
        else:
            lay = self._by_cls.get(cls)
            if lay is None:
                raise EncodeError(
                    f"{cls.__name__} is not a message of profile {self.profile.value}"
                )
            payload = lay.encode_payload(msg)
            msg_id = lay.msg_id
            type_bits = lay.type_bits
        dev_num = msg[-2]
        token = msg[-1]
        size = self.header_size + len(payload)
        if size > self.max_size:
            raise EncodeError(
                f"message of {size} bytes exceeds the maximum message size {self.max_size}"
            )
        if type_bits & C.TYPE_BUS and dev_num != 0:
            raise EncodeError(f"bus message with dev_num {dev_num!r} (must be 0)")
        try:
            if self.header_size == 8:
                header = self._hdr.pack(type_bits, msg_id, dev_num, token, size)
            else:
                if token != 0:
                    raise EncodeError(f"token {token!r}: profile linux-rfc1 has no token field")
                header = self._hdr.pack(type_bits, msg_id, dev_num, size)
        except (struct.error, TypeError):
            raise EncodeError(
                f"header field out of range: dev_num={dev_num!r}, token={token!r}"
            ) from None
        return header + payload


__all__ = [
    "Buffer",
    "Codec",
    "GenericMessage",
    "Header",
    "Message",
    "Profile",
    "profile_limits",
    "with_header",
]
