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

from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec
from virtio_msg.wire._layout import Layout, Tail

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
    from virtio_msg.wire._fastpath import TAIL_STRUCTS, tail_structs

    build = tail_structs("<I{}s")
    for n in range(TAIL_STRUCTS * 3):
        assert build(n).size == 4 + n
    assert build.cache_info().currsize == TAIL_STRUCTS  # type: ignore[attr-defined]
