"""The codec's generated fast paths agree with its general path on every tail length.

The encoders and tail decoders of :mod:`virtio_msg.wire._fastpath` pack and
unpack a message with one precompiled struct per tail length; the general
path (``Codec._encode_slow`` / ``Codec._decode_slow``) validates field by
field.  For every layout with a variable tail, in both profiles, and for tail
lengths around the count each field announces (too short, exact, too long,
none), both paths must give the same bytes, the same message, or the same
error (spec section 8 item 3: a tail that disagrees with its count is
malformed).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec
from virtio_msg.wire._fastpath import TAIL_STRUCTS, TailCache
from virtio_msg.wire._layout import Layout, Tail, _split_codes

PROFILES = ["spec", "linux-rfc1"]


def _tail_layouts(codec: Codec) -> list[Layout]:
    return [lay for lay in codec.layouts() if lay.tail is not Tail.NONE]


def _fixed_values(lay: Layout, count: int) -> list[Any]:
    values: list[Any] = [0] * lay.nfixed
    for pos, size in lay.sized_bytes:
        values[pos] = bytes(range(size))
    values[lay.count_index] = count
    return values


def _outcome(fn: Any, arg: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(arg)
    except (MalformedMessage, EncodeError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("profile", PROFILES)
def test_tail_decode_fast_equals_slow_for_every_length(profile: str) -> None:
    """Spec section 8 item 3: fast and general decoders agree on good and bad tails."""
    codec = Codec(profile, 1024)
    hs = codec.header_size
    checked = 0
    for lay in _tail_layouts(codec):
        for count in (0, 1, 2, 3, 7, 8, 9, 16):
            fixed = lay.fixed.pack(*_fixed_values(lay, count))
            for tail_len in range(0, 70):
                size = hs + len(fixed) + tail_len
                if hs == 8:
                    head = struct.pack("<BBHHH", lay.type_bits, lay.msg_id, 0, 5, size)
                else:
                    head = struct.pack("<BBHH", lay.type_bits, lay.msg_id, 0, size)
                data = head + fixed + bytes(range(tail_len))
                fast = _outcome(codec.decode, data)
                slow = _outcome(codec._decode_slow, data)
                assert fast == slow, (lay.name, count, tail_len)
                assert type(fast[1]) is not tuple or type(fast[1]) is lay.cls
                checked += fast[0] == "ok"
    assert checked > 0  # some lengths were valid, so the fast path really decoded


@pytest.mark.parametrize("profile", PROFILES)
def test_tail_encode_fast_equals_slow(profile: str) -> None:
    """Every tail length a count allows, and some it does not: same bytes or same error."""
    codec = Codec(profile, 1024)
    for lay in _tail_layouts(codec):
        for count in (0, 1, 2, 5, 8, 17):
            if lay.tail is Tail.U32_ARRAY:
                tails: list[Any] = [tuple(range(n)) for n in (count, count + 1)]
                tails += [[1] * count, tuple([-1] * count) if count else (2**32,)]
            else:
                good = (count + 7) // 8 if lay.tail is Tail.BITMAP else count
                tails = [bytes(good), bytes(good + 1), bytearray(good)]
                if lay.tail is Tail.BYTES_OPTIONAL:
                    tails.append(b"")
            for tail in tails:
                values = _fixed_values(lay, count)
                dev_num = 0 if lay.bus else 3
                token = 9 if codec.has_token else 0
                msg = lay.cls(*values, tail, dev_num=dev_num, token=token)
                fast = _outcome(codec.encode, msg)
                slow = _outcome(codec._encode_slow, msg)
                assert fast == slow, (lay.name, count, tail)
                if fast[0] == "ok":
                    assert codec.decode(fast[1]) == lay.cls(
                        *values, tuple(tail) if lay.tail is Tail.U32_ARRAY else bytes(tail),
                        dev_num=dev_num, token=token,
                    )


def test_tail_struct_cache_stays_bounded() -> None:
    """Peer-chosen tail lengths cannot grow the per-length struct cache without limit."""
    cache = TailCache("<I{}s", "unpack_from", offset=4, most=4096)
    for n in range(TAIL_STRUCTS * 3):
        unpack = cache.get(4 + n) or cache.build(4 + n)
        assert unpack is not None
        assert unpack(bytes(range(4 + n)) + b"pad") == (0x03020100, bytes(range(4, 4 + n)))
    assert len(cache) == TAIL_STRUCTS
    # lengths no tail can have get no struct: below the fixed part, past the maximum
    assert cache.build(3) is None and cache.build(4097) is None and cache.build(6.0) is None
    words = TailCache("<H{}I", "pack", unit=4, offset=2)
    assert words.build(7) is None  # not a whole number of words
    pack = words.build(10)
    assert pack is not None and pack(1, 2, 3) == b"\x01\x00\x02\x00\x00\x00\x03\x00\x00\x00"


# --- every kind, any bytes, any field values: hypothesis ------------------------------

CODECS = [Codec("spec"), Codec("spec", 52), Codec("linux-rfc1"), Codec("linux-rfc1", 300)]
"""Default and smallest/larger maximum sizes: the size limits are inlined in the fast paths."""


def _key_bytes(codec: Codec) -> list[bytes]:
    """The two leading bytes (``type``, ``msg_id``) of every standard message, plus a few more."""
    keys = [bytes([lay.type_bits | extra, lay.msg_id])
            for lay in codec.layouts() for extra in (0, 4, 0xF0)]
    return keys + [b"\x01\x41", b"\x01\x40", b"\x00\x85", b"\x03\xc1", b"\x00\x3f"]


@st.composite
def _frames(draw: st.DrawFn, codec: Codec) -> bytes:
    """Header-shaped buffers of any key, msg_size and body (valid and malformed)."""
    key = draw(st.sampled_from(_key_bytes(codec)))
    dev_num = draw(st.sampled_from([0, 1, 0x8000, 0xFFFF]))
    token = draw(st.integers(0, 0xFFFF))
    body = draw(st.binary(max_size=90))
    lay = codec.layout_by_id(key[1], response=bool(key[0] & 1), bus=bool(key[0] & 2))
    if lay is not None and lay.tail is not Tail.NONE and draw(st.booleans()):
        # a count field that agrees with the tail (or nearly): the counted paths
        room = max(len(body) - lay.fixed.size, 0)
        count = draw(st.sampled_from([room, room // 4, room * 8, room * 8 - 7, 0, 1]))
        values = list(lay.fixed.unpack_from(body.ljust(lay.fixed.size, b"\0")))
        width = struct.calcsize("<" + _split_codes(lay.fmt)[lay.count_index])
        values[lay.count_index] = count & ((1 << 8 * width) - 1)
        body = lay.fixed.pack(*values) + body[lay.fixed.size:]
    hs = codec.header_size
    size = draw(st.sampled_from([hs + len(body), hs + len(body) - 1, hs + len(body) + 1,
                                 0, hs - 1, codec.max_size, codec.max_size + 1]))
    size = draw(st.one_of(st.just(size & 0xFFFF), st.integers(0, 0xFFFF)))
    if codec.has_token:
        head = struct.pack("<BBHHH", key[0], key[1], dev_num, token, size)
    else:
        head = struct.pack("<BBHH", key[0], key[1], dev_num, size)
    frame = (head + body)[: draw(st.integers(0, hs + len(body)))] if draw(
        st.integers(0, 9)) == 0 else head + body
    # bus padding, sometimes up to past the maximum size (so msg_size may claim it)
    pad = draw(st.sampled_from([0, 1, 3, max(codec.max_size + 2 - len(frame), 0)]))
    return frame + bytes(pad)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_decode_fast_equals_slow_on_any_frame(codec: Codec, data: st.DataObject) -> None:
    """Spec section 8: the fast decoder accepts, returns and rejects exactly as the general one.

    Also for the same bytes in a bytearray and a memoryview (what channels hand over).
    """
    raw = data.draw(_frames(codec))
    slow = _outcome(codec._decode_slow, raw)
    for buf in (raw, bytearray(raw), memoryview(raw)):
        fast = _outcome(codec.decode, buf)
        assert fast == slow, (buf, fast, slow)
        if fast[0] == "ok":
            assert type(fast[1]) is type(slow[1])


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=80))
def test_decode_fast_equals_slow_on_any_bytes(codec: Codec, raw: bytes) -> None:
    assert _outcome(codec.decode, raw) == _outcome(codec._decode_slow, raw)


_ODD_VALUES = st.one_of(
    st.integers(-2, 2), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
    st.sampled_from([2**32, 2**64, -(2**63), True, 2.0, None, "1", b"", b"\0" * 16]),
)


def _valid(code: str) -> st.SearchStrategy[Any]:
    if code.endswith("s"):
        return st.binary(min_size=int(code[:-1]), max_size=int(code[:-1]))
    return st.integers(0, (1 << 8 * struct.calcsize("<" + code)) - 1)


@st.composite
def _odd_messages(draw: st.DrawFn, codec: Codec) -> Any:
    """A message of any layout: valid values with at most two odd ones (range, type, size)."""
    lay: Layout = draw(st.sampled_from(codec.layouts()))
    values: list[Any] = [draw(_valid(code)) for code in _split_codes(lay.fmt)]
    for pos, size in lay.sized_bytes:
        values[pos] = draw(st.one_of(st.binary(min_size=size - 1, max_size=size + 1),
                                     st.just(bytearray(size)), st.just(values[pos])))
    if lay.tail is not Tail.NONE:
        n = draw(st.integers(0, 70))
        values[lay.count_index] = draw(st.one_of(
            st.just(n), st.just((n + 7) // 8 if lay.tail is Tail.BITMAP else n),
            st.just(n * 8), st.integers(0, 70)))
        if lay.tail is Tail.U32_ARRAY:
            words = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
            tail: Any = draw(st.sampled_from([tuple(words), words, bytes(n), tuple(words) +
                                              (2**32,)]))
        else:
            tail = draw(st.sampled_from([bytes(n), bytearray(n), b"", (0,) * n, None]))
        values.append(tail)
    values += [0 if lay.bus else draw(st.integers(0, 0xFFFF)),
               draw(st.integers(0, 0xFFFF)) if codec.has_token else 0]
    for _ in range(draw(st.integers(0, 2))):
        values[draw(st.integers(0, len(values) - 1))] = draw(_ODD_VALUES)
    return tuple.__new__(lay.cls, values)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_encode_fast_equals_slow_on_any_field_values(codec: Codec, data: st.DataObject) -> None:
    """The specialised encoders give the general path's bytes, or its error."""
    msg = data.draw(_odd_messages(codec))
    fast = _outcome(codec.encode, msg)
    slow = _outcome(codec._encode_slow, msg)
    assert fast == slow, (msg, fast, slow)


