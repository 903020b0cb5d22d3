"""``conformance driver``: the tool plays devices and judges what a driver sends.

:class:`RecordingBackend` is an ordinary backend that also keeps, per device
number, every frame the driver side delivered and the device's answer.
:func:`check_trace` holds the DRV- rules the trace must obey: frame fields
(DRV-17, DRV-18, DRV-16), the initialisation order (DRV-22, DRV-23, DRV-24,
DRV-26, DRV-31, DRV-56), features (DRV-28, DRV-29, DRV-47), queue setup
(DRV-25, DRV-58..DRV-65, DRV-68, DRV-69), config bounds and generation
(DRV-08, DRV-10, DRV-27, DRV-49, DRV-50), notifications (DRV-32, DRV-33,
DRV-72, DRV-73), reset polling (DRV-55, DRV-57) and FEATURES_OK refusal
(DRV-30).  :func:`run_driver_suite` serves the project's device models and
two special ones (an asynchronous reset, a device refusing every feature
set) behind the in-process loopback bus with the project's drivers, exercises
each bound driver and checks the traces.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import virtio_msg.spec as C
from virtio_msg.bus.backend import Backend
from virtio_msg.conformance.probe import Failure
from virtio_msg.conformance.report import Outcome, Report, Result
from virtio_msg.errors import MalformedMessage, VirtioMsgError
from virtio_msg.transport.model import DeviceModel
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

_ST = C.Status


@dataclass
class Trace:
    """What one device number saw: (raw frame, decoded message or None, response)."""

    entries: list[tuple[bytes, Message | None, Message | None]] = field(default_factory=list)


class RecordingBackend(Backend):
    """A backend that records every frame per device number (and answers as usual)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """As :class:`Backend`."""
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.traces: dict[int, Trace] = {}

    def deliver(self, data: bytes | bytearray | memoryview) -> None:
        """Record, then deliver."""
        raw = bytes(data)
        try:
            msg: Message | None = self.adapter.decode(raw)
        except MalformedMessage:
            msg = None
        dev = struct.unpack_from("<H", raw, 2)[0] if len(raw) >= 4 else -1
        trace = self.traces.setdefault(dev, Trace())
        transport = self.devices.get(dev)
        if msg is not None and transport is not None:
            # answer through the transport ourselves to see the response
            if self.adapter.rfc1 and type(msg) is S.EventAvail:
                super().deliver(raw)
                trace.entries.append((raw, msg, None))
                return
            resp = transport.handle(msg)
            trace.entries.append((raw, msg, resp))
            if resp is not None and self.port is not None:
                self.port.send(self.adapter.encode(resp))
            return
        trace.entries.append((raw, msg, None))
        super().deliver(raw)


def check_trace(trace: Trace, model: DeviceModel, max_size: int, header_size: int,
                strict: bool) -> list[tuple[str, tuple[str, ...], str | None]]:
    """Check every DRV- rule group on ``trace``; return (group, ids, violation or None)."""
    out: list[tuple[str, tuple[str, ...], str | None]] = []
    for name, ids, fn in RULES:
        try:
            fn(trace, model, max_size, header_size, strict)
            out.append((name, ids, None))
        except Failure as exc:
            out.append((name, ids, str(exc)))
    return out


