"""Declarative message layouts: one table row per message, the codec is generic.

Strategy: every message is an immutable tuple subclass (``typing.NamedTuple``)
whose leading fields are the payload fields in wire order, followed by the two
header fields ``dev_num`` and ``token``.  A :class:`Layout` row records the
message's id, its namespace (transport or bus, request/event or response), a
precompiled little-endian ``struct.Struct`` for the fixed part of the payload
and, for the few messages that have one, the kind of variable tail and which
fixed field counts it.  Encoding and decoding are then two small loops over
that description; no message needs code of its own.

Tuples are used instead of frozen dataclasses because decoding is on every
hot path (a frozen dataclass costs about five times as much to build); their
equality is made class-aware so that two different messages with the same
field values never compare equal.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from enum import Enum
from typing import Any

from virtio_msg.errors import EncodeError, MalformedMessage


class Tail(Enum):
    """Kinds of variable-length tail that follow a message's fixed payload."""

    NONE = "none"
    """No tail: bytes past the fixed part are ignored (forward compatibility)."""
    U32_ARRAY = "u32-array"
    """``count`` little-endian u32 words, ``count`` taken from a fixed field."""
    BYTES_EXACT = "bytes-exact"
    """Exactly ``length`` bytes, ``length`` taken from a fixed field."""
    BYTES_OPTIONAL = "bytes-optional"
    """Either no bytes, or exactly ``length`` bytes."""
    BITMAP = "bitmap"
    """``ceil(count / 8)`` bytes, ``count`` taken from a fixed field."""


_U32_ARRAY, _BYTES_EXACT, _BYTES_OPTIONAL, _BITMAP = 1, 2, 3, 4
_TAIL_CODES = {
    Tail.NONE: 0,
    Tail.U32_ARRAY: _U32_ARRAY,
    Tail.BYTES_EXACT: _BYTES_EXACT,
    Tail.BYTES_OPTIONAL: _BYTES_OPTIONAL,
    Tail.BITMAP: _BITMAP,
}


@functools.lru_cache(maxsize=512)
def u32_array(count: int) -> struct.Struct:
    """The precompiled layout of ``count`` little-endian u32 words."""
    return struct.Struct(f"<{count}I")


def _typed_eq(self: Any, other: Any) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _typed_ne(self: Any, other: Any) -> bool:
    return not _typed_eq(self, other)


def _typed_hash(self: Any) -> int:
    return hash((type(self).__name__, tuple(self)))


