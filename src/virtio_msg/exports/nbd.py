"""NBD export of a block target (a :class:`~virtio_msg.drivers.blk.BlkDriver`) on a Unix socket.

Strategy.  Standard tools (qemu-img, qemu-io, nbdinfo, the kernel's nbd
client) speak the Network Block Device protocol, so exporting the
driver-side disk over NBD lets them read and write it *through* virtio-msg:
every NBD command becomes virtio-blk requests that cross the bus and are
bounced through the restricted pool.

The server implements the fixed-newstyle handshake only (the server sends
NBDMAGIC/IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES; a client that does not set
FIXED_NEWSTYLE is disconnected), the options EXPORT_NAME, GO, INFO, LIST and
ABORT (everything else -- STARTTLS, STRUCTURED_REPLY, meta contexts, extended
headers -- gets NBD_REP_ERR_UNSUP, so clients fall back to simple replies),
and the commands READ, WRITE (with FUA), DISC, FLUSH, TRIM and WRITE_ZEROES
(with NO_HOLE), all answered with simple replies.  Unknown commands and flags
get EINVAL; reads and trims past the end EINVAL, writes past the end ENOSPC,
writes on a read-only export EPERM, target failures EIO.

Everything is bounded: option data (4 KiB plus the GO/INFO overhead; longer
options are drained up to 64 KiB and answered NBD_REP_ERR_TOO_BIG, beyond
that the client is dropped), the number of options per handshake, the
handshake time, the size of one READ/WRITE (32 MiB by default, announced with
NBD_INFO_BLOCK_SIZE; an oversized WRITE payload is never buffered -- the
client is disconnected), and the number of clients served if asked.

Clients are served one after another, on one thread, in arrival order; a
client that misbehaves only loses its own connection.  The socket is created
with mode 0600.  This module sits above ``bus/`` in the layering: it may use
threads and sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.loopback import DEFAULT_SIZE
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.errors import VirtioMsgError
from virtio_msg.exports.nbd_protocol import (
    COMMAND_FLAGS,
    COMMAND_NAMES,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_REQUEST,
    EXPORT_REPLY,
    HANDSHAKE,
    IHAVEOPT,
    MAX_DRAIN,
    MAX_OPTION_LENGTH,
    MAX_OPTIONS,
    MAX_STRING,
    NBD_CMD_DISC,
    NBD_CMD_FLAG_FUA,
    NBD_CMD_FLAG_NO_HOLE,
    NBD_CMD_FLUSH,
    NBD_CMD_READ,
    NBD_CMD_TRIM,
    NBD_CMD_WRITE,
    NBD_CMD_WRITE_ZEROES,
    NBD_EINVAL,
    NBD_EIO,
    NBD_ENOSPC,
    NBD_EPERM,
    NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_FIXED_NEWSTYLE,
    NBD_FLAG_HAS_FLAGS,
    NBD_FLAG_NO_ZEROES,
    NBD_FLAG_READ_ONLY,
    NBD_FLAG_SEND_FLUSH,
    NBD_FLAG_SEND_FUA,
    NBD_FLAG_SEND_TRIM,
    NBD_FLAG_SEND_WRITE_ZEROES,
    NBD_INFO_BLOCK_SIZE,
    NBD_INFO_DESCRIPTION,
    NBD_INFO_EXPORT,
    NBD_INFO_NAME,
    NBD_OPT_ABORT,
    NBD_OPT_EXPORT_NAME,
    NBD_OPT_GO,
    NBD_OPT_INFO,
    NBD_OPT_LIST,
    NBD_REP_ACK,
    NBD_REP_ERR_INVALID,
    NBD_REP_ERR_TOO_BIG,
    NBD_REP_ERR_UNKNOWN,
    NBD_REP_ERR_UNSUP,
    NBD_REP_INFO,
    NBD_REP_SERVER,
    NBDMAGIC,
    OPTION,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    PREFERRED_BLOCK,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    BlockTarget,
)
from virtio_msg.spec import DeviceId
from virtio_msg.transport.params import BusParams

log = logging.getLogger(__name__)

class _Disconnect(Exception):
    """The session ends: the peer went away, timed out or broke the protocol."""


class NbdServer:
    """Serve one :class:`BlockTarget` as an NBD export on a Unix socket.

    ``export_name`` is the export's name; the default export ("") is the same
    one.  ``max_clients`` stops the server after that many connections.  Use
    :meth:`start` (a background thread) or :meth:`serve` (this thread), and
    :meth:`close`; the object is a context manager.
    """

    def __init__(
        self,
        target: BlockTarget,
        path: str | os.PathLike[str],
        *,
        export_name: str = "virtio-blk",
        description: str = "virtio-blk disk through virtio-msg",
        max_request: int = DEFAULT_MAX_REQUEST,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float | None = None,
        max_clients: int | None = None,
    ) -> None:
        """Bind and listen on ``path`` (mode 0600); a stale socket file there is replaced."""
        if len(export_name.encode()) > MAX_STRING or len(description.encode()) > MAX_STRING:
            raise ValueError("export name and description must be at most 4096 bytes")
        if not 512 <= max_request <= 1 << 31:
            raise ValueError(f"max_request {max_request} outside 512..2**31")
        self.target = target
        self.path = os.fspath(path)
        self.export_name = export_name
        self.description = description
        self.max_request = max_request
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.clients = 0
        """Connections accepted so far."""
        self.commands: Counter[str] = Counter()
        """Commands handled, by name; errors as "error:<name>"."""
        self.rejected: Counter[str] = Counter()
        """Options refused and sessions dropped, by reason."""
        self.sessions_ended = 0
        """Sessions fully handled (their counters final): see :meth:`wait_sessions`."""
        self._ended = threading.Condition()
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sock = self._listen()

    def _listen(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(self.path).st_mode
            if not stat.S_ISSOCK(mode):
                raise ValueError(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # nobody listens: a stale socket file
            else:
                raise ValueError(f"{self.path}: another server is listening there")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)  # before listen(): nobody can connect yet
            sock.listen(4)
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc)
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                why += f" (the directory {directory} does not exist)"
            raise OSError(exc.errno, f"cannot listen on {self.path}: {why}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NbdServer:
        """Serve on a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve, name="virtio-msg-nbd", daemon=True)
            self._thread.start()
        return self

    def serve(self) -> None:
        """Accept and serve clients one at a time until :meth:`close` or ``max_clients``."""
        while not self._stop.is_set():
            if self.max_clients is not None and self.clients >= self.max_clients:
                break
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self.clients += 1
            with self._conn_lock:
                if self._stop.is_set():
                    conn.close()
                    break
                self._conn = conn
            try:
                self._session(conn)
            except Exception:  # one client's trouble never stops the server
                log.exception("nbd: session %d failed", self.clients)
            finally:
                with self._conn_lock:
                    self._conn = None
                conn.close()
                with self._ended:
                    self.sessions_ended += 1
                    self._ended.notify_all()
        self._stop.set()
        with self._ended:
            self._ended.notify_all()

    def wait_sessions(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` sessions have ended; False if not within ``timeout`` seconds.

        A client may hang up before the server has counted its last command: read
        the counters only after this returns True.
        """
        with self._ended:
            return self._ended.wait_for(lambda: self.sessions_ended >= count, timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server stops (``max_clients`` reached or closed); True if it did."""
        return self._stop.wait(timeout)

    def close(self) -> None:
        """Stop accepting, end the current session, remove the socket file."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> NbdServer:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the server."""
        self.close()

    # --- one session --------------------------------------------------------------------------

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(self.handshake_timeout)
        try:
            no_zeroes = self._greet(conn)
            if not self._negotiate(conn, no_zeroes):
                return
            conn.settimeout(self.idle_timeout)
            self._transmit(conn)
        except (_Disconnect, OSError) as exc:
            log.debug("nbd: session ends: %s", exc)

    def _greet(self, conn: socket.socket) -> bool:
        flags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
        conn.sendall(HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, flags))
        (flags,) = struct.unpack(">I", _recv(conn, 4))
        if not flags & NBD_FLAG_C_FIXED_NEWSTYLE or flags & ~0x3:
            self.rejected["client-flags"] += 1
            raise _Disconnect(f"client flags {flags:#x}: fixed newstyle only")
        return bool(flags & NBD_FLAG_C_NO_ZEROES)

    def _transmission_flags(self) -> int:
        t = self.target
        flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA
        if t.read_only:
            flags |= NBD_FLAG_READ_ONLY
        else:
            flags |= NBD_FLAG_SEND_WRITE_ZEROES
            if t.supports_discard:
                flags |= NBD_FLAG_SEND_TRIM
        return flags

    def _known(self, name: bytes) -> bool:
        return name in (b"", self.export_name.encode())

    def _negotiate(self, conn: socket.socket, no_zeroes: bool) -> bool:
        """Option haggling; True when the client moved to transmission."""
        for _ in range(MAX_OPTIONS):
            magic, opt, length = OPTION.unpack(_recv(conn, OPTION.size))
            if magic != IHAVEOPT:
                self.rejected["option-magic"] += 1
                raise _Disconnect(f"option magic {magic:#x}")
            if length > MAX_OPTION_LENGTH:
                if length > MAX_DRAIN or opt == NBD_OPT_EXPORT_NAME:
                    self.rejected["option-too-long"] += 1
                    raise _Disconnect(f"option {opt} of {length} bytes")
                _recv(conn, length)
                self._reply(conn, opt, NBD_REP_ERR_TOO_BIG, b"option too long")
                self.rejected["option-too-big"] += 1
                continue
            data = _recv(conn, length)
            if opt == NBD_OPT_EXPORT_NAME:
                if not self._known(data):
                    self.rejected["unknown-export"] += 1
                    raise _Disconnect("EXPORT_NAME of an unknown export")  # no error reply exists
                reply = EXPORT_REPLY.pack(self.target.size, self._transmission_flags())
                conn.sendall(reply if no_zeroes else reply + bytes(124))
                return True
            if opt == NBD_OPT_ABORT:
                with contextlib.suppress(OSError):
                    self._reply(conn, opt, NBD_REP_ACK)
                return False
            if opt == NBD_OPT_LIST:
                if data:
                    self._reply(conn, opt, NBD_REP_ERR_INVALID, b"LIST takes no data")
                    continue
                name = self.export_name.encode()
                self._reply(conn, opt, NBD_REP_SERVER, struct.pack(">I", len(name)) + name)
                self._reply(conn, opt, NBD_REP_ACK)
                continue
            if opt in (NBD_OPT_GO, NBD_OPT_INFO):
                if self._go(conn, opt, data) and opt == NBD_OPT_GO:
                    return True
                continue
            self.rejected[f"option-{opt}"] += 1
            self._reply(conn, opt, NBD_REP_ERR_UNSUP, b"option not supported")
        self.rejected["too-many-options"] += 1
        raise _Disconnect(f"more than {MAX_OPTIONS} options")

    def _go(self, conn: socket.socket, opt: int, data: bytes) -> bool:
        """Answer GO/INFO; True if the export was granted."""
        if len(data) < 6:
            self._reply(conn, opt, NBD_REP_ERR_INVALID, b"GO/INFO too short")
            return False
        (namelen,) = struct.unpack_from(">I", data)
        if namelen > MAX_STRING or 4 + namelen + 2 > len(data):
            self._reply(conn, opt, NBD_REP_ERR_INVALID, b"bad name length")
            return False
        name = data[4 : 4 + namelen]
        (count,) = struct.unpack_from(">H", data, 4 + namelen)
        if len(data) != 4 + namelen + 2 + 2 * count:
            self._reply(conn, opt, NBD_REP_ERR_INVALID, b"bad information request count")
            return False
        wanted = set(struct.unpack_from(f">{count}H", data, 4 + namelen + 2))
        if not self._known(name):
            self.rejected["unknown-export"] += 1
            self._reply(conn, opt, NBD_REP_ERR_UNKNOWN, b"no such export")
            return False
        info = struct.pack(">HQH", NBD_INFO_EXPORT, self.target.size, self._transmission_flags())
        self._reply(conn, opt, NBD_REP_INFO, info)
        if NBD_INFO_NAME in wanted:
            self._reply(conn, opt, NBD_REP_INFO, struct.pack(">H", NBD_INFO_NAME) + name)
        if NBD_INFO_DESCRIPTION in wanted:
            text = self.description.encode()
            self._reply(conn, opt, NBD_REP_INFO, struct.pack(">H", NBD_INFO_DESCRIPTION) + text)
        # Minimum 1: the driver does read-modify-write itself, so any alignment works.
        sizes = struct.pack(">HIII", NBD_INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, self.max_request)
        self._reply(conn, opt, NBD_REP_INFO, sizes)
        self._reply(conn, opt, NBD_REP_ACK)
        return True

    def _reply(self, conn: socket.socket, opt: int, kind: int, data: bytes = b"") -> None:
        conn.sendall(OPTION_REPLY.pack(OPTION_REPLY_MAGIC, opt, kind, len(data)) + data)

    # --- transmission ---------------------------------------------------------------------------

    def _transmit(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            magic, flags, cmd, cookie, offset, length = REQUEST.unpack(
                _recv(conn, REQUEST.size)
            )
            if magic != REQUEST_MAGIC:
                self.rejected["request-magic"] += 1
                raise _Disconnect(f"request magic {magic:#x}")
            if cmd == NBD_CMD_DISC:
                self.commands["DISC"] += 1
                return
            payload = b""
            if cmd == NBD_CMD_WRITE:
                if length > self.max_request:
                    self.rejected["write-too-large"] += 1
                    raise _Disconnect(f"WRITE of {length} bytes")  # never buffer it
                payload = _recv(conn, length)
            error, data = self._command(cmd, flags, offset, length, payload)
            reply = SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)
            if data:
                conn.sendall(reply)
                conn.sendall(data)
            else:
                conn.sendall(reply)

    def _command(
        self, cmd: int, flags: int, offset: int, length: int, payload: bytes
    ) -> tuple[int, bytes]:
        name = COMMAND_NAMES.get(cmd, f"cmd-{cmd}")
        error = self._check(cmd, flags, offset, length)
        data = b""
        if not error:
            try:
                data = self._run(cmd, flags, offset, length, payload)
            except (VirtioMsgError, OSError, ValueError) as exc:
                log.warning("nbd: %s at %d+%d failed: %s", name, offset, length, exc)
                error = NBD_EIO
        self.commands[f"error:{name}" if error else name] += 1
        return error, data

    def _check(self, cmd: int, flags: int, offset: int, length: int) -> int:
        allowed = COMMAND_FLAGS.get(cmd)
        if allowed is None or flags & ~allowed:
            return NBD_EINVAL  # unknown command or flag
        t = self.target
        writes = cmd in (NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES)
        if writes and t.read_only:
            return NBD_EPERM
        if cmd == NBD_CMD_FLUSH:
            return 0
        if cmd == NBD_CMD_READ and (length == 0 or length > self.max_request):
            return NBD_EINVAL
        if offset + length > t.size:
            return NBD_ENOSPC if cmd in (NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES) else NBD_EINVAL
        return 0

    def _run(self, cmd: int, flags: int, offset: int, length: int, payload: bytes) -> bytes:
        t = self.target
        if cmd == NBD_CMD_READ:
            return t.read(offset, length)
        if cmd == NBD_CMD_WRITE:
            t.write(offset, payload)
        elif cmd == NBD_CMD_TRIM:
            t.discard_range(offset, length)
        elif cmd == NBD_CMD_WRITE_ZEROES:
            t.zero_range(offset, length, unmap=not flags & NBD_CMD_FLAG_NO_HOLE)
        if cmd == NBD_CMD_FLUSH or flags & NBD_CMD_FLAG_FUA:
            t.flush()
        return b""


def _recv(conn: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or _Disconnect at end of stream."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = conn.recv_into(view[pos:], n - pos)
        if got == 0:
            raise _Disconnect("peer closed the connection")
        pos += got
    return bytes(buf)


# --- a disk to export, built from the pieces -------------------------------------------------


@contextlib.contextmanager
def blk_disk(
    image: str | os.PathLike[str] | None = None,
    *,
    size: int | None = None,
    read_only: bool = False,
    num_queues: int = 1,
    params: BusParams | None = None,
    region_size: int = DEFAULT_SIZE,
    **device_options: Any,
) -> Iterator[BlkDriver]:
    """A loopback bus with one virtio-blk device on ``image``; yields its :class:`BlkDriver`.

    ``image`` None uses a temporary image of ``size`` bytes.  Everything is
    closed on exit.
    """
    device = BlkDevice(
        image, size=size, read_only=read_only, num_queues=num_queues, **device_options
    )
    drivers = {**DRIVERS, DeviceId.BLOCK: BlkDriver}
    bus = LoopbackBus(params, size=region_size, drivers=drivers, name="nbd0")
    try:
        bus, backend, _channel = loopback_pair(bus)
        backend.serve(0, device)
        entry = bus.device(0)
        if entry is None or entry.driver is None:
            raise VirtioMsgError(f"blk device did not bind: {entry.error if entry else 'gone'}")
        if not isinstance(entry.driver, BlkDriver):
            raise VirtioMsgError(f"device 0 bound {type(entry.driver).__name__}, not BlkDriver")
        yield entry.driver
    finally:
        bus.close()
        device.close()


def serve_nbd(
    socket_path: str | os.PathLike[str],
    image: str | os.PathLike[str] | None = None,
    *,
    size: int | None = None,
    read_only: bool = False,
    params: BusParams | None = None,
    export_name: str = "virtio-blk",
    max_clients: int | None = None,
    ready: Callable[[NbdServer], None] | None = None,
) -> dict[str, Any]:
    """Export ``image`` through virtio-msg over NBD until ``max_clients`` or Ctrl-C.

    Builds the bus, the blk device and its driver (:func:`blk_disk`), serves
    on this thread, and returns a summary.  ``ready`` is called once the
    socket listens (the CLI prints the URI there).
    """
    with (
        blk_disk(image, size=size, read_only=read_only, params=params) as disk,
        NbdServer(disk, socket_path, export_name=export_name, max_clients=max_clients) as srv,
    ):
        if ready is not None:
            ready(srv)
        with contextlib.suppress(KeyboardInterrupt):
            srv.serve()
        return {
            "socket": srv.path,
            "size": disk.size,
            "clients": srv.clients,
            "commands": dict(srv.commands),
            "rejected": dict(srv.rejected),
        }


def nbd_uri(path: str | os.PathLike[str]) -> str:
    """The URI qemu-img/qemu-io/nbdinfo take for a Unix-socket export of the default name."""
    return f"nbd+unix:///?socket={os.fspath(path)}"


__all__ = [
    "DEFAULT_MAX_REQUEST",
    "IHAVEOPT",
    "NBDMAGIC",
    "BlockTarget",
    "NbdServer",
    "blk_disk",
    "nbd_uri",
    "serve_nbd",
]
