"""Coverage-guided fuzz target for the wire codec, both profiles and kernel-compat decoding.

Every input is decoded by the ``spec`` and the ``linux-rfc1`` codecs (at the
default and the largest maximum size), by the bus-edge adapter that
translates ``linux-rfc1`` into draft messages, and by that adapter in
kernel-compat mode (the documented rule for the real seed kernel's wrong
``msg_size``, :mod:`virtio_msg.wire.compat`).  The property: decoding raises
:class:`~virtio_msg.errors.MalformedMessage` and nothing else; whatever
decodes re-encodes, and the re-encoded bytes decode to an equal message (so
encoder and decoder agree on every accepted input).  Kernel-compat decoding
must equal strict decoding of the corrected frame, must never modify the
caller's buffer, and may accept more than the strict decoder only for a
request that is SET_DRV_FEATURES with ``msg_size`` 14 or SET_CONFIG with 18.
Run it with atheris (``python3 fuzz/fuzz_codec.py -runs=N [corpus_dir]``, see
docs/reliability.md); :func:`one_input` is also called directly by the short
CI test, with :data:`SEEDS` among its inputs.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from pathlib import Path


def _coverage() -> contextlib.AbstractContextManager[object]:
    """Under atheris, instrument only the code under test (instrument_all takes minutes)."""
    if __name__ != "__main__":
        return contextlib.nullcontext()
    import atheris

    packages = ["virtio_msg.wire", "virtio_msg.errors"]
    hook: contextlib.AbstractContextManager[object] = atheris.instrument_imports(packages)
    return hook


with _coverage():
    from virtio_msg.errors import EncodeError, MalformedMessage
    from virtio_msg.spec import TransportMsg
    from virtio_msg.wire import Codec
    from virtio_msg.wire.codec import Message
    from virtio_msg.wire.compat import KERNEL_FRAME_SIZE, kernel_frame
    from virtio_msg.wire.translate import WireAdapter

CODECS = (
    Codec("spec"),
    Codec("spec", 65535),
    Codec("linux-rfc1"),
    Codec("linux-rfc1", 65535),
)
ADAPTERS = (
    WireAdapter("spec"),
    WireAdapter("linux-rfc1"),
    WireAdapter("linux-rfc1", 65535),
    WireAdapter("linux-rfc1", kernel_compat=True),
    WireAdapter("linux-rfc1", 65535, kernel_compat=True),
)
COMPAT_PAIRS = tuple(
    (WireAdapter("linux-rfc1", size), WireAdapter("linux-rfc1", size, kernel_compat=True))
    for size in (None, 65535)
)
SEED_CASES = {
    int(TransportMsg.SET_DRIVER_FEATURES): 14,
    int(TransportMsg.SET_CONFIG): 18,
}
"""msg_id -> the wrong ``msg_size`` the seed kernel writes (the only sizes compat corrects)."""


def _seed_frame(msg_id: int, size: int, fields: tuple[int, ...], tail: bytes) -> bytes:
    frame = bytearray(KERNEL_FRAME_SIZE)
    struct.pack_into(f"<BBHH{len(fields)}I", frame, 0, 0, msg_id, 1, size, *fields)
    at = 6 + 4 * len(fields)
    frame[at : at + len(tail)] = tail
    return bytes(frame)


SEEDS = (
    _seed_frame(TransportMsg.SET_DRIVER_FEATURES, 14, (0, 2), struct.pack("<II", 0, 3)),
    _seed_frame(TransportMsg.SET_CONFIG, 18, (7, 4, 2), b"\xab\xcd"),
    _seed_frame(TransportMsg.SET_DRIVER_FEATURES, 14, (0, 7), b""),  # words past the frame
    _seed_frame(TransportMsg.SET_CONFIG, 18, (0, 0, 0xFFFFFFFF), b""),
)
"""Frames shaped like the real kernel's (44 bytes, wrong ``msg_size``): a starting corpus."""


def _decode(adapter: WireAdapter, data: bytes) -> Message | None:
    try:
        return adapter.decode(data)
    except MalformedMessage:
        return None


def _check_compat(data: bytes) -> None:
    for strict, compat in COMPAT_PAIRS:
        buf = bytearray(data)
        fixed = kernel_frame(buf)
        if buf != data:
            raise AssertionError("kernel_frame modified the caller's buffer")
        loose = _decode(compat, data)
        if loose != _decode(strict, bytes(fixed)):
            raise AssertionError(f"compat decoding differs from strict decoding of {fixed!r}")
        if loose is None or _decode(strict, data) is not None:
            continue
        size = int.from_bytes(data[4:6], "little")
        if data[0] != 0 or SEED_CASES.get(data[1]) != size:
            raise AssertionError(f"compat accepted {data.hex()} outside the documented rule")


def one_input(data: bytes) -> None:
    """Decode ``data`` in every profile; fail on any other exception or a round-trip mismatch."""
    for codec in CODECS:
        try:
            msg = codec.decode(data)
        except MalformedMessage:
            continue
        again = codec.decode(codec.encode(msg))
        if again != msg:
            raise AssertionError(f"{codec!r}: {msg!r} re-decoded as {again!r}")
    for adapter in ADAPTERS:
        try:
            draft = adapter.decode(data)
        except MalformedMessage:
            continue
        try:
            back = adapter.encode(draft)
        except EncodeError:
            continue  # a draft message the seed cannot express (documented refusal)
        if adapter.decode(back) != draft:
            raise AssertionError(f"{adapter.codec!r}: {draft!r} does not survive the adapter")
    _check_compat(data)


def write_seeds(corpus: Path) -> None:
    """Write :data:`SEEDS` into the corpus folder ``corpus`` (created if missing)."""
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (corpus / f"kernel-{i}").write_bytes(seed)


def main() -> None:
    """Run the atheris fuzzer on :func:`one_input` (libFuzzer command-line flags).

    The first folder argument, if any, is the corpus; :data:`SEEDS` are added to it.
    """
    import atheris

    folders = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if folders:
        write_seeds(folders[0])

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
