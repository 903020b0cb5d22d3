"""The backend library: serve device models to a socket bus from another process.

Strategy.  :func:`connect` opens the bus's Unix SOCK_SEQPACKET socket, takes
the ANNOUNCE datagram and the region memfd that comes with it, validates both
(exactly one fd, a regular file of exactly the announced size, every
announced field in range) and maps exactly that region with
:meth:`Region.from_fd <virtio_msg.memory.Region.from_fd>`.  The returned
:class:`BackendClient` is the :class:`~virtio_msg.bus.backend.BusPort` of an
ordinary :class:`~virtio_msg.bus.backend.Backend`, so device models run
unchanged::

    from virtio_msg.bus.client import connect
    from virtio_msg.devices.catalog import make_device

    with connect("/run/user/1000/virtio-msg/bus.sock") as client:
        client.serve(0, make_device("rng"))
        client.wait()  # until the bus goes away

:func:`accept_bus` is the same for a backend that listens and lets one bus
connect (``virtio-msg backend --listen PATH``); after the connection nothing
changes.

Two threads: the *receive loop* answers every request the bus sends
(including the probe that an ADD triggers) and EVENT_AVAIL; ADD and REMOVE
block the *calling* thread until the bus's status arrives.  That split is
what the seed's loopback required of its backends too (an ADD that blocks
the only thread that reads never completes).  Everything from the bus is
validated like any other peer data; malformed datagrams are counted and too
many of them (``max_malformed``) close the connection.  Every wait is bounded: connect and the
announcement by ``timeout``, ADD/REMOVE by ``control_timeout`` (a bus that
does not answer is abandoned: the connection closes), sends by the bus's
``timeout_ms`` (a bus that stops reading is abandoned too).  With a
``capture`` writer, every datagram of the connection is recorded from the
backend's side (ANNOUNCE first; the hang-up as an empty control frame).
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import virtio_msg.spec as C
from virtio_msg.bus.backend import Backend
from virtio_msg.bus.capture import CaptureWriter, ChannelKind, Direction, Side, SocketTap
from virtio_msg.bus.protocol import (
    CONTROL_IDS,
    MSG_ADD,
    MSG_REMOVE,
    STATUS_TEXT,
    Announcement,
    ControlError,
    ControlRequest,
    ControlResponse,
    Status,
    decode_announcement,
    op_name,
    parse_control_response,
)
from virtio_msg.errors import BusError, MalformedMessage, TransportError, VirtioMsgError
from virtio_msg.memory import Region
from virtio_msg.transport.device import DeviceModel, DeviceTransport
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import GenericMessage, Message
from virtio_msg.wire import spec as S

log = logging.getLogger(__name__)

MAX_REGION_SIZE: Final = 1 << 32
"""Largest region a backend maps unless told otherwise (4 GiB)."""
MAX_FDS: Final = 4
"""Ancillary room when receiving ANNOUNCE: enough to notice extra fds (and close them)."""
MAX_MALFORMED: Final = 64
"""Malformed datagrams from the bus tolerated before the backend hangs up."""
JOIN_TIMEOUT: Final = 5.0
"""Bound on waiting for the receive loop when closing, seconds."""
_ANNOUNCE_BUFSIZE: Final = 0x10000 + 1
# socket's MSG_* are IntFlag members: ``flags & socket.MSG_TRUNC`` makes a new enum
# member (about a microsecond); the per-datagram checks use plain ints.
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_MSG_CTRUNC: Final = int(socket.MSG_CTRUNC)


class BackendClient:
    """A connection to a socket bus and the :class:`Backend` serving devices on it.

    Made by :func:`connect`.  ``announcement`` is what the bus announced,
    ``params`` the matching :class:`BusParams`, ``region`` this process's
    mapping of the bus region, ``backend`` the device side.
    """

    def __init__(
        self,
        sock: socket.socket,
        announcement: Announcement,
        region: Region,
        *,
        control_timeout: float | None = None,
        path: str = "",
        max_malformed: int = MAX_MALFORMED,
        tap: SocketTap | None = None,
    ) -> None:
        """Wrap a connected socket whose ANNOUNCE was already taken (use :func:`connect`)."""
        self.path = path
        self.max_malformed = max_malformed
        """Malformed or unexpected datagrams tolerated before hanging up."""
        self.tap = tap
        """Where the connection's datagrams are recorded (None: capture is off)."""
        self.announcement = announcement
        self.params: BusParams = announcement.params()
        self.region = region
        self.backend = Backend(region, self.params)
        self.control_timeout = (
            control_timeout
            if control_timeout is not None
            else max(30.0, 10 * self.params.timeout_ms / 1000)
        )
        self._sock = sock
        self._adapter = self.backend.adapter
        self._max = self.params.max_size
        self._size_at = 4 if self.params.rfc1 else 6
        self._send_lock = threading.Lock()
        self._sock_closed = False
        self._control_lock = threading.Lock()
        self._control: tuple[ControlRequest, threading.Event, list[ControlResponse]] | None = None
        self._ping: tuple[int, int, threading.Event] | None = None
        self._ping_lock = threading.Lock()
        self._token = 0
        self.malformed = 0
        self.received: Counter[str] = Counter()
        """Datagrams from the bus by kind, each counted once: ``malformed`` (dropped,
        including unexpected bus messages), ``transport`` (given to the backend) or
        ``bus`` (a PING or an awaited response, taken)."""
        self.reason: str | None = None
        """Why the connection closed (None while open)."""
        self._closing = False
        self._closed = threading.Event()
        self._rx = threading.Thread(target=self._read_loop, name="vmsg-backend-rx", daemon=True)
        timeo = self.params.timeout_ms / 1000
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO,
            struct.pack("ll", int(timeo), int(timeo % 1 * 1_000_000)),
        )
        self.backend.attach(self)

    def __repr__(self) -> str:
        """Path, profile and state."""
        state = f"closed: {self.reason}" if self.reason else "connected"
        return f"<BackendClient {self.path} {self.params.profile.value} {state}>"

    def start(self) -> None:
        """Start the receive loop (done by :func:`connect`)."""
        self._rx.start()

    # --- the public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True until the connection starts closing."""
        return not self._closing

    @property
    def devices(self) -> dict[int, DeviceTransport]:
        """The devices this backend serves, by number."""
        return self.backend.devices

    def serve(self, dev_num: int, model: DeviceModel, **options: Any) -> DeviceTransport:
        """Serve ``model`` as device ``dev_num``: ADD it and return once the bus probed it.

        Raises :class:`~virtio_msg.bus.protocol.ControlError` if the bus
        refuses (the status says why).  A device the bus could not probe
        (PROBE_FAILED) stays served and present; the bus reports its error.
        """
        return self.backend.serve(dev_num, model, **options)

    def withdraw(self, dev_num: int) -> None:
        """REMOVE ``dev_num`` from the bus and stop serving it."""
        self.backend.withdraw(dev_num)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the connection closes (or ``timeout``); return True if it closed."""
        return self._closed.wait(timeout)

    def ping(self, data: int = 0x12345678) -> float:
        """PING the bus; return the round trip in seconds (TransportError on timeout)."""
        with self._ping_lock:
            token = 0 if self.params.rfc1 else self._next_token()
            done = threading.Event()
            self._ping = (token, data & 0xFFFFFFFF, done)
            try:
                t0 = time.perf_counter()
                self.send(self._adapter.encode(S.Ping(data & 0xFFFFFFFF, token=token)))
                limit = self.params.timeout_ms / 1000
                if not done.wait(limit) or not self.connected:
                    raise TransportError("timeout", f"no PING response within {limit:.3f} s")
                return time.perf_counter() - t0
            finally:
                self._ping = None

    def close(self) -> None:
        """Hang up: the bus removes this backend's devices.  Idempotent."""
        if self.tap is not None and not self._closing:
            self.tap.end(Direction.TO_DRIVER)
        self._fail("closed by the backend", violation=False)
        if threading.current_thread() is not self._rx and self._rx.is_alive():
            self._rx.join(JOIN_TIMEOUT)
        with self._send_lock:
            if not self._sock_closed:
                self._sock_closed = True
                self._sock.close()
        if not self._rx.is_alive():
            self.region.close()

    def __enter__(self) -> BackendClient:
        """Return the client."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection."""
        self.close()

    # --- BusPort ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one encoded message to the bus (BusPort); BusError if disconnected."""
        with self._send_lock:
            if self._sock_closed or self._closing:
                raise BusError(f"not connected to the bus ({self.reason or 'closing'})")
            if self.tap is not None:
                self.tap.up(data)
            try:
                self._sock.send(data)
            except BlockingIOError:
                timeout_ms = self.params.timeout_ms
                self._fail_locked(f"the bus stopped reading (send blocked {timeout_ms} ms)")
                raise BusError("the bus stopped reading its socket") from None
            except OSError as exc:
                self._fail_locked(f"send failed: {exc.strerror or exc}", violation=False)
                raise BusError(f"send to the bus failed: {exc.strerror or exc}") from None

    def add(self, dev_num: int) -> None:
        """ADD ``dev_num`` (BusPort); returns after the bus probed it.

        The receive loop keeps answering the probe meanwhile.  PROBE_FAILED
        is logged and accepted (the device is present); any other refusal
        raises :class:`ControlError`.
        """
        status = self._control_request(MSG_ADD, dev_num)
        if status is Status.PROBE_FAILED:
            log.warning("device %d: %s", dev_num, STATUS_TEXT[status])
        elif status is not Status.OK:
            raise ControlError("ADD", dev_num, status)

    def remove(self, dev_num: int) -> None:
        """REMOVE ``dev_num`` (BusPort); a number already gone is not an error."""
        status = self._control_request(MSG_REMOVE, dev_num)
        if status not in (Status.OK, Status.NOT_FOUND):
            raise ControlError("REMOVE", dev_num, status)

    # --- control requests ------------------------------------------------------------------------

    def _next_token(self) -> int:
        self._token = self._token % 0xFFFF + 1
        return self._token

    def _control_request(self, op: int, dev_num: int) -> Status:
        name = op_name(op)
        with self._control_lock:  # one at a time: linux-rfc1 has no token to tell them apart
            token = 0 if self.params.rfc1 else self._next_token()
            req = ControlRequest(op, dev_num, token)
            done = threading.Event()
            answer: list[ControlResponse] = []
            self._control = (req, done, answer)
            try:
                self.send(self._adapter.encode(req.to_message()))
                if not done.wait(self.control_timeout):
                    self._fail(f"no {name} response within {self.control_timeout:.0f} s")
                    raise ControlError(name, dev_num, None, "the bus did not answer")
            finally:
                self._control = None
            if not answer:
                raise ControlError(name, dev_num, None, f"disconnected: {self.reason}")
            return answer[0].status

    # --- receiving -----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        bufsize = self._max + 1
        try:
            while not self._closing:
                try:
                    data, _anc, flags, _addr = self._sock.recvmsg(bufsize)
                except OSError as exc:
                    reset = exc.errno == errno.ECONNRESET
                    why = "the bus closed the connection" if reset else f"receive failed: {exc}"
                    if reset and self.tap is not None and not self._closing:
                        self.tap.end(Direction.TO_DEVICE)
                    self._fail(why, violation=False)
                    break
                if self.tap is not None:
                    if data:
                        self.tap.down(data)
                    elif not self._closing:
                        self.tap.end(Direction.TO_DEVICE)
                if not data:
                    self._fail("the bus closed the connection", violation=False)
                    break
                self._dispatch(data, flags)
        except Exception:  # pragma: no cover - a bug here must still close cleanly
            log.exception("backend: receive loop failed")
            self._fail("internal error in the receive loop", violation=False)
        finally:
            self._wake_all()
            self._closed.set()

    def _wake_all(self) -> None:
        pending = self._control
        if pending is not None:
            pending[1].set()
        ping = self._ping
        if ping is not None:
            ping[2].set()

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        self.received["malformed"] += 1
        log.debug("backend: dropped a message from the bus: %s", what)
        if self.malformed > self.max_malformed:
            self._fail(f"the bus sent {self.malformed} malformed messages (last: {what})")

    def _dispatch(self, data: bytes, flags: int) -> None:
        if flags & _MSG_CTRUNC:
            self._fail("the bus sent file descriptors after ANNOUNCE")
            return
        n = len(data)
        if n > self._max or flags & _MSG_TRUNC:
            self._malformed(f"datagram larger than the maximum message size {self._max}")
            return
        if n < self._size_at + 2:
            self._malformed(f"datagram of {n} bytes is shorter than the header")
            return
        size = data[self._size_at] | data[self._size_at + 1] << 8
        if size != n:
            self._malformed(f"msg_size {size} does not match the {n}-byte datagram")
            return
        typ = data[0]
        if typ & C.TYPE_BUS:
            self._dispatch_bus(data, typ)
        elif typ & C.TYPE_RESPONSE:
            self._malformed("a transport response from the bus")
        else:
            self.received["transport"] += 1
            try:
                self.backend.deliver(data)  # validates; answers requests, takes EVENT_AVAIL
            except BusError:
                return  # the answer could not go out: the connection is closing (reason kept)

    def _dispatch_bus(self, data: bytes, typ: int) -> None:
        try:
            msg: Message = self._adapter.decode(data)
        except MalformedMessage as exc:
            self._malformed(str(exc))
            return
        if type(msg) is GenericMessage and msg.response and msg.msg_id in CONTROL_IDS:
            try:
                resp = parse_control_response(msg)
            except MalformedMessage as exc:
                self._malformed(str(exc))
                return
            pending = self._control
            if pending is None or (resp.op, resp.dev_num, resp.token) != (
                pending[0].op, pending[0].dev_num, pending[0].token
            ):
                self._malformed(f"unexpected {op_name(resp.op)} response for {resp.dev_num}")
                return
            self.received["bus"] += 1
            pending[2].append(resp)
            pending[1].set()
        elif type(msg) is S.PingResp:
            ping = self._ping
            if ping is None or (msg.token, msg.data) != ping[:2]:
                self._malformed("unexpected PING response")
                return
            self.received["bus"] += 1
            ping[2].set()
        elif type(msg) is S.Ping:
            self.received["bus"] += 1
            with contextlib.suppress(VirtioMsgError):
                self.send(self._adapter.encode(S.PingResp(msg.data, token=msg.token)))
        else:
            what = (
                f"bus message {msg.msg_id:#04x}" if type(msg) is GenericMessage
                else type(msg).__name__
            )
            self._malformed(f"unexpected {what} from the bus")

    # --- closing ----------------------------------------------------------------------------------

    def _fail(self, reason: str, *, violation: bool = True) -> None:
        with self._send_lock:
            self._fail_locked(reason, violation=violation)

    def _fail_locked(self, reason: str, *, violation: bool = True) -> None:
        if self.reason is None:
            self.reason = reason
            (log.warning if violation else log.info)("backend: disconnecting: %s", reason)
        self._closing = True
        if not self._sock_closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._wake_all()


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
            fds.extend(arr)
    return fds


