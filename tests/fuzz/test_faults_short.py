"""Short versions of the fault and soak runs (docs/reliability.md), run in CI.

REMOVE/ADD cycles with verified blk I/O in flight (no deadlock: every cycle
bounded; no lost write; the rng device on another number keeps working) and
the mixed soak.  Leak bounds: descriptors,
counted after a garbage collection, may grow by 2 at most; RSS by 8 MiB.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "soak"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SOAK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["inprocess", "socket"])
def test_remove_during_in_flight_io_never_deadlocks_or_leaks(mode: str) -> None:
    cycles = _load("remove_cycles")
    summary = cycles.run(mode, 80, seed=16)
    assert sum(summary["io_outcomes"].values()) == 80
    assert summary["fds_end"] <= summary["fds_after_warmup"] + 2
    assert summary["rss_kib_end"] - summary["rss_kib_after_warmup"] <= 8 * 1024


@pytest.mark.parametrize("mode", ["inprocess", "socket"])
def test_mixed_soak_short_has_no_errors_mismatches_or_leaks(mode: str) -> None:
    soak = _load("mixed")
    summary = soak.run(mode, 3000, seed=16)
    assert summary["errors"] == 0 and summary["mismatches"] == 0
    assert summary["fds_end"] <= summary["fds_start"] + 2
    assert summary["rss_kib_end"] - summary["rss_kib_start"] <= 8 * 1024
