"""``conformance driver --kernel``: the tool's devices behind the kernel channel.

Against the in-process emulation of the seed kernel's loopback (whose virtio
drivers are the project's, in ``linux-rfc1`` mode, and whose message buffer is
reused with the seed's wrong ``msg_size`` for SET_DRV_FEATURES): every rule
group and the mid-read scenario (DRV-07) run; the only failure is DRV-18 for
the seed's SET_DRV_FEATURES, which the emulation reproduces on purpose; the
event scenarios (DRV-09/37/38/54) are skipped because the seed drops device
events, and DRV-11 because it refuses the strict profile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.cli import build_parser
from virtio_msg.cli.conformance import cmd_driver
from virtio_msg.conformance.driver_provoke import PROVOCATIONS
from virtio_msg.conformance.driver_suite import run_driver_suite_kernel
from virtio_msg.conformance.report import Outcome

SIZE = 1 << 20


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture
def kernel() -> Iterator[SeedLoopback]:
    k = SeedLoopback(size=SIZE, timeout_s=2.0)
    try:
        yield k
    finally:
        k.close()


def _io(kernel: SeedLoopback) -> Callable[[int], None]:
    def run(dev_num: int) -> None:  # the emulated kernel's drivers do their I/O
        entry = kernel.bus.device(dev_num)
        if entry is not None and entry.driver is not None:
            entry.driver.selftest()
    return run


def test_kernel_drivers_are_judged_and_the_seed_msg_size_defect_is_found(
        kernel: SeedLoopback) -> None:
    report = run_driver_suite_kernel(kernel, kernel.bus.region.base, SIZE,
                                     ["rng", "blk", "console", "i2c"], after_add=_io(kernel),
                                     settle=0.3, op_timeout_s=10.0)
    assert report.profile == "linux-rfc1"
    failed = report.failed()
    # DRV-18: the seed sends SET_DRV_FEATURES with msg_size 14 while its feature
    # words lie past it (linux-rfc1-observed.md #8); nothing else is wrong.
    assert failed and {r.scenario for r in failed} == {"frames"}
    assert all("DRV-18: SetDriverFeatures: msg_size 14" in r.detail for r in failed)
    rest = [r for r in report.results if r.scenario != "frames"]
    verdicts = {r.scenario: r for r in rest if r.scenario in {p.name for p in PROVOCATIONS}}
    assert verdicts["config-generation-reread"].outcome is Outcome.PASS  # DRV-07 (26-byte chunks)
    for name in ("config-event-generic", "config-event-before-io", "needs-reset"):
        assert verdicts[name].outcome is Outcome.SKIP
        assert "drops EVENT_CONFIG" in verdicts[name].detail
    assert verdicts["config-stale-retry"].outcome is Outcome.SKIP
    assert all(r.outcome is Outcome.PASS for r in rest if r.scenario not in verdicts)
    assert kernel.present() == []  # every device was REMOVEd again


def test_driver_cli_kernel_with_emulated_files(kernel: SeedLoopback,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["conformance", "driver", "--kernel", "--base", hex(kernel.bus.region.base),
         "--types", "rng", "--settle-ms", "200", "--op-timeout", "10", "--json"])
    assert cmd_driver(args, files=kernel) == 1  # the seed's DRV-18 defect
    doc = json.loads(capsys.readouterr().out)
    assert doc["suite"] == "driver" and doc["profile"] == "linux-rfc1" and not doc["ok"]
    assert {r["scenario"] for r in doc["results"] if r["outcome"] == "fail"} == {"frames"}
