"""Run the device scenarios against every device number a link offers.

:func:`select` applies ``-k`` (substring of a scenario name or checklist id,
comma-separated alternatives); :func:`run_device_suite` runs the selection
for each device number, one fresh :class:`DeviceProbe` per scenario, and
turns what each scenario did into a :class:`~virtio_msg.conformance.report.Result`.
An exception that is not a conformance verdict (the link broke) fails that
scenario with its message; the run goes on.
"""

from __future__ import annotations

import time

import virtio_msg.spec as C
from virtio_msg.conformance import device_queues  # noqa: F401  (registers its scenarios)
from virtio_msg.conformance.device_scenarios import SCENARIOS, Scenario
from virtio_msg.conformance.links import DeviceLink
from virtio_msg.conformance.probe import DeviceProbe, Failure, Skip
from virtio_msg.conformance.report import Outcome, Report, Result
from virtio_msg.errors import VirtioMsgError


def select(pattern: str | None) -> list[Scenario]:
    """The scenarios whose name or an id contains one of the comma-separated ``pattern``s."""
    if not pattern:
        return list(SCENARIOS)
    words = [w.strip().lower() for w in pattern.split(",") if w.strip()]
    return [s for s in SCENARIOS
            if any(w in s.name.lower() or any(w in i.lower() for i in s.ids) for w in words)]


def _target(link: DeviceLink, dev_num: int, timeout_ms: int) -> str:
    try:
        info = DeviceProbe(link, dev_num, timeout_ms=timeout_ms).info()
    except (Failure, Skip, VirtioMsgError):
        return f"dev {dev_num}"
    name = C.DEVICE_TYPE_NAMES.get(info.device_id, f"type {info.device_id}")
    return f"dev {dev_num} ({name})"


def _drain(link: DeviceLink) -> None:
    while link.receive(0) is not None:
        pass


def run_device_suite(
    link: DeviceLink,
    devices: list[int],
    scenarios: list[Scenario] | None = None,
    *,
    timeout_ms: int = 1000,
    silence_ms: int = 150,
) -> Report:
    """Run ``scenarios`` (default: all) against each of ``devices``; return the report."""
    report = Report("device", link.params.profile.value
                    + (" strict" if link.params.strict_config else ""))
    for dev_num in devices:
        target = _target(link, dev_num, timeout_ms)
        for sc in scenarios if scenarios is not None else SCENARIOS:
            _drain(link)
            probe = DeviceProbe(link, dev_num, timeout_ms=timeout_ms, silence_ms=silence_ms)
            t0 = time.monotonic()
            try:
                sc.run(probe)
            except Failure as exc:
                outcome, detail = Outcome.FAIL, str(exc)
            except Skip as exc:
                outcome, detail = Outcome.SKIP, str(exc)
            except VirtioMsgError as exc:
                outcome, detail = Outcome.FAIL, f"link: {exc}"
            else:
                outcome = Outcome.LENIENT if probe.choices else Outcome.PASS
                detail = "; ".join(probe.choices)
            report.add(Result(sc.name, sc.ids, target, outcome, detail, time.monotonic() - t0))
    if link.bus_violations:
        report.add(Result("bus-messages", ("G-02",), "link", Outcome.FAIL,
                          link.bus_violations[0]))
    return report


__all__ = ["run_device_suite", "select"]