def _frames(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
    for raw, msg, _ in t.entries:
        size = struct.unpack_from("<H", raw, hs - 2)[0] if len(raw) >= hs else -1
        if size != len(raw) or size > mx:
            raise Failure("DRV-18", f"frame of {len(raw)} bytes, msg_size {size}, max {mx}")
        if raw[0] & C.TYPE_RESERVED_MASK:
            raise Failure("DRV-17", f"reserved type bits {raw[0]:#04x}")
        if msg is None:
            raise Failure("DRV-16", f"malformed frame {raw.hex()}")


def _msgs(t: Trace) -> list[tuple[Message, Message | None]]:
    return [(m, r) for _raw, m, r in t.entries if m is not None]


def _init_order(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
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


def _features(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
    offered = model.offered_features
    for m, _ in _msgs(t):
        if type(m) is S.SetDriverFeatures:
            for i, word in enumerate(m.features):
                bits = word << (32 * (m.block_index + i))
                if bits & ~offered:
                    raise Failure(("DRV-28", "DRV-47"),
                                  f"selected unoffered bits {bits & ~offered:#x}")
                if bits >> C.VIRTIO_F_NOTIF_CONFIG_DATA & 1:
                    raise Failure("DRV-29", "negotiated VIRTIO_F_NOTIF_CONFIG_DATA")


def _queues(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
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
            limits = model.queue_max_sizes
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


def _config(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
    size = len(model.config)
    for m, _ in _msgs(t):
        if type(m) in (S.GetConfig, S.SetConfig) and m.offset + m.length > size:
            raise Failure(("DRV-27", "DRV-49", "DRV-50"),
                          f"{type(m).__name__}({m.offset}, {m.length}) beyond {size} bytes")
        if type(m) is S.SetConfig and not strict and m.generation != 0:
            raise Failure("DRV-08", f"baseline SET_CONFIG with generation {m.generation:#x}")


def _notifications(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
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
            notif = model.negotiated_features >> C.VIRTIO_F_NOTIFICATION_DATA & 1
            if m.next_offset and not notif:
                raise Failure("DRV-73",
                              f"next_offset {m.next_offset:#x} without NOTIFICATION_DATA")


def _reset_poll(t: Trace, model: DeviceModel, mx: int, hs: int, strict: bool) -> None:
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
    ("config-access", ("DRV-08", "DRV-27", "DRV-49", "DRV-50"), _config),
    ("notifications", ("DRV-32", "DRV-33", "DRV-72", "DRV-73"), _notifications),
    ("reset-polling", ("DRV-55", "DRV-57"), _reset_poll),
)


def _plan(types: list[str]) -> list[tuple[str, DeviceModel, int]]:
    from virtio_msg.devices.catalog import make_device

    plan: list[tuple[str, DeviceModel, int]] = [(t, make_device(t), 0) for t in types]
    plan.append(("rng, asynchronous reset", make_device("rng"), 3))
    refusing = make_device("rng")
    refusing.validate_features = lambda features: False  # type: ignore[method-assign]
    plan.append(("rng, refusing FEATURES_OK", refusing, 0))
    return plan


def _judge(report: Report, backend: RecordingBackend, plan: list[tuple[str, DeviceModel, int]],
           params: BusParams, first: int) -> None:
    for n, (label, model, _polls) in enumerate(plan, first):
        trace = backend.traces.get(n, Trace())
        if not trace.entries:
            report.add(Result("probe", ("DRV-23",), label, Outcome.FAIL,
                              "the driver side sent nothing to the device"))
            continue
        for name, ids, problem in check_trace(trace, model, params.max_size,
                                              params.header_size, params.strict_config):
            report.add(Result(name, ids, label, Outcome.FAIL if problem else Outcome.PASS,
                              problem or ""))


def run_driver_suite(types: list[str], params: BusParams | None = None) -> Report:
    """The project's drivers behind the in-process bus, against ``types`` and two specials."""
    from virtio_msg.bus.inprocess import InProcessChannel
    from virtio_msg.bus.loopback import LoopbackBus

    bp = params or BusParams()
    bus = LoopbackBus(bp)
    backend = RecordingBackend(bus.region, bp)
    InProcessChannel(bus, backend)
    report = Report("driver", bp.profile.value)
    plan = _plan(types)
    try:
        for n, (label, model, polls) in enumerate(plan):
            backend.serve(n, model, async_reset_polls=polls)
            entry = bus.device(n)
            if entry is not None and entry.driver is not None:
                try:
                    entry.driver.selftest()
                except VirtioMsgError as exc:
                    report.add(Result("exercise", ("DRV-26",), label, Outcome.FAIL, str(exc)))
        _judge(report, backend, plan, bp, 0)
    finally:
        bus.close()
    return report


def run_driver_suite_socket(path: str, types: list[str], *, first: int = 0,
                            settle: float = 1.0, timeout: float = 10.0) -> Report:
    """Serve ``types`` (and the specials) to a socket bus at ``path`` as a backend; judge.

    The bus's drivers probe each device before ADD is answered; the tool then
    waits until its devices have been quiet for ``settle`` seconds (bounded by
    ``timeout``) so that the bus's own exercise is in the trace too.
    """
    from virtio_msg.bus.client import connect

    client = connect(path)
    backend = RecordingBackend(client.region, client.params)
    backend.attach(client)
    client.backend = backend  # before any ADD: the bus sends nothing for devices until then
    report = Report("driver", client.params.profile.value)
    plan = _plan(types)
    try:
        for n, (_label, model, polls) in enumerate(plan, first):
            client.serve(n, model, async_reset_polls=polls)
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            count = sum(len(t.entries) for t in backend.traces.values())
            if count == last:
                break
            last = count
            time.sleep(settle)
        _judge(report, backend, plan, client.params, first)
    finally:
        client.close()
    return report


__all__ = ["RULES", "RecordingBackend", "Trace", "check_trace", "run_driver_suite",
           "run_driver_suite_socket"]
