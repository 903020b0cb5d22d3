"""virtio-console driver (device id 3): ports as byte streams.

Strategy.  Each port keeps ``RX_BUFFERS`` receive buffers of ``RX_BUFFER_SIZE``
bytes in flight or held.  A used receive buffer becomes a *chunk* the
application has not read yet; a new buffer is posted only when a chunk has
been read in full, so the driver never holds more than ``RX_BUFFERS`` chunks.
That is the flow control: a slow reader leaves the device without buffers,
the device's inbox fills, and the device stops reading its source -- no byte
is dropped anywhere.  Writes are cut into ``TX_CHUNK`` buffers; at most
``TX_BUFFERS`` are in flight and :meth:`ConsolePort.write` waits (bounded)
for completions when the queue is full.

With VIRTIO_CONSOLE_F_MULTIPORT the driver follows Linux's handshake:
DEVICE_READY after DRIVER_OK; on DEVICE_ADD it creates the port, posts its
receive buffers and answers PORT_READY, then opens it (PORT_OPEN 1).
CONSOLE_PORT, PORT_NAME, RESIZE and the host's PORT_OPEN are recorded on the
port; the host's PORT_OPEN 0 is end of stream once every received byte was
read.  :meth:`ConsolePort.close` sends PORT_OPEN 0: the device half-closes
its stream, and data already on its way still arrives.  Without MULTIPORT
there is exactly one port (0) and no end of stream.

Threads and locks.  Used-buffer callbacks run on the bus's event thread and
only reap (never wait); control replies that find the control transmitq full
are kept and sent when it drains.  One re-entrant lock covers every queue
operation of the driver: the queues bounce through one DmaPool, which has no
lock of its own.  No lock is held while waiting (``transport.wait_until``,
whose predicates also reap), and config reads happen only on caller threads.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final

from virtio_msg.drivers.base import Driver
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.memory import PoolError
from virtio_msg.spec import DeviceId
from virtio_msg.virtqueue import DriverRing, QueueFull

log = logging.getLogger(__name__)

__all__ = [
    "RX_BUFFERS",
    "RX_BUFFER_SIZE",
    "TX_BUFFERS",
    "TX_CHUNK",
    "ConsoleDriver",
    "ConsoleError",
    "ConsolePort",
    "WriteTimeout",
]

VIRTIO_CONSOLE_F_SIZE: Final = 0
VIRTIO_CONSOLE_F_MULTIPORT: Final = 1
VIRTIO_CONSOLE_F_EMERG_WRITE: Final = 2
_CONFIG: Final = struct.Struct("<HHII")
_CONTROL: Final = struct.Struct("<IHH")
_RESIZE: Final = struct.Struct("<HH")  # cols, rows (the spec's order)
_DEVICE_READY, _DEVICE_ADD, _DEVICE_REMOVE, _PORT_READY = 0, 1, 2, 3
_CONSOLE_PORT, _RESIZE_EVENT, _PORT_OPEN, _PORT_NAME = 4, 5, 6, 7
_CONTROL_RX, _CONTROL_TX = 2, 3

RX_BUFFERS: Final = 16
"""Receive buffers per port: posted plus received-but-unread."""
RX_BUFFER_SIZE: Final = 2048
"""One pool slot each."""
TX_CHUNK: Final = 2048
"""Largest transmit buffer (one pool slot)."""
TX_BUFFERS: Final = 16
"""Transmit buffers in flight per port."""
CONTROL_BUFFERS: Final = 8
CONTROL_BUFFER_SIZE: Final = 256
"""Room for a control header and a port name."""
MAX_PORTS: Final = 32
QUEUE_SIZE: Final = 64


class ConsoleError(VirtioMsgError):
    """A console operation is not possible (feature not negotiated, port gone, echo wrong)."""


class WriteTimeout(TransportError):
    """A write did not finish in time; ``written`` bytes were queued before that."""

    def __init__(self, message: str, written: int) -> None:
        """Record how much was written."""
        super().__init__("timeout", message)
        self.written = written


class ConsolePort:
    """One port, driver side: a byte stream with bounded waits."""

    def __init__(
        self, driver: ConsoleDriver, port_id: int, rxq: DriverRing, txq: DriverRing
    ) -> None:
        """Bind the port to its queues (the driver creates ports)."""
        self.driver = driver
        self.id = port_id
        self.rxq = rxq
        self.txq = txq
        self.name = ""
        """PORT_NAME, if the device gave one."""
        self.is_console = port_id == 0 and not driver.multiport
        self.size: tuple[int, int] | None = None
        """(cols, rows) from RESIZE, if any."""
        self.host_connected = not driver.multiport
        self.guest_open = False
        self.removed = False
        self._lock = driver.queue_lock
        self._chunks: deque[memoryview] = deque()
        self._host_closed = False

    # --- receiving ---------------------------------------------------------------------

    def _post_rx(self) -> None:
        """Top up receive buffers so posted + held chunks = RX_BUFFERS."""
        with self._lock:
            added = 0
            while self.rxq.outstanding + len(self._chunks) < RX_BUFFERS:
                try:
                    self.rxq.add((), (RX_BUFFER_SIZE,), None)
                except (QueueFull, PoolError) as exc:
                    log.warning("console port %d: cannot post a receive buffer: %s", self.id, exc)
                    break
                added += 1
            if added:
                self.driver.transport.notify(self.rxq)

    def _reap_rx(self) -> None:
        with self._lock:
            for _token, data in self.rxq.get_used():
                if data:
                    self._chunks.append(memoryview(data))

    def _readable(self) -> bool:
        with self._lock:
            closed = self._host_closed  # before reaping: data precedes the close
            self._reap_rx()
            return bool(self._chunks) or closed or self.removed

    def _consume(self, n: int) -> bytes:
        """Take up to ``n`` received bytes (no waiting); a fully read chunk frees a buffer."""
        with self._lock:
            out = bytearray()
            while self._chunks and len(out) < n:
                head = self._chunks[0]
                take = min(n - len(out), len(head))
                out += head[:take]
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
            if not self.removed:
                self._post_rx()
            return bytes(out)

    def read(self, n: int = 4096, timeout: float | None = None) -> bytes:
        """Return 1..n bytes as soon as any arrive; b"" at end of stream.

        Waits at most ``timeout`` seconds (default: the bus's request timeout)
        and raises TransportError("timeout") if nothing came.
        """
        if n <= 0:
            return b""
        self.driver.wait(self._readable, timeout)
        return self._consume(n)

    def read_exactly(self, n: int, timeout: float | None = None) -> bytes:
        """Read exactly ``n`` bytes within ``timeout`` (ConsoleError at end of stream first)."""
        out = bytearray()
        deadline = self.driver.deadline(timeout)
        while len(out) < n:
            data = self.read(n - len(out), _left(deadline))
            if not data:
                raise ConsoleError(f"port {self.id}: end of stream after {len(out)} of {n} bytes")
            out += data
        return bytes(out)

    def readline(self, timeout: float | None = None, limit: int = 65536) -> bytes:
        """Read through the next newline (or to end of stream, or ``limit`` bytes)."""
        out = bytearray()
        deadline = self.driver.deadline(timeout)
        while len(out) < limit and not out.endswith(b"\n"):
            self.driver.wait(self._readable, _left(deadline))
            with self._lock:
                if not self._chunks:
                    break  # end of stream
                nl = bytes(self._chunks[0]).find(b"\n")
                take = len(self._chunks[0]) if nl < 0 else nl + 1
                out += self._consume(min(take, limit - len(out)))
        return bytes(out)

    @property
    def at_eof(self) -> bool:
        """True when the host closed and every byte was read."""
        with self._lock:
            self._reap_rx()
            return self._host_closed and not self._chunks

    # --- sending -----------------------------------------------------------------------

    def _reap_tx(self) -> int:
        with self._lock:
            return len(self.txq.get_used())

    def write(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> int:
        """Queue all of ``data``; wait (bounded) for room. Returns len(data).

        Raises :class:`WriteTimeout` (with ``written``) if the device took too
        long to make room, e.g. an echo nobody reads.
        """
        view = memoryview(bytes(data))
        pos = 0
        deadline = self.driver.deadline(timeout)
        while pos < len(view):
            if self.removed:
                raise ConsoleError(f"port {self.id} was removed")
            with self._lock:
                self._reap_tx()
                added = 0
                while pos < len(view) and self.txq.outstanding < TX_BUFFERS:
                    chunk = view[pos : pos + TX_CHUNK]
                    try:
                        self.txq.add((chunk,), (), None)
                    except (QueueFull, PoolError):
                        break
                    pos += len(chunk)
                    added += 1
                if added:
                    self.driver.transport.notify(self.txq)
                elif self.txq.outstanding == 0:
                    raise ConsoleError(f"port {self.id}: no pool room for a transmit buffer")
            if pos < len(view):
                try:
                    self.driver.wait(
                        lambda: self._reap_tx() > 0 or self.txq.outstanding == 0, _left(deadline)
                    )
                except TransportError as exc:
                    if exc.kind != "timeout":
                        raise
                    raise WriteTimeout(
                        f"port {self.id}: {pos} of {len(view)} bytes written: {exc}", pos
                    ) from None
        return len(view)

    def _tx_idle(self) -> bool:
        with self._lock:
            self._reap_tx()
            return self.txq.outstanding == 0

    def flush(self, timeout: float | None = None) -> None:
        """Wait (bounded) until the device has taken every written byte."""
        self.driver.wait(self._tx_idle, timeout)

    # --- control -------------------------------------------------------------------------

    def open(self) -> None:
        """Tell the device the port is open (PORT_OPEN 1; multiport only)."""
        self.guest_open = True
        if self.driver.multiport:
            self.driver.send_control(self.id, _PORT_OPEN, 1)

    def close(self) -> None:
        """Close the port (PORT_OPEN 0): the device ends its stream's input side.

        Reading continues until the device reports end of stream.  Needs
        VIRTIO_CONSOLE_F_MULTIPORT (ConsoleError otherwise).
        """
        if not self.driver.multiport:
            raise ConsoleError("closing a port needs VIRTIO_CONSOLE_F_MULTIPORT")
        self.flush()
        self.guest_open = False
        self.driver.send_control(self.id, _PORT_OPEN, 0)

    # Called with the control lock held: plain attribute stores, no port lock (lock order).
    def _host_open(self, value: int) -> None:
        self.host_connected = value == 1
        self._host_closed = value != 1

    def _remove(self) -> None:
        self.removed = True
        self._host_closed = True

    def __repr__(self) -> str:
        """Id, name and state."""
        return (
            f"<ConsolePort {self.id} {self.name!r} console={self.is_console} "
            f"host={self.host_connected} open={self.guest_open}>"
        )


class ConsoleDriver(Driver):
    """Driver for the console device: ports, control handshake, emergency write."""

    device_id: ClassVar[int] = DeviceId.CONSOLE
    name: ClassVar[str] = "console"
    device_features: ClassVar[int] = (
        (1 << VIRTIO_CONSOLE_F_SIZE)
        | (1 << VIRTIO_CONSOLE_F_MULTIPORT)
        | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE)
    )

    @property
    def multiport(self) -> bool:
        """True if VIRTIO_CONSOLE_F_MULTIPORT was negotiated."""
        return self.transport.has_feature(VIRTIO_CONSOLE_F_MULTIPORT)

    def setup(self) -> None:
        """Read the config, set up every queue (callbacks reap on events)."""
        self.queue_lock = threading.RLock()
        """Held for every operation on this driver's queues (they share the pool)."""
        self.ports: dict[int, ConsolePort] = {}
        self.max_ports = 1
        self.stats: dict[str, int] = {}
        self._ctrl_pending: deque[bytes] = deque()
        self._size_stale = True
        self._size: tuple[int, int] | None = None
        if self.multiport:
            max_ports = _CONFIG.unpack(self.transport.get_config(0, _CONFIG.size))[2]
            self.max_ports = max(1, min(max_ports, MAX_PORTS))
        nq = 2 + 2 * self.max_ports if self.multiport else 2
        callbacks: list[Callable[[DriverRing], None] | None] = []
        for index in range(nq):
            if index in (_CONTROL_RX, _CONTROL_TX) and self.multiport:
                callbacks.append(self._on_control_rx if index == _CONTROL_RX else self._on_ctrl_tx)
            else:
                callbacks.append(self._on_data)
        self.vqs = self.transport.find_vqs(nq, callbacks, size=QUEUE_SIZE)
        self.transport.config_changed = self._on_config

    def probe(self) -> None:
        """Initialise, then start the port handshake (multiport) or add port 0."""
        super().probe()
        if self.multiport:
            self._post_control()
            self.send_control(0, _DEVICE_READY, 1)
        else:
            port = self._make_port(0)
            port.guest_open = True
            port._post_rx()

    def remove(self) -> None:
        """Every port ends: readers see end of stream, writers an error."""
        for port in list(self.ports.values()):
            port._remove()

    # --- ports ------------------------------------------------------------------------

    def _make_port(self, port_id: int) -> ConsolePort:
        rx, tx = (0, 1) if port_id == 0 else (2 + 2 * port_id, 3 + 2 * port_id)
        port = ConsolePort(self, port_id, self.vqs[rx], self.vqs[tx])
        self.ports[port_id] = port
        return port

    def port(
        self, port_id: int = 0, timeout: float | None = None, *, connected: bool = True
    ) -> ConsolePort:
        """The port ``port_id``, waiting (bounded) for the device to add it.

        With ``connected`` (the default) also wait for the host side's
        PORT_OPEN (or its end of stream): the device sends CONSOLE_PORT and
        PORT_NAME before it, so the port's name and role are known by then.
        """

        def ready() -> bool:
            self._poll_control()
            p = self.ports.get(port_id)
            return p is not None and (not connected or p.host_connected or p._host_closed)

        self.wait(ready, timeout)
        return self.ports[port_id]

    def console(self, timeout: float | None = None) -> ConsolePort:
        """The console port (CONSOLE_PORT, else port 0)."""
        port = self.port(0, timeout)
        for p in self.ports.values():
            if p.is_console:
                return p
        return port

    def read(self, n: int = 4096, timeout: float | None = None) -> bytes:
        """Read from the console port."""
        return self.console(timeout).read(n, timeout)

    def write(self, data: bytes, timeout: float | None = None) -> int:
        """Write to the console port."""
        return self.console(timeout).write(data, timeout)

    # --- config ----------------------------------------------------------------------

    def _on_config(self) -> None:
        self._size_stale = True  # read on a caller's thread, never on the event thread

    def size(self) -> tuple[int, int] | None:
        """(cols, rows): the console port's RESIZE if given, else the config (F_SIZE)."""
        for p in self.ports.values():
            if p.is_console and p.size is not None:
                return p.size
        if not self.transport.has_feature(VIRTIO_CONSOLE_F_SIZE):
            return None
        if self._size_stale:
            self._size_stale = False
            cols, rows = _RESIZE.unpack(self.transport.get_config(0, 4))
            self._size = (cols, rows)
        return self._size

    def emergency_write(self, data: bytes) -> None:
        """Write bytes through emerg_wr (config space), one per request."""
        if not self.transport.has_feature(VIRTIO_CONSOLE_F_EMERG_WRITE):
            raise ConsoleError("VIRTIO_CONSOLE_F_EMERG_WRITE was not negotiated")
        for byte in data:
            if not self.transport.set_config(8, struct.pack("<I", byte)):
                raise ConsoleError("the device refused an emergency write")

    # --- waiting -----------------------------------------------------------------------

    def deadline(self, timeout: float | None) -> float:
        """Absolute monotonic deadline for ``timeout`` (default: the bus's request timeout)."""
        limit = self.transport.params.timeout_ms / 1000 if timeout is None else timeout
        return time.monotonic() + max(limit, 0.0)

    def wait(self, predicate: Callable[[], Any], timeout: float | None) -> Any:
        """Wait (bounded) for ``predicate``; re-checked on every event and every 50 ms.

        The predicate runs with the queue lock, taken *without blocking*: the
        transport evaluates it under its event condition, and a thread that
        holds the queue lock may be delivering an event inline (queue lock,
        then condition).  When the lock is busy the check simply comes again.
        """

        def guarded() -> Any:
            if not self.queue_lock.acquire(blocking=False):
                return False
            try:
                return predicate()
            finally:
                self.queue_lock.release()

        return self.transport.wait_until(guarded, timeout)

    # --- callbacks (event thread: reap only) ---------------------------------------------

    def _on_data(self, vq: DriverRing) -> None:
        try:
            for port in list(self.ports.values()):
                if vq is port.rxq:
                    port._reap_rx()
                elif vq is port.txq:
                    port._reap_tx()
        except VirtioMsgError as exc:  # a lying device or a queue torn down meanwhile
            log.warning("console: queue %d: %s", vq.index, exc)

    def _on_control_rx(self, vq: DriverRing) -> None:
        try:
            self._poll_control()
        except VirtioMsgError as exc:
            log.warning("console: control: %s", exc)

    def _on_ctrl_tx(self, vq: DriverRing) -> None:
        try:
            self._flush_control()
        except VirtioMsgError as exc:
            log.warning("console: control: %s", exc)

    # --- control ---------------------------------------------------------------------

    def _post_control(self) -> None:
        with self.queue_lock:
            q = self.vqs[_CONTROL_RX]
            added = 0
            while q.outstanding < CONTROL_BUFFERS:
                try:
                    q.add((), (CONTROL_BUFFER_SIZE,), None)
                except (QueueFull, PoolError) as exc:
                    log.warning("console: cannot post a control buffer: %s", exc)
                    break
                added += 1
            if added:
                self.transport.notify(q)

    def send_control(self, port_id: int, event: int, value: int) -> None:
        """Queue a control message to the device (sent now, or when the queue drains)."""
        with self.queue_lock:
            self._ctrl_pending.append(_CONTROL.pack(port_id, event, value))
        self._flush_control()

    def _flush_control(self) -> None:
        with self.queue_lock:
            q = self.vqs[_CONTROL_TX]
            q.get_used()
            added = 0
            while self._ctrl_pending:
                try:
                    q.add((self._ctrl_pending[0],), (), None)
                except (QueueFull, PoolError):
                    break  # sent when a buffer comes back
                self._ctrl_pending.popleft()
                added += 1
            if added:
                self.transport.notify(q)

    def _poll_control(self) -> bool:
        """Reap and handle control messages; False (for use in wait predicates)."""
        if not self.multiport:
            return False
        with self.queue_lock:
            msgs = self.vqs[_CONTROL_RX].get_used()
            for _token, data in msgs:
                self._control(data)
            if msgs:
                self._post_control()
        self._flush_control()
        return False

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _control(self, data: bytes) -> None:
        if len(data) < _CONTROL.size:
            self._count("control-short")
            return
        port_id, event, value = _CONTROL.unpack_from(data)
        payload = data[_CONTROL.size :]
        if event == _DEVICE_ADD:
            if port_id >= self.max_ports or port_id in self.ports:
                self._count("control-bad-add")
                self.send_control(port_id, _PORT_READY, 0)
                return
            port = self._make_port(port_id)
            port._post_rx()
            self.send_control(port_id, _PORT_READY, 1)
            port.open()
            return
        known = self.ports.get(port_id)
        if known is None:
            self._count("control-unknown-port")
            return
        port = known
        if event == _DEVICE_REMOVE:
            port._remove()
            del self.ports[port_id]
        elif event == _CONSOLE_PORT:
            port.is_console = value == 1
        elif event == _RESIZE_EVENT and len(payload) >= _RESIZE.size:
            port.size = _RESIZE.unpack_from(payload)
        elif event == _PORT_OPEN:
            port._host_open(value)
        elif event == _PORT_NAME:
            port.name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        else:
            self._count("control-unexpected")

    # --- run self-test -----------------------------------------------------------------

    def selftest(self) -> dict[str, object]:
        """Write a line to the console port and read the echo back."""
        port = self.console()
        line = b"virtio-msg console self-test\n"
        port.write(line)
        got = port.read_exactly(len(line))
        if got != line:
            raise ConsoleError(f"console echoed {got!r}, not {line!r}")
        return {
            "ports": len(self.ports),
            "multiport": self.multiport,
            "echo": f"{len(line)} bytes",
        }


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
