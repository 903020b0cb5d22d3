"""Kernel compatibility for the ``linux-rfc1`` profile: what the seed kernel really sends.

The strict decoder trusts ``msg_size``.  The seed kernel does not always tell
the truth there (linux-rfc1.md section 5, defect 22): its SET_DRV_FEATURES
request says ``msg_size`` 14 although its two feature words lie at bytes
14..21 of the 44-byte buffer, and its SET_CONFIG says 18 whatever the length
of the data that follows.  Every request arrives as a fixed 44-byte frame
whose bytes after ``msg_size`` are stale residue of earlier requests
(defect 26): those are ignored by the strict decoder already.

The compatibility rule, and nothing more: for a *request* (type byte 0x00)
with msg_id SET_DRV_FEATURES and ``msg_size`` exactly 14, or msg_id
SET_CONFIG and ``msg_size`` exactly 18, the true size is computed from the
fields the kernel wrote (``num`` feature words, ``size`` config bytes); when
that many bytes lie inside the frame, the frame is decoded as if ``msg_size``
said so.  Anything else, a frame too short to hold the count field, and a
claimed size past the frame, goes to the strict decoder unchanged (and is
rejected there if it is wrong).
"""

from __future__ import annotations

import struct
from typing import Final

from virtio_msg.spec import TransportMsg
from virtio_msg.wire.codec import Buffer

__all__ = ["KERNEL_FRAME_SIZE", "SEED_SET_CONFIG_SIZE", "SEED_SET_FEATURES_SIZE", "kernel_frame"]

KERNEL_FRAME_SIZE: Final = 44
"""Every message the seed kernel reads or writes is a 44-byte buffer (VIRTIO_MSG_MIN_SIZE)."""
SEED_SET_FEATURES_SIZE: Final = 14
"""The ``msg_size`` the seed writes in SET_DRV_FEATURES (header + index + num, no words)."""
SEED_SET_CONFIG_SIZE: Final = 18
"""The ``msg_size`` the seed writes in SET_CONFIG (header + generation, offset, size, no data)."""
_HEADER: Final = 6
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")


def kernel_frame(data: Buffer) -> Buffer:
    """Return ``data`` with the seed's wrong ``msg_size`` corrected, or ``data`` unchanged.

    Only the two documented cases are touched (see the module docstring); the
    result is a new ``bytes`` object when corrected, so the caller's buffer is
    never modified.
    """
    n = len(data)
    if n < _HEADER or data[0] != 0x00:
        return data
    msg_id = data[1]
    (size,) = _U16.unpack_from(data, 4)
    if msg_id == TransportMsg.SET_DRIVER_FEATURES and size == SEED_SET_FEATURES_SIZE:
        count_at, scale = _HEADER + 4, 4
    elif msg_id == TransportMsg.SET_CONFIG and size == SEED_SET_CONFIG_SIZE:
        count_at, scale = _HEADER + 8, 1
    else:
        return data
    if n < count_at + 4:  # the count itself is not in the frame: strict decoder says why
        return data
    (count,) = _U32.unpack_from(data, count_at)
    true_size = size + scale * count
    if true_size == size or true_size > n:
        return data
    fixed = bytearray(data)
    _U16.pack_into(fixed, 4, true_size)
    return bytes(fixed)
