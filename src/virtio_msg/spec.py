"""Constants of the virtio-msg transport and the core virtio specification.

One module holds every number the protocol defines, so that message ids, status
bits and limits are named once and imported everywhere else.  Values come from
the newest virtio-msg draft (``transport-msg.tex``) and the core virtio text;
the seed's Linux RFC v1 values that differ are prefixed ``RFC1_``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final

# --- Header ------------------------------------------------------------------

TYPE_RESPONSE: Final = 0x01
"""``type`` bit 0: the message is a response."""
TYPE_BUS: Final = 0x02
"""``type`` bit 1: the message is a bus message (own ``msg_id`` namespace)."""
TYPE_RESERVED_MASK: Final = 0xFC
"""``type`` bits 2-7 are reserved: sent as 0, ignored on receive."""

MSG_ID_EVENT: Final = 0x40
"""``msg_id`` bit 6: the id names an event (one-way, never answered)."""
MSG_ID_IMPL: Final = 0x80
"""``msg_id`` bit 7: the id is implementation-defined (bus-specific)."""

SPEC_HEADER_SIZE: Final = 8
"""Newest draft: type, msg_id, dev_num, token, msg_size."""
RFC1_HEADER_SIZE: Final = 6
"""Seed kernel (Linux RFC v1): type, msg_id, dev_id, msg_size; no token."""

REVISION_1: Final = 1
"""The only transport revision defined."""

SPEC_MIN_MAX_SIZE: Final = 52
"""Smallest maximum message size a bus may advertise: 8-byte header + 44-byte DEVICE_INFO."""
SPEC_MAX_MAX_SIZE: Final = 65535
"""``msg_size`` is a le16, so no message can be larger."""
SPEC_DEFAULT_MAX_SIZE: Final = 264
"""The size the spec recommends not to exceed (SHOULD NOT advertise more)."""
RFC1_MIN_SIZE: Final = 44
"""The seed kernel's VIRTIO_MSG_MIN_SIZE: every buffer it moves is 44 bytes."""
RFC1_MAX_SIZE: Final = 65535
"""The seed says 65536, but ``msg_size`` is a le16: 65535 is the real ceiling."""


class TransportMsg(IntEnum):
    """Standard transport ``msg_id`` values (requests 0x02-0x0C, events 0x40-0x42)."""

    GET_DEVICE_INFO = 0x02
    GET_DEVICE_FEATURES = 0x03
    SET_DRIVER_FEATURES = 0x04
    GET_CONFIG = 0x05
    SET_CONFIG = 0x06
    GET_DEVICE_STATUS = 0x07
    SET_DEVICE_STATUS = 0x08
    GET_VQUEUE = 0x09
    SET_VQUEUE = 0x0A
    RESET_VQUEUE = 0x0B
    GET_SHM = 0x0C
    EVENT_CONFIG = 0x40
    EVENT_AVAIL = 0x41
    EVENT_USED = 0x42


class BusMsg(IntEnum):
    """Standard bus ``msg_id`` values."""

    GET_DEVICES = 0x02
    PING = 0x03
    EVENT_DEVICE = 0x40


class DeviceBusState(IntEnum):
    """``device_bus_state`` of BUS_MSG_EVENT_DEVICE."""

    ADDED = 0x0001
    REMOVED = 0x0002


# Transport feature bits (bus-instance options, never in device feature blocks).
VIRTIO_MSG_F_STRICT_CONFIG_GENERATION: Final = 1 << 0
"""Transport feature bit 0: the strict configuration-generation profile."""


