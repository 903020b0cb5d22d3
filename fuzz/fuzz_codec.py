"""Coverage-guided fuzz target for the wire codec, both profiles.

Every input is decoded by the ``spec`` and the ``linux-rfc1`` codecs (at the
default and the largest maximum size) and by the bus-edge adapter that
translates ``linux-rfc1`` into draft messages.  The property: decoding raises
:class:`~virtio_msg.errors.MalformedMessage` and nothing else; whatever
decodes re-encodes, and the re-encoded bytes decode to an equal message (so
encoder and decoder agree on every accepted input).  Run it with atheris
(``python3 fuzz/fuzz_codec.py -runs=N [corpus_dir]``, see docs/reliability.md);
:func:`one_input` is also called directly by the short CI test.
"""

from __future__ import annotations

import sys

from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec
from virtio_msg.wire.translate import WireAdapter

CODECS = (
    Codec("spec"),
    Codec("spec", 65535),
    Codec("linux-rfc1"),
    Codec("linux-rfc1", 65535),
)
ADAPTERS = (WireAdapter("spec"), WireAdapter("linux-rfc1"), WireAdapter("linux-rfc1", 65535))


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


def main() -> None:
    """Run the atheris fuzzer on :func:`one_input` (libFuzzer command-line flags)."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
