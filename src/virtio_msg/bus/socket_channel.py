"""One backend connection of the socket channel (bus side), and its limits.

:class:`SocketChannel` is attached to the bus like the in-process channel; the
server (:mod:`virtio_msg.bus.socket`) accepts connections and makes one per
backend.  See that module for the threads and why none of them can block the
bus; :class:`SocketLimits` bounds every queue and rate of a connection.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import virtio_msg.spec as C
from virtio_msg.bus.protocol import (
    MSG_ADD,
    MSG_REMOVE,
    Announcement,
    ControlRequest,
    Status,
    parse_control_request,
)
from virtio_msg.errors import BusError, MalformedMessage, TransportError, VirtioMsgError
from virtio_msg.wire import GenericMessage, Message
from virtio_msg.wire import spec as S

if TYPE_CHECKING:
    from virtio_msg.bus.socket import SocketServer

log = logging.getLogger(__name__)

POLL_MS: Final = 500
"""Longest a reader or acceptor sleeps in poll() before rechecking for shutdown."""
JOIN_TIMEOUT: Final = 5.0
"""Bound on waiting for a connection's threads when it closes, seconds."""
_PEERCRED: Final = struct.Struct("3i")


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


class _TokenBucket:
    """Rate limiter: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _receive_error(exc: OSError) -> str:
    if exc.errno == errno.ECONNRESET:  # closed with unread data: still an orderly close
        return "connection closed by the backend"
    return f"receive failed: {exc.strerror or exc}"


# --- one connection ------------------------------------------------------------------------


class SocketChannel:
    """One backend connection: a :class:`~virtio_msg.bus.loopback.Channel` over a socket.

    Created by :class:`SocketServer` for each accepted connection.  ``name``
    identifies it in logs ("backend-3 (pid 1234)"); ``reason`` says why it
    closed, once it has.
    """

    def __init__(
        self, server: SocketServer, sock: socket.socket, index: int, pid: int, uid: int
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
        # Reading: the reader thread or one leader at a time, dispatching in order.
        self._rlock = threading.Lock()
        self._yield = threading.Condition()
        self._reader_waiting = False
        self._lead_key: tuple[int, int, int, int] | None = None
        self._lead_done = False
        self._lead_enabled = self.limits.lead_window_ms > 0
        self._epoll = select.epoll()
        self._epoll.register(self._fd, select.EPOLLIN)
        # Writing: direct non-blocking sends, then a bounded backlog.
        self._send_lock = threading.Lock()
        self._send_cv = threading.Condition(self._send_lock)
        self._backlog: deque[bytes] = deque()
        self._writer: threading.Thread | None = None
        self._sock_closed = False
        # Control worker and its bounded queue.
        self._control: deque[bytes] = deque()
        self._control_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        # PING from the bus, one at a time.
        self._ping_lock = threading.Lock()
        self._ping: tuple[int, int, threading.Event] | None = None
        self._ping_token = 0
        # Accounting and limits.
        self.requests_sent = 0
        self.responses_received = 0
        self.queued_events = 0
        self.malformed = 0
        self.received: Counter[str] = Counter()
        """Datagrams from the backend by kind (response, event, bus, control, malformed)."""
        self._bus_bucket = _TokenBucket(self.limits.bus_message_rate, self.limits.bus_message_burst)
        self._event_bucket = _TokenBucket(self.limits.event_rate, self.limits.event_burst)
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
        typ = data[0]
        request = not typ & C.TYPE_RESPONSE and (
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
            self._epoll.modify(self._fd, 0)  # the reader stops watching: no wake-up for it
            try:
                self._send(data, request)
                self._lead(self._key(data, typ & C.TYPE_BUS))
            finally:  # level-triggered: what the leader left unread wakes the reader
                self._epoll.modify(self._fd, select.EPOLLIN)
        finally:
            self._rlock.release()
            if self._reader_waiting:
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
            done = threading.Event()
            self._ping = (token, data & 0xFFFFFFFF, done)
            try:
                t0 = time.perf_counter()
                self.deliver(self.bus.adapter.encode(S.Ping(data & 0xFFFFFFFF, token=token)))
                if not done.wait(limit):
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
            if not self._backlog:
                try:
                    self._sock.send(data, socket.MSG_DONTWAIT)
                    return
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._fail_locked(f"send failed: {exc.strerror or exc}", violation=False)
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
                        self._sock.send(self._backlog[0], socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        self._fail_locked(f"send failed: {exc.strerror or exc}", violation=False)
                        return
                    self._backlog.popleft()

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

    def _violation(self, what: str) -> None:
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
        with self._control_cv:
            self._control.clear()
            self._control_cv.notify_all()
        for thread in (self._worker, self._writer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
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
        self.closed.set()
        self.server._forget(self, reason)

    # --- reading ------------------------------------------------------------------------

    def _key(self, data: bytes, bus_bit: int) -> tuple[int, int, int, int]:
        if self._rfc1:
            return (bus_bit, data[1], data[2] | data[3] << 8, 0)
        return (bus_bit, data[1], data[2] | data[3] << 8, data[4] | data[5] << 8)

    def _lead(self, key: tuple[int, int, int, int]) -> None:
        """Read and dispatch until the response with ``key`` arrives (read lock held)."""
        if self._sock_closed:
            return
        self._lead_key = key
        self._lead_done = False
        deadline = time.monotonic() + self.limits.lead_window_ms / 1000
        try:
            while not self._lead_done and not self._closing and time.monotonic() < deadline:
                try:  # blocks at most SO_RCVTIMEO (the lead window)
                    data, _anc, flags, _addr = self._sock.recvmsg(self._bufsize)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._fail(_receive_error(exc), violation=False)
                    break
                if not data:
                    self._fail("connection closed by the backend", violation=False)
                    break
                self._dispatch(data, flags)
        finally:
            self._lead_key = None

    def _read_loop(self) -> None:
        try:
            while not self._closing:
                if not self._epoll.poll(POLL_MS / 1000):
                    continue
                if not self._rlock.acquire(blocking=False):
                    with self._yield:  # a leader is reading; it wakes us when done
                        self._reader_waiting = True
                        self._yield.wait(0.005)
                        self._reader_waiting = False
                    continue
                try:
                    self._drain()
                finally:
                    self._rlock.release()
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
                data, _anc, flags, _addr = self._sock.recvmsg(self._bufsize, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(_receive_error(exc), violation=False)
                return
            if not data:
                self._fail("connection closed by the backend", violation=False)
                return
            self._dispatch(data, flags)

    def _dispatch(self, data: bytes, flags: int) -> None:
        """Validate the framing of one datagram and route it (called with the read lock)."""
        if flags & socket.MSG_CTRUNC:
            self._fail("sent file descriptors, which the channel never accepts", violation=True)
            return
        n = len(data)
        if n > self._max or flags & socket.MSG_TRUNC:
            self._violation(f"datagram larger than the maximum message size {self._max}")
            return
        hs = self._size_at + 2
        if n < hs:
            self._violation(f"datagram of {n} bytes is shorter than the header")
            return
        size = data[self._size_at] | data[self._size_at + 1] << 8
        if size != n:
            self._violation(f"msg_size {size} does not match the {n}-byte datagram")
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
            if self._lead_key is not None and self._key(data, 0) == self._lead_key:
                self._lead_done = True
        elif msg_id & C.MSG_ID_EVENT:
            self._dispatch_event(data)
        else:
            self._violation(f"transport request {msg_id:#04x} from a backend")

    def _to_bus(self, data: bytes) -> None:
        try:
            self.bus.receive(data, self)
        except VirtioMsgError as exc:  # a reply could not be sent: we are closing
            log.debug("%s: %s", self.name, exc)

    def _decode(self, data: bytes) -> Message | None:
        try:
            return self.bus.adapter.decode(data)
        except MalformedMessage as exc:
            self._violation(str(exc))
            return None

    def _dispatch_event(self, data: bytes) -> None:
        msg = self._decode(data)
        if msg is None:
            return
        if type(msg) not in (S.EventUsed, S.EventConfig):
            self._violation(f"unexpected event {type(msg).__name__}")
            return
        self.received["event"] += 1
        if not self._event_bucket.take():
            self._fail(f"flooding: more than {self.limits.event_rate:.0f} events/s", violation=True)
            return
        if self.queued_events >= self.limits.max_queued_events:
            self._fail(
                f"flooding: {self.queued_events} events waiting for dispatch", violation=True
            )
            return
        self.server._pump.put(self, data)

    def _dispatch_bus(self, data: bytes, typ: int, msg_id: int) -> None:
        msg = self._decode(data)
        if msg is None:
            return
        if typ & C.TYPE_RESPONSE:
            if type(msg) is S.PingResp:
                ping = self._ping
                if ping is not None and (msg.token, msg.data) == ping[:2]:
                    self.received["bus"] += 1
                    self.responses_received += 1
                    ping[2].set()
                    if self._lead_key is not None and self._key(data, C.TYPE_BUS) == self._lead_key:
                        self._lead_done = True
                    return
            self._violation(f"unexpected bus response {type(msg).__name__}")
            return
        if not self._bus_bucket.take():
            self._fail(
                f"flooding: more than {self.limits.bus_message_rate:.0f} bus messages/s",
                violation=True,
            )
            return
        if type(msg) is GenericMessage:
            if msg.msg_id not in (MSG_ADD, MSG_REMOVE):
                self._violation(f"unknown implementation-defined bus message {msg.msg_id:#04x}")
                return
            try:
                req = parse_control_request(msg)
            except MalformedMessage as exc:
                self._violation(str(exc))
                with contextlib.suppress(VirtioMsgError):
                    bad = ControlRequest(msg.msg_id, 0, msg.token)
                    self._reply(bad, Status.INVALID)
                return
            self.received["control"] += 1
            self._queue_control(data, req)
        elif type(msg) is S.EventDevice:
            self.received["control"] += 1
            self._queue_control(data, None)
        elif type(msg) in (S.Ping, S.GetDevices):
            self.received["bus"] += 1
            self._to_bus(data)  # answered by the bus, inline
        else:
            self._violation(f"unexpected bus message {type(msg).__name__}")

    # --- ADD / REMOVE ----------------------------------------------------------------------

    def _queue_control(self, data: bytes, req: ControlRequest | None) -> None:
        with self._control_cv:
            if len(self._control) >= self.limits.max_control_queue:
                full = True
            else:
                full = False
                self._control.append(data)
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._control_loop,
                        name=f"{self._reader.name[:-3]}-ctl",
                        daemon=True,
                    )
                    self._worker.start()
                self._control_cv.notify()
        if full:
            if req is None:
                self._violation("EVENT_DEVICE while the control queue is full")
            else:
                with contextlib.suppress(VirtioMsgError):
                    self._reply(req, Status.BUSY)

    def _control_loop(self) -> None:
        while True:
            with self._control_cv:
                while not self._control and not self._closing:
                    self._control_cv.wait(POLL_MS / 1000)
                if self._closing:
                    return
                data = self._control.popleft()
            try:
                msg = self.bus.adapter.decode(data)
                if type(msg) is S.EventDevice:
                    self.bus.receive(data, self)  # the bus's own ADDED/REMOVED handling
                else:
                    req = parse_control_request(msg)
                    self._reply(req, self._execute(req))
            except VirtioMsgError as exc:
                log.debug("%s: control request not answered: %s", self.name, exc)
            except Exception:
                log.exception("%s: control request of %s failed", self.bus.name, self.name)

    def _execute(self, req: ControlRequest) -> Status:
        bus = self.bus
        if bus.closed or self._closing:
            return Status.CLOSED
        if req.op == MSG_REMOVE:
            entry = bus.device(req.dev_num)
            if entry is None:
                return Status.NOT_FOUND
            if entry.channel is not self:
                return Status.NOT_OWNER
            try:
                bus.remove_device(req.dev_num, reason=f"was removed by {self.name}")
            except BusError:
                return Status.NOT_FOUND  # removed concurrently
            return Status.OK
        if bus.device(req.dev_num) is not None:
            return Status.EXISTS
        if len(self.devices()) >= self.limits.max_devices:
            return Status.LIMIT
        try:
            entry = bus.add_device(req.dev_num, self)
        except BusError:
            if bus.closed or self._closing:
                return Status.CLOSED
            return Status.EXISTS
        if entry.error is not None or entry.driver is None:
            return Status.PROBE_FAILED
        return Status.OK

    def _reply(self, req: ControlRequest, status: Status) -> None:
        self._send(self.bus.adapter.encode(req.response(status).to_message()))


class EventPump:
    """The server's one event-dispatch thread, fed by every connection's reader."""

    def __init__(self, name: str) -> None:
        self._queue: deque[tuple[SocketChannel, bytes]] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"vmsg-{name}-events", daemon=True)
        self._thread.start()

    def put(self, channel: SocketChannel, data: bytes) -> None:
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


__all__ = ["JOIN_TIMEOUT", "POLL_MS", "EventPump", "SocketChannel", "SocketLimits"]