def _receive_announcement(
    sock: socket.socket, path: str, timeout: float, max_region_size: int
) -> tuple[Announcement, Region, bytes]:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if not poller.poll(timeout * 1000):
        raise BusError(f"{path}: no ANNOUNCE from the bus within {timeout:.1f} s")
    data, anc, flags, _ = sock.recvmsg(
        _ANNOUNCE_BUFSIZE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_DONTWAIT
    )
    fds = _take_fds(anc)
    try:
        if not data:
            raise BusError(f"{path}: the bus closed the connection before ANNOUNCE")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise BusError(f"{path}: invalid ANNOUNCE: datagram or fds truncated")
        try:
            ann = decode_announcement(data)
        except MalformedMessage as exc:
            raise BusError(f"{path}: invalid ANNOUNCE: {exc}") from None
        if len(fds) != 1:
            raise BusError(f"{path}: invalid ANNOUNCE: {len(fds)} file descriptors, expected 1")
        if ann.region_size > max_region_size:
            raise BusError(
                f"{path}: announced region of {ann.region_size} bytes exceeds this backend's "
                f"limit of {max_region_size}"
            )
        st = os.fstat(fds[0])
        if not stat.S_ISREG(st.st_mode):
            raise BusError(f"{path}: the region fd is not a regular file (memfd)")
        if st.st_size != ann.region_size:
            raise BusError(
                f"{path}: the region fd holds {st.st_size} bytes, the bus announced "
                f"{ann.region_size}"
            )
        try:
            ann.params()
        except ValueError as exc:
            raise BusError(f"{path}: invalid ANNOUNCE: {exc}") from None
        return ann, Region.from_fd(fds[0], ann.region_base, ann.region_size), data
    finally:
        for fd in fds:
            os.close(fd)


