"""The socket server's event pump: one thread that hands backend events to the bus.

A connection's reader must never block on a driver callback, so EVENT_USED
and EVENT_CONFIG datagrams it has validated are queued here (bounded per
connection by ``SocketLimits.max_queued_events``, counted in the channel's
``queued_events``) and dispatched in arrival order by the pump's thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol

from virtio_msg.bus.loopback import Channel, LoopbackBus
from virtio_msg.bus.socket_limits import JOIN_TIMEOUT, POLL_MS

log = logging.getLogger(__name__)


class PumpedChannel(Channel, Protocol):
    """What the pump needs of a connection."""

    bus: LoopbackBus
    name: str
    queued_events: int

    @property
    def connected(self) -> bool:
        """False once the connection started closing (its events are dropped)."""


class EventPump:
    """The server's one event-dispatch thread, fed by every connection's reader."""

    def __init__(self, name: str) -> None:
        self._queue: deque[tuple[PumpedChannel, bytes]] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"vmsg-{name}-events", daemon=True)
        self._thread.start()

    def put(self, channel: PumpedChannel, data: bytes) -> None:
        """Queue one event datagram of ``channel`` for dispatch."""
        with self._cv:
            channel.queued_events += 1
            self._queue.append((channel, data))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._busy = False
                if not self._queue:
                    self._cv.notify_all()  # wait_idle() callers
                while not self._queue and not self._stop:
                    self._cv.wait(POLL_MS / 1000)
                if not self._queue:
                    return
                channel, data = self._queue.popleft()
                channel.queued_events -= 1
                self._busy = True
            if not channel.connected:
                continue
            try:
                channel.bus.receive(data, channel)
            except Exception:
                log.exception("%s: event of %s failed", channel.bus.name, channel.name)

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no event is queued or being dispatched."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> None:
        """Stop the dispatch thread after the event in progress."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(JOIN_TIMEOUT)


__all__ = ["EventPump", "PumpedChannel"]
