"""The loopback bus: driver-side transports on one side, a backend channel on the other.

Theory of operation.  One :class:`LoopbackBus` instance owns a shared
:class:`~virtio_msg.memory.Region` with its restricted :class:`~virtio_msg.memory.DmaPool`,
a table of device numbers, and any number of backend channels, each serving its
own device numbers.  A backend asks the bus
to ADD a device number; the bus then probes it: a
:class:`~virtio_msg.transport.driver.DriverTransport` sends GET_DEVICE_INFO and
the driver registered for the device type initializes it.  Every driver
request is encoded in the bus's wire profile, given a bus-owned token and
delivered to the backend; the backend's response completes exactly that
request (correlated by token; per-device FIFO in linux-rfc1, which has no
token).  A request completes with one response or one TransportError
(timeout, removed, unroutable) — never both, never neither.  Late, duplicate
and unmatched responses are dropped and counted; they never complete another
request (seed defect 7).

Events: EVENT_AVAIL goes to the backend as a one-way event.  The backend may
send EVENT_USED, EVENT_CONFIG and bus EVENT_DEVICE; events are queued and
dispatched by whichever thread finds the queue idle, so a device that
completes a buffer inside a kick never recurses into the driver more than one
level (seed defect 20).  The bus answers GET_DEVICES and PING itself.

No lock is held while a device is probed or removed (seed defect 2): ADD and
REMOVE change the table under the lock, then run the driver outside it.

Channels are adapters: :class:`Channel` delivers bytes to a backend; the
backend sends bytes back with :meth:`LoopbackBus.receive` and controls devices
with :meth:`LoopbackBus.add_device` / :meth:`LoopbackBus.remove_device`.  A
request goes to the channel that added its device; a response is accepted only
from that channel, and a channel that detaches takes its devices with it.  The
in-process channel calls the backend directly; the socket channel moves the
same bytes over SOCK_SEQPACKET.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import virtio_msg.spec as C
from virtio_msg.bus.capture import BusCapture
from virtio_msg.bus.pending import BUS, EVENT, EXPECT, KIND, REQUEST, RESPONSES, Pending, by_label
from virtio_msg.bus.pending import label as label
from virtio_msg.drivers import DRIVERS, Driver
from virtio_msg.errors import (
    BusError,
    EncodeError,
    MalformedMessage,
    TransportError,
    VirtioMsgError,
)
from virtio_msg.memory import DmaPool, Region
from virtio_msg.transport.driver import DriverTransport
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import GenericMessage, Message, with_header
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

log = logging.getLogger(__name__)

DEFAULT_BASE = 0x1_0000_0000
"""Bus address of the region: the seed's example (4 GiB)."""
DEFAULT_SIZE = 4 << 20
"""Region size: 4 MiB, the seed's example pool."""
LATENCY_SAMPLES = 100_000
"""Request latencies kept for percentiles (a bounded ring)."""


class Channel(Protocol):
    """How the bus reaches its backend."""

    def deliver(self, data: bytes) -> None:
        """Hand one encoded message (request or EVENT_AVAIL) to the backend."""

    def close(self) -> None:
        """Detach the backend."""


@dataclass
class DeviceEntry:
    """One device number on the bus and what the driver side made of it."""

    dev_num: int
    transport: DriverTransport
    channel: Channel
    driver: Driver | None = None
    device_id: int = 0
    error: str | None = None
    """Why the device could not be probed or bound, or None."""

    @property
    def type_name(self) -> str:
        """Short device type name ("rng", "blk", ...), or "id-N" if unknown."""
        return C.DEVICE_TYPE_NAMES.get(self.device_id, f"id-{self.device_id}")


