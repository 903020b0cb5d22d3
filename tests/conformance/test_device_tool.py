"""The conformance tool's device suite against the project's own backends and broken ones.

The project's device models must pass every scenario in both wire profiles
(and the strict configuration profile), in process and over the socket with
``virtio-msg backend``; each deliberately broken backend must fail exactly
the scenarios that its defect breaks (DEV-29, DEV-21/32, DEV-34, RING-01,
DEV-31).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtio_msg.bus.backend import Backend
from virtio_msg.cli import main
from virtio_msg.conformance.broken import DEFECTS, BrokenBackend
from virtio_msg.conformance.links import InProcessLink, SocketLink
from virtio_msg.conformance.report import Outcome, Report
from virtio_msg.conformance.runner import run_device_suite, select
from virtio_msg.devices.catalog import make_device
from virtio_msg.spec import VIRTIO_MSG_F_STRICT_CONFIG_GENERATION
from virtio_msg.transport.params import BusParams

SILENCE_MS = 20
TYPES = ("rng", "blk", "console", "i2c")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # hostile scenarios make devices log needs-reset
    yield
    logging.disable(logging.NOTSET)


def _run(params: BusParams, defect: str | None = None,
         types: tuple[str, ...] = TYPES) -> Report:
    link = InProcessLink(params)
    backend = (BrokenBackend(defect, link.region, params) if defect
               else Backend(link.region, params))
    link.attach(backend)
    for n, name in enumerate(types):
        backend.serve(n, make_device(name))
    try:
        return run_device_suite(link, link.devices, silence_ms=SILENCE_MS)
    finally:
        link.close()


@pytest.mark.parametrize("params", [
    BusParams("spec"),
    BusParams("linux-rfc1"),
    BusParams("spec", 52, VIRTIO_MSG_F_STRICT_CONFIG_GENERATION),
], ids=["spec", "linux-rfc1", "spec-52-strict"])
def test_project_devices_pass_every_scenario_dev_and_g(params: BusParams) -> None:
    report = _run(params)
    assert report.ok, [r.line() for r in report.failed()]
    assert {r.target for r in report.results} == {
        "dev 0 (rng)", "dev 1 (blk)", "dev 2 (console)", "dev 3 (i2c)"}
    assert len(report.results) == 4 * len(select(None))
    passed = {r.scenario for r in report.results if r.outcome is Outcome.PASS}
    assert {"malformed-dropped", "unknown-msg-id", "features-ok-refusal"} <= passed


def test_lenient_scenarios_report_the_chosen_behaviour() -> None:
    report = _run(BusParams("spec"), types=("rng",))
    by_name = {r.scenario: r for r in report.results}
    assert by_name["status-handshake"].outcome is Outcome.LENIENT
    assert by_name["status-handshake"].detail == "reset is synchronous"
    assert "DEVICE_NEEDS_RESET" in by_name["hostile-descriptor-loop"].detail
    assert "refused" in by_name["hostile-bad-rings"].detail


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_broken_backend_fails_exactly_its_scenarios(defect: str) -> None:
    report = _run(BusParams("spec"), defect, types=("rng",))
    failed = {r.scenario for r in report.failed()}
    expected = DEFECTS[defect][1]
    if expected is None:
        expected = frozenset(s.name for s in select(None))
    assert failed == expected, [r.line() for r in report.failed()]
    if defect == "no-token-echo":
        assert all("DEV-29" in r.detail for r in report.failed())


def test_select_by_name_and_checklist_id() -> None:
    names = {s.name for s in select("DEV-34,token")}
    assert {"features-ok-refusal", "token-echo", "feature-blocks"} >= names >= {
        "features-ok-refusal", "token-echo"}
    assert "get-shm" not in names


def test_junit_output_is_valid_and_names_failures(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "out.xml"
    status = main(["conformance", "device", "--builtin", "rng", "--broken", "silent-bad-rings",
                   "-k", "bad-rings,device-info,get-shm", "--silence-ms", "20",
                   "--junit", str(junit), "--json"])
    assert status == 1
    doc = json.loads(capsys.readouterr().out)
    assert [r["scenario"] for r in doc["results"] if r["outcome"] == "fail"] == [
        "hostile-bad-rings"]
    root = ET.fromstring(junit.read_bytes())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    failing = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failing == ["hostile-bad-rings [DEV-31,DEV-66,RING-01]"]
    assert "DEV-31" in (cases[[c.get("name") for c in cases].index(failing[0])]
                        .find("failure").get("message") or "")  # type: ignore[union-attr]


def test_cli_text_lines_list_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "device", "--builtin", "rng", "-k", "token",
                 "--silence-ms", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS     token-echo") and out[-1].startswith("PASSED:")
    assert main(["conformance", "device", "--list", "-k", "hostile"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 4 and all("hostile" in line for line in listed)
    assert main(["conformance", "device", "--kernel"]) == 2
    assert "kernel is the driver" in capsys.readouterr().err


def test_socket_mode_against_virtio_msg_backend_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        path = Path(tmp) / "bus.sock"
        link = SocketLink(path, BusParams("spec"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        child = subprocess.Popen(
            [sys.executable, "-m", "virtio_msg", "backend", "--socket", str(path), "--quiet",
             "rng", "blk"], env=env, stderr=subprocess.PIPE)
        try:
            link.accept(30.0)
            assert link.wait_devices(30.0, 0.3) == [0, 1]
            report = run_device_suite(link, link.devices, silence_ms=SILENCE_MS)
        finally:
            link.close()
            done = threading.Event()
            try:
                child.wait(20)
                done.set()
            finally:
                if not done.is_set():
                    child.kill()
                    child.wait()
        assert report.ok, [r.line() for r in report.failed()]
        assert {r.target for r in report.results} == {"dev 0 (rng)", "dev 1 (blk)"}
        assert child.returncode == 0
