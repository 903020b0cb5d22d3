"""Driver-side transport: the blocking config-ops API device drivers use.

:class:`DriverTransport` runs the sans-I/O :class:`~virtio_msg.transport.engine.DriverEngine`
procedures against a bus.  Its methods mirror Linux's ``virtio_config_ops``
(get/set config with generation, status, reset, features, find/del vqs,
notify), so a driver written against it never sees a message.

Failure is sticky (STYLE 4): a request that does not complete in time raises
:class:`~virtio_msg.errors.TransportError`, the device is marked broken for its
driver and every later call raises :class:`~virtio_msg.errors.DeviceBroken`
until :meth:`DriverTransport.reset` succeeds (DRV-15: recovery goes through
reset).  Other devices are never affected.

Requests to one device are serialised by a lock (the device processes them in
order anyway); events arrive through :meth:`DriverTransport.deliver_event`
from the bus, on whatever thread the bus dispatches them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import virtio_msg.spec as C
from virtio_msg.errors import DeviceBroken, TransportError, VirtioMsgError
from virtio_msg.transport.engine import Delay, DeviceInfo, DriverEngine, Proc, VqueueInfo
from virtio_msg.transport.params import BusParams
from virtio_msg.virtqueue import DriverRing, create_driver_queue, driver_queue_size
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

if TYPE_CHECKING:
    from virtio_msg.memory import DmaPool

T = TypeVar("T")

Requester = Callable[[Message], Message]
"""Sends one request and returns its response, or raises TransportError."""
EventSender = Callable[[Message], None]
"""Sends one event (EVENT_AVAIL); never waits for an answer."""

DEFAULT_QUEUE_SIZE = 256
"""Queue size a driver asks for when the device allows it (the pool is small)."""
MAX_RESET_DELAY = 0.1
"""Upper bound on one sleep between reset polls, seconds."""


class DriverTransport:
    """One device as its driver sees it: config ops and virtqueues over a bus."""

    def __init__(
        self,
        dev_num: int,
        params: BusParams,
        request: Requester,
        send_event: EventSender,
        pool: DmaPool,
    ) -> None:
        """Bind device ``dev_num`` to the bus's request and event paths and its pool."""
        self.engine = DriverEngine(dev_num, params)
        self.params = params
        self.pool = pool
        self._request = request
        self._send_event = send_event
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._events_seen = 0
        self.broken: str | None = None
        """Why the device is unusable, or None."""
        self.removed = False
        self.queues: dict[int, DriverRing] = {}
        self._callbacks: dict[int, Callable[[DriverRing], None]] = {}
        self.config_changed: Callable[[], None] | None = None
        """Called (on the bus's event thread) after an EVENT_CONFIG."""

    @property
    def dev_num(self) -> int:
        """The device number on the bus."""
        return self.engine.dev_num

    @property
    def info(self) -> DeviceInfo | None:
        """GET_DEVICE_INFO's answer, once asked."""
        return self.engine.info

    @property
    def negotiated_features(self) -> int:
        """Features accepted at FEATURES_OK."""
        return self.engine.negotiated_features

    def has_feature(self, bit: int) -> bool:
        """True if feature bit ``bit`` was negotiated."""
        return bool(self.engine.negotiated_features >> bit & 1)

    @property
    def needs_reset(self) -> bool:
        """True once the device reported DEVICE_NEEDS_RESET (cleared by :meth:`reset`)."""
        return bool(self.engine.status & C.Status.DEVICE_NEEDS_RESET)

    # --- running procedures -------------------------------------------------------

    def _refuse(self) -> None:
        """Raise why no request may start: the device was removed, or is broken."""
        if self.removed:
            raise TransportError("removed", f"device {self.dev_num} was removed")
        raise DeviceBroken(f"device {self.dev_num} is broken: {self.broken}")

    def _run(self, proc: Proc[T], *, recovering: bool = False) -> T:
        lock = self._lock
        lock.acquire()  # not ``with``: a with-block on a lock costs twice as much (3.11)
        try:
            if self.removed or (self.broken and not recovering):
                self._refuse()
            request, send = self._request, proc.send
            try:
                req = next(proc)
                while True:
                    if type(req) is Delay:
                        time.sleep(min(req.seconds, MAX_RESET_DELAY))
                        req = send(None)
                    else:
                        req = send(request(req))
            except StopIteration as stop:
                result: T = stop.value
                return result
            except TransportError as exc:
                if exc.kind != "features":
                    self.broken = str(exc)
                raise
        finally:
            lock.release()

    # --- config ops ------------------------------------------------------------------

    def get_device_info(self) -> DeviceInfo:
        """GET_DEVICE_INFO (cached after the first call)."""
        if self.engine.info is not None:
            return self.engine.info
        return self._run(self.engine.get_device_info())

    def get_status(self) -> int:
        """Current device status.

        The engine's :meth:`~DriverEngine.get_status` procedure in one step,
        without a generator (status polls are the most frequent request):
        the same request, the same checks (:meth:`DriverEngine.take_status`)
        and the same sticky failure as :meth:`_run`.
        """
        engine = self.engine
        lock = self._lock
        lock.acquire()  # not ``with``: a with-block on a lock costs twice as much (3.11)
        try:
            if self.removed or self.broken:
                self._refuse()
            try:
                return engine.take_status(self._request(engine.status_request))
            except TransportError as exc:
                if exc.kind != "features":
                    self.broken = str(exc)
                raise
        finally:
            lock.release()

    def set_status(self, status: int) -> int:
        """Write the device status; returns what the device reports."""
        return self._run(self.engine.set_status(status))

    def add_status(self, bits: int) -> int:
        """OR ``bits`` into the status (the core's get+set pattern, one message here)."""
        return self._run(self.engine.set_status(self.engine.status | bits))

    def reset(self) -> None:
        """Reset the device and wait (bounded) for it; clears a broken mark on success."""
        try:
            self._run(self.engine.reset(), recovering=True)
        finally:
            # Reset first, then free: the device must have stopped using the rings.
            self._detach_queues()
        self.broken = None

    def initialize(self) -> int:
        """Start the init sequence: info, reset, ACKNOWLEDGE, DRIVER; return offered features."""
        self.get_device_info()
        self.reset()
        self.set_status(C.Status.ACKNOWLEDGE)
        self.add_status(C.Status.DRIVER)
        return self._run(self.engine.read_features())

    def finalize_features(self, features: int) -> int:
        """Select features and set FEATURES_OK (raises FeaturesRefused if refused)."""
        return self._run(self.engine.write_features(features))

    def driver_ok(self) -> None:
        """Set DRIVER_OK (after all queues are set up, DRV-31)."""
        status = self.add_status(C.Status.DRIVER_OK)
        if not status & C.Status.DRIVER_OK:
            self.broken = f"device refused DRIVER_OK (status {status:#x})"
            raise DeviceBroken(f"device {self.dev_num}: {self.broken}")

    def fail(self) -> None:
        """Set FAILED after a driver-side initialization error (best effort)."""
        with contextlib.suppress(VirtioMsgError):
            self.add_status(C.Status.FAILED)

    def get_config(self, offset: int, length: int) -> bytes:
        """Read config bytes (chunked, consistent across chunks)."""
        return self._run(self.engine.config_read(offset, length))

    def set_config(self, offset: int, data: bytes) -> bool:
        """Write config bytes; False if the device did not apply them."""
        return self._run(self.engine.config_write(offset, data))

    def generation(self) -> int:
        """The config generation counter."""
        return self._run(self.engine.read_generation())

    def get_shm(self, shmid: int) -> tuple[int, int]:
        """(address, length) of shared memory region ``shmid``; length 0 = none."""
        return self._run(self.engine.get_shm(shmid))

    def get_vqueue(self, index: int) -> VqueueInfo:
        """GET_VQUEUE."""
        return self._run(self.engine.get_vqueue(index))

    # --- virtqueues -------------------------------------------------------------------

    def find_vqs(
        self,
        count: int,
        callbacks: list[Callable[[DriverRing], None] | None] | None = None,
        *,
        size: int = DEFAULT_QUEUE_SIZE,
    ) -> list[DriverRing]:
        """Allocate rings in the pool and set up queues 0..count-1 (confirmed)."""
        made: list[DriverRing] = []
        try:
            for i in range(count):
                info = self.get_vqueue(i)
                if info.max_size == 0:
                    raise TransportError("queue", f"device {self.dev_num}: queue {i} unavailable")
                features = self.engine.negotiated_features
                qsize = driver_queue_size(features, size, info.max_size)
                vq: DriverRing = create_driver_queue(self.pool, i, qsize, features)
                made.append(vq)
                self._run(
                    self.engine.setup_vqueue(i, qsize, vq.desc_addr, vq.driver_addr, vq.device_addr)
                )
                self.queues[i] = vq
                cb = callbacks[i] if callbacks and i < len(callbacks) else None
                if cb is not None:
                    self._callbacks[i] = cb
        except BaseException:
            for undo in made:
                self.queues.pop(undo.index, None)
                self._callbacks.pop(undo.index, None)
                undo.close()
            raise
        return made

    def reset_vq(self, vq: DriverRing) -> None:
        """RESET_VQUEUE one queue (VIRTIO_F_RING_RESET) and free its rings."""
        self._run(self.engine.reset_vqueue(vq.index))
        self.queues.pop(vq.index, None)
        self._callbacks.pop(vq.index, None)
        vq.close()

    def _detach_queues(self) -> None:
        with self._cond:  # never while a waiter is evaluating its predicate
            for vq in self.queues.values():
                vq.close()
            self.queues.clear()
            self._callbacks.clear()

    def del_vqs(self) -> None:
        """Reset the device (quiescing every queue) and free all rings and buffers."""
        try:
            if not self.removed:
                self.reset()
        finally:
            self._detach_queues()

    def check(self) -> None:
        """Raise if the device cannot be used: removed, or broken until reset."""
        if self.removed:
            raise TransportError("removed", f"device {self.dev_num} was removed")
        if self.broken:
            raise DeviceBroken(f"device {self.dev_num} is broken: {self.broken}")

    def notify(self, vq: DriverRing) -> bool:
        """Publish added buffers; send EVENT_AVAIL if the device wants one.

        Returns True if a notification was sent.  Raises if the device is gone.
        """
        self.check()
        if not vq.kick_prepare() or self.params.polling_only:
            return False
        self._send_event(self.engine.event_avail(vq.index, vq.notification_data))
        return True

    # --- events and waiting --------------------------------------------------------------

    def note_event(self, msg: Message) -> None:
        """Called by the bus as it receives an event, before the event is dispatched.

        An EVENT_CONFIG marks the config view stale at once: the bus may defer
        the dispatch (another thread is dispatching), and a response it
        receives next must not let new I/O overtake the change (DRV-37).
        """
        self.engine.note_event(msg)

    def deliver_event(self, msg: Message) -> None:
        """Called by the bus with an event for this device (EVENT_USED / EVENT_CONFIG)."""
        ev = self.engine.accept_event(msg)
        if ev is not None:
            if type(ev) is S.EventUsed:
                vq = self.queues.get(ev.vq_index)
                cb = self._callbacks.get(ev.vq_index)
                if vq is None:
                    self.engine.discarded["event-used-unknown-queue"] += 1
                elif cb is not None:
                    cb(vq)
            elif self.config_changed is not None:
                self.config_changed()
        with self._cond:
            self._events_seen += 1
            self._cond.notify_all()

    def mark_removed(self) -> None:
        """The bus removed the device: fail every later call and wake waiters."""
        self.removed = True
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait (bounded) until ``predicate()`` is truthy; re-checked after every event.

        Returns the predicate's value; raises TransportError("timeout") when the
        bound passes, and TransportError("removed") if the device goes away.
        """
        limit = self.params.timeout_ms / 1000 if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                if self.removed:
                    raise TransportError("removed", f"device {self.dev_num} was removed")
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        "timeout", f"device {self.dev_num}: no completion within {limit:.3f} s"
                    )
                # Short slices: a device may complete without notifying (polling mode).
                self._cond.wait(min(left, 0.05))


__all__ = ["DEFAULT_QUEUE_SIZE", "DriverTransport", "EventSender", "Requester"]
