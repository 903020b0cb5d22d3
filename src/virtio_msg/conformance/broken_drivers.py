"""Deliberately broken driver sides, one defect each, for the driver suite's self-test.

:data:`DRIVER_DEFECTS` names each defect, what is wrong and the one scenario of
``conformance driver`` that must catch it; :func:`broken_drivers` returns the
project's driver classes with that defect built in (the driver engine of
each device is given the broken behaviour, or the blk driver's I/O path is).
The project's test suite serves the tool's devices to each broken set in
process and requires exactly that scenario to fail, while the project's own
drivers pass it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import virtio_msg.spec as C
from virtio_msg.drivers import DRIVERS, Driver
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.errors import TransportError
from virtio_msg.transport.driver import DriverTransport
from virtio_msg.transport.engine import DriverEngine, Proc
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

DRIVER_DEFECTS: Final[dict[str, tuple[str, str]]] = {
    "no-generation-reread": ("reads config chunks once, never comparing their generations",
                             "config-generation-reread"),
    "ignores-generic-event": ("ignores an EVENT_CONFIG with offset = length = 0",
                              "config-event-generic"),
    "io-before-refresh": ("re-reads the blk config only after the next I/O",
                          "config-event-before-io"),
    "baseline-generation": ("puts generation 0 in every SET_CONFIG, strict profile too",
                            "config-access"),
    "retry-without-reread": ("retries a rejected strict SET_CONFIG without GET_CONFIG",
                             "config-stale-retry"),
    "ignores-needs-reset": ("goes on with I/O after DEVICE_NEEDS_RESET", "needs-reset"),
}
"""defect -> (what is wrong, the scenario that must fail)."""


class _NoReread(DriverEngine):
    def config_read(self, offset: int, length: int) -> Proc[bytes]:
        self._check_range(offset, length)
        chunk = self._room - 12
        parts: list[bytes] = []
        for pos in range(0, length, chunk):
            n = min(chunk, length - pos)
            r = yield from self._call(S.GetConfig(offset + pos, n), S.GetConfigResp)
            parts.append(r.data)
            self.generation = r.generation
        return b"".join(parts)


class _IgnoresGeneric(DriverEngine):
    def note_event(self, msg: Message) -> None:
        if not (type(msg) is S.EventConfig and msg.offset == msg.length == 0 and
                not msg.device_status & C.Status.DEVICE_NEEDS_RESET):
            super().note_event(msg)

    def accept_event(self, msg: Message) -> Message | None:
        stale = self.config_stale
        out = super().accept_event(msg)
        if type(msg) is S.EventConfig and msg.offset == msg.length == 0 and \
                not msg.device_status & C.Status.DEVICE_NEEDS_RESET:
            self.config_stale = stale
        return out


class _BaselineGeneration(DriverEngine):
    def write_generation(self) -> int:
        return 0


class _RetryWithoutReread(DriverEngine):
    def after_rejection(self) -> Proc[None]:
        return
        yield  # a procedure that sends nothing


_ENGINES: Final[dict[str, type[DriverEngine]]] = {
    "no-generation-reread": _NoReread,
    "ignores-generic-event": _IgnoresGeneric,
    "baseline-generation": _BaselineGeneration,
    "retry-without-reread": _RetryWithoutReread,
}


class _IoBeforeRefresh(BlkDriver):
    def ready_for_io(self) -> None:
        t = self.transport
        if t.needs_reset and not t.removed:
            self.recover()

    def execute(self, ops: Iterable[BlkOp], *, check: bool = True) -> list[BlkOp]:
        done = super().execute(ops, check=check)
        if self.transport.engine.config_stale:
            self.transport.engine.config_stale = False
            self.refresh_config()
        return done


class _IgnoresNeedsReset(BlkDriver):
    def ready_for_io(self) -> None:
        if self.transport.engine.config_stale:
            self.transport.engine.config_stale = False
            self.refresh_config()


_BLK: Final[dict[str, type[BlkDriver]]] = {
    "io-before-refresh": _IoBeforeRefresh,
    "ignores-needs-reset": _IgnoresNeedsReset,
}


def broken_drivers(defect: str) -> dict[int, type[Driver]]:
    """The project's driver classes (by device id) with ``defect`` built in."""
    if defect not in DRIVER_DEFECTS:
        raise ValueError(f"unknown driver defect {defect!r} (known: {', '.join(DRIVER_DEFECTS)})")
    engine = _ENGINES.get(defect)
    out: dict[int, type[Driver]] = {}
    for device_id, cls in DRIVERS.items():
        base: type[Driver] = _BLK.get(defect, cls) if cls is BlkDriver else cls
        if engine is None:
            out[device_id] = base
            continue

        def init(self: Driver, transport: DriverTransport, *, _base: Any = base,
                 _engine: Any = engine, **kw: Any) -> None:
            _base.__init__(self, transport, **kw)
            if type(transport.engine) is not DriverEngine:
                raise TransportError("protocol", "the driver engine was already replaced")
            transport.engine.__class__ = _engine

        out[device_id] = type(f"Broken{base.__name__}", (base,), {"__init__": init})
    return out


__all__ = ["DRIVER_DEFECTS", "broken_drivers"]
