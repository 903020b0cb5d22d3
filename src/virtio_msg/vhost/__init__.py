"""Serve virtio-msg devices from external vhost-user back ends.

This package sits above the bus (it opens sockets, eventfds and a watcher
thread): :class:`VhostUserDevice` is a device model whose queues are processed
by a vhost-user back end such as qemu-storage-daemon, virtiofsd or DPDK's
``net_vhost``; :class:`VhostUserFrontend` is the connection;
:mod:`virtio_msg.vhost.protocol` the message codec with strict reply checks;
:mod:`virtio_msg.vhost.profiles` what the front end must know per device type.
See ``docs/vhost-user.md``.
"""

from __future__ import annotations

from virtio_msg.vhost.device import DEFAULT_QUEUE_SIZE, VhostUserDevice
from virtio_msg.vhost.frontend import VhostUserFrontend
from virtio_msg.vhost.profiles import PROFILES, DeviceProfile, OptionError, infer_type
from virtio_msg.vhost.protocol import (
    ProtocolFeature,
    Request,
    VhostUserDisconnected,
    VhostUserError,
    VhostUserProtocolError,
    VhostUserRefused,
    VhostUserTimeout,
)

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "PROFILES",
    "DeviceProfile",
    "OptionError",
    "ProtocolFeature",
    "Request",
    "VhostUserDevice",
    "VhostUserDisconnected",
    "VhostUserError",
    "VhostUserFrontend",
    "VhostUserProtocolError",
    "VhostUserRefused",
    "VhostUserTimeout",
    "infer_type",
]
