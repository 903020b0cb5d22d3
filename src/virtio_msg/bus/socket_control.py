"""ADD, REMOVE and EVENT_DEVICE of one socket connection, executed off its reader.

ADD probes the device, and the probe waits for responses that the
connection's own reader must receive (the seed's ordering trap), so the
reader queues these requests here and a per-connection worker thread runs
them in order.  The queue is bounded (``SocketLimits.max_control_queue``):
an ADD or REMOVE beyond it is answered BUSY, an EVENT_DEVICE beyond it
counts as a violation.  :func:`execute` is the bus-side meaning of one
request, as a status code of the socket protocol.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from typing import Protocol

from virtio_msg.bus.loopback import Channel, LoopbackBus
from virtio_msg.bus.protocol import MSG_REMOVE, ControlRequest, Status, parse_control_request
from virtio_msg.bus.socket_limits import JOIN_TIMEOUT, POLL_MS, SocketLimits
from virtio_msg.errors import BusError, VirtioMsgError
from virtio_msg.wire import spec as S

log = logging.getLogger(__name__)


class ControlOwner(Channel, Protocol):
    """What the control worker needs of its connection."""

    bus: LoopbackBus
    name: str
    limits: SocketLimits

    @property
    def connected(self) -> bool:
        """False once the connection started closing."""

    def devices(self) -> list[int]:
        """Device numbers the connection serves."""

    def reply(self, req: ControlRequest, status: Status) -> None:
        """Send the response to ``req`` with ``status``."""

    def count_violation(self, what: str) -> None:
        """Count one malformed or unexpected message."""


def execute(owner: ControlOwner, req: ControlRequest) -> Status:
    """Carry out one ADD or REMOVE of ``owner`` on its bus; the status to answer."""
    bus = owner.bus
    if bus.closed or not owner.connected:
        return Status.CLOSED
    if req.op == MSG_REMOVE:
        entry = bus.device(req.dev_num)
        if entry is None:
            return Status.NOT_FOUND
        if entry.channel is not owner:
            return Status.NOT_OWNER
        try:
            bus.remove_device(req.dev_num, reason=f"was removed by {owner.name}")
        except BusError:
            return Status.NOT_FOUND  # removed concurrently
        return Status.OK
    if bus.device(req.dev_num) is not None:
        return Status.EXISTS
    if len(owner.devices()) >= owner.limits.max_devices:
        return Status.LIMIT
    try:
        added = bus.add_device(req.dev_num, owner)
    except BusError:
        if bus.closed or not owner.connected:
            return Status.CLOSED
        return Status.EXISTS
    if added.error is not None or added.driver is None:
        return Status.PROBE_FAILED
    return Status.OK


class ControlWorker:
    """The bounded control queue of one connection and its worker thread.

    The thread starts with the first request and ends when the connection
    closes (:meth:`stop`).
    """

    def __init__(self, owner: ControlOwner, thread_name: str) -> None:
        """Serve ``owner``'s control requests on a thread named ``thread_name``."""
        self._owner = owner
        self._thread_name = thread_name
        self._queue: deque[bytes] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, data: bytes, req: ControlRequest | None) -> None:
        """Queue one ADD/REMOVE (``req``) or EVENT_DEVICE (``req`` None) datagram."""
        owner = self._owner
        with self._cv:
            full = len(self._queue) >= owner.limits.max_control_queue
            if not full:
                self._queue.append(data)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name=self._thread_name, daemon=True
                    )
                    self._thread.start()
                self._cv.notify()
        if full:
            if req is None:
                owner.count_violation("EVENT_DEVICE while the control queue is full")
            else:
                with contextlib.suppress(VirtioMsgError):
                    owner.reply(req, Status.BUSY)

    def stop(self) -> None:
        """Drop what is queued and wait (bounded) for the request in progress."""
        with self._cv:
            self._queue.clear()
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)

    def _loop(self) -> None:
        owner = self._owner
        while True:
            with self._cv:
                while not self._queue and owner.connected:
                    self._cv.wait(POLL_MS / 1000)
                if not owner.connected:
                    return
                data = self._queue.popleft()
            try:
                msg = owner.bus.adapter.decode(data)
                if type(msg) is S.EventDevice:
                    owner.bus.receive(data, owner)  # the bus's own ADDED/REMOVED handling
                else:
                    req = parse_control_request(msg)
                    owner.reply(req, execute(owner, req))
            except VirtioMsgError as exc:
                log.debug("%s: control request not answered: %s", owner.name, exc)
            except Exception:
                log.exception("%s: control request of %s failed", owner.bus.name, owner.name)


__all__ = ["ControlOwner", "ControlWorker", "execute"]