class Layout:
    """How one message class maps onto the wire.

    ``fmt`` is the struct format of the fixed payload (without the header);
    ``json_names`` optionally renames Python attributes for the JSON form,
    where the reference tables use a name that collides with a header field.
    """

    __slots__ = (
        "bus",
        "cls",
        "count_field",
        "count_index",
        "fixed",
        "fmt",
        "json_names",
        "msg_id",
        "name",
        "nfixed",
        "payload_fields",
        "response",
        "sized_bytes",
        "tail",
        "tail_code",
        "type_bits",
    )

    def __init__(
        self,
        cls: Any,
        name: str,
        msg_id: int,
        *,
        response: bool = False,
        bus: bool = False,
        fmt: str = "<",
        tail: Tail = Tail.NONE,
        count_field: str | None = None,
        json_names: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Describe ``cls`` and precompute its struct, field lists and tail position."""
        self.cls: Any = cls
        """The message class (a NamedTuple); typed Any so it can be called with fields."""
        self.name = name
        self.msg_id = int(msg_id)
        self.response = response
        self.bus = bus
        self.fmt = fmt
        self.tail = tail
        self.count_field = count_field
        self.json_names = json_names
        self.fixed = struct.Struct(fmt)
        codes = _split_codes(fmt)
        self.sized_bytes = tuple(
            (i, int(code[:-1])) for i, code in enumerate(codes) if code.endswith("s")
        )
        """Fixed byte-string fields as (position, exact size): struct would pad or cut."""
        fields: tuple[str, ...] = cls._fields
        if fields[-2:] != ("dev_num", "token"):
            raise TypeError(f"{cls.__name__}: last fields must be dev_num, token")
        payload = fields[:-2]
        self.payload_fields = payload
        self.nfixed = len(payload) - (0 if tail is Tail.NONE else 1)
        if tail is not Tail.NONE and count_field not in payload[: self.nfixed]:
            raise TypeError(f"{cls.__name__}: tail needs a count field")
        self.count_index = payload.index(count_field) if count_field else -1
        self.type_bits = (1 if response else 0) | (2 if bus else 0)
        self.tail_code = _TAIL_CODES[tail]
        """The tail kind as a small int, for the hot paths."""
        # Class-aware equality: GetDeviceStatus() must not equal SetVqueueResp().
        cls.__eq__ = _typed_eq
        cls.__ne__ = _typed_ne
        cls.__hash__ = _typed_hash

    @property
    def key(self) -> int:
        """Registry key: ``type`` bits 0-1 in bits 8-9, ``msg_id`` in bits 0-7."""
        return (self.type_bits << 8) | self.msg_id

    @property
    def tail_field(self) -> str | None:
        """Name of the variable tail field, or None."""
        return None if self.tail is Tail.NONE else self.payload_fields[-1]

    def json_name(self, attr: str) -> str:
        """Return the reference-table name of Python attribute ``attr``."""
        for py, js in self.json_names:
            if py == attr:
                return js
        return attr

    def decode_payload(
        self, data: bytes | bytearray | memoryview, start: int, end: int, dev_num: int, token: int
    ) -> tuple[Any, ...]:
        """Decode the payload ``data[start:end]`` into a message object."""
        fixed = self.fixed
        avail = end - start
        if avail < fixed.size:
            raise MalformedMessage(
                f"{self.name} needs a {fixed.size}-byte payload, msg_size leaves {avail}",
                "msg_size",
            )
        values = fixed.unpack_from(data, start)
        code = self.tail_code
        if code == 0:
            return tuple.__new__(self.cls, values + (dev_num, token))
        count = values[self.count_index]
        tail_len = avail - fixed.size
        tail_start = start + fixed.size
        if code == _U32_ARRAY:
            if tail_len == count * 4:
                words = u32_array(count).unpack_from(data, tail_start)
                return tuple.__new__(self.cls, values + (words, dev_num, token))
        elif tail_len == self.tail_size(count) or (code == _BYTES_OPTIONAL and tail_len == 0):
            tail = bytes(data[tail_start:end])
            return tuple.__new__(self.cls, values + (tail, dev_num, token))
        want = self.tail_size(count)
        extra = " (or none)" if code == _BYTES_OPTIONAL else ""
        raise MalformedMessage(
            f"{self.count_field}={count} needs {want} bytes{extra}, message has {tail_len}",
            self.payload_fields[-1],
        )

    def tail_size(self, count: int) -> int:
        """Bytes the variable tail must have for ``count`` (0 without a tail)."""
        code = self.tail_code
        if code == _U32_ARRAY:
            return count * 4
        if code == _BITMAP:
            return (count + 7) // 8
        return count if code else 0

    def encode_payload(self, msg: tuple[Any, ...]) -> bytes:
        """Encode the payload of ``msg`` (validated, never a raw struct.error)."""
        nfixed = self.nfixed
        for pos, size in self.sized_bytes:
            value = msg[pos]
            if not isinstance(value, (bytes, bytearray)) or len(value) != size:
                raise EncodeError(
                    f"{self.name}: field {self.payload_fields[pos]} must be exactly {size} bytes"
                )
        try:
            fixed = self.fixed.pack(*msg[:nfixed])
        except (struct.error, TypeError) as exc:
            raise EncodeError(f"{self.name}: {self._field_problem(msg)}: {exc}") from None
        if self.tail is Tail.NONE:
            return fixed
        count = msg[self.count_index]
        tail = msg[nfixed]
        field = self.payload_fields[-1]
        if self.tail is Tail.U32_ARRAY:
            if not isinstance(tail, (tuple, list)) or len(tail) != count:
                raise EncodeError(
                    f"{self.name}: {field} must hold {self.count_field}={count} words"
                )
            try:
                return fixed + struct.pack(f"<{count}I", *tail)
            except (struct.error, TypeError) as exc:
                raise EncodeError(f"{self.name}: {field}: {exc}") from None
        if not isinstance(tail, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{self.name}: {field} must be bytes")
        tail = bytes(tail)
        if self.tail is Tail.BITMAP:
            good = len(tail) == (count + 7) // 8
        elif self.tail is Tail.BYTES_EXACT:
            good = len(tail) == count
        else:
            good = len(tail) in (0, count)
        if not good:
            raise EncodeError(
                f"{self.name}: {field} has {len(tail)} bytes, inconsistent with "
                f"{self.count_field}={count}"
            )
        return fixed + tail

    def _field_problem(self, msg: tuple[Any, ...]) -> str:
        """Name the first fixed field that does not pack on its own."""
        for name, code, value in zip(
            self.payload_fields, _split_codes(self.fmt), msg, strict=False
        ):
            try:
                struct.pack("<" + code, value)
            except (struct.error, TypeError):
                return f"field {name}={value!r} does not fit {code!r}"
        return "fields do not fit"


def _split_codes(fmt: str) -> list[str]:
    """Split a struct format into one code per field ("<II16s" -> ["I", "I", "16s"])."""
    codes: list[str] = []
    digits = ""
    for ch in fmt.lstrip("<"):
        if ch.isdigit():
            digits += ch
        else:
            codes.append(digits + ch)
            digits = ""
    return codes


def build_registry(layouts: Sequence[Layout]) -> tuple[dict[int, Layout], dict[type, Layout]]:
    """Index layouts by wire key and by class, refusing duplicates."""
    by_key: dict[int, Layout] = {}
    by_cls: dict[type, Layout] = {}
    for lay in layouts:
        if lay.key in by_key or lay.cls in by_cls:
            raise TypeError(f"duplicate layout for {lay.name}")
        by_key[lay.key] = lay
        by_cls[lay.cls] = lay
    return by_key, by_cls