@st.composite
def _kernel_frames(draw: st.DrawFn) -> bytes:
    """44-byte seed-kernel buffers: SET_DRV_FEATURES / SET_CONFIG with the seed's sizes."""
    msg_id = draw(st.sampled_from([0x04, 0x06, 0x03, 0x05]))
    size = draw(st.sampled_from([14, 18, 22, 26, 30, 44, 45, 6]))
    body = draw(st.binary(min_size=38, max_size=38))
    count = draw(st.integers(0, 9))
    body = struct.pack("<II", 0, count) + body[8:] if msg_id == 0x04 else \
        struct.pack("<III", 0, 0, count) + body[12:]
    return struct.pack("<BBHH", 0, msg_id, 1, size) + body


@settings(max_examples=800, deadline=None)
@given(raw=_kernel_frames())
def test_kernel_compat_decode_fast_equals_slow(raw: bytes) -> None:
    """linux-rfc1 defect 22: kernel-compat decoding takes the same path as the general one."""
    from virtio_msg.wire.compat import kernel_frame
    from virtio_msg.wire.translate import WireAdapter, to_draft

    adapter = WireAdapter("linux-rfc1", kernel_compat=True)
    fast = _outcome(adapter.decode, raw)
    slow = _outcome(lambda d: to_draft(adapter.codec._decode_slow(kernel_frame(d))), raw)
    assert fast == slow
