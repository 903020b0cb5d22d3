"""``conformance driver``: devices that provoke the driver, and the scenarios judging its reaction.

Some DRV- requirements are only visible when the device does something: the
config changes between two accesses of one read (DRV-07), a generic
EVENT_CONFIG arrives (DRV-09, DRV-38), an EVENT_CONFIG names a changed range
without its data (DRV-37), a strict-profile SET_CONFIG is rejected because the
generation moved (DRV-11), the device sets DEVICE_NEEDS_RESET (DRV-54).  Each
:data:`PROVOCATIONS` entry is one such scenario: a blk device with a
600-byte config space (the blk fields, then padding; more than two
GET_CONFIG at the usual 264-byte maximum) served with a
:class:`~virtio_msg.conformance.driver_check.Provoker` that does the thing
once, marks where in the trace it did it, and a judge that reads the
driver's frames after the mark.  A scenario whose trigger never happened (the
driver never read the config with two accesses in a row, never wrote it, ...)
is skipped with that reason, never passed.  Behind the seed kernel's loopback
the device side cannot send EVENT_CONFIG at all (the kernel drops it), so the
event scenarios are skipped there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import virtio_msg.spec as C
from virtio_msg.conformance.driver_check import Provoker, Trace
from virtio_msg.conformance.report import Outcome
from virtio_msg.transport.device import DeviceTransport
from virtio_msg.transport.model import DeviceModel
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

CONFIG_SIZE: Final = 600
"""Config space of the provoking devices."""
_CHANGED: Final = 100
"""Offset of the padding byte the device changes."""
WRITABLE: Final = (64, 4)
"""The padding range the stale-write device lets the driver write."""
_ST = C.Status


@dataclass(frozen=True)
class Provocation:
    """One provoking scenario: its name, checklist ids, the device it serves."""

    name: str
    ids: tuple[str, ...]
    label: str
    title: str
    events: bool = False
    """Needs EVENT_CONFIG to reach the driver."""
    strict: bool = False
    """Only in the strict configuration profile."""
    exercise: str = ""
    """In process, the tool also uses the transport: ``read`` the whole config, ``write`` it."""


PROVOCATIONS: Final = (
    Provocation("config-generation-reread", ("DRV-07",), "blk, config changes mid-read",
                "the config changes between two GET_CONFIG in a row: the driver reads again",
                exercise="read"),
    Provocation("config-event-generic", ("DRV-09", "DRV-38"), "blk, generic config event",
                "a generic EVENT_CONFIG (offset = length = 0, no data): a GET_CONFIG follows",
                events=True),
    Provocation("config-event-before-io", ("DRV-37",), "blk, config event without data",
                "an EVENT_CONFIG naming a range without data: GET_CONFIG before more I/O",
                events=True),
    Provocation("config-stale-retry", ("DRV-11",), "blk, stale write rejected once",
                "strict: a SET_CONFIG rejected for its generation: GET_CONFIG before a retry",
                strict=True, exercise="write"),
    Provocation("needs-reset", ("DRV-54",), "blk, DEVICE_NEEDS_RESET after DRIVER_OK",
                "DEVICE_NEEDS_RESET at DRIVER_OK: status 0 and a new initialization before I/O",
                events=True),
)


def provoking_model(p: Provocation) -> DeviceModel:
    """A blk model with a padded config space (and, for a write, a writable range)."""
    from virtio_msg.devices.catalog import make_device

    model = make_device("blk")
    model.config.extend(bytes(CONFIG_SIZE - len(model.config)))
    if p.exercise == "write":
        model.writable_config = (WRITABLE,)
    return model


class ProvokingDevice(Provoker):
    """Does ``p``'s one thing to ``transport`` at the right moment and marks the trace."""

    def __init__(self, p: Provocation) -> None:
        """Provoke what ``p`` says."""
        self.p = p

    def _change(self, dev: DeviceTransport, trace: Trace, mark: int,
                announce: str = "data") -> None:
        cfg = dev.model.config
        dev.update_config(_CHANGED, bytes([cfg[_CHANGED] ^ 0x5A]), announce=announce)
        trace.marks[self.p.name] = mark

    def before(self, dev: DeviceTransport, trace: Trace, index: int, msg: Message) -> None:
        """Change the config mid-read, or just before a strict SET_CONFIG is handled."""
        if self.p.name in trace.marks:
            return
        if self.p.name == "config-generation-reread" and type(msg) is S.GetConfig and index:
            prev = trace.entries[index - 1][1]
            if type(prev) is S.GetConfig and (prev.length or msg.length):
                self._change(dev, trace, index)
        elif self.p.name == "config-stale-retry" and type(msg) is S.SetConfig and msg.length \
                and dev.params.strict_config:
            self._change(dev, trace, index)

    def after(self, dev: DeviceTransport, trace: Trace, index: int, msg: Message,
              resp: Message) -> Message:
        """At the first accepted DRIVER_OK: send the event, or set DEVICE_NEEDS_RESET."""
        if self.p.name in trace.marks or not self.p.events or type(resp) is not \
                S.SetDeviceStatusResp or not resp.status & _ST.DRIVER_OK:
            return resp
        if self.p.name == "config-event-generic":
            self._change(dev, trace, index + 1, "generic")
        elif self.p.name == "config-event-before-io":
            self._change(dev, trace, index + 1, "range")
        elif self.p.name == "needs-reset":
            dev.needs_reset("conformance: DEVICE_NEEDS_RESET provoked at DRIVER_OK")
            trace.marks[self.p.name] = index + 1
            return resp._replace(status=dev.status)  # DEV-56: the reply says so
        return resp


