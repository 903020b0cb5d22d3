"""The exception hierarchy.

Every error the package raises on purpose derives from :class:`VirtioMsgError`,
so a caller can catch the whole family.  Peer data that fails validation raises
a subclass that names what was wrong; nothing lets a raw ``struct.error``,
``IndexError`` or ``AssertionError`` escape.
"""

from __future__ import annotations


class VirtioMsgError(Exception):
    """Base class of every error raised by virtio_msg."""


class MalformedMessage(VirtioMsgError, ValueError):
    """A byte string is not a valid virtio-msg message.

    ``field`` names the header or payload field that was wrong (or ``None`` when
    the problem is the message as a whole); ``reason`` says what was wrong.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        """Record the reason and the offending field."""
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class EncodeError(VirtioMsgError, ValueError):
    """A message object cannot be encoded (a field out of range, too large for the bus)."""


class TransportError(VirtioMsgError):
    """A transport-visible failure: a request did not complete with a response.

    ``kind`` is one of ``"timeout"``, ``"unroutable"``, ``"oversize"``,
    ``"removed"``, ``"disconnected"``, ``"broken"`` or ``"protocol"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        """Record the kind of failure and a readable description."""
        super().__init__(message)
        self.kind = kind


class DeviceBroken(TransportError):
    """The device was marked broken for its driver after an earlier failure."""

    def __init__(self, message: str) -> None:
        """Describe why the device is unusable."""
        super().__init__("broken", message)


class MemoryAccessError(VirtioMsgError):
    """Base class of region and pool errors (bus-address access, allocation)."""


class VirtqueueError(VirtioMsgError):
    """Base class of virtqueue errors (ring contents violating the virtio rules)."""


class BusError(VirtioMsgError):
    """A loopback-bus operation failed (ADD/REMOVE, channel problems)."""


class ConfigError(VirtioMsgError):
    """Configuration (device tree, command line) is invalid."""
