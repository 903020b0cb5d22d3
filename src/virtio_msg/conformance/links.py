"""Where the device under test sits: in this process, or behind the socket protocol.

A :class:`DeviceLink` is the tool's side of the bus: it owns the region the
device maps, sends raw frames to the device side and queues every frame the
device side sends back (bounded waits only). :class:`InProcessLink` attaches a
:class:`~virtio_msg.bus.backend.Backend` (or any object with ``attach`` and
``deliver``) directly; :class:`SocketLink` listens on a Unix SEQPACKET socket
(or, for ``--connect``, dials a backend that listens) and plays the bus of
``docs/socket-protocol.md`` for one backend process: ANNOUNCE with the region
memfd, ADD / REMOVE answered OK at once (the tool probes the device itself,
afterwards), bus PING answered, every transport frame queued for the scenarios.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Protocol

import virtio_msg.spec as C
from virtio_msg.bus.protocol import (
    MSG_ADD,
    MSG_REMOVE,
    Announcement,
    Status,
    parse_control_request,
)
from virtio_msg.bus.socket_limits import PEERCRED
from virtio_msg.errors import BusError, MalformedMessage, VirtioMsgError
from virtio_msg.memory import Region
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import GenericMessage
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

DEFAULT_REGION_BASE = 0x1_0000_0000
"""Bus address of the tool's region (the loopback bus default)."""
DEFAULT_REGION_SIZE = 1 << 20
"""Size of the tool's region."""


class DeviceSide(Protocol):
    """An in-process device side: takes frames, sends through the port it is attached to."""

    def attach(self, port: _Port) -> None:
        """Connect to the tool."""

    def deliver(self, data: bytes) -> None:
        """Take one frame from the tool."""


