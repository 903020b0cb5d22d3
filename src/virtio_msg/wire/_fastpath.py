"""Generated fast paths for the codec's hot loops.

Strategy: for each message class the codec builds, once, a small encoder
function specialised to that class's layout, its header format and the bus's
maximum size (the way ``collections.namedtuple`` generates code): the fields
are unpacked by position and packed with one precompiled ``struct.Struct``,
with the header constants inlined.  Each message key gets a generated
decoder, specialised the same way, which the codec's decode selects by the
first two bytes: one struct unpacks header, fixed part and (picked by
``msg_size``) the tail, and only the checks that can fail for that key are
made; everything that depends only on the key is decided when the code is
generated.  Structs for variable tails are cached per message size, a bounded
number of them (sizes come from peers).  Whenever anything is
unusual (a value out of range, a tail that disagrees with its count, a message
too large, a short buffer) a fast path hands the *whole* message to the
codec's general path, which repeats every check and raises the precise
:class:`~virtio_msg.errors.EncodeError` or
:class:`~virtio_msg.errors.MalformedMessage`.  Nothing here decides validity
on its own: a fast path only ever returns what the general path would.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any, Final

from virtio_msg.wire._layout import Layout, Tail

TAIL_STRUCTS: Final = 64
"""Tail lengths whose precompiled struct a cache keeps (the common ones are few)."""

Encoder = Callable[[Any], bytes]
Decoder = Callable[[Any], Any]


class TailCache:
    """Precompiled struct methods per length, built on first use, at most ``limit`` kept.

    ``template`` is a struct format with one ``{}`` for the tail's item count;
    the cache is keyed by a length in bytes (``offset`` plus ``unit`` bytes per
    item); :meth:`build` returns None for a length no tail can have (negative,
    not a whole number of items, above ``most``).  Lengths come from peers, so
    the cache is bounded: past ``limit`` lengths a struct is built per use.
    """

    __slots__ = ("_build_lock", "_cache", "get", "limit", "method", "most", "offset", "template",
                 "unit")

    def __init__(
        self, template: str, method: str, *, unit: int = 1, offset: int = 0,
        most: int = 1 << 32, limit: int = TAIL_STRUCTS,
    ) -> None:
        """Describe the structs (``method`` is ``"pack"`` or ``"unpack_from"``)."""
        self.template = template
        self.method = method
        self.unit = unit
        self.offset = offset
        self.most = most
        self.limit = limit
        self._cache: dict[int, Callable[..., Any]] = {}
        self._build_lock = threading.Lock()
        self.get = self._cache.get
        """``get(length)``: the cached struct method, or None (then call :meth:`build`)."""

    def __len__(self) -> int:
        """How many lengths are cached."""
        return len(self._cache)

    def build(self, length: Any) -> Callable[..., Any] | None:
        """Return (and cache, while there is room) the struct method for ``length``."""
        if length.__class__ is not int:
            return None
        items, rest = divmod(length - self.offset, self.unit)
        if items < 0 or rest or length > self.most:
            return None
        fn: Callable[..., Any] = getattr(struct.Struct(self.template.format(items)), self.method)
        with self._build_lock:
            if len(self._cache) < self.limit:
                fn = self._cache.setdefault(length, fn)
        return fn


def _count_ok(lay: Layout, count: str, length: str) -> str:
    """The condition, as source, that a tail of ``length`` bytes agrees with ``count``."""
    if lay.tail is Tail.U32_ARRAY:
        return f"{count} * 4 == {length}"
    if lay.tail is Tail.BYTES_EXACT:
        return f"{count} == {length}"
    if lay.tail is Tail.BYTES_OPTIONAL:
        return f"({count} == {length} or not {length})"
    return f"({count} + 7) >> 3 == {length}"


def make_encoder(
    lay: Layout, header_fmt: str, has_token: bool, max_size: int, slow: Encoder
) -> Encoder | None:
    """Return a specialised encoder for ``lay``, or None if it can never fit.

    The encoder returns the message's bytes, or ``slow(msg)`` for anything
    its specialised checks do not accept.
    """
    full = struct.Struct("<" + header_fmt + lay.fmt.lstrip("<"))
    base = full.size
    if base > max_size:
        return None
    nfields = len(lay.payload_fields)
    names = [f"f{i}" for i in range(nfields)]
    fixed = names[: lay.nfixed]
    lines = ["def enc(msg):", f"    {', '.join([*names, 'dev_num', 'token'])}, = msg"]
    if lay.bus:
        lines.append("    if dev_num != 0: return _slow(msg)")
    if not has_token:
        lines.append("    if token != 0: return _slow(msg)")
    for pos, size in lay.sized_bytes:
        lines.append(
            f"    if f{pos}.__class__ is not bytes or len(f{pos}) != {size}: return _slow(msg)"
        )
    head = f"{lay.type_bits}, {lay.msg_id}, dev_num, " + ("token, " if has_token else "")
    catch = "    except (_error, TypeError, OverflowError):"
    tails: TailCache | None = None
    if lay.tail is Tail.NONE:
        args = ", ".join([*fixed])
        lines += [
            "    try:",
            f"        return _pack({head}{base}{', ' if args else ''}{args})",
            catch,
            "        pass",
        ]
    else:
        # One precompiled struct per message size (header, fixed part and tail in one
        # format, like the bare baseline): one pack call, no concatenation.  Sizes
        # above max_size never get a struct, so a cached one needs no size check.
        tail = names[-1]
        count = f"f{lay.count_index}"
        u32 = lay.tail is Tail.U32_ARRAY
        # u32 words: one tuple concatenation, then the call takes that tuple as it is
        args = ", ".join([*fixed, tail])
        if u32:
            lines += [
                # (pack checks the number of words against the struct the count chose)
                f"    if {tail}.__class__ is tuple:",
                "        try:",
                f"            size = {base} + 4 * {count}",
            ]
        else:
            lines += [
                f"    if {tail}.__class__ is bytes:",
                f"        n = len({tail})",
                "        try:",
                f"            if {_count_ok(lay, count, 'n')}:",
                f"                size = {base} + n",
            ]
        pad = "            " if u32 else "                "
        # A size that can never be sent has no struct: calling the None fails with
        # TypeError, into the general path like any other failure.
        call = f"(*({head}size, {', '.join(fixed)}) + {tail})" if u32 else f"({head}size, {args})"
        lines += [
            f"{pad}return (_get(size) or _build(size)){call}",
            "    " + catch,
            "            pass",
        ]
        tails = TailCache(
            full.format + "{}" + ("I" if u32 else "s"), "pack",
            unit=4 if u32 else 1, offset=base, most=max_size,
        )
    lines.append("    return _slow(msg)")
    namespace: dict[str, Any] = {"_pack": full.pack, "_error": struct.error, "_slow": slow}
    if tails is not None:
        namespace.update(_get=tails.get, _build=tails.build, _tails=tails)
    exec("\n".join(lines), namespace)  # generated from our own layout table
    encoder: Encoder = namespace["enc"]
    return encoder


def make_key_decoder(
    lay: Layout, header_fmt: str, has_token: bool, max_size: int, slow: Decoder
) -> Decoder | None:
    """Return a decoder specialised to messages of ``lay`` (None if none can fit).

    It is called with the whole buffer once its first two bytes have selected
    ``lay``, and does every check of the general path in one pass: one
    precompiled struct (header, fixed part and, for a layout with a tail, the
    tail of that message size) unpacks everything; the checks are only those
    that can fail for this key (``dev_num`` only for bus messages, the count
    against the tail only with a tail).  Anything unusual goes to ``slow``
    (the codec's general decoder), which raises the precise error.
    """
    full = struct.Struct("<" + header_fmt + lay.fmt.lstrip("<"))
    need = full.size
    if need > max_size:
        return None
    hs = struct.calcsize("<" + header_fmt)
    head = ["typ", "msg_id", "dev_num", *(["token"] if has_token else []), "size"]
    token = "token" if has_token else "0"
    bus = " and not dev_num" if lay.bus else ""
    limit = f" and size <= {max_size}" if max_size < 0xFFFF else ""  # msg_size is a u16
    nfixed = lay.nfixed
    fields = [f"f{i}" for i in range(len(lay.payload_fields))]
    namespace: dict[str, Any] = {
        "_error": struct.error,
        "_new": tuple.__new__,
        "_cls": lay.cls,
        "_slow": slow,
    }
    if lay.tail is Tail.NONE:
        namespace["_unpack"] = full.unpack_from
        lines = [
            "def dec(data):",
            "    try:",
            f"        {', '.join([*head, *fields])}, = _unpack(data)",
            "    except _error:",
            "        return _slow(data)",
            f"    if {need} <= size <= len(data){limit}{bus}:",
            f"        return _new(_cls, ({', '.join([*fields, 'dev_num', token])}))",
            "    return _slow(data)",
        ]
    else:
        u32 = lay.tail is Tail.U32_ARRAY
        tails = TailCache(
            full.format + "{}" + ("I" if u32 else "s"), "unpack_from",
            unit=4 if u32 else 1, offset=need, most=max_size,
        )
        namespace.update(_get=tails.get, _build=tails.build, _tails=tails)
        # msg_size is the header's last u16: read it first, it selects the struct.  A
        # buffer shorter than msg_size fails in the unpack (struct.error), a size no
        # message of this layout can have has no struct (calling None: TypeError).
        count = lay.count_index
        if u32:
            # The words are a variable number of values: slice them off.
            at = len(head)
            dev = f"v[{head.index('dev_num')}]"
            tok = f"v[{head.index('token')}]" if has_token else "0"
            fixed = ", ".join([*(f"v[{at + i}]" for i in range(nfixed)), f"v[{at + nfixed}:]"])
            target = "v"
            check = f"v[{at + count}] * 4 == size - {need}{bus.replace('dev_num', dev)}"
            result = f"({fixed}, {dev}, {tok})"
        else:
            target = f"{', '.join([*head, *fields])},"
            check = _count_ok(lay, f"f{count}", f"size - {need}") + bus
            result = f"({', '.join([*fields, 'dev_num', token])})"
        lines = [
            "def dec(data):",
            "    try:",
            f"        size = data[{hs - 2}] | data[{hs - 1}] << 8",
            f"        {target} = (_get(size) or _build(size))(data)",
            "    except (IndexError, TypeError, _error):",
            "        return _slow(data)",
            f"    if {check}:",
            f"        return _new(_cls, {result})",
            "    return _slow(data)",
        ]
    exec("\n".join(lines), namespace)  # generated from our own layout table
    decoder: Decoder = namespace["dec"]
    return decoder


def make_decoder(
    header_fmt: str,
    has_token: bool,
    max_size: int,
    by_key: dict[int, Layout],
    slow: Decoder,
) -> Decoder:
    """Return the decode function of one codec: fast for valid standard messages.

    The first two bytes (``type`` and ``msg_id``) select a decoder specialised
    to that message key; a key with none (unknown, implementation-defined, a
    response with the event bit set, too large for ``max_size``) and a buffer
    shorter than two bytes go to ``slow``.
    """
    # rows[type byte][msg_id]: the type byte's reserved bits select the same row.
    spaces: list[list[Decoder]] = [[slow] * 256 for _ in range(4)]
    for lay in by_key.values():
        if lay.response and lay.msg_id & 0x40:
            continue  # an event is never a response: the general path names the error
        dec = make_key_decoder(lay, header_fmt, has_token, max_size, slow)
        if dec is not None:
            spaces[lay.type_bits][lay.msg_id] = dec
    rows = [spaces[typ & 3] for typ in range(256)]

    def decode(data: Any) -> Any:
        try:
            dec = rows[data[0]][data[1]]
        except IndexError:
            return slow(data)
        return dec(data)

    return decode


def make_dispatch(encoders: dict[type, Encoder], slow: Encoder) -> Encoder:
    """Return ``encode(msg)``: the encoder of ``msg``'s class, else ``slow``.

    One dict lookup by class and one call; the specialised encoders fall
    back to ``slow`` themselves, so nothing is checked here.
    """

    def encode(msg: Any) -> bytes:
        try:
            enc = encoders[msg.__class__]
        except KeyError:
            return slow(msg)
        return enc(msg)

    return encode


__all__ = [
    "TAIL_STRUCTS",
    "Decoder",
    "Encoder",
    "TailCache",
    "make_decoder",
    "make_dispatch",
    "make_encoder",
    "make_key_decoder",
]
