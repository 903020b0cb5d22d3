"""Capture of bus traffic to pcapng: the pseudo-header, the writer and the channel taps.

Every frame of a capture is one message exactly as it crossed a channel,
behind a fixed 12-byte pseudo-header (:data:`PSEUDO_HEADER`, documented in
``docs/capture.md``) in one link type, :data:`LINKTYPE` (LINKTYPE_USER5).
The file format itself is written by dpkt's pcapng writer.  The hot path of a
channel only calls :meth:`ChannelTap.down` / :meth:`ChannelTap.up`, which
append a tuple to a bounded deque and never block; a writer thread drains the
deque every :data:`FLUSH_INTERVAL` seconds.  When the queue is full, or the
size limit is reached with no ring configured, frames are dropped and counted
(:attr:`CaptureWriter.dropped`), never waited for.  With ``files`` > 1 the
writer keeps a ring: the full file becomes ``NAME.1.pcapng`` (older ones move
up, the oldest is deleted) and a new file starts, so disk use stays below
``files * max_bytes``.  A socket channel's tap (:class:`SocketTap`) also marks
the channel's own protocol frames (ANNOUNCE, ADD, REMOVE and their answers)
with :data:`FLAG_CONTROL` and records the end of the connection as an empty
control frame.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO, Final

import dpkt

from virtio_msg.bus.protocol import MSG_ADD, MSG_ANNOUNCE, MSG_REMOVE
from virtio_msg.wire import Profile

log = logging.getLogger(__name__)

LINKTYPE: Final = 152
"""LINKTYPE_USER5: the link type of every virtio-msg capture."""
PSEUDO_HEADER: Final = struct.Struct("<BBBBHHHBB")
"""version u8, direction u8, channel u8, profile u8, bus u16, connection u16,
max_msg_size u16, side u8, flags u8 (12 bytes, little-endian)."""
PSEUDO_HEADER_VERSION: Final = 1
FLAG_CONTROL: Final = 0x01
"""``flags`` bit 0: the frame is the channel's own protocol (socket ANNOUNCE, ADD,
REMOVE and their responses; empty = end of the connection), not a message
relayed between a driver and a device.  Other bits are 0."""
SOCKET_CONTROL_IDS: Final = frozenset({MSG_ANNOUNCE, MSG_ADD, MSG_REMOVE})
"""Bus-message ids of the socket channel's own protocol (docs/socket-protocol.md)."""
SNAPLEN: Final = PSEUDO_HEADER.size + 0xFFFF
"""Largest frame: the pseudo-header and a 65535-byte message (nothing is truncated)."""
FLUSH_INTERVAL: Final = 0.02
"""How often the writer thread drains the queue, seconds."""
DEFAULT_MAX_BYTES: Final = 64 << 20
"""Default size limit of one capture file (64 MiB)."""
DEFAULT_FILES: Final = 2
"""Default ring: the current file and one previous file."""
DEFAULT_MAX_QUEUED: Final = 1 << 17
"""Frames waiting for the writer thread before new ones are dropped."""
PROFILE_CODES: Final = {Profile.SPEC: 0, Profile.LINUX_RFC1: 1}
"""``profile`` byte of the pseudo-header (the same codes as the socket ANNOUNCE)."""
PROFILES_BY_CODE: Final = {code: p for p, code in PROFILE_CODES.items()}


class Direction(IntEnum):
    """Which way a message crossed."""

    TO_DEVICE = 0
    """driver side -> device side (requests, EVENT_AVAIL, the bus's answers to a backend)."""
    TO_DRIVER = 1
    """device side -> driver side (responses, EVENT_USED/CONFIG, a backend's bus messages)."""

    @property
    def label(self) -> str:
        """``driver->device`` or ``device->driver``."""
        return "driver->device" if self is Direction.TO_DEVICE else "device->driver"


