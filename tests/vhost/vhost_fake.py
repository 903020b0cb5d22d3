"""A scriptable vhost-user back end in Python, for deterministic front-end tests.

It speaks the back-end side of the protocol over one end of a socketpair: it
answers the handshake, maps the memfd that SET_MEM_TABLE passes, builds
device-side queues (the project's own :class:`DeviceQueue`) from the vring
messages, and on a kick fills every writable buffer with ``fill`` bytes and
signals the call eventfd -- an entropy-like device, enough to drive the
front end end to end.  Knobs make it misbehave: never answer a request,
answer with raw bytes, attach fds to a reply, refuse (REPLY_ACK 1), close
the socket, or hold completions until after GET_VRING_BASE.
"""

from __future__ import annotations

import array
import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from virtio_msg.memory import Region
from virtio_msg.vhost import VhostUserDevice, VhostUserFrontend
from virtio_msg.vhost.profiles import DeviceProfile
from virtio_msg.vhost.protocol import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    MEM_HEADER,
    MEM_REGION,
    VRING_ADDR,
    VRING_STATE,
    Request,
)
from virtio_msg.virtqueue import DeviceQueue

U64 = struct.Struct("=Q")
CONFIG_HEADER = struct.Struct("=III")
WAIT = 10.0


@dataclass
class Ring:
    """One vring as the fake back end sees it."""

    num: int = 0
    base: int = 0
    addr: tuple[int, int, int] = (0, 0, 0)  # desc, used, avail
    kick: int = -1
    call: int = -1
    enabled: bool = False
    queue: DeviceQueue | None = None
    held: list[tuple[int, int]] = field(default_factory=list)  # (head, written) not yet used


