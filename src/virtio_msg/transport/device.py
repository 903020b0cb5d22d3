"""Device-side transport: the protocol engine that answers a driver's requests.

Theory of operation.  :class:`DeviceTransport` receives decoded messages (the
draft's classes; a linux-rfc1 bus translates at its edge) and returns the one
response each valid request gets, or ``None`` for events and for messages it
discards.  Device-originated events (EVENT_USED, EVENT_CONFIG) leave through
the ``emit`` callable the bus adapter provides.  The engine performs no I/O.

It implements every device requirement of the conformance checklist (spec
section 6.4) once, for every device model:

* status handshake, FEATURES_OK refusal (bits not offered, or VERSION_1 /
  ACCESS_PLATFORM missing: a device here can only be reached through the
  restricted pool), synchronous or asynchronous reset (DEV-57..59);
* feature blocks (DEV-18..20), config space with a generation counter in both
  configuration profiles (DEV-05..17, DEV-49..53);
* SET_VQUEUE's atomic rules and silent no-op cases, RESET_VQUEUE only with
  VIRTIO_F_RING_RESET, GET_VQUEUE's unavailable sentinel (DEV-60..72);
* no queue processing before DRIVER_OK (DEV-35); a ring that breaks the rules
  puts the device into DEVICE_NEEDS_RESET and reports it with a status-only
  EVENT_CONFIG (DEV-12, DEV-14, DEV-55);
* malformed or unsupported messages are discarded and counted (DEV-21, DEV-32).

Device models subclass :class:`~virtio_msg.transport.model.DeviceModel`
(defined, with the feature constants, in :mod:`virtio_msg.transport.model` and
re-exported here) and implement only their device-specific parts: offered
features, config layout, queue processing.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import virtio_msg.spec as C
from virtio_msg.errors import VirtioMsgError
from virtio_msg.transport.model import REQUIRED_FEATURES, RING_FEATURES, VENDOR_ID, DeviceModel
from virtio_msg.transport.params import BusParams
from virtio_msg.virtqueue import DeviceRing, create_device_queue, is_packed
from virtio_msg.wire import GenericMessage, Message
from virtio_msg.wire import spec as S

if TYPE_CHECKING:
    from virtio_msg.memory import Region

log = logging.getLogger(__name__)

# C.Status is an IntFlag: ``status & C.Status.DRIVER_OK`` builds an enum member
# (about a microsecond).  The status is kept as a plain int and the per-kick
# checks use these.
_DRIVER_OK = int(C.Status.DRIVER_OK)
_NEEDS_RESET = int(C.Status.DEVICE_NEEDS_RESET)

_new_tuple = tuple.__new__
_U32 = 0xFFFFFFFF
_GET_CONFIG_OVERHEAD = 12  # generation, offset, length
_EVENT_CONFIG_OVERHEAD = 16  # device_status, generation, offset, length


class _Queue:
    """Per-queue transport state as GET_VQUEUE reports it."""

    __slots__ = ("desc", "device", "driver", "enabled", "kicked", "live", "max_size", "size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.clear()

    def clear(self) -> None:
        self.size = 0
        self.desc = 0
        self.driver = 0
        self.device = 0
        self.enabled = False
        self.kicked = False
        self.live: DeviceRing | None = None


class _EngineLock:
    """Context manager: hold the engine's lock; flush queued events on the way out."""

    __slots__ = ("engine",)

    def __init__(self, engine: DeviceTransport) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        engine = self.engine
        engine._lock.acquire()
        engine._depth += 1

    def __exit__(self, *exc: object) -> None:
        engine = self.engine
        engine._depth -= 1
        out: list[Message] = []
        if engine._depth == 0 and engine._outbox:
            out, engine._outbox = engine._outbox, []
        engine._lock.release()
        for msg in out:
            engine.emit(msg)