class ChannelKind(IntEnum):
    """The channel a message crossed (pseudo-header ``channel``)."""

    IN_PROCESS = 0
    SOCKET = 1
    KERNEL = 2
    VHOST_USER = 3

    @property
    def label(self) -> str:
        """``in-process``, ``socket``, ``kernel`` or ``vhost-user``."""
        return self.name.lower().replace("_", "-")


class Side(IntEnum):
    """Where the capture was taken (pseudo-header ``side``)."""

    BUS = 0
    """In the process that owns the bus and the drivers."""
    BACKEND = 1
    """In a backend process (the device side of a socket or of the kernel channel)."""


def pseudo_header(
    direction: Direction,
    channel: ChannelKind,
    profile: Profile,
    *,
    bus: int = 0,
    connection: int = 0,
    max_size: int = 0,
    side: Side = Side.BUS,
    control: bool = False,
) -> bytes:
    """Encode the 12-byte pseudo-header that precedes every captured message."""
    return PSEUDO_HEADER.pack(
        PSEUDO_HEADER_VERSION,
        direction,
        channel,
        PROFILE_CODES[profile],
        bus & 0xFFFF,
        connection & 0xFFFF,
        min(max_size, 0xFFFF),
        side,
        FLAG_CONTROL if control else 0,
    )


@dataclass(frozen=True)
class CaptureLimits:
    """How much a capture may write: per file, how many files, how much in flight."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Size of one file before it is rotated (or, with ``files`` 1, capture stops)."""
    files: int = DEFAULT_FILES
    """Files kept: 1 = stop at the limit; N > 1 = a ring of N files."""
    max_queued: int = DEFAULT_MAX_QUEUED
    """Frames waiting for the writer thread; more are dropped and counted."""

    def __post_init__(self) -> None:
        """Refuse limits that cannot work."""
        if self.max_bytes < 4096:
            raise ValueError("capture size limit must be at least 4096 bytes")
        if not 1 <= self.files <= 1000:
            raise ValueError("capture ring must have 1..1000 files")
        if self.max_queued < 1:
            raise ValueError("capture queue must hold at least one frame")


def ring_path(path: Path, n: int) -> Path:
    """The name of the ``n``-th older file of a ring (``x.pcapng`` -> ``x.1.pcapng``)."""
    if n == 0:
        return path
    return path.with_name(f"{path.stem}.{n}{path.suffix or '.pcapng'}")