class Status(IntFlag):
    """Core virtio device status bits (8 significant bits of a le32 on the wire)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    SUSPEND = 16
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


# Core feature bits (bit numbers).
VIRTIO_F_INDIRECT_DESC: Final = 28
VIRTIO_F_EVENT_IDX: Final = 29
VIRTIO_F_VERSION_1: Final = 32
VIRTIO_F_ACCESS_PLATFORM: Final = 33
VIRTIO_F_RING_PACKED: Final = 34
VIRTIO_F_IN_ORDER: Final = 35
VIRTIO_F_ORDER_PLATFORM: Final = 36
VIRTIO_F_SR_IOV: Final = 37
VIRTIO_F_NOTIFICATION_DATA: Final = 38
VIRTIO_F_NOTIF_CONFIG_DATA: Final = 39
"""Not supported by virtio-msg: a device never offers it, a driver never negotiates it."""
VIRTIO_F_RING_RESET: Final = 40
VIRTIO_F_ADMIN_VQ: Final = 41
VIRTIO_F_SUSPEND: Final = 43

FEATURE_NAMES: Final[dict[int, str]] = {
    VIRTIO_F_INDIRECT_DESC: "INDIRECT_DESC",
    VIRTIO_F_EVENT_IDX: "EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
    VIRTIO_F_ACCESS_PLATFORM: "ACCESS_PLATFORM",
    VIRTIO_F_RING_PACKED: "RING_PACKED",
    VIRTIO_F_IN_ORDER: "IN_ORDER",
    VIRTIO_F_ORDER_PLATFORM: "ORDER_PLATFORM",
    VIRTIO_F_SR_IOV: "SR_IOV",
    VIRTIO_F_NOTIFICATION_DATA: "NOTIFICATION_DATA",
    VIRTIO_F_NOTIF_CONFIG_DATA: "NOTIF_CONFIG_DATA",
    VIRTIO_F_RING_RESET: "RING_RESET",
    VIRTIO_F_ADMIN_VQ: "ADMIN_VQ",
    VIRTIO_F_SUSPEND: "SUSPEND",
}
"""Short names of the transport-independent feature bits, for summaries."""

# SET_VQUEUE flags (newest draft).
VQ_OP_MASK: Final = 0x3
VQ_OP_KEEP_DISABLED: Final = 0
VQ_OP_ENABLE: Final = 1
VQ_OP_KEEP: Final = 2
VQ_OP_RESERVED: Final = 3
VQ_SIZE_IGNORE: Final = 1 << 2
VQ_DESC_IGNORE: Final = 1 << 3
VQ_DRIVER_IGNORE: Final = 1 << 4
VQ_DEVICE_IGNORE: Final = 1 << 5
VQ_FLAGS_RESERVED_MASK: Final = 0xFFFFFFC0
VQ_ENABLED: Final = 1 << 0
"""GET_VQUEUE ``flags`` bit 0: the queue is enabled."""

VQ_MAX_SIZE: Final = 32768
"""Core limit on the number of descriptors of a split queue."""
MAX_VIRTQUEUES: Final = 65536
"""GET_DEVICE_INFO ``max_virtqueues`` may not exceed this."""


class DeviceId(IntEnum):
    """Virtio device types (the ``device_id`` of GET_DEVICE_INFO)."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4
    FS = 26
    I2C = 34


DEVICE_TYPE_NAMES: Final[dict[int, str]] = {
    DeviceId.NET: "net",
    DeviceId.BLOCK: "blk",
    DeviceId.CONSOLE: "console",
    DeviceId.ENTROPY: "rng",
    DeviceId.FS: "fs",
    DeviceId.I2C: "i2c",
}
"""Short device type names used in summaries and on the command line."""


DEVICE_FEATURE_NAMES: Final[dict[int, dict[int, str]]] = {
    DeviceId.NET: {0: "CSUM", 1: "GUEST_CSUM", 5: "MAC", 16: "STATUS", 17: "CTRL_VQ", 22: "MQ"},
    DeviceId.BLOCK: {
        1: "SIZE_MAX",
        2: "SEG_MAX",
        4: "GEOMETRY",
        5: "RO",
        6: "BLK_SIZE",
        9: "FLUSH",
        10: "TOPOLOGY",
        11: "CONFIG_WCE",
        12: "MQ",
        13: "DISCARD",
        14: "WRITE_ZEROES",
    },
    DeviceId.CONSOLE: {0: "SIZE", 1: "MULTIPORT", 2: "EMERG_WRITE"},
    DeviceId.I2C: {0: "ZERO_LENGTH_REQUEST"},
}
"""Names of device-type feature bits (bits 0-23), for summaries."""


def feature_bit(bit: int) -> int:
    """Return the feature mask for feature bit number ``bit``."""
    return 1 << bit


def feature_names(features: int, device_id: int = 0) -> list[str]:
    """Readable names of the feature bits set in ``features`` (device type aware)."""
    table = {**DEVICE_FEATURE_NAMES.get(device_id, {}), **FEATURE_NAMES}
    names = [name for bit, name in sorted(table.items()) if features >> bit & 1]
    other = features & ~sum(1 << bit for bit in table)
    if other:
        names.append(f"device:{other:#x}")
    return names