class DeviceTransport:
    """The device-side protocol engine for one device number.

    ``emit`` sends device-originated events; ``async_reset_polls`` > 0 makes
    reset asynchronous: SET_DEVICE_STATUS(0) replies before the reset is done
    and GET_DEVICE_STATUS reports 0 only after that many polls.
    """

    def __init__(
        self,
        model: DeviceModel,
        region: Region,
        *,
        dev_num: int,
        params: BusParams | None = None,
        emit: Callable[[Message], None] | None = None,
        async_reset_polls: int = 0,
    ) -> None:
        """Attach ``model`` and start in the reset state."""
        self.model = model
        self.region = region
        self.dev_num = dev_num
        self.params = params or BusParams()
        self.emit: Callable[[Message], None] = emit or (lambda msg: None)
        self.async_reset_polls = async_reset_polls
        self.status = 0
        self.generation = 1
        self.negotiated_features = 0
        self._driver_features: dict[int, int] = {}
        self._selected_beyond = False
        self._queues = [_Queue(m) for m in model.queue_max_sizes]
        self._reset_pending = 0
        self._lock = threading.RLock()
        self._depth = 0
        self._outbox: list[Message] = []
        self._guard = _EngineLock(self)  # stateless (the depth is ours): one for every use
        self.discarded: Counter[str] = Counter()
        """Messages discarded, by reason (malformed, unsupported, wrong direction...)."""
        # by class (no name lookup per message), in a plain dict (see the bus's counters)
        self._handled: defaultdict[type, int] = defaultdict(int)
        self.last_error: str | None = None
        model.transport = self

    @property
    def handled(self) -> Counter[str]:
        """Requests answered, by message class name (a snapshot)."""
        return Counter({cls.__name__: n for cls, n in self._handled.items()})

    # --- locking: events leave only after the engine lock is released -------------

    def _locked(self) -> _EngineLock:
        """The engine lock; events queued under it are emitted after release.

        :meth:`handle` does the same inline.
        """
        return self._guard

    def _event(self, msg: Message) -> None:
        self._outbox.append(msg)

    # --- entry point -------------------------------------------------------------------

    def handle(self, msg: Message) -> Message | None:
        """Process one message from the driver; return its response or None."""
        cls = type(msg)
        handler = _HANDLERS.get(cls)
        if handler is None:
            kind = "generic" if isinstance(msg, GenericMessage) else cls.__name__
            self.discarded[f"unsupported:{kind}"] += 1
            return None
        if msg[-2] != self.dev_num:
            self.discarded["wrong-dev_num"] += 1
            return None
        # What ``with self._locked():`` does, inline (no Python frame for the guard):
        # hold the lock, and flush the events queued under it once it is released.
        self._lock.acquire()
        self._depth += 1
        try:
            try:
                resp = handler(self, msg)
            except VirtioMsgError as exc:
                self._fail_locked(f"{cls.__name__}: {exc}")
                resp = None
            except Exception as exc:  # a device model bug must not take the bus down
                log.exception("device %d: model raised on %s", self.dev_num, cls.__name__)
                self._fail_locked(f"model error on {cls.__name__}: {exc!r}")
                resp = None
        finally:
            self._depth -= 1
            if self._outbox and not self._depth:
                out, self._outbox = self._outbox, []
                self._lock.release()
                for event in out:
                    self.emit(event)
            else:
                self._lock.release()
        if resp is None:
            return None
        self._handled[cls] += 1
        # DEV-29: the request's token is copied into the response; DEV-26: own dev_num.
        return _new_tuple(type(resp), resp[:-2] + (self.dev_num, msg[-1]))  # with_header

    # --- requests ----------------------------------------------------------------------

    def _device_info(self, msg: S.GetDeviceInfo) -> Message:
        m = self.model
        blocks = self._feature_blocks()
        return S.GetDeviceInfoResp(
            m.device_id, m.vendor_id, m.uuid, blocks, len(m.config), m.num_queues, 0, 0
        )

    def _get_features(self, msg: S.GetDeviceFeatures) -> Message | None:
        n = msg.num_blocks
        if self.params.header_size + 8 + 4 * n > self.params.max_size:
            self.discarded["features-reply-too-large"] += 1
            return None
        offered = self._offered()
        words = tuple((offered >> (32 * (msg.block_index + i))) & _U32 for i in range(n))
        return S.GetDeviceFeaturesResp(msg.block_index, n, words)

    def _set_features(self, msg: S.SetDriverFeatures) -> Message:
        # Open question 7: ignored once FEATURES_OK was accepted.
        if not self.status & C.Status.FEATURES_OK:
            blocks = self._feature_blocks()
            for i, word in enumerate(msg.features):
                index = msg.block_index + i
                if index < blocks:
                    self._driver_features[index] = word
                elif word:
                    # A bit beyond every offered block: remembered as a flag, never
                    # as a number (block 2**32-1 would be a 17 GB integer).
                    self._selected_beyond = True
        return S.SetDriverFeaturesResp()

    def _offered(self) -> int:
        offered = self.model.offered_features
        if not self.params.notification_data:
            offered &= ~(1 << C.VIRTIO_F_NOTIFICATION_DATA)  # BUS-51: linux-rfc1
        return offered

    def _feature_blocks(self) -> int:
        return max(2, (self.model.offered_features.bit_length() + 31) // 32)

    def _driver_selected(self) -> int:
        return sum(word << (32 * i) for i, word in self._driver_features.items())

    def _get_config(self, msg: S.GetConfig) -> Message | None:
        if self.params.header_size + _GET_CONFIG_OVERHEAD + msg.length > self.params.max_size:
            self.discarded["config-reply-too-large"] += 1
            return None
        cfg = self.model.config
        if msg.offset + msg.length > len(cfg):
            # Open question 5: out of range -> echo offset, length 0, no data.
            return S.GetConfigResp(self.generation, msg.offset, 0, b"")
        data = bytes(cfg[msg.offset : msg.offset + msg.length])
        return S.GetConfigResp(self.generation, msg.offset, msg.length, data)

    def _set_config(self, msg: S.SetConfig) -> Message:
        if msg.length == 0:
            return S.SetConfigResp(self.generation, msg.offset, 0, b"")  # DEV-51
        ok = msg.offset + msg.length <= len(self.model.config)
        if ok and self.params.strict_config and msg.generation != self.generation:
            ok = False  # DEV-16; never an EVENT_CONFIG for a stale write (DEV-09)
        if ok:
            before = bytes(self.model.config)
            ok = self.model.config_write(msg.offset, bytes(msg.data))
            if ok and bytes(self.model.config) != before:
                self._bump_generation()
        if not ok:
            return S.SetConfigResp(self.generation, msg.offset, 0, b"")  # DEV-52/53
        stored = bytes(self.model.config[msg.offset : msg.offset + msg.length])
        return S.SetConfigResp(self.generation, msg.offset, msg.length, stored)

    def _get_status(self, msg: S.GetDeviceStatus) -> Message:
        if self._reset_pending:
            self._reset_pending -= 1
            if self._reset_pending == 0:
                self._finish_reset()
        # The status poll is the most frequent request: built as the tuple it is,
        # without the message class's Python-level __new__ (a frame per poll).
        return _new_tuple(S.GetDeviceStatusResp, (self.status, 0, 0))

    def _set_status(self, msg: S.SetDeviceStatus) -> Message:
        new = msg.status & 0xFF  # open question 15: upper 24 bits ignored
        if new == 0:
            if self.status == 0 and not self._reset_pending:
                self._finish_reset()  # nothing to wait for, but state still resets
                return S.SetDeviceStatusResp(0)  # open question 17: reply 0 at once
            self._begin_reset()
            return S.SetDeviceStatusResp(self.status)
        if self._reset_pending:
            return S.SetDeviceStatusResp(self.status)  # open question 17: no-op during reset
        old = self.status
        if old & ~new & ~C.Status.DEVICE_NEEDS_RESET:
            return S.SetDeviceStatusResp(old)  # clearing bits without a reset: ignored
        added = new & ~old
        if added & C.Status.FEATURES_OK and not self._accept_features():
            added &= ~C.Status.FEATURES_OK  # DEV-34
        if added & C.Status.DRIVER_OK and not (old | added) & C.Status.FEATURES_OK:
            added &= ~C.Status.DRIVER_OK
        self.status = int(old | (added & ~C.Status.DEVICE_NEEDS_RESET))  # int: see _DRIVER_OK
        if added & C.Status.DRIVER_OK and self.status & C.Status.DRIVER_OK:
            self._driver_ok()
        return S.SetDeviceStatusResp(self.status)

    def _accept_features(self) -> bool:
        selected = self._driver_selected()
        offered = self._offered()
        if self._selected_beyond:
            self.last_error = "driver selected features beyond the offered feature blocks"
            return False
        if selected & ~offered:
            self.last_error = f"driver selected features not offered: {selected & ~offered:#x}"
            return False
        if selected & REQUIRED_FEATURES != REQUIRED_FEATURES:
            self.last_error = "driver did not accept VERSION_1 and ACCESS_PLATFORM"
            return False
        if not self.model.validate_features(selected):
            self.last_error = f"device refused feature set {selected:#x}"
            return False
        self.negotiated_features = selected
        return True

    def _get_vqueue(self, msg: S.GetVqueue) -> Message:
        q = self._queue(msg.index)
        if q is None:
            return S.GetVqueueResp(msg.index, 0, 0, 0, 0, 0, 0)  # DEV-61 sentinel
        flags = C.VQ_ENABLED if q.enabled else 0
        return S.GetVqueueResp(msg.index, q.max_size, q.size, flags, q.desc, q.driver, q.device)

    def _set_vqueue(self, msg: S.SetVqueue) -> Message:
        self._apply_set_vqueue(msg)
        return S.SetVqueueResp()

    def _apply_set_vqueue(self, msg: S.SetVqueue) -> None:
        """Apply SET_VQUEUE atomically or not at all (DEV-63..69; open question 13)."""
        q = self._queue(msg.index)
        op = msg.flags & C.VQ_OP_MASK
        if q is None or msg.reserved or msg.flags & C.VQ_FLAGS_RESERVED_MASK:
            return
        if op == C.VQ_OP_RESERVED or (op == C.VQ_OP_KEEP_DISABLED and q.enabled):
            return
        size = q.size if msg.flags & C.VQ_SIZE_IGNORE else msg.size
        desc = q.desc if msg.flags & C.VQ_DESC_IGNORE else msg.desc_addr
        driver = q.driver if msg.flags & C.VQ_DRIVER_IGNORE else msg.driver_addr
        device = q.device if msg.flags & C.VQ_DEVICE_IGNORE else msg.device_addr
        if q.enabled and (size, desc, driver, device) != (q.size, q.desc, q.driver, q.device):
            return  # DEV-68
        if size > q.max_size:
            return
        enable = op == C.VQ_OP_ENABLE or (op == C.VQ_OP_KEEP and q.enabled)
        packed = is_packed(self.negotiated_features)
        if enable and (size == 0 or (size & (size - 1) and not packed)):
            return  # split rings need a non-zero power-of-two size; packed ones any size
        live = q.live
        if enable and not q.enabled and self.status & C.Status.FEATURES_OK:
            # Features are known: validate the rings now, so that a bad SET_VQUEUE
            # is a silent no-op (open question 13) the driver sees in GET_VQUEUE.
            try:
                live = self._new_queue(size, desc, driver, device, q.max_size)
            except VirtioMsgError as exc:
                self.last_error = f"SET_VQUEUE {msg.index} refused: {exc}"
                return
        q.size, q.desc, q.driver, q.device = size, desc, driver, device
        if enable and not q.enabled:
            q.enabled = True
            q.live = live

    def _reset_vqueue(self, msg: S.ResetVqueue) -> Message:
        q = self._queue(msg.index)
        if q is not None and self.negotiated_features >> C.VIRTIO_F_RING_RESET & 1:
            q.clear()  # open question 12: size 0, flags 0, addresses 0, max kept
            self.model.queue_reset(msg.index)
        return S.ResetVqueueResp()

    def _get_shm(self, msg: S.GetShm) -> Message:
        addr, length = self.model.shm.get(msg.shmid, (0, 0))
        return S.GetShmResp(msg.shmid, 0, length, addr)  # DEV-73/74

    def _event_avail(self, msg: S.EventAvail) -> None:
        q = self._queue(msg.vq_index)
        if q is None or not q.enabled:
            self.discarded["event-avail-unconfigured-queue"] += 1
            return None
        if not self.status & _DRIVER_OK or self.status & _NEEDS_RESET:
            q.kicked = True  # DEV-35: remembered, processed once DRIVER_OK is set
            return None
        if q.live is not None and self.negotiated_features >> C.VIRTIO_F_NOTIFICATION_DATA & 1:
            q.live.check_notification(msg.next_offset)  # a violation: DEVICE_NEEDS_RESET
        self._process(msg.vq_index, q)
        return None

    # --- queues ---------------------------------------------------------------------

    def _queue(self, index: int) -> _Queue | None:
        if 0 <= index < len(self._queues) and self._queues[index].max_size:
            return self._queues[index]
        return None

    def live_queue(self, index: int) -> DeviceRing | None:
        """The validated device-side queue ``index`` (after DRIVER_OK), or None."""
        q = self._queue(index)
        if q is None or not self.status & _DRIVER_OK:
            return None
        return q.live

    def _new_queue(
        self, size: int, desc: int, driver: int, device: int, max_size: int
    ) -> DeviceRing:
        return create_device_queue(
            self.region,
            size,
            desc,
            driver,
            device,
            features=self.negotiated_features,
            max_size=max_size,
        )

    def _driver_ok(self) -> None:
        try:
            for q in self._queues:
                if q.enabled and q.live is None:  # enabled before FEATURES_OK
                    q.live = self._new_queue(q.size, q.desc, q.driver, q.device, q.max_size)
        except VirtioMsgError as exc:
            self._fail_locked(f"queue setup: {exc}")
            return
        self.model.activate()
        for i, q in enumerate(self._queues):
            if q.kicked:
                q.kicked = False
                self._process(i, q)

    def _process(self, index: int, q: _Queue) -> None:
        if q.live is None:
            return
        try:
            self.model.queue_notify(index, q.live)
        except VirtioMsgError as exc:
            self._fail_locked(f"queue {index}: {exc}")
        except Exception as exc:
            log.exception("device %d: model raised processing queue %d", self.dev_num, index)
            self._fail_locked(f"queue {index}: model error {exc!r}")

    def signal_used(self, index: int) -> None:
        """Send EVENT_USED for queue ``index`` unconditionally (the ring's owner decided).

        For models whose rings are processed elsewhere (a vhost-user back end
        writes the used ring and has already applied notification suppression).
        """
        with self._locked():
            q = self._queue(index)
            if q is None or q.live is None or self.params.polling_only:
                return
            if not self.status & _DRIVER_OK:
                return
            self._event(S.EventUsed(index, dev_num=self.dev_num))

    def notify_used(self, index: int) -> None:
        """Send EVENT_USED for queue ``index`` if the driver wants a notification."""
        with self._locked():
            q = self._queue(index)
            if q is None or q.live is None or self.params.polling_only:
                return
            try:
                wanted = q.live.needs_notification()
            except VirtioMsgError as exc:
                self._fail_locked(f"queue {index}: {exc}")
                return
            if wanted:
                self._event(S.EventUsed(index, dev_num=self.dev_num))  # DEV-37

    # --- config and status changes from the device side ------------------------------

    def _bump_generation(self) -> None:
        self.generation = (self.generation + 1) & _U32 or 1

    def update_config(self, offset: int, data: bytes, *, announce: str = "data") -> None:
        """Change config bytes and report them with EVENT_CONFIG (DEV-07, DEV-11, DEV-17).

        ``announce``: ``data`` sends the new bytes when they fit, ``range``
        names the range without data, ``generic`` sends offset = length = 0
        without data (DEV-10).
        """
        if announce not in ("data", "range", "generic"):
            raise ValueError(f"announce must be data, range or generic, not {announce!r}")
        with self._locked():
            cfg = self.model.config
            if offset < 0 or offset + len(data) > len(cfg):
                raise ValueError(f"config update {offset}+{len(data)} outside {len(cfg)} bytes")
            if bytes(cfg[offset : offset + len(data)]) == bytes(data):
                return
            cfg[offset : offset + len(data)] = data
            self._bump_generation()
            room = self.params.max_size - self.params.header_size - _EVENT_CONFIG_OVERHEAD
            payload = bytes(data) if len(data) <= room and announce == "data" else b""
            where = (0, 0) if announce == "generic" else (offset, len(data))
            self._event(
                S.EventConfig(self.status, self.generation, *where, payload, dev_num=self.dev_num)
            )

    def needs_reset(self, reason: str) -> None:
        """Set DEVICE_NEEDS_RESET and report it (status-only EVENT_CONFIG, DEV-12/14)."""
        with self._locked():
            self._fail_locked(reason)

    def _fail_locked(self, reason: str) -> None:
        self.last_error = reason
        log.warning("device %d needs reset: %s", self.dev_num, reason)
        if self.status & _NEEDS_RESET:
            return
        self.status = int(self.status | C.Status.DEVICE_NEEDS_RESET)
        self._event(S.EventConfig(self.status, self.generation, 0, 0, b"", dev_num=self.dev_num))

    # --- reset ------------------------------------------------------------------------

    def _begin_reset(self) -> None:
        if self.async_reset_polls > 0:
            self._reset_pending = self.async_reset_polls
            for q in self._queues:
                q.live = None  # stop processing at once; finish later
        else:
            self._finish_reset()

    def _finish_reset(self) -> None:
        self._reset_pending = 0
        self.status = 0
        self.negotiated_features = 0
        self._driver_features.clear()
        self._selected_beyond = False
        for q in self._queues:
            q.clear()
        self.last_error = None
        self.model.reset()

    def finish_reset(self) -> None:
        """Complete a pending asynchronous reset now."""
        with self._locked():
            if self._reset_pending:
                self._finish_reset()


_HANDLERS: dict[type, Callable[[DeviceTransport, Message], Message | None]] = {
    S.GetDeviceInfo: DeviceTransport._device_info,
    S.GetDeviceFeatures: DeviceTransport._get_features,
    S.SetDriverFeatures: DeviceTransport._set_features,
    S.GetConfig: DeviceTransport._get_config,
    S.SetConfig: DeviceTransport._set_config,
    S.GetDeviceStatus: DeviceTransport._get_status,
    S.SetDeviceStatus: DeviceTransport._set_status,
    S.GetVqueue: DeviceTransport._get_vqueue,
    S.SetVqueue: DeviceTransport._set_vqueue,
    S.ResetVqueue: DeviceTransport._reset_vqueue,
    S.GetShm: DeviceTransport._get_shm,
    S.EventAvail: DeviceTransport._event_avail,
}
"""Requests (and the one event) a device accepts; anything else is discarded (DEV-21)."""

__all__ = ["REQUIRED_FEATURES", "RING_FEATURES", "VENDOR_ID", "DeviceModel", "DeviceTransport"]