class CaptureWriter:
    """Writes captured frames to a pcapng file from a thread of its own (module docstring)."""

    def __init__(self, path: str | os.PathLike[str], limits: CaptureLimits | None = None) -> None:
        """Create (truncate) ``path`` and start the writer thread.

        Raises OSError if the file cannot be created.
        """
        self.path = Path(path)
        self.limits = limits or CaptureLimits()
        self.frames = 0
        """Frames written."""
        self.dropped = 0
        """Frames dropped (queue full, or size limit reached without a ring)."""
        self.rotations = 0
        self.error: str | None = None
        """Why writing stopped early (a write error), or None."""
        self._queue: deque[tuple[float, bytes, bytes]] = deque()
        self._max_queued = self.limits.max_queued
        self._full = False
        self._file: BinaryIO | None = None
        self._writer: dpkt.pcapng.Writer | None = None
        self._written = self._empty_size = 0
        self._open()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmsg-capture", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        """Path and counters."""
        return f"<CaptureWriter {self.path} frames={self.frames} dropped={self.dropped}>"

    def record(self, prefix: bytes, data: bytes | bytearray | memoryview) -> None:
        """Queue one frame (never blocks; drops and counts when the queue is full)."""
        queue = self._queue
        if len(queue) >= self._max_queued or self._full:
            self.dropped += 1
            return
        queue.append((time.time(), prefix, data if type(data) is bytes else bytes(data)))

    def tap(
        self,
        channel: ChannelKind,
        profile: Profile,
        *,
        bus: int = 0,
        connection: int = 0,
        max_size: int = 0,
        side: Side = Side.BUS,
    ) -> ChannelTap:
        """A tap for one channel: precomputed pseudo-headers for both directions.

        A ``SOCKET`` channel gets a :class:`SocketTap`, which also flags the
        channel's own frames and records the end of the connection.
        """
        ph = {
            (d, ctl): pseudo_header(
                d,
                channel,
                profile,
                bus=bus,
                connection=connection,
                max_size=max_size,
                side=side,
                control=ctl,
            )
            for d in Direction
            for ctl in (False, True)
        }
        down, up = ph[Direction.TO_DEVICE, False], ph[Direction.TO_DRIVER, False]
        if channel is not ChannelKind.SOCKET:
            return ChannelTap(self.record, down, up)
        return SocketTap(
            self.record, down, up, ph[Direction.TO_DEVICE, True], ph[Direction.TO_DRIVER, True]
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until every queued frame is written; True if the queue emptied."""
        deadline = time.monotonic() + timeout
        while self._queue and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(FLUSH_INTERVAL / 2)
        return not self._queue

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10.0)
        if self._thread.is_alive():  # pragma: no cover - a hung disk write
            log.warning("capture: writer thread did not finish; %s may be incomplete", self.path)
            return
        self._drain()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def __enter__(self) -> CaptureWriter:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the writer."""
        self.close()

    def summary(self) -> str:
        """One line for the user: where, how many frames, what was lost."""
        text = f"capture: {self.frames} frames in {self.path}"
        if self.rotations:
            text += f" (ring of {self.limits.files} files, rotated {self.rotations} times)"
        if self.dropped:
            text += f", {self.dropped} dropped"
            if self._full:
                text += " (size limit reached; use a larger --capture-size or --capture-files)"
        if self.error:
            text += f", stopped: {self.error}"
        return text

    # --- writer thread ----------------------------------------------------------------------

    def _open(self) -> None:
        f = open(self.path, "wb")  # noqa: SIM115 - closed by close() or rotation
        shb = dpkt.pcapng.SectionHeaderBlockLE(
            opts=[
                dpkt.pcapng.PcapngOptionLE(
                    code=dpkt.pcapng.PCAPNG_OPT_SHB_USERAPPL, data=b"virtio-msg"
                ),
                dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT),
            ]
        )
        idb = dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=SNAPLEN, linktype=LINKTYPE)
        self._writer = dpkt.pcapng.Writer(f, snaplen=SNAPLEN, linktype=LINKTYPE, shb=shb, idb=idb)
        self._file = f
        self._written = self._empty_size = f.tell()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue and self._writer is not None:
            batch: list[tuple[float, bytes]] = []
            size = self._written
            room = self.limits.max_bytes
            limited = False
            while queue:
                ts, prefix, data = queue[0]
                frame = prefix + data
                need = 32 + (len(frame) + 3) // 4 * 4  # EPB header/trailer + padded data
                if size + need > room and size > self._empty_size:
                    limited = True  # an empty file takes one frame whatever its size
                    break
                queue.popleft()
                batch.append((ts, frame))
                size += need
            try:
                self._writer.writepkts(batch)
                assert self._file is not None
                self._file.flush()
            except OSError as exc:
                self._stop_writing(f"write failed: {exc.strerror or exc}")
                return
            self.frames += len(batch)
            self._written = size
            # Only the size limit rotates: a frame queued by another thread while
            # this batch was written is not a reason to (it goes in the next batch).
            if limited:
                self._limit_reached()

    def _limit_reached(self) -> None:
        if self.limits.files == 1:
            self._full = True
            self.dropped += len(self._queue)
            self._queue.clear()
            log.warning("capture: %s reached its size limit; further frames are dropped", self.path)
            return
        assert self._file is not None
        self._file.close()
        try:
            for n in range(self.limits.files - 1, 0, -1):
                older = ring_path(self.path, n - 1)
                if older.exists():
                    older.replace(ring_path(self.path, n))
            self._open()
        except OSError as exc:
            self._stop_writing(f"rotation failed: {exc.strerror or exc}")
            return
        self.rotations += 1

    def _stop_writing(self, reason: str) -> None:
        self.error = reason
        self._writer = None
        self._full = True
        self.dropped += len(self._queue)
        self._queue.clear()
        log.warning("capture: %s: %s", self.path, reason)


class ChannelTap:
    """What a channel calls for each message it moves (``down``: to the device side)."""

    __slots__ = ("_down", "_record", "_up")

    def __init__(
        self,
        record: Callable[[bytes, bytes | bytearray | memoryview], None],
        down: bytes,
        up: bytes,
    ) -> None:
        """Bind the writer's record function and the two pseudo-headers."""
        self._record = record
        self._down = down
        self._up = up

    def down(self, data: bytes | bytearray | memoryview) -> None:
        """Record a message going driver side -> device side."""
        self._record(self._down, data)

    def up(self, data: bytes | bytearray | memoryview) -> None:
        """Record a message going device side -> driver side."""
        self._record(self._up, data)


