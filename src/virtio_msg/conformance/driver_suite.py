"""``conformance driver``: where the tool's devices are served and how the traces are judged.

:func:`plan` lists the devices the tool plays: the requested models, an rng
whose reset completes asynchronously, an rng refusing every feature set, and
one provoking device per :data:`~virtio_msg.conformance.driver_provoke.PROVOCATIONS`
entry that can run here (the others become skips with their reason).  Three
places for the driver side: :func:`run_driver_suite` -- the project's drivers
behind the in-process loopback bus (or a broken set of them, for the
self-test), each bound driver exercised with its self-test and the provoking
devices' config read or written through the driver transport;
:func:`run_driver_suite_socket` -- the tool connects as a backend to a socket
bus whose drivers probe and exercise the devices; :func:`run_driver_suite_kernel`
-- the tool serves the devices behind the kernel channel, so the kernel's own
virtio drivers are judged.  Every trace is checked against every rule group
of :mod:`virtio_msg.conformance.driver_check`, and each provoking device's
trace against its scenario.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from virtio_msg.bus.backend import Backend
from virtio_msg.conformance.driver_check import Context, RecordingBackend, Trace, check_trace
from virtio_msg.conformance.driver_provoke import (
    PROVOCATIONS,
    WRITABLE,
    Provocation,
    ProvokingDevice,
    judge,
    provoking_model,
    unavailable,
)
from virtio_msg.conformance.report import Outcome, Report, Result
from virtio_msg.errors import VirtioMsgError
from virtio_msg.transport.model import DeviceModel
from virtio_msg.transport.params import BusParams


@dataclass
class Planned:
    """One device the tool plays."""

    label: str
    model: DeviceModel
    polls: int = 0
    """GET_DEVICE_STATUS polls an asynchronous reset takes (0: synchronous)."""
    provocation: Provocation | None = None


def plan(types: list[str], *, kernel: bool = False,
         strict: bool = False) -> tuple[list[Planned], list[Result]]:
    """The devices to serve, and the skipped provoking scenarios (with why)."""
    from virtio_msg.devices.catalog import make_device

    planned = [Planned(t, make_device(t)) for t in types]
    planned.append(Planned("rng, asynchronous reset", make_device("rng"), 3))
    refusing = make_device("rng")
    refusing.validate_features = lambda features: False  # type: ignore[method-assign]
    planned.append(Planned("rng, refusing FEATURES_OK", refusing))
    skipped: list[Result] = []
    for p in PROVOCATIONS:
        why = unavailable(p, kernel=kernel, strict=strict)
        if why:
            skipped.append(Result(p.name, p.ids, p.label, Outcome.SKIP, why))
        else:
            planned.append(Planned(p.label, provoking_model(p), provocation=p))
    return planned, skipped


def _serve(backend: RecordingBackend, serve: Callable[..., object], planned: list[Planned],
           first: int, report: Report) -> None:
    for n, item in enumerate(planned, first):
        if item.provocation is not None:
            backend.provokers[n] = ProvokingDevice(item.provocation)
        try:
            serve(n, item.model, async_reset_polls=item.polls)
        except VirtioMsgError as exc:
            report.add(Result("probe", ("DRV-23",), item.label, Outcome.FAIL,
                              f"the device could not be added: {exc}"))


def _ids(ids: tuple[str, ...], strict: bool) -> tuple[str, ...]:
    drop = "DRV-08" if strict else "DRV-10"  # one profile's generation rule applies
    return tuple(i for i in ids if i != drop)


def judge_traces(report: Report, backend: Backend, planned: list[Planned], params: BusParams,
                 first: int, *, kernel: bool = False) -> None:
    """Add the rule groups' and provoking scenarios' results for every planned device."""
    assert isinstance(backend, RecordingBackend)
    strict = params.strict_config
    for n, item in enumerate(planned, first):
        trace = backend.traces.get(n, Trace())
        if any(r.target == item.label and r.scenario == "probe" for r in report.results):
            continue
        if not trace.entries:
            report.add(Result("probe", ("DRV-23",), item.label, Outcome.FAIL,
                              "the driver side sent nothing to the device"))
            continue
        ctx = Context(item.model, params.max_size, params.header_size, strict,
                      backend.adapter, kernel)
        for name, ids, problem in check_trace(trace, ctx):
            report.add(Result(name, _ids(ids, strict), item.label,
                              Outcome.FAIL if problem else Outcome.PASS, problem or ""))
        p = item.provocation
        if p is not None:
            outcome, detail = judge(p, trace)
            report.add(Result(p.name, p.ids, item.label, outcome, detail))
        if trace.exercise_error and not (p is not None and p.name == "needs-reset"):
            report.add(Result("exercise", ("DRV-26",), item.label, Outcome.FAIL,
                              trace.exercise_error))


def _exercise(entry: object, item: Planned, trace: Trace) -> None:
    driver = getattr(entry, "driver", None)
    transport = getattr(entry, "transport", None)
    if driver is None or transport is None:
        return
    try:
        driver.selftest()
        how = item.provocation.exercise if item.provocation is not None else ""
        if how:
            trace.marks["exercise"] = len(trace.entries)
            if how == "read":
                transport.get_config(0, len(item.model.config))
            else:
                offset, length = WRITABLE
                transport.set_config(offset, transport.get_config(offset, length))
    except VirtioMsgError as exc:
        trace.exercise_error = str(exc)


def run_driver_suite(types: list[str], params: BusParams | None = None, *,
                     defect: str | None = None) -> Report:
    """The project's drivers (or ones with ``defect``) behind the in-process bus."""
    from virtio_msg.bus.inprocess import InProcessChannel
    from virtio_msg.bus.loopback import LoopbackBus

    bp = params or BusParams()
    drivers = None
    if defect is not None:
        from virtio_msg.conformance.broken_drivers import broken_drivers

        drivers = broken_drivers(defect)
    bus = LoopbackBus(bp, drivers=drivers)
    backend = RecordingBackend(bus.region, bp)
    InProcessChannel(bus, backend)
    report = Report("driver", bp.profile.value)
    planned, skipped = plan(types, strict=bp.strict_config)
    try:
        for n, item in enumerate(planned):
            _serve(backend, backend.serve, [item], n, report)
            _exercise(bus.device(n), item, backend.traces.setdefault(n, Trace()))
        judge_traces(report, backend, planned, bp, 0)
    finally:
        bus.close()
    report.results.extend(skipped)
    return report