Verdict = tuple[Outcome, str]


def _is_read(m: Message | None) -> bool:
    return type(m) is S.GetConfig and m.length > 0


def _overlaps(a: Message, b: Message) -> bool:
    return bool(a.offset < b.offset + b.length and b.offset < a.offset + a.length)


def _reread(t: Trace, at: int) -> Verdict:
    msgs = [m for _raw, m, _r in t.entries]
    prev, cur = msgs[at - 1], msgs[at]
    target = prev if _is_read(prev) else cur
    assert target is not None
    j = at + 1
    while j < len(msgs) and type(msgs[j]) is S.GetConfig:
        m = msgs[j]
        if _is_read(m) and m is not None and _overlaps(m, target):
            return Outcome.PASS, f"re-read bytes {m.offset}+{m.length} after the change"
        j += 1
    return Outcome.FAIL, (f"DRV-07 (SHOULD): the config changed between GET_CONFIG "
                          f"{prev.offset}+{prev.length} and {cur.offset}+{cur.length} "  # type: ignore[union-attr]
                          f"(generation moved); the driver did not read {target.offset}+"
                          f"{target.length} again")


def _first_avail(t: Trace, start: int, end: int) -> int | None:
    return next((i for i in range(start, end) if type(t.entries[i][1]) is S.EventAvail), None)


def _window_end(t: Trace) -> int:
    return t.marks.get("exercise", len(t.entries))


def _event_generic(t: Trace, at: int) -> Verdict:
    end = _window_end(t)
    reads = [i for i in range(at, end) if _is_read(t.entries[i][1])]
    if reads:
        return Outcome.PASS, "GET_CONFIG followed the generic EVENT_CONFIG"
    return Outcome.FAIL, ("DRV-38 (SHOULD): after a generic EVENT_CONFIG (offset = length = 0, "
                          "no data) the driver never read the config space")


def _event_before_io(t: Trace, at: int) -> Verdict:
    end = _window_end(t)
    avail = _first_avail(t, at, end)
    if avail is None:
        return Outcome.SKIP, "the driver sent no EVENT_AVAIL after the EVENT_CONFIG"
    if any(_is_read(t.entries[i][1]) for i in range(at, avail)):
        return Outcome.PASS, "GET_CONFIG before the next EVENT_AVAIL"
    m = t.entries[avail][1]
    return Outcome.FAIL, (f"DRV-37 (SHOULD): EVENT_AVAIL for queue {m.vq_index} after an "  # type: ignore[union-attr]
                          "EVENT_CONFIG without data, before any GET_CONFIG")


