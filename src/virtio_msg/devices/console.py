"""virtio-console device model (device id 3): ports connected to byte streams.

Strategy.  Each port joins a pair of virtqueues to a device-side
:class:`ByteStream`: :class:`EchoStream` here (the default, no I/O), or the
streams that do I/O -- a file-descriptor pair, a pty, a TCP connection on
127.0.0.1, a program -- which live above the bus layer, in
:mod:`virtio_msg.streams` (nothing below bus/ performs I/O).  Queues
follow the spec: receiveq0 (0), transmitq0 (1), the control
receiveq (2) and transmitq (3) with VIRTIO_CONSOLE_F_MULTIPORT, then
receiveqN = 2 + 2N and transmitqN = 3 + 2N.

Flow control, both ways, without dropping a byte:

* stream -> driver: bytes wait in the port's bounded *inbox* and are written
  only into receiveq buffers the driver posted.  A stream's reader stops
  reading its source while the inbox is full (:meth:`StreamLink.wait_room`);
  the echo stream accepts only what fits (:meth:`StreamLink.offer`).
* driver -> stream: a transmitq chain is popped only when the previous one
  was handed to the stream in full; what the stream could not take yet waits
  in the port's *carry* (at most one chain), and the stream calls
  :meth:`StreamLink.output_ready` when it has room again.  Until then the
  driver's transmit buffers stay in the ring: a slow consumer slows the driver.

Multiport control follows Linux's driver: DEVICE_READY from the driver is
answered with DEVICE_ADD per port; PORT_READY with CONSOLE_PORT (for the
console port), PORT_NAME and PORT_OPEN 1 (the stream is connected).  When the
stream ends and every byte has been put into a receive buffer, the device
sends PORT_OPEN 0, which the driver reads as end of stream.  PORT_OPEN 0 from
the driver half-closes the stream's output once the carry is delivered.
Malformed control messages, unknown ids and events are counted, never raised.

Threads: streams may run their own threads (the model itself starts none);
every state change happens under the model's lock, and the engine is called
(``notify_used``, ``update_config``, ``fail``) only after that lock is
released, so the lock order is always transport lock -> model lock.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Protocol

from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.transport.model import RING_FEATURES, DeviceModel
from virtio_msg.virtqueue import DeviceRing

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG",
    "CONTROL",
    "CONTROL_RX",
    "CONTROL_TX",
    "DEFAULT_INBOX_LIMIT",
    "PORT_COUNTERS",
    "RESIZE",
    "VIRTIO_CONSOLE_F_EMERG_WRITE",
    "VIRTIO_CONSOLE_F_MULTIPORT",
    "VIRTIO_CONSOLE_F_SIZE",
    "ByteStream",
    "ConsoleDevice",
    "ControlEvent",
    "EchoStream",
    "PortSpec",
    "StreamLink",
    "rx_queue",
    "tx_queue",
]

VIRTIO_CONSOLE_F_SIZE: Final = 0
VIRTIO_CONSOLE_F_MULTIPORT: Final = 1
VIRTIO_CONSOLE_F_EMERG_WRITE: Final = 2

CONFIG: Final = struct.Struct("<HHII")
"""virtio_console_config: cols, rows, max_nr_ports, emerg_wr."""
EMERG_WR_OFFSET: Final = 8
CONTROL: Final = struct.Struct("<IHH")
"""virtio_console_control: id, event, value."""
RESIZE: Final = struct.Struct("<HH")
"""RESIZE payload after the control header, in the spec's order: cols, rows.

