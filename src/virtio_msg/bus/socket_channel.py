"""One backend connection of the socket channel, bus side: reading, sending, closing.

:class:`SocketChannel` is attached to the bus like the in-process channel; the
server (:mod:`virtio_msg.bus.socket`) accepts connections and makes one per
backend, and is this module's :class:`ChannelHost`.  A channel owns its
socket: the reader thread (or a requesting *leader* thread), the framing
checks of every datagram, the non-blocking send path with its bounded
backlog and writer, PING, and the teardown.  Events go to the server's pump
(:mod:`virtio_msg.bus.socket_pump`), ADD/REMOVE to the connection's control
worker (:mod:`virtio_msg.bus.socket_control`); the limits are in
:mod:`virtio_msg.bus.socket_limits`.  A capture on the bus records every datagram as
sent or received (before any check), the hang-up as an empty control frame.  See the
server module for the threads and why none of them can block the bus.
"""

from __future__ import annotations

import array
import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from typing import Protocol

import virtio_msg.spec as C
from virtio_msg.bus.capture import Direction, socket_tap
from virtio_msg.bus.loopback import LoopbackBus
from virtio_msg.bus.protocol import (
    MSG_ADD,
    MSG_REMOVE,
    Announcement,
    ControlRequest,
    Status,
    parse_control_request,
)
from virtio_msg.bus.socket_control import ControlWorker
from virtio_msg.bus.socket_limits import (
    JOIN_TIMEOUT,
    POLL_MS,
    READER_PARK_S,
    SocketLimits,
    TokenBucket,
    receive_error,
    send_error,
)
from virtio_msg.errors import BusError, MalformedMessage, TransportError, VirtioMsgError
from virtio_msg.wire import GenericMessage, Message
from virtio_msg.wire import spec as S

log = logging.getLogger(__name__)
BACKEND_CLOSED = "connection closed by the backend"

# socket's MSG_* are IntFlag members: ``flags & socket.MSG_TRUNC`` makes a new enum
# member (about a microsecond); the per-datagram checks use plain ints.
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
_WATCH = select.EPOLLIN | select.EPOLLONESHOT


class ChannelHost(Protocol):
    """What a connection needs of the server that accepted it."""

    bus: LoopbackBus
    limits: SocketLimits

    def queue_event(self, channel: SocketChannel, data: bytes) -> None:
        """Hand one validated event datagram to the event pump."""

    def forget(self, channel: SocketChannel, reason: str) -> None:
        """Drop a connection that has been torn down."""


class _PingWaiter:
    """The one PING in flight: completed by whichever thread reads its response.

    The thread that sends the PING usually reads the response itself (it leads
    the socket while it waits), so ``event`` is made only when the response has
    not arrived by the time :meth:`SocketChannel.deliver` returns; ``done`` and
    ``event`` change under the channel's waiter lock.
    """

    __slots__ = ("data", "done", "event", "token")

    def __init__(self, token: int, data: int) -> None:
        self.token = token
        self.data = data
        self.done = False
        self.event: threading.Event | None = None


# --- one connection ------------------------------------------------------------------------