def _stale_retry(t: Trace, at: int) -> Verdict:
    resp = t.entries[at][2]
    if type(resp) is not S.SetConfigResp or resp.length != 0:
        return Outcome.SKIP, "the device's rejection did not happen (the write was applied)"
    k = next((i for i in range(at + 1, len(t.entries)) if type(t.entries[i][1]) is S.SetConfig
              and t.entries[i][1].length), None)  # type: ignore[union-attr]
    if k is None:
        return Outcome.LENIENT, "the driver did not retry the rejected write"
    if any(type(t.entries[i][1]) is S.GetConfig for i in range(at + 1, k)):
        return Outcome.PASS, "GET_CONFIG between the rejection and the retry"
    return Outcome.FAIL, "DRV-11 (SHOULD): SET_CONFIG retried without a GET_CONFIG after the " \
                         "generation-mismatch rejection"


def _needs_reset(t: Trace, at: int) -> Verdict:
    end = len(t.entries)
    avail = _first_avail(t, at, end)
    stop = avail if avail is not None else end
    msgs = [(m, r) for _raw, m, r in t.entries[at:stop]]
    reset = next((k for k, (m, _r) in enumerate(msgs)
                  if type(m) is S.SetDeviceStatus and m.status == 0), None)
    why = f" ({t.exercise_error})" if t.exercise_error else ""
    if reset is None:
        what = "sent EVENT_AVAIL" if avail is not None else "never wrote status 0"
        return Outcome.FAIL, f"DRV-54 (SHOULD): after DEVICE_NEEDS_RESET the driver {what}{why}"
    ok = any(type(m) is S.SetDeviceStatus and m.status & _ST.DRIVER_OK and r is not None
             and r.status & _ST.DRIVER_OK for m, r in msgs[reset:])
    if avail is not None and not ok:
        return Outcome.FAIL, ("DRV-54 (SHOULD): queue I/O resumed after the reset before a new "
                              f"DRIVER_OK{why}")
    return Outcome.PASS, "status 0, then a new initialization" if ok else "status 0 written"


_JUDGES: Final = {
    "config-generation-reread": _reread,
    "config-event-generic": _event_generic,
    "config-event-before-io": _event_before_io,
    "config-stale-retry": _stale_retry,
    "needs-reset": _needs_reset,
}
_NOT_PROVOKED: Final = {
    "config-generation-reread": "the driver never read the config with two GET_CONFIG in a "
                                "row, so no change between the accesses of one read was possible",
    "config-event-generic": "the driver never set DRIVER_OK",
    "config-event-before-io": "the driver never set DRIVER_OK",
    "config-stale-retry": "the driver never wrote the config space",
    "needs-reset": "the driver never set DRIVER_OK",
}


def judge(p: Provocation, trace: Trace) -> Verdict:
    """The verdict of scenario ``p`` on the trace of its device."""
    at = trace.marks.get(p.name)
    if at is None:
        return Outcome.SKIP, _NOT_PROVOKED[p.name]
    return _JUDGES[p.name](trace, at)


def unavailable(p: Provocation, *, kernel: bool, strict: bool) -> str | None:
    """Why ``p`` cannot run here (None: it can)."""
    if kernel and p.events:
        return ("the seed kernel's loopback drops EVENT_CONFIG written by the device side "
                "(linux-rfc1.md section 5, item 16): the driver can never see it")
    if kernel and p.strict:
        return "the seed kernel refuses a bus with the strict configuration profile"
    if p.strict and not strict:
        return "baseline profile: a device never rejects SET_CONFIG for its generation " \
               "(run with --strict)"
    return None


__all__ = ["CONFIG_SIZE", "PROVOCATIONS", "WRITABLE", "Provocation", "ProvokingDevice", "judge",
           "provoking_model", "unavailable"]