class SocketTap(ChannelTap):
    """The tap of a socket connection: control frames flagged, the hang-up recorded."""

    __slots__ = ("_ctl_down", "_ctl_up", "ended")

    def __init__(
        self,
        record: Callable[[bytes, bytes | bytearray | memoryview], None],
        down: bytes,
        up: bytes,
        ctl_down: bytes,
        ctl_up: bytes,
    ) -> None:
        """Bind the writer's record function and the four pseudo-headers."""
        super().__init__(record, down, up)
        self._ctl_down = ctl_down
        self._ctl_up = ctl_up
        self.ended = False
        """Whether the end of the connection has been recorded."""

    def down(self, data: bytes | bytearray | memoryview) -> None:
        """Record a datagram sent towards the backend (bus -> backend)."""
        control = len(data) > 1 and data[0] & 0x02 and data[1] in SOCKET_CONTROL_IDS
        self._record(self._ctl_down if control else self._down, data)

    def up(self, data: bytes | bytearray | memoryview) -> None:
        """Record a datagram sent towards the bus (backend -> bus)."""
        control = len(data) > 1 and data[0] & 0x02 and data[1] in SOCKET_CONTROL_IDS
        self._record(self._ctl_up if control else self._up, data)

    def end(self, direction: Direction) -> None:
        """Record, once, that the connection ended: the side ``direction`` leaves hung up.

        ``TO_DEVICE``: the bus side closed; ``TO_DRIVER``: the backend side closed.
        """
        if not self.ended:
            self.ended = True
            self._record(self._ctl_down if direction is Direction.TO_DEVICE else self._ctl_up, b"")


@dataclass
class BusCapture:
    """The capture of one bus: the shared writer and this bus's instance number.

    Set it as :attr:`LoopbackBus.capture` before channels attach; each channel
    asks for its :meth:`tap` when it is created.
    """

    writer: CaptureWriter
    bus: int = 0
    """Bus instance number in the pseudo-header (several buses can share a file)."""
    _next_connection: int = 0

    def tap(
        self, channel: ChannelKind, profile: Profile, max_size: int, connection: int | None = None
    ) -> ChannelTap:
        """A tap for a new channel of this bus (connections numbered 0, 1, ... if not given)."""
        if connection is None:
            connection = self._next_connection
            self._next_connection += 1
        return self.writer.tap(
            channel, profile, bus=self.bus, connection=connection, max_size=max_size
        )


def socket_tap(
    capture: BusCapture | None, profile: Profile, max_size: int, connection: int
) -> SocketTap | None:
    """The bus side's tap of socket connection ``connection`` (None: capture is off)."""
    if capture is None:
        return None
    tap = capture.tap(ChannelKind.SOCKET, profile, max_size, connection)
    return tap if isinstance(tap, SocketTap) else None


__all__ = [
    "FLAG_CONTROL",
    "LINKTYPE",
    "PSEUDO_HEADER",
    "SOCKET_CONTROL_IDS",
    "BusCapture",
    "CaptureLimits",
    "CaptureWriter",
    "ChannelKind",
    "ChannelTap",
    "Direction",
    "Side",
    "SocketTap",
    "pseudo_header",
    "ring_path",
    "socket_tap",
]
