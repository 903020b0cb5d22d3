"""The ``--junit FILE`` output of both suites, read back by an independent JUnit reader.

junitparser reads the files the way CI systems do: one suite, a case per
scenario run, failures with the checklist id in the message, skips with their
reason, lenient runs as passes with a note.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml, Skipped, TestSuite

from virtio_msg.cli import main


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _suite(path: Path) -> TestSuite:
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert isinstance(suite, TestSuite)
    return suite


def test_device_junit_reads_back_with_failure_and_lenient_cases(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "device.xml"
    assert main(["conformance", "device", "--builtin", "rng,blk", "--broken",
                 "features-ok-unoffered", "-k", "features-ok,get-shm,config-read",
                 "--silence-ms", "20", "--junit", str(junit)]) == 1
    lines = capsys.readouterr().out.splitlines()[:-1]
    suite = _suite(junit)
    assert suite.name == "virtio-msg-device-conformance-spec"
    cases = list(suite)
    assert suite.tests == len(cases) == len(lines) == 6
    failed = [c for c in cases if any(isinstance(r, Failure) for r in c.result)]
    assert suite.failures == len(failed) == 2  # DEV-34 on both devices
    assert {c.classname for c in failed} == {"device.dev 0 (rng)", "device.dev 1 (blk)"}
    for c in failed:
        assert c.name.startswith("features-ok-refusal [DEV-34")
        assert "DEV-34" in (c.result[0].message or "")
    passed = [c for c in cases if c.is_passed]
    assert len(passed) == 4 and suite.skipped == 0
    assert any("lenient:" in (c.system_out or "") for c in passed)  # config-read's choice


def test_driver_junit_reads_back_with_failure_and_skip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "driver.xml"
    assert main(["conformance", "driver", "--types", "rng", "--broken",
                 "ignores-generic-event", "-k", "DRV-38,DRV-11,DRV-23",
                 "--junit", str(junit)]) == 1
    capsys.readouterr()
    suite = _suite(junit)
    assert suite.name == "virtio-msg-driver-conformance-spec"
    cases = list(suite)
    failed = [c for c in cases if any(isinstance(r, Failure) for r in c.result)]
    skipped = [c for c in cases if any(isinstance(r, Skipped) for r in c.result)]
    assert [c.name for c in failed] == ["config-event-generic [DRV-09,DRV-38]"]
    assert "DRV-38" in (failed[0].result[0].message or "")
    assert [c.name for c in skipped] == ["config-stale-retry [DRV-11]"]
    assert "--strict" in (skipped[0].result[0].message or "")
    assert suite.failures == 1 and suite.skipped == 1
    assert suite.tests == len(cases) and len(cases) > 2
