"""Generated fast paths for the codec's hot loops.

Strategy: for each message class the codec builds, once, a small encoder
function specialised to that class's layout, its header format and the bus's
maximum size (the way ``collections.namedtuple`` generates code): the fields
are unpacked by position and packed with one precompiled ``struct.Struct``,
with the header constants inlined.  An encoder returns ``None`` whenever
anything is unusual (a value out of range, a tail that disagrees with its
count, a message too large); the codec then takes its general path, which
raises the precise :class:`~virtio_msg.errors.EncodeError`.  The decode fast
path is a closure over the codec's tables for the same reason: the checks of
the general path are repeated in one expression, and anything unusual falls
back to it.  Nothing here decides validity on its own.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, Final

from virtio_msg.wire._layout import Layout, Tail

TAIL_STRUCTS: Final = 64
"""Tail lengths whose precompiled struct a layout keeps (the common ones are few)."""

Encoder = Callable[[Any], bytes | None]
Decoder = Callable[[Any], Any]


def make_encoder(lay: Layout, header_fmt: str, has_token: bool, max_size: int) -> Encoder | None:
    """Return a specialised encoder for ``lay``, or None if it can never fit."""
    full = struct.Struct("<" + header_fmt + lay.fmt.lstrip("<"))
    base = full.size
    if base > max_size:
        return None
    nfields = len(lay.payload_fields)
    names = [f"f{i}" for i in range(nfields)]
    fixed = names[: lay.nfixed]
    lines = ["def enc(msg):", f"    {', '.join([*names, 'dev_num', 'token'])}, = msg"]
    if lay.bus:
        lines.append("    if dev_num: return None")
    if not has_token:
        lines.append("    if token: return None")
    for pos, size in lay.sized_bytes:
        lines.append(f"    if f{pos}.__class__ is not bytes or len(f{pos}) != {size}: return None")
    head = f"{lay.type_bits}, {lay.msg_id}, dev_num, " + ("token, " if has_token else "")
    if lay.tail is Tail.NONE:
        args = ", ".join([*fixed])
        lines += [
            "    try:",
            f"        return _pack({head}{base}{', ' if args else ''}{args})",
            "    except (_error, TypeError, OverflowError):",
            "        return None",
        ]
    else:
        # One precompiled struct per tail length (header, fixed part and tail in one
        # format, like the bare baseline): one pack call, no concatenation.
        tail = names[-1]
        count = f"f{lay.count_index}"
        args = ", ".join([*fixed, f"*{tail}" if lay.tail is Tail.U32_ARRAY else tail])
        if lay.tail is Tail.U32_ARRAY:
            lines += [
                f"    if {tail}.__class__ is not tuple or len({tail}) != {count}: return None",
                f"    size = {base} + 4 * {count}",
            ]
        else:
            lines += [
                f"    if {tail}.__class__ is not bytes: return None",
                f"    n = len({tail})",
            ]
            if lay.tail is Tail.BYTES_EXACT:
                lines.append(f"    if n != {count}: return None")
            elif lay.tail is Tail.BYTES_OPTIONAL:
                lines.append(f"    if n and n != {count}: return None")
            else:
                lines.append(f"    if n != ({count} + 7) >> 3: return None")
            lines.append(f"    size = {base} + n")
        length = f"{count}" if lay.tail is Tail.U32_ARRAY else "n"
        lines += [
            f"    if size > {max_size}: return None",
            "    try:",
            f"        return _full({length}).pack({head}size, {args})",
            "    except (_error, TypeError, OverflowError):",
            "        return None",
        ]
    code = "I" if lay.tail is Tail.U32_ARRAY else "s"
    namespace: dict[str, Any] = {
        "_pack": full.pack,
        "_error": struct.error,
        "_full": tail_structs(full.format + "{}" + code),
    }
    exec("\n".join(lines), namespace)
    encoder: Encoder = namespace["enc"]
    return encoder


def tail_structs(template: str) -> Callable[[int], struct.Struct]:
    """Precompiled structs of ``template`` (a format with one ``{}`` for the tail length).

    Built on first use and cached per length (at most :data:`TAIL_STRUCTS` of
    them per layout: lengths come from peers, the cache must stay bounded).
    """

    @functools.lru_cache(maxsize=TAIL_STRUCTS)
    def build(length: int) -> struct.Struct:
        return struct.Struct(template.format(length))

    return build


def make_tail_decoder(lay: Layout) -> Callable[[Any, int, int, int, int], Any]:
    """Return a specialised payload decoder for a layout with a variable tail.

    The fixed part and the tail are unpacked by one precompiled struct of
    that tail length (byte tails come out as ``bytes``, no slice and copy);
    the count is checked against the length afterwards.  Anything else goes
    to the layout's general :meth:`~virtio_msg.wire._layout.Layout.decode_payload`,
    which raises the precise error.
    """
    fixed_size = lay.fixed.size
    nfixed = lay.nfixed
    count = f"v[{lay.count_index}]"
    lines = [
        "def dec(data, start, end, dev_num, token):",
        f"    tail_len = end - start - {fixed_size}",
        "    if tail_len < 0: return _slow(data, start, end, dev_num, token)",
    ]
    if lay.tail is Tail.U32_ARRAY:
        lines += [
            "    if tail_len & 3: return _slow(data, start, end, dev_num, token)",
            "    v = _body(tail_len >> 2).unpack_from(data, start)",
            f"    if {count} * 4 == tail_len:",
            f"        return _new(_cls, v[:{nfixed}] + (v[{nfixed}:], dev_num, token))",
        ]
        template = lay.fixed.format + "{}I"
    else:
        if lay.tail is Tail.BYTES_EXACT:
            ok = f"tail_len == {count}"
        elif lay.tail is Tail.BYTES_OPTIONAL:
            ok = f"(tail_len == {count} or tail_len == 0)"
        else:
            ok = f"tail_len == ({count} + 7) >> 3"
        lines += [
            "    v = _body(tail_len).unpack_from(data, start)",
            f"    if {ok}:",
            "        return _new(_cls, v + (dev_num, token))",
        ]
        template = lay.fixed.format + "{}s"
    lines.append("    return _slow(data, start, end, dev_num, token)")
    namespace: dict[str, Any] = {
        "_body": tail_structs(template),
        "_new": tuple.__new__,
        "_cls": lay.cls,
        "_slow": lay.decode_payload,
    }
    exec("\n".join(lines), namespace)  # generated from our own layout table
    decoder: Callable[[Any, int, int, int, int], Any] = namespace["dec"]
    return decoder


def make_decoder(
    header: struct.Struct,
    max_size: int,
    by_key: dict[int, Layout],
    slow: Decoder,
) -> Decoder:
    """Return the decode function of one codec: fast for valid standard messages."""
    hs = header.size
    unpack_header = header.unpack_from
    new = tuple.__new__
    # One table for both kinds: a fixed layout's (class, unpack, header + body size)
    # or a tail decoder.  Checks that depend only on the key are done here, once:
    # a response with the event bit set never takes the fast path.
    table: dict[int, Any] = {
        key: (lay.cls, lay.fixed.unpack_from, hs + lay.fixed.size)
        if lay.tail is Tail.NONE
        else make_tail_decoder(lay)
        for key, lay in by_key.items()
        if not (lay.response and lay.msg_id & 0x40)
    }
    get = table.get

    # Below, ``size >= hs`` needs no test of its own: a fixed layout needs
    # ``size >= hs + body`` and a tail decoder sends ``size < hs + fixed`` to the
    # general path.
    if hs == 8:

        def decode(data: Any) -> Any:
            n = len(data)
            if n >= 8:
                typ, msg_id, dev_num, token, size = unpack_header(data)
                if size <= n and size <= max_size and not (dev_num and typ & 2):
                    entry = get((typ & 3) << 8 | msg_id)
                    if entry.__class__ is tuple:
                        cls, unpack_body, need = entry
                        if size >= need:
                            return new(cls, unpack_body(data, 8) + (dev_num, token))
                    elif entry is not None:
                        return entry(data, 8, size, dev_num, token)
            return slow(data)

    else:

        def decode(data: Any) -> Any:
            n = len(data)
            if n >= hs:
                typ, msg_id, dev_num, size = unpack_header(data)
                if size <= n and size <= max_size and not (dev_num and typ & 2):
                    entry = get((typ & 3) << 8 | msg_id)
                    if entry.__class__ is tuple:
                        cls, unpack_body, need = entry
                        if size >= need:
                            return new(cls, unpack_body(data, hs) + (dev_num, 0))
                    elif entry is not None:
                        return entry(data, hs, size, dev_num, 0)
            return slow(data)

    return decode


__all__ = ["Decoder", "Encoder", "make_decoder", "make_encoder", "make_tail_decoder"]