def _backend_tap(
    capture: CaptureWriter | None, ann: Announcement, announce: bytes
) -> SocketTap | None:
    """The backend side's tap of a connection, ANNOUNCE already recorded (None: no capture)."""
    if capture is None:
        return None
    tap = capture.tap(ChannelKind.SOCKET, ann.profile, max_size=ann.max_msg_size, side=Side.BACKEND)
    assert isinstance(tap, SocketTap)  # a SOCKET tap always is
    tap.down(announce)
    return tap


def connect(
    path: str | os.PathLike[str],
    *,
    timeout: float = 5.0,
    control_timeout: float | None = None,
    max_region_size: int = MAX_REGION_SIZE,
    max_malformed: int = MAX_MALFORMED,
    capture: CaptureWriter | None = None,
) -> BackendClient:
    """Connect to the socket bus at ``path``, map its region and start serving.

    ``timeout`` bounds the connect and the wait for ANNOUNCE;
    ``control_timeout`` bounds each ADD/REMOVE (default: 30 s or 10 x the
    bus's timeout, whichever is larger); more than ``max_malformed``
    malformed or unexpected datagrams from the bus close the connection;
    ``capture`` records the connection (side ``backend``, connection 0).  Raises
    :class:`~virtio_msg.errors.BusError` naming what went wrong.
    """
    where = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except OSError as exc:
            raise BusError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        ann, region, raw = _receive_announcement(sock, where, timeout, max_region_size)
    except BaseException:
        sock.close()
        raise
    client = BackendClient(
        sock, ann, region, control_timeout=control_timeout, path=where,
        max_malformed=max_malformed, tap=_backend_tap(capture, ann, raw),
    )
    client.start()
    log.info(
        "backend: connected to %s: profile %s, max message %d, region %#x + %#x",
        where, ann.profile.value, ann.max_msg_size, ann.region_base, ann.region_size,
    )
    return client