class LoopbackBus:
    """One loopback bus instance (see the module docstring)."""

    def __init__(
        self,
        params: BusParams | None = None,
        *,
        size: int = DEFAULT_SIZE,
        base: int = DEFAULT_BASE,
        name: str = "loopback0",
        drivers: dict[int, type[Driver]] | None = None,
    ) -> None:
        """Create the region, the pool and an empty device table."""
        self.params = params or BusParams()
        self.name = name
        self.region = Region(size, base)
        self.pool = DmaPool(self.region)
        self.adapter = WireAdapter(self.params.profile, self.params.max_size)
        self._rfc1 = self.adapter.rfc1
        self.drivers = DRIVERS if drivers is None else drivers
        self.channels: list[Channel] = []
        self._lock = threading.Lock()
        self._devices: dict[int, DeviceEntry] = {}
        self._pending: dict[int, Pending] = {}
        self._fifo: dict[int, deque[Pending]] = {}
        self._next_token = 1
        self._events: deque[tuple[int, Message]] = deque()
        self._dispatching = False
        # Counted by class (no name lookup per message) in plain dicts (a Counter's
        # item update runs more slowly), turned into names when read.
        self._sent: defaultdict[type, int] = defaultdict(int)
        self._received: defaultdict[type, int] = defaultdict(int)
        self._encode = self.adapter.encode
        self._decode = self.adapter.decode
        self.dropped: Counter[str] = Counter()
        """Messages dropped, by reason (malformed, unmatched-response, ...)."""
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.on_added: list[Callable[[DeviceEntry], None]] = []
        self.on_removed: list[Callable[[DeviceEntry], None]] = []
        self.closed = False
        self.capture: BusCapture | None = None
        """Records every message of the channels attached after it is set (None: off)."""

    @property
    def sent(self) -> Counter[str]:
        """Messages the bus sent to the backend, by name (a snapshot)."""
        return by_label(self._sent)

    @property
    def received(self) -> Counter[str]:
        """Messages received from the backend, by name (a snapshot)."""
        return by_label(self._received)

    def __repr__(self) -> str:
        """Name, profile and region."""
        return (
            f"<LoopbackBus {self.name} {self.params.profile.value} "
            f"region={self.region.base:#x}+{self.region.size:#x} devices={len(self._devices)}>"
        )

    # --- backend attachment -----------------------------------------------------------

    def attach(self, channel: Channel) -> None:
        """Attach a backend channel; it may then ADD device numbers."""
        with self._lock:
            if self.closed:
                raise BusError(f"{self.name} is closed")
            if channel not in self.channels:
                self.channels.append(channel)

    def detach(self, channel: Channel, *, reason: str = "backend disconnected") -> None:
        """A backend went away: fail its requests and remove its devices."""
        with self._lock:
            if channel not in self.channels:
                return
            self.channels.remove(channel)
            mine = [n for n, e in self._devices.items() if e.channel is channel]
        for dev_num in mine:
            with contextlib.suppress(BusError):  # removed concurrently
                self.remove_device(dev_num, reason=reason)

    # --- device table -------------------------------------------------------------------

    def devices(self) -> list[DeviceEntry]:
        """The devices present, by number."""
        with self._lock:
            return [self._devices[k] for k in sorted(self._devices)]

    def device(self, dev_num: int) -> DeviceEntry | None:
        """The entry for ``dev_num``, if present."""
        with self._lock:
            return self._devices.get(dev_num)

    def add_device(self, dev_num: int, channel: Channel) -> DeviceEntry:
        """ADD: make ``dev_num`` present, served by ``channel``, and probe it.

        The backend must keep serving while this runs: the probe's requests
        reach it before ADD returns (the seed's ordering trap).

        Raises BusError if the number is outside 16 bits or already present.  A
        probe failure does not undo the ADD: the entry records the error and
        stays until REMOVE, so the failure is visible.
        """
        if isinstance(dev_num, bool) or not isinstance(dev_num, int) or not 0 <= dev_num <= 0xFFFF:
            raise BusError(f"device number {dev_num!r} is outside 0..65535")
        transport = DriverTransport(
            dev_num, self.params, self._requester(dev_num), self._event_sender(dev_num), self.pool
        )
        entry = DeviceEntry(dev_num, transport, channel)
        with self._lock:
            if self.closed:
                raise BusError(f"{self.name} is closed")
            if channel not in self.channels:
                raise BusError(f"{self.name}: ADD from a channel that is not attached")
            if dev_num in self._devices:
                raise BusError(f"device {dev_num} is already present on {self.name}")
            self._devices[dev_num] = entry
            self._fifo[dev_num] = deque()
        self._probe(entry)  # outside the lock: the probe's requests need the bus
        for cb in self.on_added:
            cb(entry)
        return entry

    def _probe(self, entry: DeviceEntry) -> None:
        try:
            info = entry.transport.get_device_info()
            entry.device_id = info.device_id
            cls = self.drivers.get(info.device_id)
            if cls is None:
                entry.error = f"no driver for device type {info.device_id}"
                return
            driver = cls(entry.transport)
            driver.probe()
            entry.driver = driver
        except VirtioMsgError as exc:
            entry.error = str(exc)
            log.warning("%s: device %d probe failed: %s", self.name, entry.dev_num, exc)
            if not entry.transport.removed:
                entry.transport.fail()

    def remove_device(self, dev_num: int, *, reason: str = "removed by the backend") -> None:
        """REMOVE: fail in-flight requests, tear the driver down, free everything."""
        with self._lock:
            entry = self._devices.pop(dev_num, None)
            if entry is None:
                raise BusError(f"device {dev_num} is not present on {self.name}")
            failed = [p for p in self._pending.values() if p.dev_num == dev_num]
            for p in failed:
                del self._pending[p.token]
            failed.extend(self._fifo.pop(dev_num, ()))
            for p in failed:
                p.complete(None, TransportError("removed", f"device {dev_num} {reason}"))
        entry.transport.mark_removed()
        if entry.driver is not None:
            try:
                entry.driver.remove()
            except Exception:
                log.exception("%s: driver of device %d failed in remove", self.name, dev_num)
        entry.transport.del_vqs()  # frees rings and buffers; no I/O once removed
        for cb in self.on_removed:
            cb(entry)

    # --- driver-side requests -------------------------------------------------------------

    def _requester(self, dev_num: int) -> Callable[[Message], Message]:
        return functools.partial(self._request, dev_num)  # C-level: no extra Python frame

    def _alloc_token(self) -> int:
        for _ in range(0x10000):
            token = self._next_token
            self._next_token = token % 0xFFFF + 1  # 1..65535; 0 is for events
            if token not in self._pending:
                return token
        raise TransportError("busy", f"{self.name}: 65535 requests in flight")

    # _WITH_COST: the request and response paths take the bus lock with acquire
    # and release in try/finally, not ``with``: CPython 3.11 builds bound
    # __enter__/__exit__ methods for each ``with`` on a lock, twice the cost.
    def _request(self, dev_num: int, msg: Message) -> Message:
        cls = type(msg)
        lock = self._lock
        lock.acquire()  # not ``with``: see _WITH_COST
        try:
            entry = self._devices.get(dev_num)
            if entry is None:  # BUS-06: a transport-visible failure, not a hang
                raise TransportError("unroutable", f"device {dev_num} is not on {self.name}")
            channel = entry.channel
            if self._rfc1:
                token = 0
                pend = Pending(dev_num, EXPECT[cls], 0, channel)
                self._fifo[dev_num].append(pend)
            else:
                token = self._next_token  # _alloc_token's first step, inline
                self._next_token = token % 0xFFFF + 1
                if token in self._pending:
                    token = self._alloc_token()
                pend = Pending(dev_num, EXPECT[cls], token, channel)
                self._pending[token] = pend
        finally:
            lock.release()
        try:
            data = self._encode(_new_tuple(cls, msg[:-2] + (msg[-2], token)))
        except EncodeError as exc:
            self._forget(pend)
            raise TransportError("oversize", f"cannot send {cls.__name__}: {exc}") from exc
        self._sent[cls] += 1
        t0 = _perf_counter()
        try:
            channel.deliver(data)
        except VirtioMsgError as exc:
            self._forget(pend)
            raise TransportError("disconnected", f"{self.name}: delivery failed: {exc}") from exc
        if not pend.done:
            self._wait(pend, msg)
        self.latencies.append(_perf_counter() - t0)
        resp = pend.response
        if resp is None:
            if pend.error is not None:
                raise pend.error
            raise TransportError(  # pragma: no cover - completion always sets one of them
                "protocol", "request completed without a response"
            )
        return resp

    def _wait(self, pend: Pending, msg: Message) -> None:
        """The response was not there when ``deliver`` returned: wait for it (bounded)."""
        with self._lock:
            if not pend.done:
                pend.event = threading.Event()
        if pend.event is not None and not pend.event.wait(self.params.timeout_ms / 1000):
            self._forget(pend)  # a late response is now unmatched and gets dropped
            with self._lock:
                timed_out = not pend.done
            if timed_out:
                raise TransportError(
                    "timeout",
                    f"device {pend.dev_num}: no response to {type(msg).__name__} within "
                    f"{self.params.timeout_ms} ms",
                )

    def _forget(self, pend: Pending) -> None:
        with self._lock:
            if self._pending.get(pend.token) is pend:
                del self._pending[pend.token]
            fifo = self._fifo.get(pend.dev_num)
            if fifo is not None and pend in fifo:
                fifo.remove(pend)

    def _event_sender(self, dev_num: int) -> Callable[[Message], None]:
        def send_event(msg: Message) -> None:
            if self.adapter.rfc1 and type(msg) is S.EventAvail:
                # linux-rfc1 compatibility: the seed answers every message, kicks
                # included, and its bus waits for that answer (linux-rfc1.md 4.1).
                self._request(dev_num, msg)
                return
            with self._lock:
                entry = self._devices.get(dev_num)
            if entry is None:
                raise TransportError("unroutable", f"device {dev_num} is not on {self.name}")
            data = self._encode(msg)
            self._sent[type(msg)] += 1
            try:
                entry.channel.deliver(data)
            except VirtioMsgError as exc:
                raise TransportError(
                    "disconnected", f"{self.name}: delivery failed: {exc}"
                ) from exc

        return send_event

    # --- from the backend -------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview, channel: Channel) -> None:
        """Take one message from a backend: a response, an event or a bus message."""
        try:
            msg = self._decode(data)
        except MalformedMessage as exc:
            self.dropped["malformed"] += 1  # discarded; a request it answered times out
            log.debug("%s: dropped malformed message: %s", self.name, exc)
            return
        cls = type(msg)
        if cls not in RESPONSES:  # the class set: no call, unlike KIND.get
            kind = KIND.get(cls, BUS)
            if kind is EVENT:
                self._receive_event(msg, channel)
            elif kind is REQUEST:
                self.dropped["request-from-backend"] += 1
            else:
                self._receive_bus(msg, channel)
            return
        # A response (the hot path, inline).  It completes the request in flight
        # with its token (linux-rfc1: the oldest of its device expecting its
        # class) if that request expects this class, is for this device number
        # and was delivered to this channel; a request in flight always belongs
        # to a device present on the channel it was delivered to (REMOVE fails
        # them under the same lock), so this is the owner check too.
        dev_num = msg[-2]
        lock = self._lock
        lock.acquire()  # not ``with``: see _WITH_COST
        try:
            if self._rfc1:
                fifo = self._fifo.get(dev_num, ())
                # The device answers in order: among requests expecting one class
                # the first response belongs to the first request.
                pend = next((p for p in fifo if p.expect is cls), None)
            else:
                pend = self._pending.get(msg[-1])
            if (
                pend is None
                or pend.expect is not cls
                or pend.dev_num != dev_num
                or pend.channel is not channel
            ):
                self._drop_response(dev_num, channel)
                return
            if self._rfc1:
                self._fifo[dev_num].remove(pend)
            else:
                del self._pending[pend.token]
            # As decoded: the engine reads the fields and dev_num, never the token
            # (drivers never see messages at all), so no header rewrite here.
            pend.response = msg
            pend.done = True
            if pend.event is not None:
                pend.event.set()
        finally:
            lock.release()
        self._received[cls] += 1

    def _drop_response(self, dev_num: int, channel: Channel) -> None:
        """Count a response that completes nothing (called with the bus lock held)."""
        entry = self._devices.get(dev_num)
        if entry is None or entry.channel is not channel:
            self.dropped["response-not-from-owner"] += 1
        else:
            self.dropped["unmatched-response"] += 1

    def note_event(self, msg: Message, channel: Channel) -> None:
        """An event as it arrives, before its dispatch (which may be deferred to another thread).

        The owning device's driver transport learns of an EVENT_CONFIG at once
        (:meth:`DriverTransport.note_event`), so a response that arrives after
        the event cannot let new I/O overtake the change (DRV-37).
        """
        with self._lock:
            entry = self._devices.get(msg[-2])
            if entry is not None and entry.channel is channel:
                entry.transport.note_event(msg)

    def _receive_event(self, msg: Message, channel: Channel) -> None:
        if type(msg) not in (S.EventUsed, S.EventConfig):
            self.dropped[f"unexpected:{type(msg).__name__}"] += 1
            return
        dev_num = msg[-2]
        self._received[type(msg)] += 1
        with self._lock:
            entry = self._devices.get(dev_num)
            if entry is None or entry.channel is not channel:
                self.dropped["event-not-from-owner"] += 1
                return
            entry.transport.note_event(msg)  # before a later response can be handled
            self._events.append((dev_num, msg))
            if self._dispatching:
                return
            self._dispatching = True
        self._dispatch_events()

    def _dispatch_events(self) -> None:
        while True:
            with self._lock:
                if not self._events:
                    self._dispatching = False
                    return
                dev_num, msg = self._events.popleft()
                entry = self._devices.get(dev_num)
            if entry is None:
                continue
            try:
                entry.transport.deliver_event(msg)
            except Exception:
                log.exception("%s: event handler of device %d failed", self.name, dev_num)

    def _receive_bus(self, msg: Message, channel: Channel) -> None:
        self._received[type(msg)] += 1
        if type(msg) is S.EventDevice:
            self._event_device(msg, channel)
        elif type(msg) is S.Ping:
            self._reply(channel, S.PingResp(msg.data, token=msg.token))
        elif type(msg) is S.GetDevices:
            resp = self.get_devices(msg.offset, msg.count)
            self._reply(channel, with_header(resp, 0, msg.token))
        elif isinstance(msg, GenericMessage):
            self.dropped["implementation-defined"] += 1  # the channel handles its own
        else:
            self.dropped[f"unexpected:{type(msg).__name__}"] += 1

    def _event_device(self, msg: S.EventDevice, channel: Channel) -> None:
        """EVENT_DEVICE from the backend: ADDED probes, REMOVED tears down (idempotent)."""
        try:
            if msg.device_bus_state == C.DeviceBusState.ADDED:
                if self.device(msg.device_number) is None:
                    self.add_device(msg.device_number, channel)
            elif msg.device_bus_state == C.DeviceBusState.REMOVED:
                entry = self.device(msg.device_number)
                if entry is not None and entry.channel is channel:
                    self.remove_device(msg.device_number)
            else:
                self.dropped["event-device-unknown-state"] += 1
        except BusError as exc:
            log.warning("%s: EVENT_DEVICE: %s", self.name, exc)

    def _reply(self, channel: Channel, msg: Message) -> None:
        channel.deliver(self._encode(msg))
        self._sent[type(msg)] += 1

    # --- bus messages answered by the bus -------------------------------------------------

    def get_devices(self, offset: int, count: int) -> S.GetDevicesResp:
        """Answer GET_DEVICES for the window [offset, offset+count) (BUS-52..58)."""
        room = self.params.max_size - self.params.header_size - 6
        count = min(count, room * 8, 0x10000 - offset)
        with self._lock:
            present = sorted(self._devices)
        bits = bytearray((count + 7) // 8)
        for n in present:
            if offset <= n < offset + count:
                bits[(n - offset) // 8] |= 1 << ((n - offset) % 8)
        later = [n for n in present if n >= offset + count]
        next_offset = later[0] if later else 0
        return S.GetDevicesResp(offset, next_offset, count, bytes(bits))

    def ping(self, data: int) -> int:
        """Answer PING: echo the 32-bit value (BUS-60)."""
        return data & 0xFFFFFFFF

    def discover(self) -> list[int]:
        """Enumerate device numbers with the GET_DEVICES loop a driver would run."""
        found: list[int] = []
        offset, seen = 0, 0
        while seen <= 0x10000:
            resp = self.get_devices(offset, 0xFFFF)
            found += [offset + i for i in range(resp.count) if resp.bitmap[i // 8] >> (i % 8) & 1]
            seen += max(resp.count, 1)
            if resp.next_offset == 0 or resp.next_offset <= offset:
                break
            offset = resp.next_offset
        return sorted(set(found))

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every device, detach the backend and release the region."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for dev_num in list(self._devices):
            with contextlib.suppress(BusError):  # removed concurrently
                self.remove_device(dev_num, reason="bus closed")
        with self._lock:
            channels, self.channels = self.channels, []
        for channel in channels:
            channel.close()
        self.pool.close()
        self.region.close()

    def __enter__(self) -> LoopbackBus:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the bus."""
        self.close()


_new_tuple = tuple.__new__
_perf_counter = time.perf_counter


__all__ = ["DEFAULT_BASE", "DEFAULT_SIZE", "Channel", "DeviceEntry", "LoopbackBus"]