class FakeBackend:
    """The back-end side of one connection (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        features: int = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 28),
        protocol_features: int = 0b1000001001,  # MQ, REPLY_ACK, CONFIG
        queue_num: int = 1,
        config: bytes = b"",
        fill: int = 0x5A,
    ) -> None:
        """Serve ``sock`` on a thread; ``config`` answers GET_CONFIG."""
        self.sock = sock
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.config = bytearray(config)
        self.fill = fill
        self.acked_protocol = 0
        self.acked_features: int | None = None
        self.log: list[tuple[str, tuple[int, ...] | bytes | None]] = []
        self.mem: list[tuple[int, int, int, int]] = []
        self.mem_fd_inode: int | None = None
        self.region: Region | None = None
        self.rings: dict[int, Ring] = {}
        self.silent: set[Request] = set()
        self.raw_reply: dict[Request, bytes] = {}
        self.fds_in_reply: set[Request] = set()
        self.nack: set[Request] = set()
        self.close_on: set[Request] = set()
        self.hold_completions = False
        self.release_after_stop = 0.0
        self.unsolicited_after: Request | None = None
        self.stray_inodes: list[int] = []
        """Inodes of the pipes sent as stray fds (a front end must not keep them open)."""
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="fake-vhost-backend", daemon=True)
        self.thread.start()

    # --- plumbing ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The requests received, in order, by name."""
        return [name for name, _ in self.log]

    def settle(self, count: int) -> list[str]:
        """Wait (bounded) until ``count`` requests were received; return their names."""
        deadline = time.monotonic() + WAIT
        while len(self.log) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.names()

    def _recv_exact(self, n: int) -> tuple[bytes, list[int]]:
        data = b""
        fds: list[int] = []
        while len(data) < n:
            chunk, anc, _f, _a = self.sock.recvmsg(n - len(data), socket.CMSG_SPACE(16 * 4))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(raw[: len(raw) - len(raw) % 4])
                    fds.extend(a)
            if not chunk:
                raise EOFError
            data += chunk
        return data, fds

    def _reply(self, request: Request, payload: bytes) -> None:
        if request in self.raw_reply:
            self.sock.sendall(self.raw_reply[request])
            return
        data = HEADER.pack(request, 1 | FLAG_REPLY, len(payload)) + payload
        if request in self.fds_in_reply:
            r, w = os.pipe()
            self.stray_inodes.append(os.fstat(r).st_ino)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))
            self.sock.sendmsg([data], [rights])
            os.close(r)
            os.close(w)
            return
        self.sock.sendall(data)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                for key, _mask in sel.select(0.05):
                    if key.data is None:
                        if not self._message(sel):
                            return
                    elif key.data == "wake":
                        os.read(self._wake_r, 64)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(key.fd)
                        self._process(key.data)
                self._release_held()
        except (EOFError, OSError):
            return
        finally:
            sel.close()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _message(self, sel: selectors.BaseSelector) -> bool:
        header, fds = self._recv_exact(HEADER.size)
        code, flags, size = HEADER.unpack(header)
        payload, more = self._recv_exact(size) if size else (b"", [])
        fds += more
        request = Request(code)
        if request in self.close_on:
            self.log.append((request.name, None))
            return False
        if request in self.silent:
            self.log.append((request.name, None))
            return True
        result = self._handle(request, payload, fds, sel)
        self.log.append((request.name, result))
        if request in self.raw_reply and not flags & FLAG_NEED_REPLY and request not in _REPLIES:
            self.sock.sendall(self.raw_reply[request])
        elif flags & FLAG_NEED_REPLY and request not in _REPLIES:
            self._reply(request, U64.pack(1 if request in self.nack else 0))
        if self.unsolicited_after is request:
            self.sock.sendall(HEADER.pack(Request.GET_FEATURES, 1, 0))
        return True

    def _handle(
        self, request: Request, payload: bytes, fds: list[int], sel: selectors.BaseSelector
    ) -> tuple[int, ...] | bytes | None:
        r = Request
        if request is r.GET_FEATURES:
            self._reply(request, U64.pack(self.features))
        elif request is r.GET_PROTOCOL_FEATURES:
            self._reply(request, U64.pack(self.protocol_features))
        elif request is r.GET_QUEUE_NUM:
            self._reply(request, U64.pack(self.queue_num))
        elif request is r.SET_PROTOCOL_FEATURES:
            self.acked_protocol = U64.unpack(payload)[0]
            return (self.acked_protocol,)
        elif request is r.SET_FEATURES:
            self.acked_features = U64.unpack(payload)[0]
            return (self.acked_features,)
        elif request is r.GET_CONFIG:
            offset, size, cflags = CONFIG_HEADER.unpack_from(payload)
            if offset + size > len(self.config):
                self._reply(request, b"")
            else:
                body = CONFIG_HEADER.pack(offset, size, cflags)
                self._reply(request, body + bytes(self.config[offset : offset + size]))
            return (offset, size)
        elif request is r.SET_CONFIG:
            offset, size, _ = CONFIG_HEADER.unpack_from(payload)
            self.config[offset : offset + size] = payload[12 : 12 + size]
            return (offset, size)
        elif request is r.SET_MEM_TABLE:
            count, _ = MEM_HEADER.unpack_from(payload)
            self.mem = [MEM_REGION.unpack_from(payload, 8 + 32 * i) for i in range(count)]
            guest, size, _user, offset = self.mem[0]
            self.mem_fd_inode = os.fstat(fds[0]).st_ino
            if self.region is not None:
                self.region.close()
            self.region = Region.from_fd(fds[0], guest, size)
            for fd in fds:
                os.close(fd)
            return tuple(self.mem[0])
        elif request in (r.SET_VRING_NUM, r.SET_VRING_BASE, r.SET_VRING_ENABLE):
            index, num = VRING_STATE.unpack(payload)
            ring = self.rings.setdefault(index, Ring())
            if request is r.SET_VRING_NUM:
                ring.num = num
            elif request is r.SET_VRING_BASE:
                ring.base = num
            else:
                ring.enabled = bool(num)
            return (index, num)
        elif request is r.SET_VRING_ADDR:
            index, _flags, desc, used, avail, _log = VRING_ADDR.unpack(payload)
            self.rings.setdefault(index, Ring()).addr = (desc, used, avail)
            return (index, desc, used, avail)
        elif request in (r.SET_VRING_KICK, r.SET_VRING_CALL):
            index = U64.unpack(payload)[0] & 0xFF
            ring = self.rings.setdefault(index, Ring())
            if request is r.SET_VRING_CALL:
                if ring.call >= 0:
                    os.close(ring.call)
                ring.call = fds[0]
            else:
                if ring.kick >= 0:
                    with contextlib.suppress(KeyError, ValueError):
                        sel.unregister(ring.kick)
                    os.close(ring.kick)
                ring.kick = fds[0]
                assert self.region is not None
                desc, used, avail = ring.addr
                ring.queue = DeviceQueue.create(
                    self.region, ring.num, desc, avail, used, self.acked_features or 0,
                    start_index=ring.base,
                )
                sel.register(ring.kick, selectors.EVENT_READ, index)
            return (index, len(fds))
        elif request is r.GET_VRING_BASE:
            index = VRING_STATE.unpack(payload)[0]
            ring = self.rings.setdefault(index, Ring())
            base = ring.queue.next_avail if ring.queue is not None else ring.base
            if ring.kick >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(ring.kick)
                os.close(ring.kick)
                ring.kick = -1
            self._reply(request, VRING_STATE.pack(index, base))
            if ring.held:
                self._stopped_with_held = (index, time.monotonic() + self.release_after_stop)
            else:
                ring.queue = None
            return (index, base)
        return None

    def _process(self, index: int) -> None:
        ring = self.rings.get(index)
        if ring is None or ring.queue is None or not ring.enabled:
            return
        queue = ring.queue
        while (chain := queue.pop()) is not None:
            written = chain.write(bytes([self.fill]) * chain.writable_len)
            if self.hold_completions:
                ring.held.append((chain.head, written))
            else:
                queue.add_used(chain.head, written)
        if not self.hold_completions and queue.needs_notification() and ring.call >= 0:
            os.eventfd_write(ring.call, 1)

    _stopped_with_held: tuple[int, float] | None = None

    def _release_held(self) -> None:
        pending = self._stopped_with_held
        if pending is None or time.monotonic() < pending[1]:
            return
        ring = self.rings[pending[0]]
        assert ring.queue is not None
        for head, written in ring.held:
            ring.queue.add_used(head, written)
        ring.held.clear()
        ring.queue = None
        self._stopped_with_held = None

    def signal_call(self, index: int) -> None:
        """Write ring ``index``'s call eventfd, as a back end does after using buffers."""
        os.eventfd_write(self.rings[index].call, 1)

    def close(self) -> None:
        """Stop serving and close the socket (the front end sees EOF); idempotent."""
        if self._stop:
            return
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        os.write(self._wake_w, b"x")
        self.thread.join(WAIT)
        for ring in self.rings.values():
            for fd in (ring.kick, ring.call):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.region is not None:
            self.region.close()


