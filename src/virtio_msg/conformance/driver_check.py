"""``conformance driver``: what a driver sent, recorded, and the DRV- rules it must obey.

:class:`RecordingBackend` is an ordinary backend that also keeps, per device
number, every frame the driver side delivered with the device's answer, every
event the device sent (with its position among the frames) and where the tool
provoked the driver (:mod:`virtio_msg.conformance.driver_provoke` changes the
config mid-read, sends config events, sets DEVICE_NEEDS_RESET).
:func:`check_trace` holds the rule groups every trace must obey: frame fields
(DRV-16, DRV-17, DRV-18), the initialisation order (DRV-22, DRV-23, DRV-24,
DRV-30, DRV-31, DRV-56), features (DRV-28, DRV-29, DRV-47), queue setup
(DRV-25, DRV-58..DRV-65, DRV-68, DRV-69), config bounds and generation
(DRV-08 in the baseline profile, DRV-10 in the strict one, DRV-27, DRV-49,
DRV-50), notifications (DRV-32, DRV-33, DRV-72, DRV-73) and reset polling
(DRV-55, DRV-57).  Behind the kernel channel every frame is a fixed 44-byte
buffer; ``msg_size`` is then compared with the message's own length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import virtio_msg.spec as C
from virtio_msg.bus.backend import Backend, BusPort
from virtio_msg.conformance.probe import Failure
from virtio_msg.errors import MalformedMessage
from virtio_msg.transport.device import DeviceTransport
from virtio_msg.transport.model import DeviceModel
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

_ST = C.Status


@dataclass
class Trace:
    """What one device number saw and did.

    ``entries``: (raw frame, decoded message or None, the device's response);
    ``events``: (position, event) -- the event was sent after ``entries[:position]``;
    ``marks``: provocation name -> position in ``entries`` where the tool provoked.
    """

    entries: list[tuple[bytes, Message | None, Message | None]] = field(default_factory=list)
    events: list[tuple[int, Message]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    exercise_error: str | None = None
    """Why the tool's exercise of the driver failed (in process), if it did."""


@dataclass(frozen=True)
class Context:
    """What the rules need besides the trace: the model served and the bus's parameters."""

    model: DeviceModel
    max_size: int
    header_size: int
    strict: bool
    adapter: WireAdapter
    kernel: bool = False
    """Frames come from the seed kernel's fixed-size buffers."""


class Provoker:
    """Changes what a device does at chosen moments (see :mod:`.driver_provoke`)."""

    def before(self, dev: DeviceTransport, trace: Trace, index: int, msg: Message) -> None:
        """Called before ``dev`` handles ``trace.entries[index]``."""

    def after(self, dev: DeviceTransport, trace: Trace, index: int, msg: Message,
              resp: Message) -> Message:
        """Called after it; returns the response to send."""
        return resp


class _Tap:
    """A bus port that records the events a backend sends."""

    def __init__(self, port: BusPort, backend: RecordingBackend) -> None:
        self.port = port
        self.backend = backend

    def send(self, data: bytes) -> None:
        if data and not data[0] & C.TYPE_RESPONSE:
            try:
                msg = self.backend.adapter.decode(data)
            except MalformedMessage:
                msg = None
            if type(msg) in (S.EventConfig, S.EventUsed) and msg is not None:
                trace = self.backend.traces.setdefault(msg[-2], Trace())
                trace.events.append((len(trace.entries), msg))
        self.port.send(data)

    def add(self, dev_num: int) -> None:
        self.port.add(dev_num)

    def remove(self, dev_num: int) -> None:
        self.port.remove(dev_num)


class RecordingBackend(Backend):
    """A backend that records every frame and event per device number (and answers as usual)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """As :class:`Backend`."""
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.traces: dict[int, Trace] = {}
        self.provokers: dict[int, Provoker] = {}
        """Device number -> what the tool makes that device do."""

    def attach(self, port: BusPort) -> None:
        """Connect through ``port``, recording the events sent through it."""
        super().attach(_Tap(port, self))

    def deliver(self, data: bytes | bytearray | memoryview) -> None:
        """Record, then deliver (with the device's provoker, if it has one)."""
        raw = bytes(data)
        try:
            msg: Message | None = self.adapter.decode(raw)
        except MalformedMessage:
            msg = None
        dev = struct.unpack_from("<H", raw, 2)[0] if len(raw) >= 4 else -1
        trace = self.traces.setdefault(dev, Trace())
        transport = self.devices.get(dev)
        index = len(trace.entries)
        trace.entries.append((raw, msg, None))
        if msg is None or transport is None or (self.adapter.rfc1 and type(msg) is S.EventAvail):
            super().deliver(raw)  # a kick's answer (linux-rfc1) is not a transport response
            return
        provoker = self.provokers.get(dev)
        if provoker is not None:
            provoker.before(transport, trace, index, msg)
        resp = transport.handle(msg)
        if provoker is not None and resp is not None:
            resp = provoker.after(transport, trace, index, msg, resp)
        trace.entries[index] = (raw, msg, resp)
        if resp is not None and self.port is not None:
            self.port.send(self.adapter.encode(resp))


def check_trace(trace: Trace, ctx: Context) -> list[tuple[str, tuple[str, ...], str | None]]:
    """Check every DRV- rule group on ``trace``; return (group, ids, violation or None)."""
    out: list[tuple[str, tuple[str, ...], str | None]] = []
    for name, ids, fn in RULES:
        try:
            fn(trace, ctx)
            out.append((name, ids, None))
        except Failure as exc:
            out.append((name, ids, str(exc)))
    return out


def _frames(t: Trace, ctx: Context) -> None:
    hs, mx = ctx.header_size, ctx.max_size
    for raw, msg, _ in t.entries:
        size = struct.unpack_from("<H", raw, hs - 2)[0] if len(raw) >= hs else -1
        if raw and raw[0] & C.TYPE_RESERVED_MASK:
            raise Failure("DRV-17", f"reserved type bits {raw[0]:#04x}")
        if msg is None:
            raise Failure("DRV-16", f"malformed frame {raw.hex()}")
        # Behind the kernel channel every frame is a fixed-size buffer: msg_size
        # must still be the message's own length.
        want = len(ctx.adapter.encode(msg)) if ctx.kernel else len(raw)
        if size != want or size > mx:
            raise Failure("DRV-18", f"{type(msg).__name__}: msg_size {size}, its fields take "
                          f"{want} bytes, max {mx}")


def _msgs(t: Trace) -> list[tuple[Message, Message | None]]:
    return [(m, r) for _raw, m, r in t.entries if m is not None]


def _init_order(t: Trace, ctx: Context) -> None:
    msgs = _msgs(t)
    if not msgs or type(msgs[0][0]) is not S.GetDeviceInfo:
        raise Failure("DRV-23", "the first message is not GET_DEVICE_INFO")
    statuses = [(m.status, r.status if r is not None else None)
                for m, r in msgs if type(m) is S.SetDeviceStatus]
    if not statuses or statuses[0][0] != 0:
        raise Failure(("DRV-22", "DRV-56"), "the driver did not reset first (status 0)")
    seen_features = False
    ok = False
    for m, r in msgs:
        if type(m) is S.SetDriverFeatures:
            seen_features = True
        if type(m) is S.SetDeviceStatus:
            if m.status & _ST.FEATURES_OK and not seen_features:
                raise Failure("DRV-22", "FEATURES_OK before SET_DRIVER_FEATURES")
            if m.status & _ST.FEATURES_OK and r is not None and r.status & _ST.FEATURES_OK:
                ok = True
            if m.status & _ST.DRIVER_OK and not ok:
                raise Failure(("DRV-30", "DRV-31"), "DRIVER_OK without accepted FEATURES_OK")
            if m.status and not m.status & _ST.ACKNOWLEDGE:
                raise Failure("DRV-22", f"status {m.status:#x} without ACKNOWLEDGE")
        if type(m) is S.SetVqueue and m.flags & C.VQ_OP_MASK == C.VQ_OP_ENABLE and not ok:
            raise Failure("DRV-24", f"queue {m.index} enabled before FEATURES_OK was accepted")


def _features(t: Trace, ctx: Context) -> None:
    offered = ctx.model.offered_features
    for m, _ in _msgs(t):
        if type(m) is S.SetDriverFeatures:
            for i, word in enumerate(m.features):
                bits = word << (32 * (m.block_index + i))
                if bits & ~offered:
                    raise Failure(("DRV-28", "DRV-47"),
                                  f"selected unoffered bits {bits & ~offered:#x}")
                if bits >> C.VIRTIO_F_NOTIF_CONFIG_DATA & 1:
                    raise Failure("DRV-29", "negotiated VIRTIO_F_NOTIF_CONFIG_DATA")


def _queues(t: Trace, ctx: Context) -> None:
    asked: set[int] = set()
    verified: dict[int, bool] = {}
    negotiated = 0
    for m, _r in _msgs(t):
        if type(m) is S.SetDriverFeatures:
            for i, word in enumerate(m.features):
                negotiated |= word << (32 * (m.block_index + i))
        if type(m) is S.GetVqueue:
            asked.add(m.index)
            if m.index in verified:
                verified[m.index] = True
        elif type(m) is S.SetVqueue:
            if m.index not in asked:
                raise Failure(("DRV-58", "DRV-62"), f"SET_VQUEUE {m.index} without GET_VQUEUE")
            if m.reserved or m.flags & C.VQ_FLAGS_RESERVED_MASK:
                raise Failure("DRV-60", f"SET_VQUEUE reserved {m.reserved:#x} flags {m.flags:#x}")
            if m.flags & C.VQ_OP_MASK == C.VQ_OP_RESERVED:
                raise Failure("DRV-61", "SET_VQUEUE state operation 3")
            limits = ctx.model.queue_max_sizes
            if not m.flags & C.VQ_SIZE_IGNORE and m.index < len(limits) and \
                    m.size > limits[m.index]:
                raise Failure(("DRV-59", "DRV-64"), f"size {m.size} > max {limits[m.index]}")
            if m.desc_addr % 16 or m.driver_addr % 2 or m.device_addr % 4:
                raise Failure("DRV-65", "misaligned ring addresses")
            verified[m.index] = False
        elif type(m) is S.SetDeviceStatus and m.status & _ST.DRIVER_OK:
            pending = [i for i, v in verified.items() if not v]
            if pending:
                raise Failure(("DRV-25", "DRV-68"), f"queue {pending[0]} not verified with "
                              "GET_VQUEUE before DRIVER_OK")
        elif type(m) is S.ResetVqueue and not negotiated >> C.VIRTIO_F_RING_RESET & 1:
            raise Failure("DRV-69", "RESET_VQUEUE without VIRTIO_F_RING_RESET")
        if type(m) is S.SetDeviceStatus and m.status == 0:
            asked.clear()
            verified.clear()
            negotiated = 0


def _generations(t: Trace) -> list[tuple[int, int, bool]]:
    """(position, generation, from a response) the device reported, in order."""
    seen = [(i + 1, int(r.generation), True) for i, (_raw, _m, r) in enumerate(t.entries)
            if isinstance(r, (S.GetConfigResp, S.SetConfigResp))]
    seen += [(pos, int(ev.generation), False) for pos, ev in t.events
             if type(ev) is S.EventConfig]
    return sorted(seen, key=lambda x: (x[0], not x[2]))


def _config(t: Trace, ctx: Context) -> None:
    size = len(ctx.model.config)
    reported = _generations(t)
    for i, (_raw, m, _r) in enumerate(t.entries):
        if isinstance(m, (S.GetConfig, S.SetConfig)) and m.offset + m.length > size:
            raise Failure(("DRV-27", "DRV-49", "DRV-50"),
                          f"{type(m).__name__}({m.offset}, {m.length}) beyond {size} bytes")
        if type(m) is not S.SetConfig:
            continue
        if not ctx.strict and m.generation != 0:
            raise Failure("DRV-08", f"baseline SET_CONFIG with generation {m.generation:#x}")
        before = [x for x in reported if x[0] <= i]
        if ctx.strict and before:
            # The latest response's generation, or one an event sent since then carried
            # (an event may overtake what the driver is doing).
            last = max((k for k, x in enumerate(before) if x[2]), default=0)
            allowed = {g for _pos, g, _resp in before[last:]}
            if m.generation not in allowed:
                raise Failure("DRV-10", f"strict SET_CONFIG({m.offset}, {m.length}) with "
                              f"generation {m.generation:#x}; the device last reported "
                              f"{sorted(allowed)}")


def _notifications(t: Trace, ctx: Context) -> None:
    enabled: set[int] = set()
    driver_ok = False
    for m, r in _msgs(t):
        if type(m) is S.SetVqueue and m.flags & C.VQ_OP_MASK == C.VQ_OP_ENABLE:
            enabled.add(m.index)
        elif type(m) is S.SetDeviceStatus:
            if m.status == 0:
                enabled.clear()
                driver_ok = False
            elif r is not None and r.status & _ST.DRIVER_OK:
                driver_ok = True
        elif type(m) is S.EventAvail:
            if m.vq_index not in enabled:
                raise Failure(("DRV-33", "DRV-72"), f"EVENT_AVAIL for unconfigured queue "
                              f"{m.vq_index}")
            if not driver_ok:
                raise Failure("DRV-32", "EVENT_AVAIL before the device reported DRIVER_OK")
            notif = ctx.model.negotiated_features >> C.VIRTIO_F_NOTIFICATION_DATA & 1
            if m.next_offset and not notif:
                raise Failure("DRV-73",
                              f"next_offset {m.next_offset:#x} without NOTIFICATION_DATA")


def _reset_poll(t: Trace, ctx: Context) -> None:
    waiting = False
    for m, r in _msgs(t):
        if type(m) is S.SetDeviceStatus and m.status == 0:
            waiting = r is not None and r.status != 0
        elif type(m) is S.GetDeviceStatus and r is not None and r.status == 0:
            waiting = False
        elif waiting and type(m) is S.SetDeviceStatus:
            raise Failure(("DRV-55", "DRV-57"), "status written before the reset completed")


RULES = (
    ("frames", ("DRV-16", "DRV-17", "DRV-18"), _frames),
    ("init-order", ("DRV-22", "DRV-23", "DRV-24", "DRV-30", "DRV-31", "DRV-56"), _init_order),
    ("features", ("DRV-28", "DRV-29", "DRV-47"), _features),
    ("queue-setup", ("DRV-25", "DRV-58", "DRV-59", "DRV-60", "DRV-61", "DRV-62", "DRV-64",
                     "DRV-65", "DRV-68", "DRV-69"), _queues),
    ("config-access", ("DRV-08", "DRV-10", "DRV-27", "DRV-49", "DRV-50"), _config),
    ("notifications", ("DRV-32", "DRV-33", "DRV-72", "DRV-73"), _notifications),
    ("reset-polling", ("DRV-55", "DRV-57"), _reset_poll),
)


__all__ = ["RULES", "Context", "Provoker", "RecordingBackend", "Trace", "check_trace"]
