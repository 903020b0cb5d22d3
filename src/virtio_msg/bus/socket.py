"""The socket channel, bus side: a Unix SOCK_SEQPACKET listener and one channel per backend.

Theory of operation.  :class:`SocketServer` listens on a socket file (mode
0600, in a directory only this user can write) for one
:class:`~virtio_msg.bus.loopback.LoopbackBus`.  Each backend connection
becomes a :class:`SocketChannel`, attached to the bus like the in-process
channel: one datagram is one virtio-msg message in the bus's profile.  The
first datagram is ANNOUNCE (:mod:`virtio_msg.bus.protocol`) with the region's
memfd passed by ``SCM_RIGHTS``; after it the backend ADDs and REMOVEs device
numbers and answers the bus's requests.

Threads, and why none of them can block the bus:

* one *acceptor* per server (poll on the listening socket and a wake pipe);
* one *reader* per connection.  It receives, validates and dispatches:
  responses complete requests at once (:meth:`LoopbackBus.receive` only sets
  an event); PING / GET_DEVICES are answered inline; events go to the
  server's *event pump* thread, because driver callbacks may block; ADD,
  REMOVE and EVENT_DEVICE go to the connection's *control worker*, because
  ADD probes the device and the probe waits for responses that this very
  reader must receive (the seed's ordering trap);
* a *writer* per connection, started only when the backend stops draining its
  socket: sends are non-blocking; what does not fit waits in a bounded
  backlog, and a backlog that is full or makes no progress for ``stall_ms``
  disconnects the backend ("not reading").

Latency: a driver thread that sends a request becomes the connection's
*leader* if no one else is reading (a non-blocking lock): it receives and
dispatches datagrams itself until its own response arrives or a short window
passes, then returns and the bus waits as usual.  This saves the wake-up of a
second thread per request; the reader thread yields the socket to a leader, and
its one-shot epoll watch is re-armed only by itself, so a leader makes no epoll
call.
Dispatch always happens under the same lock, so messages are handled in the
order the backend sent them.

Limits (:class:`SocketLimits`) make every queue bounded and every wait timed:
connections, devices per connection, malformed datagrams, responses nobody
asked for, bus-message and event rates, queued events, queued ADD/REMOVE,
outgoing backlog.  A violation disconnects only that backend, with a logged
reason; the bus then fails its in-flight requests and removes its devices
(their drivers see "removed"), and keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import stat
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from virtio_msg.bus.loopback import LoopbackBus
from virtio_msg.bus.socket_channel import SocketChannel
from virtio_msg.bus.socket_limits import JOIN_TIMEOUT, PEERCRED, POLL_MS, SocketLimits
from virtio_msg.bus.socket_pump import EventPump
from virtio_msg.errors import BusError, VirtioMsgError

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "bus.sock"
"""File name of the default socket inside the private directory."""
LISTEN_BACKLOG: Final = 16
"""Pending connections the kernel queues before accept()."""


# --- the socket file ----------------------------------------------------------------------


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/virtio-msg/bus.sock``, else ``/tmp/virtio-msg-UID/bus.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "virtio-msg" / SOCKET_NAME
    return Path(f"/tmp/virtio-msg-{os.geteuid()}") / SOCKET_NAME


def check_private_dir(directory: Path) -> None:
    """Raise BusError unless ``directory`` is a directory owned by us that no one else can write."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise BusError(f"socket directory {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BusError(f"socket directory {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise BusError(
            f"socket directory {directory} belongs to uid {st.st_uid}, not to this user "
            f"({os.geteuid()}); choose a private directory"
        )
    if st.st_mode & 0o022:
        raise BusError(
            f"socket directory {directory} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); choose a directory only you can write"
        )


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and every missing parent of it with mode 0700.

    (``os.makedirs`` would give the parents the umask's mode, typically 0755.)
    Raises BusError naming the folder that could not be created.
    """
    missing: list[Path] = []
    current = directory
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue  # created meanwhile by someone else: check_private_dir judges it
        except OSError as exc:
            raise BusError(f"cannot create socket directory {folder}: {exc.strerror}") from None


def _prepare_path(path: Path) -> None:
    directory = path.parent
    make_private_dirs(directory)
    check_private_dir(directory)
    if len(os.fsencode(path)) >= 108:
        raise BusError(f"socket path {path} is too long for a Unix socket (107 bytes at most)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BusError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale socket of a bus that is gone
        return
    except OSError as exc:
        raise BusError(f"{path} exists and cannot be probed: {exc.strerror}") from None
    finally:
        probe.close()
    raise BusError(f"another bus is already listening on {path}")


def listen(path: Path) -> socket.socket:
    """Bind and listen on ``path`` (mode 0600 in a private directory)."""
    _prepare_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(os.fspath(path))
        # The directory is private, so nobody can reach the file before the chmod.
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise BusError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def _seal(fd: int) -> bool:
    """Forbid the region memfd from shrinking or growing, if the memfd allows seals.

    Without seals a backend could truncate the file and make the bus's own
    accesses fault (SIGBUS).
    """
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except OSError:  # EPERM: created without MFD_ALLOW_SEALING
        return False
    return True


# --- the server --------------------------------------------------------------------------------


class SocketServer:
    """Serves one :class:`~virtio_msg.bus.loopback.LoopbackBus` on a Unix SOCK_SEQPACKET socket.

    ``start()`` creates the socket file and begins accepting backends;
    ``close()`` disconnects them all (their devices are removed), removes
    the file and stops the threads.  The bus itself stays open: its owner
    closes it.
    """

    def __init__(
        self,
        bus: LoopbackBus,
        path: str | os.PathLike[str] | None = None,
        *,
        limits: SocketLimits | None = None,
    ) -> None:
        """Prepare to serve ``bus`` on ``path`` (default :func:`default_socket_path`)."""
        self.bus = bus
        self.path = Path(path) if path is not None else default_socket_path()
        self.limits = limits or SocketLimits()
        self.on_connect: list[Callable[[SocketChannel], None]] = []
        """Called (on the acceptor thread) after a backend got its ANNOUNCE."""
        self.on_disconnect: list[Callable[[SocketChannel, str], None]] = []
        """Called (on the connection's reader thread) after a backend is gone."""
        self.disconnects: deque[tuple[str, str]] = deque(maxlen=256)
        """(backend name, reason) of recent disconnections."""
        self.refused = 0
        """Connections refused at accept (limit or foreign uid)."""
        self.sealed = False
        """Whether the region memfd is sealed against shrinking and growing."""
        self._channels: list[SocketChannel] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._pump: EventPump
        self._wake_r, self._wake_w = -1, -1
        self._count = 0
        self._closing = False

    def __repr__(self) -> str:
        """Bus, path and number of backends."""
        return f"<SocketServer {self.bus.name} on {self.path} backends={len(self._channels)}>"

    def start(self) -> SocketServer:
        """Create the socket file and start accepting backends."""
        if self._listener is not None:
            raise BusError(f"socket server of {self.bus.name} already started")
        self.sealed = _seal(self.bus.region.fd)
        if not self.sealed:
            log.info(
                "%s: region memfd cannot be sealed; a backend could shrink it under the bus",
                self.bus.name,
            )
        self._listener = listen(self.path)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pump = EventPump(self.bus.name)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"vmsg-{self.bus.name}-accept", daemon=True
        )
        self._acceptor.start()
        log.info("%s: listening on %s", self.bus.name, self.path)
        return self

    def channels(self) -> list[SocketChannel]:
        """Backends currently connected."""
        with self._lock:
            return list(self._channels)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until what backends sent so far has been handled; True if it has.

        A PING to each backend comes back after everything it sent before,
        and then the event pump is waited for; so counters and device state
        reflect every event already on the way (e.g. EVENT_USED of a buffer
        the driver saw completed in shared memory first).  Bounded by
        ``timeout`` (default: the bus's timeout) per step.
        """
        limit = self.bus.params.timeout_ms / 1000 if timeout is None else timeout
        for channel in self.channels():
            with contextlib.suppress(VirtioMsgError):
                channel.ping(timeout=limit)
        return self._listener is None or self._pump.wait_idle(limit)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closing:
            events = poller.poll(POLL_MS)
            if self._closing:
                return
            if not any(fd == self._listener.fileno() for fd, _ in events):
                continue
            try:
                conn, _addr = self._listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
                    log.warning("%s: accept failed: %s", self.bus.name, exc)
                continue
            try:
                self._admit(conn)
            except Exception:
                log.exception("%s: setting up a connection failed", self.bus.name)
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        pid, uid, _gid = PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
        me = os.geteuid()
        with self._lock:
            full = len(self._channels) >= self.limits.max_connections
            if uid not in (me, 0) or full:
                self.refused += 1
            else:
                self._count += 1
                channel = SocketChannel(self, conn, self._count, pid, uid)
                self._channels.append(channel)
        if uid not in (me, 0):
            log.warning("%s: refused pid %d of uid %d (not this user)", self.bus.name, pid, uid)
            conn.close()
            return
        if full:
            log.warning(
                "%s: refused pid %d: %d backends connected (limit)",
                self.bus.name,
                pid,
                self.limits.max_connections,
            )
            conn.close()
            return
        try:
            channel.start()
        except VirtioMsgError as exc:
            log.warning("%s: cannot serve %s: %s", self.bus.name, channel.name, exc)
            with self._lock:
                self._channels.remove(channel)
            channel._epoll.close()
            conn.close()
            return
        log.info("%s: %s connected", self.bus.name, channel.name)
        for cb in self.on_connect:
            cb(channel)

    def queue_event(self, channel: SocketChannel, data: bytes) -> None:
        """Hand one validated event datagram of ``channel`` to the event pump (ChannelHost)."""
        self._pump.put(channel, data)

    def forget(self, channel: SocketChannel, reason: str) -> None:
        """Drop a torn-down connection and tell the disconnect callbacks (ChannelHost)."""
        with self._lock:
            if channel in self._channels:
                self._channels.remove(channel)
        self.disconnects.append((channel.name, reason))
        for cb in self.on_disconnect:
            try:
                cb(channel, reason)
            except Exception:
                log.exception("%s: disconnect callback failed", self.bus.name)

    def close(self) -> None:
        """Stop accepting, disconnect every backend, remove the socket file."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self._listener is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT)
        for channel in self.channels():
            channel.disconnect("the bus is shutting down", violation=False)
        self._pump.stop()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SocketServer:
        """Start serving (if not started) and return the server."""
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the server (not the bus)."""
        self.close()


__all__ = [
    "SOCKET_NAME",
    "SocketChannel",
    "SocketLimits",
    "SocketServer",
    "check_private_dir",
    "default_socket_path",
    "listen",
    "make_private_dirs",
]
