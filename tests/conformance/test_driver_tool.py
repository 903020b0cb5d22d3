"""The conformance tool's driver suite: the project's drivers pass the DRV- rules.

In process (both wire profiles, and the strict configuration profile) and
behind a ``virtio-msg bus`` process over the socket; each rule group also
fails on a trace that breaks it, so the checks are real (DRV-23, DRV-28,
DRV-60, DRV-65, DRV-08, DRV-33, DRV-57), and each deliberately broken driver
fails exactly its provoking scenario (DRV-07, DRV-09/38, DRV-37, DRV-10,
DRV-11, DRV-54).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtio_msg.cli import main
from virtio_msg.conformance.broken_drivers import DRIVER_DEFECTS
from virtio_msg.conformance.driver_check import Context, Trace, check_trace
from virtio_msg.conformance.driver_provoke import PROVOCATIONS, judge
from virtio_msg.conformance.driver_suite import run_driver_suite, run_driver_suite_socket
from virtio_msg.conformance.report import Outcome
from virtio_msg.devices.catalog import make_device
from virtio_msg.spec import VIRTIO_MSG_F_STRICT_CONFIG_GENERATION
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


STRICT = BusParams("spec", None, VIRTIO_MSG_F_STRICT_CONFIG_GENERATION)
BASE_TARGETS = {"rng", "blk", "console", "i2c", "rng, asynchronous reset",
                "rng, refusing FEATURES_OK"}


@pytest.mark.parametrize("params", [BusParams("spec"), BusParams("linux-rfc1"), STRICT],
                         ids=["spec", "linux-rfc1", "spec-strict"])
def test_project_drivers_pass_every_drv_rule_group_and_provocation(params: BusParams) -> None:
    report = run_driver_suite(["rng", "blk", "console", "i2c"], params)
    assert report.ok, [r.line() for r in report.failed()]
    served = [p for p in PROVOCATIONS if params.strict_config or not p.strict]
    targets = {r.target for r in report.results}
    assert targets == BASE_TARGETS | {p.label for p in PROVOCATIONS}
    # Every rule group on every served device, and each provoking scenario passes
    # (DRV-07, DRV-09/38, DRV-37, DRV-54; DRV-11 in the strict profile only).
    assert len(report.results) == (6 + len(served)) * 7 + len(PROVOCATIONS)
    verdicts = {r.scenario: r.outcome for r in report.results
                if r.scenario in {p.name for p in PROVOCATIONS}}
    for p in PROVOCATIONS:
        want = Outcome.PASS if p in served else Outcome.SKIP
        assert verdicts[p.name] is want, (p.name, [r.line() for r in report.results
                                                   if r.scenario == p.name])


@pytest.mark.parametrize("defect", sorted(DRIVER_DEFECTS))
def test_each_broken_driver_fails_exactly_its_scenario(defect: str) -> None:
    # DRV-07, DRV-09, DRV-10, DRV-11, DRV-37, DRV-38, DRV-54: the strict profile runs
    # every provoking scenario, so each defect has the chance to show.
    report = run_driver_suite(["rng"], STRICT, defect=defect)
    scenario = DRIVER_DEFECTS[defect][1]
    failed = {(r.scenario, r.target) for r in report.failed()}
    assert len(failed) == 1 and next(iter(failed))[0] == scenario, \
        [r.line() for r in report.failed()]


def _trace(*msgs: object) -> Trace:
    adapter = WireAdapter("spec")
    t = Trace()
    for m in msgs:
        resp = m[1] if isinstance(m, list) else None
        msg = m[0] if isinstance(m, list) else m
        t.entries.append((adapter.encode(msg), msg, resp))
    return t


GOOD_START = (S.GetDeviceInfo(), [S.SetDeviceStatus(0), S.SetDeviceStatusResp(0)],
              [S.SetDeviceStatus(1), S.SetDeviceStatusResp(1)],
              [S.SetDeviceStatus(3), S.SetDeviceStatusResp(3)],
              S.SetDriverFeatures(1, 1, (3,)),
              [S.SetDeviceStatus(11), S.SetDeviceStatusResp(11)])


def _problems(trace: Trace, strict: bool = False) -> dict[str, str]:
    ctx = Context(make_device("rng"), 264, 8, strict, WireAdapter("spec"))
    return {name: problem for name, _ids, problem in check_trace(trace, ctx) if problem}


def test_rule_groups_catch_broken_traces() -> None:
    assert _problems(_trace(*GOOD_START)) == {}
    assert "DRV-23" in _problems(_trace(S.GetDeviceStatus(), *GOOD_START))["init-order"]
    assert "DRV-28" in _problems(_trace(*GOOD_START, S.SetDriverFeatures(0, 1, (1 << 5,))))[
        "features"]
    bad_vq = S.SetVqueue(0, 1 | 1 << 7, 8, 0, 0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000)
    assert "DRV-60" in _problems(_trace(*GOOD_START, S.GetVqueue(0), bad_vq))["queue-setup"]
    misaligned = bad_vq._replace(flags=1, desc_addr=0x1_0000_0008)
    assert "DRV-65" in _problems(_trace(*GOOD_START, S.GetVqueue(0), misaligned))["queue-setup"]
    assert "DRV-08" in _problems(_trace(*GOOD_START, S.SetConfig(7, 0, 0, b"")))["config-access"]
    assert "DRV-33" in _problems(_trace(*GOOD_START, S.EventAvail(0, 0)))["notifications"]
    early = (S.GetDeviceInfo(), [S.SetDeviceStatus(0), S.SetDeviceStatusResp(1)],
             [S.SetDeviceStatus(1), S.SetDeviceStatusResp(1)])
    assert "DRV-57" in _problems(_trace(*early))["reset-polling"]
    # DRV-10: in the strict profile a SET_CONFIG carries the generation last reported.
    seen = [S.GetConfig(0, 0), S.GetConfigResp(7, 0, 0, b"")]
    assert _problems(_trace(*GOOD_START, seen, S.SetConfig(7, 0, 0, b"")), strict=True) == {}
    assert "DRV-10" in _problems(_trace(*GOOD_START, seen, S.SetConfig(6, 0, 0, b"")),
                                 strict=True)["config-access"]


def _marked(name: str, at: int, *msgs: object) -> Trace:
    t = _trace(*msgs)
    t.marks[name] = at
    return t


def test_provoking_judges_read_linux_style_traces() -> None:
    # Linux's virtio_cread: generation (GET_CONFIG length 0), the field, generation
    # again; the device changed the config at the field read (DRV-07).
    p = {x.name: x for x in PROVOCATIONS}
    gen, field = S.GetConfig(0, 0), S.GetConfig(0, 8)
    torn = _marked("config-generation-reread", 1, gen, field, gen)
    assert judge(p["config-generation-reread"], torn)[0] is Outcome.FAIL
    again = _marked("config-generation-reread", 1, gen, field, gen, gen, field, gen)
    assert judge(p["config-generation-reread"], again)[0] is Outcome.PASS
    # A re-read only after some other message is not the generation loop.
    late = _marked("config-generation-reread", 1, gen, field, gen, S.GetDeviceStatus(), field)
    assert judge(p["config-generation-reread"], late)[0] is Outcome.FAIL
    # DRV-38 / DRV-37: the refresh counts only with data (length > 0), and for
    # DRV-37 only before the next EVENT_AVAIL.
    assert judge(p["config-event-generic"], _marked("config-event-generic", 0, gen))[0] \
        is Outcome.FAIL
    ev = S.EventAvail(0, 0)
    assert judge(p["config-event-before-io"],
                 _marked("config-event-before-io", 0, ev, field))[0] is Outcome.FAIL
    assert judge(p["config-event-before-io"],
                 _marked("config-event-before-io", 0, field, ev))[0] is Outcome.PASS
    assert judge(p["config-event-before-io"], _marked("config-event-before-io", 0, field))[0] \
        is Outcome.SKIP  # no I/O after the event: nothing to judge
    # DRV-54: a driver that resets and stops passes; one that resets and kicks
    # before a new DRIVER_OK fails; no mark at all is a skip, never a pass.
    reset = [S.SetDeviceStatus(0), S.SetDeviceStatusResp(0)]
    assert judge(p["needs-reset"], _marked("needs-reset", 0, reset))[0] is Outcome.PASS
    assert judge(p["needs-reset"], _marked("needs-reset", 0, reset, ev))[0] is Outcome.FAIL
    assert judge(p["needs-reset"], _trace(reset))[0] is Outcome.SKIP


def test_driver_cli_json_list_and_junit(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "d.xml"
    assert main(["conformance", "driver", "--types", "rng", "--json", "--junit",
                 str(junit)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["suite"] == "driver" and doc["ok"] and doc["counts"]["fail"] == 0
    assert b"<testsuite" in junit.read_bytes()
    assert main(["conformance", "driver", "--list", "-k", "DRV-57"]) == 0
    assert capsys.readouterr().out.startswith("reset-polling")
    assert main(["conformance", "driver", "--list", "-k", "DRV-54"]) == 0
    assert capsys.readouterr().out.startswith("needs-reset")
    # A broken driver makes the command fail (exit 1), naming the scenario.
    assert main(["conformance", "driver", "--types", "rng", "--broken",
                 "ignores-needs-reset"]) == 1
    out = capsys.readouterr().out
    assert "FAIL     needs-reset" in out and "DRV-54" in out


def test_driver_suite_behind_a_virtio_msg_bus_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        path = Path(tmp) / "bus.sock"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        bus = subprocess.Popen([sys.executable, "-m", "virtio_msg", "bus", "--socket",
                                str(path)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not path.exists() and time.monotonic() < deadline and bus.poll() is None:
                time.sleep(0.05)
            report = run_driver_suite_socket(str(path), ["rng", "blk"], settle=0.5)
        finally:
            bus.terminate()
            try:
                bus.wait(20)
            except subprocess.TimeoutExpired:
                bus.kill()
                bus.wait()
    assert report.ok, [r.line() for r in report.failed()]
    assert {r.target for r in report.results} == {
        "rng", "blk", "rng, asynchronous reset", "rng, refusing FEATURES_OK"} | {
        p.label for p in PROVOCATIONS}
    # The bus's own drivers react to the device's config events and reset request.
    verdicts = {r.scenario: r.outcome for r in report.results}
    assert verdicts["config-event-generic"] is Outcome.PASS
    assert verdicts["config-event-before-io"] is Outcome.PASS
    assert verdicts["needs-reset"] is Outcome.PASS


def test_driver_cli_leaves_the_library_log_level_as_it_found_it() -> None:
    # The tool quiets the library's expected warnings for its own run only: a caller's
    # logging (another command, a test's caplog) must see warnings afterwards.
    logger = logging.getLogger("virtio_msg")
    before = logger.level
    assert main(["conformance", "driver", "--types", "rng"]) == 0
    assert main(["conformance", "device", "--builtin", "rng", "-k", "token",
                 "--silence-ms", "20"]) == 0
    assert logger.level == before