Linux's driver reads {rows, cols}; the spec and our driver use {cols, rows}.
"""
CONTROL_RX: Final = 2
"""The control receiveq (device -> driver)."""
CONTROL_TX: Final = 3
"""The control transmitq (driver -> device)."""

DEFAULT_INBOX_LIMIT: Final = 64 * 1024
"""Bytes a port holds for the driver before its stream is no longer read."""
MAX_PORTS: Final = 32
"""Ports per device (queues 2 + 2n stay far below the transport's limit)."""
MAX_CONTROL_BACKLOG: Final = 1024
"""Device-to-driver control messages waiting for buffers (a driver that posts none)."""
PORT_COUNTERS: Final = (
    "bytes-in",  # from the stream into the inbox
    "bytes-to-driver",  # from the inbox into receive buffers
    "bytes-from-driver",  # from transmit buffers
    "bytes-out",  # taken by the stream
    "bytes-after-close",  # transmitted after the driver closed the port: discarded
    "inbox-high-water",
    "stream-stalls",  # a stream reader waited for inbox room
    "echo-stalls",  # the echo could not take all it was offered
    "emergency-bytes",
    "emergency-dropped",
)
"""Per-port counters reported by :meth:`ConsoleDevice.port_stats`."""


class ControlEvent(IntEnum):
    """virtio_console_control.event values."""

    DEVICE_READY = 0
    DEVICE_ADD = 1
    DEVICE_REMOVE = 2
    PORT_READY = 3
    CONSOLE_PORT = 4
    RESIZE = 5
    PORT_OPEN = 6
    PORT_NAME = 7


def rx_queue(port: int) -> int:
    """Receive queue index of ``port`` (device -> driver data)."""
    return 0 if port == 0 else 2 + 2 * port


def tx_queue(port: int) -> int:
    """Transmit queue index of ``port`` (driver -> device data)."""
    return 1 if port == 0 else 3 + 2 * port


# --- streams ----------------------------------------------------------------------------------


class StreamLink(Protocol):
    """What a port offers its stream (all methods are thread-safe)."""

    def wait_room(self, timeout: float) -> int:
        """Block up to ``timeout`` s until the inbox has room; return it (0: none or closed)."""

    def feed(self, data: bytes) -> None:
        """Queue ``data`` for the driver (call after :meth:`wait_room`; never dropped)."""

    def offer(self, data: bytes) -> int:
        """Queue as much of ``data`` as fits now; return how much was taken."""

    def eof(self) -> None:
        """The stream's input ended."""

    def output_ready(self) -> None:
        """The stream can take output again (after :meth:`ByteStream.send` took less)."""

    @property
    def closed(self) -> bool:
        """True once the device closed the port: stream threads should end."""


class ByteStream:
    """The outside end of a console port, on the device side.

    :meth:`start` hands over the :class:`StreamLink`; input goes to the link,
    output arrives through :meth:`send`, which must never block.
    """

    link: StreamLink | None = None

    def start(self, link: StreamLink) -> None:
        """Begin: deliver input through ``link`` from now on."""
        self.link = link

    def send(self, data: bytes) -> int:
        """Output from the driver; return how many bytes were taken (may be 0)."""
        raise NotImplementedError

    def close_output(self) -> None:
        """The driver closed its side: no more output (half-close)."""

    def close(self) -> None:
        """Release everything (threads are joined, bounded)."""

    def describe(self) -> str:
        """Short description for logs and the CLI."""
        return type(self).__name__


class EchoStream(ByteStream):
    """Sends everything back; takes output only as fast as the driver reads it."""

    def send(self, data: bytes) -> int:
        """Echo what fits in the inbox."""
        return self.link.offer(data) if self.link is not None else 0

    def close_output(self) -> None:
        """Nothing more will be echoed: end of stream."""
        if self.link is not None:
            self.link.eof()

    def describe(self) -> str:
        """Name it."""
        return "echo"


# --- the device ---------------------------------------------------------------------------------


@dataclass
class PortSpec:
    """A port to create: its stream, an optional name (PORT_NAME), console or not."""

    stream: ByteStream
    name: str = ""
    console: bool = False


class _Port:
    """One port's device-side state; also the :class:`StreamLink` its stream uses."""

    def __init__(self, device: ConsoleDevice, port_id: int, spec: PortSpec) -> None:
        self.device = device
        self.id = port_id
        self.stream = spec.stream
        self.name = spec.name
        self.console = spec.console
        self.inbox = bytearray()
        self.carry = b""
        self.started = False
        self.input_ended = False
        self.eof_reported = False
        self.ready = False
        self.guest_open = False
        self.guest_closed = False
        self.output_closed = False
        self.stats: Counter[str] = Counter()

    # StreamLink
    @property
    def closed(self) -> bool:
        return self.device._closed

    def _room(self) -> int:
        return self.device.inbox_limit - len(self.inbox)

    def wait_room(self, timeout: float) -> int:
        with self.device._cond:
            if self._room() <= 0:
                self.stats["stream-stalls"] += 1
                self.device._cond.wait_for(lambda: self._room() > 0 or self.closed, timeout)
            return 0 if self.closed else max(self._room(), 0)

    def feed(self, data: bytes) -> None:
        with self.device._lock:
            self.inbox += data
            self.stats["bytes-in"] += len(data)
            self.stats["inbox-high-water"] = max(self.stats["inbox-high-water"], len(self.inbox))
        self.device._kick()

    def offer(self, data: bytes) -> int:
        with self.device._lock:
            take = min(len(data), max(self._room(), 0))
            if take < len(data):
                self.stats["echo-stalls"] += 1
            self.inbox += data[:take]
            self.stats["bytes-in"] += take
            self.stats["inbox-high-water"] = max(self.stats["inbox-high-water"], len(self.inbox))
        self.device._kick()
        return take

    def eof(self) -> None:
        with self.device._lock:
            self.input_ended = True
        self.device._kick()

    def output_ready(self) -> None:
        self.device._kick()


class ConsoleDevice(DeviceModel):
    """virtio-console with one or more ports (see the module docstring).

    ``ports`` are streams or :class:`PortSpec`; None gives one echo port.
    Port 0 is the console port unless a spec says otherwise.  ``size`` is
    (cols, rows) for VIRTIO_CONSOLE_F_SIZE (None: not offered).
    """

    device_id = DeviceId.CONSOLE
    name = "console"

    def __init__(
        self,
        ports: Sequence[ByteStream | PortSpec] | None = None,
        *,
        multiport: bool = True,
        size: tuple[int, int] | None = (80, 25),
        emerg_write: bool = True,
        inbox_limit: int = DEFAULT_INBOX_LIMIT,
        queue_max_size: int = 256,
        ring_features: int = RING_FEATURES,
    ) -> None:
        """Describe the ports and the offered features."""
        specs = [p if isinstance(p, PortSpec) else PortSpec(p) for p in ports or [EchoStream()]]
        if not 1 <= len(specs) <= MAX_PORTS:
            raise ValueError(f"a console has 1..{MAX_PORTS} ports, not {len(specs)}")
        if len(specs) > 1 and not multiport:
            raise ValueError("more than one port needs VIRTIO_CONSOLE_F_MULTIPORT")
        if not any(s.console for s in specs):
            specs[0].console = True
        if inbox_limit <= 0:
            raise ValueError("inbox_limit must be positive")
        features = (
            (1 << VIRTIO_CONSOLE_F_SIZE if size else 0)
            | (1 << VIRTIO_CONSOLE_F_MULTIPORT if multiport else 0)
            | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE if emerg_write else 0)
        )
        cols, rows = size or (0, 0)
        super().__init__(
            features=features,
            config=CONFIG.pack(cols, rows, len(specs) if multiport else 0, 0),
            num_queues=2 + 2 * len(specs) if multiport else 2,
            queue_max_size=queue_max_size,
            ring_features=ring_features,
        )
        self.inbox_limit = inbox_limit
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ports = [_Port(self, i, s) for i, s in enumerate(specs)]
        self._control_out: deque[bytes] = deque()
        self._driver_ready = False
        self._closed = False
        self._servicing: int | None = None
        self.stats: Counter[str] = Counter()
        """Device-wide counters: control-short, control-bad-id, control-unexpected, ..."""

    # --- public -------------------------------------------------------------------------------

    @property
    def multiport(self) -> bool:
        """True if the driver negotiated VIRTIO_CONSOLE_F_MULTIPORT."""
        return self.has_feature(VIRTIO_CONSOLE_F_MULTIPORT)

    def port_stats(self, port: int = 0) -> dict[str, int]:
        """Counters of ``port`` (see :data:`PORT_COUNTERS`) and its inbox and carry sizes."""
        with self._lock:
            p = self._ports[port]
            out = {key: p.stats[key] for key in PORT_COUNTERS}
            out.update(inbox=len(p.inbox), carry=len(p.carry))
            return out

    def stream(self, port: int = 0) -> ByteStream:
        """The stream behind ``port``."""
        return self._ports[port].stream

    def resize(self, cols: int, rows: int) -> None:
        """Change the console size: config (with F_SIZE) and RESIZE (with MULTIPORT)."""
        if self.offered_features >> VIRTIO_CONSOLE_F_SIZE & 1:
            self.update_config(0, struct.pack("<HH", cols, rows))
        with self._lock:
            if self.multiport and self._driver_ready:
                for p in self._ports:
                    if p.console and p.ready:
                        self._send_control(p.id, ControlEvent.RESIZE, 0, RESIZE.pack(cols, rows))
        self._kick()

    def close(self) -> None:
        """Close every stream and stop their threads (bounded)."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        for p in self._ports:
            try:
                p.stream.close()
            except Exception:
                log.exception("console: closing the stream of port %d failed", p.id)

    # --- DeviceModel hooks -----------------------------------------------------------------------

    def activate(self) -> None:
        """DRIVER_OK: start the streams (once) and move any waiting bytes."""
        with self._lock:
            if not self.multiport:
                port = self._ports[0]
                port.ready = port.guest_open = True
            to_start = [p for p in self._ports if not p.started]
            for p in to_start:
                p.started = True
        for p in to_start:
            p.stream.start(p)
        self._kick()

    def reset(self) -> None:
        """Forget the driver's state; the streams and undelivered bytes stay."""
        with self._lock:
            self._driver_ready = False
            self._control_out.clear()
            for p in self._ports:
                p.ready = p.guest_open = p.guest_closed = p.eof_reported = False

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Any queue: run the control transmitq, then move data on every port."""
        if index == CONTROL_TX:
            with self._lock:
                while (chain := queue.pop()) is not None:
                    header = bytearray()
                    for view in chain.readable_views():  # the header only, however long
                        header += view[: CONTROL.size - len(header)]
                        if len(header) == CONTROL.size:
                            break
                    queue.add_used(chain.head, 0)
                    self._control_in(header)
            self.notify_used(CONTROL_TX)
        self._kick()

    def config_write(self, offset: int, data: bytes) -> bool:
        """emerg_wr: one character to port 0's stream, immediately (nothing is stored)."""
        if not (offset == EMERG_WR_OFFSET and 1 <= len(data) <= 4):
            return False
        if not self.has_feature(VIRTIO_CONSOLE_F_EMERG_WRITE):
            return False
        with self._lock:
            port = self._ports[0]
            if len(port.carry) < self.inbox_limit:
                port.carry += bytes(data[:1])
                port.stats["emergency-bytes"] += 1
            else:
                port.stats["emergency-dropped"] += 1
        self._kick()
        return True

    # --- control -------------------------------------------------------------------------------

    def _control_in(self, header: bytes | bytearray) -> None:
        if len(header) < CONTROL.size:
            self.stats["control-short"] += 1
            return
        port_id, event, value = CONTROL.unpack(header)
        if event == ControlEvent.DEVICE_READY:
            self._driver_ready = value == 1
            if value == 1:
                for p in self._ports:
                    self._send_control(p.id, ControlEvent.DEVICE_ADD, 1)
            else:
                log.warning("console: the driver failed to initialise (DEVICE_READY 0)")
            return
        if event not in (ControlEvent.PORT_READY, ControlEvent.PORT_OPEN):
            self.stats["control-unexpected"] += 1
            return
        if port_id >= len(self._ports):
            self.stats["control-bad-id"] += 1
            return
        p = self._ports[port_id]
        if event == ControlEvent.PORT_READY:
            p.ready = value == 1
            if not p.ready:
                log.warning("console: the driver could not add port %d", port_id)
                return
            if p.console:
                self._send_control(port_id, ControlEvent.CONSOLE_PORT, 1)
            if p.name:
                self._send_control(port_id, ControlEvent.PORT_NAME, 1, p.name.encode())
            self._send_control(port_id, ControlEvent.PORT_OPEN, 1)
            p.eof_reported = False
        else:
            p.guest_open = value == 1
            p.guest_closed = value != 1

    def _send_control(self, port_id: int, event: int, value: int, payload: bytes = b"") -> None:
        if len(self._control_out) >= MAX_CONTROL_BACKLOG:
            self.stats["control-backlog-dropped"] += 1
            return
        self._control_out.append(CONTROL.pack(port_id, event, value) + payload)

    # --- moving bytes ---------------------------------------------------------------------------

    def _live(self, index: int) -> DeviceRing | None:
        q = self.queue(index)
        return q if q is not None and not q.broken else None

    def _kick(self) -> None:
        """Move whatever can move now; safe from any thread, re-entrant."""
        if self._servicing == threading.get_ident():
            return  # the running pass on this thread will see the change
        touched: set[int] = set()
        failure: str | None = None
        with self._lock:
            self._servicing = threading.get_ident()
            try:
                progress = True
                while progress:
                    progress = False
                    for p in self._ports:
                        progress |= self._pump(p, touched)
                    progress |= self._flush_control(touched)
            except VirtioMsgError as exc:
                failure = str(exc)
            finally:
                self._servicing = None
        for index in sorted(touched):
            self.notify_used(index)
        if failure is not None:
            self.fail(f"console: {failure}")

    def _pump(self, p: _Port, touched: set[int]) -> bool:
        progress = False
        if p.id > 0 and not self.multiport:
            return False
        rxq = self._live(rx_queue(p.id))
        if p.inbox and rxq is not None:
            moved = False
            while p.inbox and (chain := rxq.pop()) is not None:
                n = min(len(p.inbox), chain.writable_len)
                if n:
                    chain.write(memoryview(p.inbox)[:n])
                    del p.inbox[:n]
                    p.stats["bytes-to-driver"] += n
                rxq.add_used(chain.head, n)
                moved = True
            if moved:
                touched.add(rx_queue(p.id))
                self._cond.notify_all()  # room for the stream's reader
                progress = True
        if p.carry and not p.output_closed:
            taken = p.stream.send(p.carry)
            if taken:
                p.carry = p.carry[taken:]
                p.stats["bytes-out"] += taken
                progress = True
        txq = self._live(tx_queue(p.id))
        while not p.carry and txq is not None and (chain := txq.pop()) is not None:
            data = chain.read() if chain.readable_len else b""
            txq.add_used(chain.head, 0)
            touched.add(tx_queue(p.id))
            progress = True
            p.stats["bytes-from-driver"] += len(data)
            if p.output_closed:
                p.stats["bytes-after-close"] += len(data)
                continue
            taken = p.stream.send(data) if data else 0
            p.stats["bytes-out"] += taken
            p.carry = data[taken:]
        if p.guest_closed and not p.carry and not p.output_closed:
            p.output_closed = True
            p.stream.close_output()
            progress = True
        if (
            self.multiport and p.input_ended and not p.inbox and p.ready
            and not p.eof_reported
        ):
            self._send_control(p.id, ControlEvent.PORT_OPEN, 0)  # after the last byte
            p.eof_reported = True
            progress = True
        return progress

    def _flush_control(self, touched: set[int]) -> bool:
        if not self._control_out:
            return False
        q = self._live(CONTROL_RX)
        moved = False
        while q is not None and self._control_out and (chain := q.pop()) is not None:
            msg = self._control_out.popleft()
            n = min(len(msg), chain.writable_len)
            if n < len(msg):
                self.stats["control-truncated"] += 1
            if n:
                chain.write(msg[:n])
            q.add_used(chain.head, n)
            moved = True
        if moved:
            touched.add(CONTROL_RX)
        return moved
