"""Hypothesis properties of the codec: round trips and garbage in."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec, GenericMessage, Message, from_json, to_json
from virtio_msg.wire._layout import Layout, Tail

_INT_RANGES = {"B": 8, "H": 16, "I": 32, "Q": 64}


def _codes(fmt: str) -> list[str]:
    codes: list[str] = []
    digits = ""
    for ch in fmt.lstrip("<"):
        if ch.isdigit():
            digits += ch
        else:
            codes.append(digits + ch)
            digits = ""
    return codes


def _field_strategy(code: str) -> st.SearchStrategy[Any]:
    if code.endswith("s"):
        return st.binary(min_size=int(code[:-1]), max_size=int(code[:-1]))
    return st.integers(0, (1 << _INT_RANGES[code]) - 1)


@st.composite
def messages(draw: st.DrawFn, codec: Codec) -> Message:
    """Any message of ``codec``'s profile that fits its maximum size."""
    lay: Layout = draw(st.sampled_from(codec.layouts()))
    room = codec.max_size - codec.header_size - lay.fixed.size
    values: list[Any] = [draw(_field_strategy(c)) for c in _codes(lay.fmt)]
    if lay.tail is not Tail.NONE:
        if lay.tail is Tail.U32_ARRAY:
            n = draw(st.integers(0, room // 4))
            tail: Any = tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)))
            count = n
        elif lay.tail is Tail.BITMAP:
            count = draw(st.integers(0, min(room * 8, 0xFFFF)))
            tail = draw(st.binary(min_size=(count + 7) // 8, max_size=(count + 7) // 8))
        else:
            count = draw(st.integers(0, room))
            empty = lay.tail is Tail.BYTES_OPTIONAL and draw(st.booleans())
            tail = b"" if empty else draw(st.binary(min_size=count, max_size=count))
        values[lay.count_index] = count
        values.append(tail)
    dev_num = 0 if lay.bus else draw(st.integers(0, 0xFFFF))
    token = draw(st.integers(0, 0xFFFF)) if codec.has_token else 0
    msg: Message = lay.cls(*values, dev_num=dev_num, token=token)
    return msg


CODECS = [Codec("spec"), Codec("spec", 52), Codec("linux-rfc1"), Codec("linux-rfc1", 300)]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_inverts_encode(codec: Codec, data: st.DataObject) -> None:
    msg = data.draw(messages(codec))
    raw = codec.encode(msg)
    assert len(raw) <= codec.max_size
    assert codec.decode(raw) == msg
    # Padding after msg_size is ignored (the seed kernel moves whole buffers).
    assert codec.decode(raw + b"\xa5" * 7) == msg if len(raw) + 7 <= 65535 else True


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_json_form_round_trips(codec: Codec, data: st.DataObject) -> None:
    msg = data.draw(messages(codec))
    assert from_json(codec, to_json(codec, msg)) == msg


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=1500, deadline=None)
@given(raw=st.binary(max_size=320))
def test_arbitrary_bytes_only_raise_malformed(codec: Codec, raw: bytes) -> None:
    try:
        msg = codec.decode(raw)
    except MalformedMessage:
        return
    # Whatever decodes re-encodes to the same message (padding and reserved
    # type bits are the only bytes allowed to be dropped).
    assert codec.decode(codec.encode(msg)) == msg


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_header_shaped_garbage_only_raises_malformed(codec: Codec, data: st.DataObject) -> None:
    """Plausible headers with random sizes hit the payload rules, not just the header."""
    msg_id = data.draw(st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x09, 0x0A, 0x0C, 0x40,
                                        0x41, 0x42, 0x80, 0xC1, 0x3F]))
    typ = data.draw(st.integers(0, 3))
    body = data.draw(st.binary(max_size=80))
    size = data.draw(st.integers(0, codec.header_size + len(body) + 2))
    if codec.has_token:
        head = struct.pack("<BBHHH", typ, msg_id, 0, 0, size)
    else:
        head = struct.pack("<BBHH", typ, msg_id, 0, size)
    with contextlib.suppress(MalformedMessage):
        codec.decode(head + body)


def test_generic_message_round_trip() -> None:
    codec = Codec()
    msg = GenericMessage(0x85, True, True, b"\x01\x02", dev_num=0, token=9)
    assert codec.decode(codec.encode(msg)) == msg
    assert msg != GenericMessage(0x85, True, True, b"\x01\x02", dev_num=0, token=8)


def test_generic_event_cannot_be_a_response() -> None:
    with pytest.raises(EncodeError):
        Codec().encode(GenericMessage(0xC0, True, False, b""))