class SocketChannel:
    """One backend connection: a :class:`~virtio_msg.bus.loopback.Channel` over a socket.

    Created by :class:`SocketServer` for each accepted connection.  ``name``
    identifies it in logs ("backend-3 (pid 1234)"); ``reason`` says why it
    closed, once it has.
    """

    def __init__(
        self, server: ChannelHost, sock: socket.socket, index: int, pid: int, uid: int
    ) -> None:
        """Wrap an accepted socket (the server calls :meth:`start`)."""
        self.server = server
        self.bus = server.bus
        self.limits = server.limits
        self.pid = pid
        self.uid = uid
        self.name = f"backend-{index} (pid {pid})"
        self._sock = sock
        self._fd = sock.fileno()
        params = self.bus.params
        self._rfc1 = params.rfc1
        self._size_at = 4 if params.rfc1 else 6
        self._max = params.max_size
        self._bufsize = params.max_size + 1  # one more byte detects oversize datagrams
        self._stall = (self.limits.stall_ms or params.timeout_ms) / 1000
        self.tap = socket_tap(self.bus.capture, params.profile, self._max, index)
        # Reading: the reader thread or one leader at a time, dispatching in order.
        self._rlock = threading.Lock()
        self._yield = threading.Condition()
        self._reader_waiting = False
        self._lead_key: bytes | None = None
        self._lead_bus = 0
        self._key_end = 4 if params.rfc1 else 6  # msg_id, dev_num (and token): the match
        self._lead_done = False
        self._lead_enabled = self.limits.lead_window_ms > 0
        # One-shot: the reader's watch disarms when it fires and is re-armed only after
        # the reader has read (so a leader pays no system call to keep it quiet).
        self._epoll = select.epoll()
        self._epoll.register(self._fd, _WATCH)
        # Writing: direct non-blocking sends, then a bounded backlog.
        self._send_lock = threading.Lock()
        self._send_cv = threading.Condition(self._send_lock)
        self._backlog: deque[bytes] = deque()
        self._writer: threading.Thread | None = None
        self._sock_closed = False
        # PING from the bus, one at a time.
        self._ping_lock = threading.Lock()
        self._ping: _PingWaiter | None = None
        self._wait_lock = threading.Lock()
        self._ping_token = 0
        # Accounting and limits.
        self.requests_sent = 0
        self.sent = 0
        """Datagrams written to the backend's socket after ANNOUNCE (requests, events, answers)."""
        self.responses_received = 0
        self.queued_events = 0
        self.malformed = 0
        self.received: Counter[str] = Counter()
        """Datagrams from the backend by kind (response, event, bus, control, malformed)."""
        self._bus_bucket = TokenBucket(self.limits.bus_message_rate, self.limits.bus_message_burst)
        self._event_bucket = TokenBucket(self.limits.event_rate, self.limits.event_burst)
        self._closing = False
        self.reason: str | None = None
        """Why the connection closed (None while open)."""
        self.violation = False
        """True if the bus disconnected the backend for breaking a rule."""
        self.closed = threading.Event()
        """Set once the connection is fully torn down."""
        self._reader = threading.Thread(
            target=self._read_loop, name=f"vmsg-backend-{index}-rx", daemon=True
        )
        self._control = ControlWorker(self, f"vmsg-backend-{index}-ctl")

    def __repr__(self) -> str:
        """Name and state."""
        state = f"closed: {self.reason}" if self.reason else "open"
        return f"<SocketChannel {self.name} {state}>"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the bus, send ANNOUNCE with the memfd, start reading."""
        rcvtimeo = max(self.limits.lead_window_ms / 1000, 0.000_001)
        self._sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", int(rcvtimeo), int(rcvtimeo % 1 * 1_000_000)),
        )
        announce = Announcement.for_bus(
            self.bus.params, self.bus.region.base, self.bus.region.size, self.limits.max_devices
        ).encode()
        fds = array.array("i", [self.bus.region.fd])  # RegionClosed if the bus is closed
        self.bus.attach(self)
        if self.tap is not None:
            self.tap.down(announce)
        try:
            self._sock.sendmsg(
                [announce], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT
            )
        except OSError as exc:
            self._fail(f"cannot send ANNOUNCE: {exc.strerror or exc}", violation=False)
        self._reader.start()

    def deliver(self, data: bytes) -> None:
        """Send one message to the backend (Channel); raise BusError if disconnected.

        A request (no response bit, not an event) makes the calling thread
        read the socket for its response if nobody else is (see the module
        docstring).
        """
        typ = data[0] if data else 0
        request = len(data) > 1 and not typ & C.TYPE_RESPONSE and (
            not data[1] & C.MSG_ID_EVENT
            # linux-rfc1 compatibility: the seed answers EVENT_AVAIL too
            or (self._rfc1 and not typ & C.TYPE_BUS and data[1] == C.TransportMsg.EVENT_AVAIL)
        )
        if not request or not self._lead_enabled or not self._rlock.acquire(blocking=False):
            self._send(data, request)
            return
        try:
            if self._sock_closed:  # torn down while we waited for nothing
                raise BusError(f"{self.name} is disconnected ({self.reason or 'closed'})")
            self._send(data, request)
            self._lead(data[1 : self._key_end], typ & C.TYPE_BUS)
        finally:
            self._rlock.release()
            # A reader parked behind leaders looks again within READER_PARK_S; it is
            # woken now only if a response someone else waits for may be unread.
            if self._reader_waiting and self.requests_sent > self.responses_received:
                with self._yield:
                    self._yield.notify()

    def close(self) -> None:
        """Disconnect the backend (Channel): the bus removes its devices."""
        self.disconnect("closed by the bus", violation=False)

    def disconnect(self, reason: str, *, violation: bool = True, wait: bool = True) -> None:
        """Close the connection with ``reason``; wait (bounded) for the teardown."""
        self._fail(reason, violation=violation)
        if wait and threading.current_thread() is not self._reader and self._reader.is_alive():
            self._reader.join(JOIN_TIMEOUT)

    @property
    def connected(self) -> bool:
        """True until the connection starts closing."""
        return not self._closing

    @property
    def submitted(self) -> int:
        """Datagrams written to the backend's socket or queued for it (after ANNOUNCE)."""
        with self._send_lock:
            return self.sent + len(self._backlog)

    def devices(self) -> list[int]:
        """Device numbers this connection serves."""
        return [e.dev_num for e in self.bus.devices() if e.channel is self]

    def ping(self, data: int = 0x5A5A5A5A, timeout: float | None = None) -> float:
        """Send a bus PING to the backend and return the round trip in seconds.

        Raises TransportError("timeout") if no matching response arrives in
        time (default: the bus's timeout).
        """
        limit = self.bus.params.timeout_ms / 1000 if timeout is None else timeout
        with self._ping_lock:
            self._ping_token = self._ping_token % 0xFFFF + 1
            token = 0 if self._rfc1 else self._ping_token
            waiter = self._ping = _PingWaiter(token, data & 0xFFFFFFFF)
            try:
                t0 = time.perf_counter()
                self.deliver(self.bus.adapter.encode(S.Ping(data & 0xFFFFFFFF, token=token)))
                if not waiter.done:  # the reader thread will complete it: wait for that
                    with self._wait_lock:
                        if not waiter.done:
                            waiter.event = threading.Event()
                    if waiter.event is not None and not waiter.event.wait(limit):
                        raise TransportError(
                            "timeout", f"{self.name}: no PING response within {limit:.3f} s"
                        )
                return time.perf_counter() - t0
            finally:
                self._ping = None

    # --- sending ------------------------------------------------------------------------

    def _send(self, data: bytes, request: bool = False) -> None:
        with self._send_lock:
            if self._sock_closed or self._closing:
                raise BusError(f"{self.name} is disconnected ({self.reason or 'closing'})")
            if request:
                self.requests_sent += 1
            if self.tap is not None:
                self.tap.down(data)
            if not self._backlog:
                try:
                    self._sock.send(data, _MSG_DONTWAIT)
                    self.sent += 1
                    return
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._fail_locked(send_error(exc), violation=False)
                    raise BusError(f"{self.name}: send failed: {exc.strerror or exc}") from None
            if len(self._backlog) >= self.limits.max_backlog:
                self._fail_locked(
                    f"not reading: {len(self._backlog)} messages queued for it", violation=True
                )
                raise BusError(f"{self.name} is not reading its socket")
            self._backlog.append(data)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name=f"{self._reader.name[:-3]}-tx", daemon=True
                )
                self._writer.start()
            self._send_cv.notify()

    def _write_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while True:
            with self._send_lock:
                while not self._backlog and not self._closing:
                    self._send_cv.wait(POLL_MS / 1000)
                if self._closing:
                    return
            if not poller.poll(self._stall * 1000):
                with self._send_lock:
                    self._fail_locked(
                        f"not reading: no progress for {self._stall * 1000:.0f} ms with "
                        f"{len(self._backlog)} messages queued",
                        violation=True,
                    )
                return
            with self._send_lock:
                while self._backlog and not self._sock_closed:
                    try:
                        self._sock.send(self._backlog[0], _MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        self._fail_locked(send_error(exc), violation=False)
                        return
                    self._backlog.popleft()
                    self.sent += 1

    # --- closing ------------------------------------------------------------------------

    def _fail(self, reason: str, *, violation: bool) -> None:
        with self._send_lock:
            self._fail_locked(reason, violation=violation)

    def _fail_locked(self, reason: str, *, violation: bool) -> None:
        if self.reason is None:
            self.reason = reason
            self.violation = violation
        self._closing = True
        if not self._sock_closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader and any leader
        self._send_cv.notify_all()

    def count_violation(self, what: str) -> None:
        """Count one malformed or unexpected datagram; too many disconnect (ControlOwner)."""
        self.malformed += 1
        self.received["malformed"] += 1
        log.debug("%s: %s", self.name, what)
        if self.malformed > self.limits.max_malformed:
            self._fail(
                f"sent {self.malformed} malformed or unexpected messages (last: {what})",
                violation=True,
            )

    def _teardown(self) -> None:
        reason = self.reason or "connection closed"
        if self.violation:
            log.warning("%s: %s disconnected: %s", self.bus.name, self.name, reason)
        else:
            log.info("%s: %s disconnected: %s", self.bus.name, self.name, reason)
        try:
            self.bus.detach(self, reason=f"lost its backend ({self.name}: {reason})")
        except Exception:
            log.exception("%s: detaching %s failed", self.bus.name, self.name)
        self._control.stop()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(JOIN_TIMEOUT)
        got_read = self._rlock.acquire(timeout=JOIN_TIMEOUT)  # no leader inside recv
        try:
            with self._send_lock:
                self._sock_closed = True
                self._backlog.clear()
                self._sock.close()
                self._epoll.close()
        finally:
            if got_read:
                self._rlock.release()
        if self.tap is not None:  # which side hung up first
            self.tap.end(Direction.TO_DRIVER if reason == BACKEND_CLOSED else Direction.TO_DEVICE)
        self.closed.set()
        self.server.forget(self, reason)

    # --- reading ------------------------------------------------------------------------

    def _lead(self, key: bytes, bus_bit: int) -> None:
        """Read and dispatch until the response with ``key`` arrives (read lock held).

        ``key`` is the request's header from msg_id up to the token (linux-rfc1:
        to dev_num), as bytes; the response carries the same bytes there, and
        ``bus_bit`` tells a bus response from a transport one.
        """
        if self._sock_closed:
            return
        self._lead_key = key
        self._lead_bus = bus_bit
        self._lead_done = False
        deadline = time.monotonic() + self.limits.lead_window_ms / 1000
        try:
            while not self._lead_done and not self._closing and time.monotonic() < deadline:
                try:  # blocks at most SO_RCVTIMEO (the lead window)
                    data, _anc, flags, _addr = self._sock.recvmsg(self._bufsize)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._fail(receive_error(exc), violation=False)
                    break
                if not data:
                    self._fail(BACKEND_CLOSED, violation=False)
                    break
                self._dispatch(data, flags)
        finally:
            self._lead_key = None

    def _read_loop(self) -> None:
        try:
            while not self._closing:
                if not self._epoll.poll(POLL_MS / 1000):
                    continue  # still armed: nothing arrived
                # The watch fired and is disarmed until re-armed below.
                while not self._closing and not self._rlock.acquire(blocking=False):
                    with self._yield:  # a leader is reading (it dispatches all it reads)
                        self._reader_waiting = True
                        self._yield.wait(READER_PARK_S)
                        self._reader_waiting = False
                if self._closing:
                    break
                try:
                    self._drain()
                finally:
                    self._rlock.release()
                with self._send_lock:  # the teardown closes the epoll under this lock
                    if self._sock_closed:
                        break
                    # EPOLL_CTL_MOD re-checks readiness: what arrived after the drain fires.
                    self._epoll.modify(self._fd, _WATCH)
        except Exception:  # pragma: no cover - a bug here must still tear down
            log.exception("%s: reader of %s failed", self.bus.name, self.name)
            self._fail("internal error in the reader", violation=False)
        finally:
            self._teardown()

    def _drain(self) -> None:
        for _ in range(64):  # bounded batch, then poll again
            if self._closing:
                return
            try:
                data, _anc, flags, _addr = self._sock.recvmsg(self._bufsize, 0, _MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(receive_error(exc), violation=False)
                return
            if not data:
                self._fail(BACKEND_CLOSED, violation=False)
                return
            self._dispatch(data, flags)

    def _dispatch(self, data: bytes, flags: int) -> None:
        """Validate the framing of one datagram and route it (called with the read lock)."""
        if self.tap is not None:
            self.tap.up(data)
        if flags & _MSG_CTRUNC:
            self._fail("sent file descriptors, which the channel never accepts", violation=True)
            return
        n = len(data)
        if n > self._max or flags & _MSG_TRUNC:
            self.count_violation(f"datagram larger than the maximum message size {self._max}")
            return
        hs = self._size_at + 2
        if n < hs:
            self.count_violation(f"datagram of {n} bytes is shorter than the header")
            return
        size = data[self._size_at] | data[self._size_at + 1] << 8
        if size != n:
            self.count_violation(f"msg_size {size} does not match the {n}-byte datagram")
            return
        typ = data[0]
        msg_id = data[1]
        if typ & C.TYPE_BUS:
            self._dispatch_bus(data, typ, msg_id)
        elif typ & C.TYPE_RESPONSE:
            self.responses_received += 1
            self.received["response"] += 1
            if self.responses_received > self.requests_sent + self.limits.max_unsolicited_responses:
                self._fail(
                    f"sent {self.responses_received - self.requests_sent} more responses "
                    "than it was asked for",
                    violation=True,
                )
                return
            self._to_bus(data)
            key = self._lead_key
            if key is not None and not self._lead_bus and key == data[1 : self._key_end]:
                self._lead_done = True
        elif msg_id & C.MSG_ID_EVENT:
            self._dispatch_event(data)
        else:
            self.count_violation(f"transport request {msg_id:#04x} from a backend")

    def _to_bus(self, data: bytes) -> None:
        try:
            self.bus.receive(data, self)
        except VirtioMsgError as exc:  # a reply could not be sent: we are closing
            log.debug("%s: %s", self.name, exc)

    def _decode(self, data: bytes) -> Message | None:
        try:
            return self.bus.adapter.decode(data)
        except MalformedMessage as exc:
            self.count_violation(str(exc))
            return None

    def _dispatch_event(self, data: bytes) -> None:
        msg = self._decode(data)
        if msg is None:
            return
        if type(msg) not in (S.EventUsed, S.EventConfig):
            self.count_violation(f"unexpected event {type(msg).__name__}")
            return
        self.received["event"] += 1
        if not self._event_bucket.take():
            self._fail(f"flooding: more than {self.limits.event_rate:.0f} events/s", violation=True)
            return
        if self.queued_events >= self.limits.max_queued_events:
            self._fail(f"flooding: {self.queued_events} events await dispatch", violation=True)
            return
        self.bus.note_event(msg, self)  # before a response read after it completes a waiter
        self.server.queue_event(self, data)

    def _dispatch_bus(self, data: bytes, typ: int, msg_id: int) -> None:
        msg = self._decode(data)
        if msg is None:
            return
        if typ & C.TYPE_RESPONSE:
            if type(msg) is S.PingResp:
                ping = self._ping
                if ping is not None and (msg.token, msg.data) == (ping.token, ping.data):
                    self.received["bus"] += 1
                    self.responses_received += 1
                    with self._wait_lock:
                        ping.done = True
                        if ping.event is not None:
                            ping.event.set()
                    key = self._lead_key
                    if key is not None and self._lead_bus and key == data[1 : self._key_end]:
                        self._lead_done = True
                    return
            self.count_violation(f"unexpected bus response {type(msg).__name__}")
            return
        if not self._bus_bucket.take():
            rate = self.limits.bus_message_rate
            self._fail(f"flooding: more than {rate:.0f} bus messages/s", violation=True)
            return
        if type(msg) is GenericMessage:
            if msg.msg_id not in (MSG_ADD, MSG_REMOVE):
                self.count_violation(f"unknown implementation-defined bus message {msg.msg_id:#x}")
                return
            try:
                req = parse_control_request(msg)
            except MalformedMessage as exc:
                self.count_violation(str(exc))
                with contextlib.suppress(VirtioMsgError):
                    bad = ControlRequest(msg.msg_id, 0, msg.token)
                    self.reply(bad, Status.INVALID)
                return
            self.received["control"] += 1
            self._control.submit(data, req)
        elif type(msg) is S.EventDevice:
            self.received["control"] += 1
            self._control.submit(data, None)
        elif type(msg) in (S.Ping, S.GetDevices):
            self.received["bus"] += 1
            self._to_bus(data)  # answered by the bus, inline
        else:
            self.count_violation(f"unexpected bus message {type(msg).__name__}")

    def reply(self, req: ControlRequest, status: Status) -> None:
        """Send the response to the ADD/REMOVE ``req`` (ControlOwner)."""
        self._send(self.bus.adapter.encode(req.response(status).to_message()))


__all__ = ["ChannelHost", "SocketChannel"]