_REPLIES = {
    Request.GET_FEATURES,
    Request.GET_PROTOCOL_FEATURES,
    Request.GET_QUEUE_NUM,
    Request.GET_CONFIG,
    Request.GET_VRING_BASE,
}

ENTROPY = DeviceProfile("rng", 4, 0)
"""A device type for the fake (the real profiles are blk, net and fs)."""


@contextlib.contextmanager
def fake_pair(
    timeout: float = 1.0, **options: object
) -> Iterator[tuple[VhostUserFrontend, FakeBackend]]:
    """A front end connected to a fake back end over a socketpair; both closed at the end."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = FakeBackend(b, **options)  # type: ignore[arg-type]
    frontend = VhostUserFrontend(a, timeout=timeout, path="fake")
    try:
        yield frontend, backend
    finally:
        frontend.close()
        backend.close()


@contextlib.contextmanager
def fake_device(
    profile: DeviceProfile = ENTROPY, timeout: float = 1.0, **options: object
) -> Iterator[tuple[VhostUserDevice, FakeBackend]]:
    """A VhostUserDevice over a fake back end (closed at the end)."""
    with fake_pair(timeout, **options) as (frontend, backend):
        device = VhostUserDevice(frontend, profile)
        try:
            yield device, backend
        finally:
            device.close()