class DeviceLink:
    """The tool's end of the bus: region, raw frames out, frames in (queued)."""

    def __init__(self, params: BusParams, region: Region) -> None:
        """Use ``params`` (the profile the device must speak) and the tool's ``region``."""
        self.params = params
        self.region = region
        self.frames: queue.Queue[bytes] = queue.Queue()
        self.devices: list[int] = []
        """Device numbers the device side offered (ADD or EVENT_DEVICE ADDED), in order."""
        self.bus_violations: list[str] = []
        """Bus messages from the device side that broke G-02 or were malformed."""

    def send(self, data: bytes) -> None:
        """Send one raw frame to the device side."""
        raise NotImplementedError

    def receive(self, timeout: float) -> bytes | None:
        """The next transport frame from the device side, or None after ``timeout`` seconds."""
        try:
            return self.frames.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Release the link (and the region)."""
        self.region.close()


class _Port:
    """The BusPort an in-process device side sends through."""

    def __init__(self, link: InProcessLink) -> None:
        self.link = link

    def send(self, data: bytes) -> None:
        self.link.frames.put(bytes(data))

    def add(self, dev_num: int) -> None:
        if dev_num not in self.link.devices:
            self.link.devices.append(dev_num)

    def remove(self, dev_num: int) -> None:
        if dev_num in self.link.devices:
            self.link.devices.remove(dev_num)


class InProcessLink(DeviceLink):
    """A device side in this process (a Backend, or a deliberately broken one)."""

    def __init__(self, params: BusParams, region: Region | None = None) -> None:
        """Create the region (unless given); attach device sides with :meth:`attach`."""
        super().__init__(params, region or Region(DEFAULT_REGION_SIZE, base=DEFAULT_REGION_BASE))
        self.port = _Port(self)
        self.side: DeviceSide | None = None

    def attach(self, side: DeviceSide) -> None:
        """Attach the device side (it ADDs its devices through the port)."""
        self.side = side
        side.attach(self.port)

    def send(self, data: bytes) -> None:
        """Deliver synchronously to the device side."""
        if self.side is not None:
            self.side.deliver(bytes(data))


class SocketLink(DeviceLink):
    """The tool as the socket bus for one backend process (``--socket`` or ``--connect PATH``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        params: BusParams,
        *,
        region_size: int = DEFAULT_REGION_SIZE,
        region_base: int = DEFAULT_REGION_BASE,
        listen: bool = True,
    ) -> None:
        """Listen at ``path`` (mode 0600; a stale socket file is replaced).

        With ``listen`` False the backend listens there instead and
        :meth:`connect` dials it (``--connect PATH``).
        """
        super().__init__(params, Region(region_size, base=region_base))
        self.path = Path(path)
        self.adapter = WireAdapter(params.profile, params.max_size)
        self._listener: socket.socket | None = None
        if listen:
            self._listener = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                self._bind()
            except BaseException:
                self._listener.close()
                self.region.close()
                raise
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._rx: threading.Thread | None = None
        self.reason: str | None = None
        self._added = threading.Event()
        self._last_add = 0.0

    def _bind(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise BusError(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # stale: nobody listening
            else:
                raise BusError(f"{self.path}: another bus is listening there")
            finally:
                probe.close()
        assert self._listener is not None
        old = os.umask(0o177)
        try:
            self._listener.bind(str(self.path))
        except OSError as exc:
            raise BusError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        self._listener.listen(1)

    def accept(self, timeout: float) -> None:
        """Wait (bounded) for the backend, send ANNOUNCE and the memfd, start reading."""
        if self._listener is None:
            raise BusError("this link dials the backend: use connect()")
        self._listener.settimeout(timeout)
        try:
            sock, _ = self._listener.accept()
        except TimeoutError:
            raise BusError(f"no backend connected to {self.path} within {timeout:.1f} s") from None
        self._start(sock)

    def connect(self, timeout: float) -> None:
        """Dial a backend listening at the path (retrying until it listens, bounded), then start.

        The backend must run as this user (or root): the region's memfd goes to it.
        """
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise BusError(f"no backend listening at {self.path} within {timeout:.1f} s "
                                   f"({exc.strerror})") from None
                time.sleep(0.05)
            except OSError as exc:
                sock.close()
                raise BusError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        _pid, uid, _gid = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
        if uid not in (os.geteuid(), 0):
            sock.close()
            raise BusError(f"{self.path}: the backend listening there runs as uid {uid}, "
                           "not as this user; refusing to pass it the region")
        self._start(sock)

    def _start(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        ann = Announcement.for_bus(self.params, self.region.base, self.region.size, 64)
        socket.send_fds(sock, [ann.encode()], [self.region.fd])
        self._sock = sock
        self._rx = threading.Thread(target=self._read_loop, name="conformance-rx", daemon=True)
        self._rx.start()

    def wait_devices(self, timeout: float, settle: float) -> list[int]:
        """Wait for the first ADD (bounded by ``timeout``), then for ``settle`` s without one."""
        if not self._added.wait(timeout):
            raise BusError(f"the backend added no device within {timeout:.1f} s"
                           + (f" ({self.reason})" if self.reason else ""))
        while time.monotonic() - self._last_add < settle:
            time.sleep(settle / 4)
        return list(self.devices)

    def send(self, data: bytes) -> None:
        """Send one frame to the backend (errors are kept in ``reason``)."""
        with self._send_lock:
            if self._sock is None:
                raise BusError("no backend connected")
            try:
                self._sock.send(data)
            except OSError as exc:
                self.reason = self.reason or f"send failed: {exc.strerror or exc}"
                raise BusError(f"send to the backend failed: {exc.strerror or exc}") from None

    def _read_loop(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(0x10000)
            except OSError as exc:
                self.reason = self.reason or f"receive failed: {exc}"
                return
            if not data:
                self.reason = self.reason or "the backend closed the connection"
                return
            if data[0] & C.TYPE_BUS:
                self._bus_message(data)
            else:
                self.frames.put(data)

    def _bus_message(self, data: bytes) -> None:
        try:
            msg = self.adapter.decode(data)
        except MalformedMessage as exc:
            self.bus_violations.append(f"malformed bus message {data[:8].hex()}: {exc}")
            return
        with contextlib.suppress(VirtioMsgError):
            if type(msg) is GenericMessage and msg.msg_id in (MSG_ADD, MSG_REMOVE):
                req = parse_control_request(msg)
                if msg.msg_id == MSG_ADD and req.dev_num not in self.devices:
                    self.devices.append(req.dev_num)
                elif msg.msg_id == MSG_REMOVE and req.dev_num in self.devices:
                    self.devices.remove(req.dev_num)
                self.send(self.adapter.encode(req.response(Status.OK).to_message()))
                if msg.msg_id == MSG_ADD:
                    self._last_add = time.monotonic()
                    self._added.set()
            elif type(msg) is S.Ping:
                self.send(self.adapter.encode(S.PingResp(msg.data, token=msg.token)))
            elif type(msg) is S.EventDevice:
                if msg.device_bus_state == C.DeviceBusState.ADDED:
                    if msg.device_number not in self.devices:
                        self.devices.append(msg.device_number)
                    self._last_add = time.monotonic()
                    self._added.set()
            elif type(msg) is S.GetDevices:
                self.send(self.adapter.encode(_get_devices_answer(msg, self.devices)))

    def close(self) -> None:
        """Hang up on the backend, remove the socket file, release the region."""
        with self._send_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._sock.close()
                self._sock = None
        if self._rx is not None:
            self._rx.join(5.0)
        if self._listener is not None:  # a dialled backend's socket file is its own
            self._listener.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
        super().close()


def _get_devices_answer(msg: S.GetDevices, present: list[int]) -> S.GetDevicesResp:
    count = min(msg.count, 0xFFFF - msg.offset + 1, 8 * 32)
    bitmap = bytearray((count + 7) // 8)
    for n in present:
        if msg.offset <= n < msg.offset + count:
            bitmap[(n - msg.offset) // 8] |= 1 << ((n - msg.offset) % 8)
    later = [n for n in present if n >= msg.offset + count]
    return S.GetDevicesResp(msg.offset, min(later) if later else 0, count, bytes(bitmap),
                            token=msg.token)


__all__ = ["DEFAULT_REGION_BASE", "DEFAULT_REGION_SIZE", "DeviceLink", "InProcessLink",
           "SocketLink"]
