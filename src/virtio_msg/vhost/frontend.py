"""A vhost-user front end: one connection to a back end's Unix socket.

Strategy.  :class:`VhostUserFrontend` is the blocking I/O half over the pure
codec in :mod:`virtio_msg.vhost.protocol`: it sends a request (with its file
descriptors as ``SCM_RIGHTS``), and for a request that has a reply -- or that
asked for a REPLY_ACK -- reads exactly one reply and hands it to the codec's
strict checks.  One lock serialises request/reply pairs, so the stream never
interleaves.

Every wait is bounded: connecting by ``connect_timeout``, each reply by
``timeout`` (a deadline over all the reads of that reply).  Failure is sticky
(STYLE 4): a timeout, a protocol violation or the back end closing its socket
marks the connection dead, and every later request raises at once -- after a
reply that did not come or could not be trusted, the byte stream is out of
step and nothing on it can be believed.  A *refusal* (REPLY_ACK non-zero) is
an answer, not a violation; the connection survives it.

Nothing the back end sends is used unchecked: replies carrying file
descriptors are a violation (the descriptors are closed, never leaked), and so
are unsolicited bytes found while no request is in flight
(:meth:`VhostUserFrontend.poll_peer`, which the device's watcher thread calls
when the socket turns readable; it also detects the back end closing).
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from virtio_msg.vhost.protocol import (
    HEADER,
    MAX_CONFIG_SIZE,
    MAX_QUEUES,
    VHOST_USER_F_PROTOCOL_FEATURES,
    MemoryRegion,
    ProtocolFeature,
    Request,
    VhostUserDisconnected,
    VhostUserError,
    VhostUserProtocolError,
    VhostUserRefused,
    VhostUserTimeout,
    check_ack,
    decode_header,
    encode,
    encode_config,
    encode_mem_table,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
    parse_config,
    parse_u64,
    parse_vring_state,
    with_need_reply,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 2.0
"""Bound on one reply, seconds (every real back end answers in microseconds)."""
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
"""Bound on connecting to the back end's socket, seconds."""
WANTED_PROTOCOL_FEATURES: Final = (
    (1 << ProtocolFeature.MQ) | (1 << ProtocolFeature.REPLY_ACK) | (1 << ProtocolFeature.CONFIG)
)
"""Protocol features this front end uses when offered (nothing it does not implement)."""
_MAX_FDS_IN_REPLY: Final = 8
"""Ancillary room when reading a reply: enough to notice (and close) stray fds."""


