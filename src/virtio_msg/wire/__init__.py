"""The virtio-msg wire codec (no I/O).

Two profiles share one API: ``spec`` (the newest draft: 8-byte header with a
token) and ``linux-rfc1`` (the seed kernel's 6-byte header and payloads).
Message classes live in :mod:`virtio_msg.wire.spec` and
:mod:`virtio_msg.wire.rfc1`; :class:`Codec` encodes and strictly decodes them.
"""

from __future__ import annotations

from virtio_msg.wire import rfc1, spec
from virtio_msg.wire.codec import (
    Buffer,
    Codec,
    GenericMessage,
    Header,
    Message,
    Profile,
    profile_limits,
    with_header,
)
from virtio_msg.wire.jsonform import from_json, to_json

__all__ = [
    "Buffer",
    "Codec",
    "GenericMessage",
    "Header",
    "Message",
    "Profile",
    "from_json",
    "profile_limits",
    "rfc1",
    "spec",
    "to_json",
    "with_header",
]