def accept_bus(
    path: str | os.PathLike[str],
    *,
    accept_timeout: float = 30.0,
    timeout: float = 5.0,
    control_timeout: float | None = None,
    max_region_size: int = MAX_REGION_SIZE,
    on_listening: Callable[[], None] | None = None,
    capture: CaptureWriter | None = None,
) -> BackendClient:
    """A backend that listens: wait at ``path`` for one bus to connect, then as :func:`connect`.

    The socket file is made as the bus makes its own (mode 0600, in a private
    directory; docs/socket-protocol.md section 1) and removed once a bus
    connected or ``accept_timeout`` passed.  A peer of another user is
    refused.  After the connection the protocol is unchanged: the bus sends
    ANNOUNCE with the region memfd, the backend ADDs its devices.
    ``on_listening`` is called once the socket accepts connections;
    ``capture`` records the connection as for :func:`connect`.
    """
    from virtio_msg.bus.socket import listen
    from virtio_msg.bus.socket_limits import PEERCRED

    where = os.fspath(path)
    listener = listen(Path(where))
    try:
        if on_listening is not None:
            on_listening()
        listener.settimeout(accept_timeout)
        try:
            sock, _addr = listener.accept()
        except TimeoutError:
            raise BusError(f"no bus connected to {where} within {accept_timeout:g} s") from None
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(where)
    try:
        sock.settimeout(None)
        _pid, uid, _gid = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
        if uid not in (os.geteuid(), 0):
            raise BusError(f"{where}: refused a bus of uid {uid} (not this user)")
        ann, region, raw = _receive_announcement(sock, where, timeout, max_region_size)
    except BaseException:
        sock.close()
        raise
    client = BackendClient(
        sock, ann, region, control_timeout=control_timeout, path=where,
        tap=_backend_tap(capture, ann, raw),
    )
    client.start()
    log.info("backend: a bus connected at %s: profile %s", where, ann.profile.value)
    return client


__all__ = ["MAX_REGION_SIZE", "BackendClient", "accept_bus", "connect"]