class VhostUserFrontend:
    """One connection to a vhost-user back end (see the module docstring).

    After :meth:`handshake`, ``features`` holds the back end's GET_FEATURES,
    ``protocol_features`` the negotiated protocol features and ``queue_num``
    the back end's GET_QUEUE_NUM (1 without MQ).
    """

    def __init__(
        self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT, path: str = ""
    ) -> None:
        """Wrap a connected ``AF_UNIX`` stream socket (use :meth:`connect`)."""
        if timeout <= 0:
            raise ValueError("the reply timeout must be positive")
        self.path = path
        self.timeout = timeout
        self._sock = sock
        self._lock = threading.Lock()
        self._dead: str | None = None
        self.features = 0
        """Back end's GET_FEATURES (valid after :meth:`handshake`)."""
        self.backend_protocol_features = 0
        """Back end's GET_PROTOCOL_FEATURES (0 if it does not speak them)."""
        self.protocol_features = 0
        """Protocol features both sides use (SET_PROTOCOL_FEATURES)."""
        self.queue_num = 1
        """Queues the back end supports (GET_QUEUE_NUM with MQ, else 1)."""
        self.sent = 0
        """Requests sent."""

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> VhostUserFrontend:
        """Connect to the back end listening on ``path`` (bounded by ``connect_timeout``)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(os.fspath(path))
        except TimeoutError:
            sock.close()
            raise VhostUserTimeout(f"{path}: no connection within {connect_timeout} s") from None
        except OSError as exc:
            sock.close()
            raise VhostUserDisconnected(f"{path}: cannot connect: {exc.strerror or exc}") from None
        return cls(sock, timeout=timeout, path=os.fspath(path))

    def __repr__(self) -> str:
        """Path and state."""
        state = f"dead: {self._dead}" if self._dead else "connected"
        return f"<VhostUserFrontend {self.path or '?'} {state}>"

    # --- state -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False once the connection failed or was closed (sticky)."""
        return self._dead is None

    @property
    def reason(self) -> str | None:
        """Why the connection is dead, or None."""
        return self._dead

    def fileno(self) -> int:
        """The socket's fd (for a selector watching it; never read it directly)."""
        return self._sock.fileno()

    def has_protocol_feature(self, bit: int) -> bool:
        """Whether protocol feature ``bit`` was negotiated."""
        return bool(self.protocol_features >> bit & 1)

    def peer_pid(self) -> int | None:
        """The back end's process id (SO_PEERCRED), if the kernel tells."""
        try:
            creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return None
        pid: int = struct.unpack("=iII", creds)[0]
        return pid if pid > 0 else None

    def mark_dead(self, reason: str) -> None:
        """Make the connection unusable (idempotent; the first reason is kept)."""
        if self._dead is None:
            self._dead = reason
            log.warning("vhost-user %s: %s", self.path or "?", reason)

    def close(self) -> None:
        """Close the socket; the back end sees the front end go away."""
        if self._dead is None:
            self._dead = "closed by the front end"
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    # --- one request ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._dead is not None:
            raise VhostUserDisconnected(f"vhost-user {self.path or '?'}: {self._dead}")

    def _send(self, data: bytes, fds: Sequence[int]) -> None:
        self._sock.settimeout(self.timeout)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = self._sock.sendmsg([data], anc)
        if sent < len(data):  # fds went with the first byte; the rest is plain data
            self._sock.sendall(data[sent:])
        self.sent += 1

    def _recv_exact(self, n: int, deadline: float, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VhostUserTimeout(f"no complete reply to {what} within {self.timeout} s")
            self._sock.settimeout(left)
            data, anc, _flags, _addr = self._sock.recvmsg(
                n - len(buf), socket.CMSG_SPACE(_MAX_FDS_IN_REPLY * 4)
            )
            stray = _close_fds(anc)
            if stray:
                raise VhostUserProtocolError(f"reply to {what} carried {stray} file descriptor(s)")
            if not data:
                raise VhostUserDisconnected(f"back end closed the socket during {what}")
            buf += data
        return bytes(buf)

    def _exchange(
        self, request: Request, data: bytes, fds: Sequence[int] = (), *, reply: bool
    ) -> bytes:
        """Send one request; if ``reply``, return its payload (header checked), else b""."""
        with self._lock:
            self._check()
            try:
                self._send(data, fds)
                if not reply:
                    return b""
                deadline = time.monotonic() + self.timeout
                header = decode_header(
                    self._recv_exact(HEADER.size, deadline, request.name), request
                )
                return self._recv_exact(header.size, deadline, request.name)
            except VhostUserError as exc:
                self.mark_dead(str(exc))
                raise
            except TimeoutError:
                reason = f"no reply to {request.name} within {self.timeout} s"
                self.mark_dead(reason)
                raise VhostUserTimeout(reason) from None
            except OSError as exc:
                reason = f"{request.name}: socket error: {exc.strerror or exc}"
                self.mark_dead(reason)
                raise VhostUserDisconnected(reason) from None

    def _parse(self, parse: Callable[..., T], *args: Any) -> T:
        """Run a codec check on a reply; a violation kills the connection."""
        try:
            return parse(*args)
        except VhostUserProtocolError as exc:
            self.mark_dead(str(exc))
            raise

    def _call(self, request: Request, data: bytes, fds: Sequence[int] = ()) -> None:
        """A request without its own reply: ask for a REPLY_ACK when negotiated."""
        if self.has_protocol_feature(ProtocolFeature.REPLY_ACK):
            payload = self._exchange(request, with_need_reply(data), fds, reply=True)
            self._parse(check_ack, payload, request)
        else:
            self._exchange(request, data, fds, reply=False)

    def _get_u64(self, request: Request) -> int:
        payload = self._exchange(request, encode(request), reply=True)
        return self._parse(parse_u64, payload, request)

    def poll_peer(self) -> None:
        """The socket turned readable: find out why, when no request is in flight.

        Marks the connection dead (and returns) when the back end closed it or
        sent bytes nobody asked for; does nothing when a reply was simply
        consumed by the request that waited for it.
        """
        with self._lock:
            if self._dead is not None:
                return
            try:
                self._sock.settimeout(0.0)  # a peek must never wait (requests set their own)
                data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError, TimeoutError):
                return
            except OSError as exc:
                self.mark_dead(f"socket error: {exc.strerror or exc}")
                return
            if not data:
                self.mark_dead("back end closed its socket")
            else:
                self.mark_dead("back end sent a message nobody asked for")

    # --- the handshake ---------------------------------------------------------------------

    def handshake(self, wanted_protocol: int = WANTED_PROTOCOL_FEATURES) -> None:
        """GET_FEATURES, protocol features, GET_QUEUE_NUM, SET_OWNER (QEMU's order)."""
        self.features = self._get_u64(Request.GET_FEATURES)
        if self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            self.backend_protocol_features = self._get_u64(Request.GET_PROTOCOL_FEATURES)
            chosen = self.backend_protocol_features & wanted_protocol
            # SET_PROTOCOL_FEATURES never carries NEED_REPLY: REPLY_ACK is not agreed yet.
            self._exchange(
                Request.SET_PROTOCOL_FEATURES,
                encode_u64(Request.SET_PROTOCOL_FEATURES, chosen),
                reply=False,
            )
            self.protocol_features = chosen
        if self.has_protocol_feature(ProtocolFeature.MQ):
            num = self._get_u64(Request.GET_QUEUE_NUM)
            if not 1 <= num <= MAX_QUEUES:
                reason = f"GET_QUEUE_NUM answered {num}, outside 1..{MAX_QUEUES}"
                self.mark_dead(reason)
                raise VhostUserProtocolError(reason)
            self.queue_num = num
        self._call(Request.SET_OWNER, encode(Request.SET_OWNER))

    # --- device-level requests ----------------------------------------------------------------

    def set_features(self, features: int) -> None:
        """SET_FEATURES (the PROTOCOL_FEATURES bit is added when the back end offered it)."""
        if self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            features |= 1 << VHOST_USER_F_PROTOCOL_FEATURES
        self._call(Request.SET_FEATURES, encode_u64(Request.SET_FEATURES, features))

    def get_config(self, size: int, offset: int = 0) -> bytes:
        """GET_CONFIG of ``size`` bytes at ``offset`` (1..256 bytes, the message's limit)."""
        if not self.has_protocol_feature(ProtocolFeature.CONFIG):
            raise VhostUserRefused("the back end does not offer the CONFIG protocol feature")
        data = encode_config(Request.GET_CONFIG, offset, bytes(size))
        payload = self._exchange(Request.GET_CONFIG, data, reply=True)
        return self._parse(parse_config, payload, offset, size)

    def set_config(self, offset: int, data: bytes) -> None:
        """SET_CONFIG of 1..256 bytes at ``offset`` (front-end type, flags 0)."""
        if not self.has_protocol_feature(ProtocolFeature.CONFIG):
            raise VhostUserRefused("the back end does not offer the CONFIG protocol feature")
        if len(data) > MAX_CONFIG_SIZE:
            raise ValueError(f"SET_CONFIG of {len(data)} bytes (at most {MAX_CONFIG_SIZE})")
        self._call(Request.SET_CONFIG, encode_config(Request.SET_CONFIG, offset, data))

    def set_mem_table(self, regions: list[tuple[MemoryRegion, int]]) -> None:
        """SET_MEM_TABLE: each region with the fd that backs it."""
        self._call(
            Request.SET_MEM_TABLE,
            encode_mem_table([r for r, _ in regions]),
            [fd for _, fd in regions],
        )

    def set_vring_num(self, index: int, num: int) -> None:
        """SET_VRING_NUM: ring ``index`` has ``num`` descriptors."""
        self._call(Request.SET_VRING_NUM, encode_vring_state(Request.SET_VRING_NUM, index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        """SET_VRING_BASE: the next available index the back end reads."""
        self._call(
            Request.SET_VRING_BASE, encode_vring_state(Request.SET_VRING_BASE, index, base)
        )

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        """SET_VRING_ADDR: ring addresses as user addresses (here equal to bus addresses)."""
        self._call(Request.SET_VRING_ADDR, encode_vring_addr(index, desc, used, avail))

    def set_vring_kick(self, index: int, fd: int) -> None:
        """SET_VRING_KICK: the eventfd the front end writes when buffers are available."""
        self._call(Request.SET_VRING_KICK, encode_u64(Request.SET_VRING_KICK, index), [fd])

    def set_vring_call(self, index: int, fd: int) -> None:
        """SET_VRING_CALL: the eventfd the back end writes when buffers are used."""
        self._call(Request.SET_VRING_CALL, encode_u64(Request.SET_VRING_CALL, index), [fd])

    def set_vring_enable(self, index: int, enable: bool) -> None:
        """SET_VRING_ENABLE (only meaningful with protocol features)."""
        self._call(
            Request.SET_VRING_ENABLE,
            encode_vring_state(Request.SET_VRING_ENABLE, index, int(enable)),
        )

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE: stop ring ``index``; returns its next available index."""
        data = encode_vring_state(Request.GET_VRING_BASE, index, 0)
        payload = self._exchange(Request.GET_VRING_BASE, data, reply=True)
        return self._parse(parse_vring_state, payload, index)


def _close_fds(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Close every fd in ``ancdata``; return how many there were."""
    count = 0
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                count += 1
    return count


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "WANTED_PROTOCOL_FEATURES",
    "VhostUserFrontend",
]