def _settle(backend: RecordingBackend, settle: float, timeout: float) -> None:
    """Wait until no frame arrived for ``settle`` seconds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        count = sum(len(t.entries) for t in backend.traces.values())
        if count == last:
            return
        last = count
        time.sleep(settle)


def run_driver_suite_socket(path: str, types: list[str], *, first: int = 0,
                            settle: float = 1.0, timeout: float = 10.0) -> Report:
    """Serve the planned devices to a socket bus at ``path`` as a backend; judge its drivers.

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
    planned, skipped = plan(types, strict=client.params.strict_config)
    try:
        _serve(backend, client.serve, planned, first, report)
        _settle(backend, settle, timeout)
        judge_traces(report, backend, planned, client.params, first)
    finally:
        client.close()
    report.results.extend(skipped)
    return report


def run_driver_suite_kernel(files: object, base: int, size: int | None, types: list[str], *,
                            first: int = 0, settle: float = 1.0, timeout: float = 30.0,
                            after_add: Callable[[int], None] | None = None,
                            op_timeout_s: float = 60.0) -> Report:
    """Serve the planned devices behind the kernel channel; judge the kernel's drivers.

    ``files`` are the kernel's device files (:class:`~virtio_msg.bus.kernel.DeviceFiles`,
    or the emulation in tests).  Each ADD returns once the kernel probed the
    device; ``after_add(dev_num)`` runs then (the emulation's drivers do their
    I/O there; a real kernel's drivers do it by themselves).  Then the tool
    waits until the traces are quiet for ``settle`` seconds.
    """
    from virtio_msg.bus.kernel import KernelChannel, KernelError

    channel = KernelChannel(files, base, size, op_timeout_s=op_timeout_s,  # type: ignore[arg-type]
                            backend_class=RecordingBackend)
    backend = channel.backend
    assert isinstance(backend, RecordingBackend)
    params = backend.params
    report = Report("driver", params.profile.value)
    planned, skipped = plan(types, kernel=True)
    try:
        for n, item in enumerate(planned, first):
            _serve(backend, channel.serve, [item], n, report)
            if after_add is not None and n in backend.devices:
                try:
                    after_add(n)
                except VirtioMsgError as exc:
                    backend.traces.setdefault(n, Trace()).exercise_error = str(exc)
        _settle(backend, settle, timeout)
        judge_traces(report, backend, planned, params, first, kernel=True)
    finally:
        try:
            channel.close()
        except KernelError as exc:
            report.add(Result("teardown", (), "kernel channel", Outcome.FAIL, str(exc)))
    report.results.extend(skipped)
    return report


__all__ = ["Planned", "judge_traces", "plan", "run_driver_suite", "run_driver_suite_kernel",
           "run_driver_suite_socket"]
