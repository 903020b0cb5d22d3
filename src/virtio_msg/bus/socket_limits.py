"""Limits and timing constants of the socket channel, shared by the server and its connections.

:class:`SocketLimits` bounds everything a backend controls on one connection
(queues, rates, malformed datagrams, backlog); :class:`TokenBucket` is the
rate limiter behind the rate limits.  The constants bound how long any thread
of the channel sleeps or waits for another.  Nothing here does I/O.
"""

from __future__ import annotations

import errno
import struct
import time
from dataclasses import dataclass
from typing import Final

POLL_MS: Final = 500
"""Longest a reader or acceptor sleeps in poll() before rechecking for shutdown."""
READER_PARK_S: Final = 0.001
"""How long a connection's reader waits behind a leader before it looks at the socket again.

Leaders dispatch everything they read, so this bounds only how late the reader
notices what arrived after the last leader of a burst stopped reading (an event;
a leader that stops with responses for other threads unread wakes it at once)."""
JOIN_TIMEOUT: Final = 5.0
"""Bound on waiting for a connection's threads when it closes, seconds."""
PEERCRED: Final = struct.Struct("3i")
"""Layout of SO_PEERCRED (pid, uid, gid)."""


@dataclass(frozen=True)
class SocketLimits:
    """Per-server and per-connection limits of the socket channel.

    Each is a bound on something a backend controls; exceeding one
    disconnects that backend with a logged reason (or, for queued ADD/REMOVE,
    answers BUSY).
    """

    max_connections: int = 16
    """Backends connected at once; more are refused at accept."""
    max_devices: int = 64
    """Device numbers one connection may serve (announced to the backend)."""
    max_malformed: int = 8
    """Malformed or unexpected datagrams tolerated per connection."""
    max_unsolicited_responses: int = 16
    """Responses beyond the requests sent to the connection (late ones included)."""
    max_backlog: int = 1024
    """Outgoing datagrams waiting for a backend that does not drain its socket."""
    stall_ms: int | None = None
    """How long a backlog may make no progress; None means the bus's timeout_ms."""
    max_control_queue: int = 16
    """ADD/REMOVE/EVENT_DEVICE waiting for the connection's worker; more get BUSY."""
    max_queued_events: int = 1024
    """Events of one connection waiting for the event pump."""
    bus_message_rate: float = 1000.0
    """Bus requests (PING, GET_DEVICES, ADD, REMOVE, EVENT_DEVICE) per second, sustained."""
    bus_message_burst: int = 200
    """Bus requests accepted in a burst."""
    event_rate: float = 50_000.0
    """Events (EVENT_USED, EVENT_CONFIG) per second, sustained."""
    event_burst: int = 5_000
    """Events accepted in a burst."""
    lead_window_ms: float = 10.0
    """How long a requesting thread reads the socket itself before handing over."""

    def __post_init__(self) -> None:
        """Reject limits that would make the channel unusable."""
        for name in (
            "max_connections",
            "max_devices",
            "max_backlog",
            "max_control_queue",
            "max_queued_events",
            "bus_message_burst",
            "event_burst",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"socket limit {name} must be at least 1")
        if self.max_devices > 0xFFFF:
            raise ValueError("socket limit max_devices must fit in 16 bits")
        if self.bus_message_rate <= 0 or self.event_rate <= 0 or self.lead_window_ms < 0:
            raise ValueError("socket rates must be positive and lead_window_ms non-negative")
        if self.stall_ms is not None and self.stall_ms <= 0:
            raise ValueError("socket limit stall_ms must be positive")


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        """Take one token; False if none is left (the caller is over its rate)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def receive_error(exc: OSError) -> str:
    """The disconnect reason for a failed receive (a reset is an orderly close)."""
    if exc.errno == errno.ECONNRESET:  # closed with unread data: still an orderly close
        return "connection closed by the backend"
    return f"receive failed: {exc.strerror or exc}"


def send_error(exc: OSError) -> str:
    """The disconnect reason for a failed send: a peer that is gone closed the connection.

    A backend that exits makes the bus's next receive *or* send fail, whichever
    comes first; both then give the same reason.
    """
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection closed by the backend"
    return f"send failed: {exc.strerror or exc}"


__all__ = [
    "JOIN_TIMEOUT",
    "PEERCRED",
    "POLL_MS",
    "SocketLimits",
    "TokenBucket",
    "receive_error",
    "send_error",
]
