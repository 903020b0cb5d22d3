"""What the front end must know per device type, because vhost-user cannot say it.

Strategy.  A vhost-user back end reports feature bits, protocol features and a
queue count, but not its device type, its config-space size, which config
bytes a driver may write, or which of its feature bits only make sense to a
hypervisor.  QEMU keeps that knowledge in one front-end class per type
(``vhost-user-blk``, ``vhost-user-net``, ``vhost-user-fs``); here it is one
:class:`DeviceProfile` per type, as data.

Feature bits are filtered by an *allow list*, never a block list: a bit the
front end does not know to be a pure data-path feature of the back end is not
offered to the driver.  That keeps out the vhost-only bits (PROTOCOL_FEATURES,
LOG_ALL), legacy ones (NOTIFY_ON_EMPTY, ANY_LAYOUT), packed rings (the
transport's queues are split), NOTIFICATION_DATA (a kick eventfd carries no
data), the back end's ACCESS_PLATFORM (it would expect IOTLB messages; here
ring and buffer addresses are the region's own addresses, already valid for
the back end) and features whose work QEMU does in the front end (virtio-net's
control queue, MQ and announce).  Features the front end implements itself
(virtio-net's MAC and STATUS from a config space it builds) are offered to the
driver and never sent to the back end.

The device type is given by the user, or inferred from the back end's own
command line (SO_PEERCRED gives its pid) when it is a program we know.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_ORDER_PLATFORM,
    VIRTIO_F_VERSION_1,
    DeviceId,
)

__all__ = [
    "BLK_CONFIG_SIZE",
    "COMMON_FEATURES",
    "FS_TAG_SIZE",
    "NET_MAC_SIZE",
    "PROFILES",
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_STATUS",
    "VIRTIO_NET_S_LINK_UP",
    "DeviceProfile",
    "OptionError",
    "fs_config",
    "infer_type",
    "mask",
    "net_config",
    "parse_mac",
    "profile",
    "random_mac",
]


def mask(*bits: int) -> int:
    """The feature mask with the given bit numbers set."""
    out = 0
    for bit in bits:
        out |= 1 << bit
    return out


COMMON_FEATURES: Final = mask(
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_ORDER_PLATFORM,
)
"""Ring-layout features a back end implements on the shared rings (any type)."""

BLK_CONFIG_SIZE: Final = 60
"""``struct virtio_blk_config`` up to ``unused1`` (what QEMU 7.2's back ends accept)."""
BLK_WCE_OFFSET: Final = 32
"""``writeback``: the one byte a driver may write (with VIRTIO_BLK_F_CONFIG_WCE)."""
BLK_NUM_QUEUES_OFFSET: Final = 34
"""``num_queues``: set by the front end to the queues it exposes (as QEMU does)."""

VIRTIO_NET_F_MAC: Final = 5
VIRTIO_NET_F_STATUS: Final = 16
VIRTIO_NET_S_LINK_UP: Final = 1
NET_MAC_SIZE: Final = 6
NET_CONFIG: Final = struct.Struct("<6sHH")
"""mac, status, max_virtqueue_pairs: the part of ``virtio_net_config`` the front end builds."""

FS_TAG_SIZE: Final = 36
FS_CONFIG: Final = struct.Struct("<36sI")
"""tag, num_request_queues: ``struct virtio_fs_config`` without the notification field."""


class OptionError(ValueError):
    """A device option (MAC, tag, queue count) is invalid."""


@dataclass(frozen=True)
class DeviceProfile:
    """Front-end knowledge about one device type (see the module docstring)."""

    name: str
    device_id: int
    backend_features: int
    """Device-specific bits passed through from the back end (plus COMMON_FEATURES)."""
    frontend_features: int = 0
    """Bits the front end implements itself: offered, never sent to the back end."""
    backend_config_size: int = 0
    """Config bytes read from the back end with GET_CONFIG (0: the front end builds them)."""
    writable_config: tuple[tuple[int, int], ...] = ()
    """(offset, length) ranges a driver may write; forwarded with SET_CONFIG."""
    programs: tuple[str, ...] = ()
    """Back-end program names (argv[0] basename) that serve this type."""
    markers: tuple[str, ...] = field(default=())
    """Command-line substrings that identify this type in a generic program."""

    def queues_for(self, backend_queue_num: int, requested: int | None) -> int:
        """Number of virtqueues to expose, from GET_QUEUE_NUM and the user's wish."""
        if self.name == "net":
            return 2  # one RX/TX pair: MQ needs the control queue, which is not offered
        if self.name == "fs":
            request_queues = min(requested or 1, backend_queue_num - 1)
            if request_queues < 1:
                raise OptionError(
                    f"virtio-fs back end offers {backend_queue_num} queue(s); it needs a "
                    "high-priority queue and at least one request queue"
                )
            return 1 + request_queues
        count = min(requested or backend_queue_num, backend_queue_num)
        if count < 1:
            raise OptionError(f"{self.name}: at least one queue is needed")
        return count


VIRTIO_BLK_FEATURES: Final = mask(1, 2, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16)
"""SIZE_MAX, SEG_MAX, GEOMETRY, RO, BLK_SIZE, FLUSH, TOPOLOGY, CONFIG_WCE, MQ, DISCARD,
WRITE_ZEROES, LIFETIME, SECURE_ERASE."""
VIRTIO_NET_FEATURES: Final = mask(0, 1, 7, 8, 9, 10, 11, 12, 13, 14, 15)
"""CSUM, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO, HOST_TSO4/6, HOST_ECN,
HOST_UFO, MRG_RXBUF: data-path work the back end does on the rings."""

PROFILES: Final[dict[str, DeviceProfile]] = {
    p.name: p
    for p in (
        DeviceProfile(
            "blk",
            DeviceId.BLOCK,
            VIRTIO_BLK_FEATURES,
            backend_config_size=BLK_CONFIG_SIZE,
            writable_config=((BLK_WCE_OFFSET, 1),),
            programs=("qemu-storage-daemon", "vhost-user-blk", "vhost-device-blk"),
            markers=("vhost-user-blk",),
        ),
        DeviceProfile(
            "net",
            DeviceId.NET,
            VIRTIO_NET_FEATURES,
            frontend_features=mask(VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS),
            programs=("dpdk-testpmd", "vhost-user-net", "dpdk-vhost"),
            markers=("net_vhost",),
        ),
        DeviceProfile(
            "fs",
            DeviceId.FS,
            0,
            programs=("virtiofsd",),
        ),
    )
}
"""Supported device types by short name."""


def profile(name: str) -> DeviceProfile:
    """The profile of type ``name``; OptionError names the supported types."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise OptionError(f"vhost-user device type {name!r} is not supported ({known})") from None


# --- config spaces the front end builds -------------------------------------------------------


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` -> 6 bytes; OptionError if malformed or multicast."""
    parts = text.replace("-", ":").split(":")
    try:
        if len(parts) != NET_MAC_SIZE or any(len(p) != 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise OptionError(f"{text!r} is not a MAC address like 52:54:00:12:34:56") from None
    if mac[0] & 1:
        raise OptionError(f"{text} is a multicast address; a NIC needs a unicast one")
    return mac


def random_mac() -> bytes:
    """A random locally administered unicast MAC (QEMU's 52:54:00 prefix is not ours)."""
    raw = bytearray(os.urandom(NET_MAC_SIZE))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def net_config(mac: bytes, link_up: bool = True) -> bytes:
    """``virtio_net_config``: mac, status, max_virtqueue_pairs = 1."""
    if len(mac) != NET_MAC_SIZE:
        raise OptionError("a MAC address has 6 bytes")
    return NET_CONFIG.pack(mac, VIRTIO_NET_S_LINK_UP if link_up else 0, 1)


def fs_config(tag: str, request_queues: int) -> bytes:
    """``virtio_fs_config``: a NUL-padded UTF-8 tag of 1..36 bytes and the queue count."""
    raw = tag.encode()
    if not 1 <= len(raw) <= FS_TAG_SIZE or b"\0" in raw:
        raise OptionError(f"virtio-fs tag {tag!r} must be 1..{FS_TAG_SIZE} bytes without NUL")
    return FS_CONFIG.pack(raw, request_queues)


# --- inferring the type from the back end's process --------------------------------------------


def _read_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(64 * 1024)
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def infer_type(
    pid: int | None, read_cmdline: Callable[[int], list[str] | None] = _read_cmdline
) -> str | None:
    """The device type served by process ``pid``, if its command line is one we know.

    A program that serves one type (virtiofsd) decides by name; a generic one
    (qemu-storage-daemon, testpmd) also needs its type marker on the command
    line (``vhost-user-blk``, ``net_vhost``).  None when unknown.
    """
    if pid is None:
        return None
    argv = read_cmdline(pid)
    if not argv:
        return None
    program = os.path.basename(argv[0])
    text = " ".join(argv)
    for p in PROFILES.values():
        if program not in p.programs:
            continue
        if not p.markers or any(m in text for m in p.markers):
            return p.name
    for p in PROFILES.values():  # unknown program name: a marker alone still decides
        if p.markers and any(m in text for m in p.markers):
            return p.name
    return None
