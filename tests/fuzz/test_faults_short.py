"""Short versions of the fault and soak runs (docs/reliability.md), run in CI.

REMOVE/ADD cycles with verified blk I/O in flight (no deadlock: every cycle
bounded; no lost write; the rng device on another number keeps working), the
mixed soak, kill -9 of a blk backend process during I/O, and kill -9 of
qemu-storage-daemon under a ``backend vhost-user --reconnect`` bridge.  Leak bounds:
descriptors, counted after a garbage collection, may grow by 2 at most; RSS
by 8 MiB.  Nothing here asserts on time: the kill test waits on the bus's
ADD/REMOVE reports and the writers' acknowledgements, every wait bounded, and
runs with a 10 s request timeout so that a loaded machine cannot make a
request time out before the kill (the long run measures the 1 s bound).
"""

from __future__ import annotations

import importlib.util
import os
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


def test_kill_9_of_a_blk_backend_fails_in_flight_io_and_keeps_acknowledged_writes() -> None:
    kill = _load("kill_backend")
    summary = kill.run(3, seed=16, timeout_ms=10_000)
    assert summary["unexpected_errors"] == [], summary  # only typed transport errors
    # every writer's in-flight request failed (a hung one fails the run inside)
    assert summary["failed_requests"] == 3 * kill.WRITERS, summary
    assert "timeout" not in summary["failure_kinds"], summary  # the kill was noticed, not timed out
    assert summary["writes_acknowledged"] >= 3 * 2 * kill.WRITERS  # the kill hit a stream of I/O
    assert summary["rng_failures"] == 0 and summary["rng_reads_during_kills"] >= 3  # other backend
    assert summary["sectors_verified_after_restarts"] > 0  # acknowledged writes survived
    assert kill.ok(summary, timed=False)


def test_kill_9_of_qemu_storage_daemon_bridge_reconnects_and_keeps_acknowledged_writes() -> None:
    kill = _load("kill_vhost")
    if not os.access(kill.QSD, os.X_OK):
        pytest.skip(f"qemu-storage-daemon is not installed ({kill.QSD}; Debian qemu-system-common)")
    # A lost write or a hang (any bounded wait running out) raises inside the run.
    summary = kill.run(3, seed=16, timeout_ms=10_000)
    assert summary["unexpected_errors"] == [], summary  # only typed errors
    assert summary["failed_requests"] == 3 * kill.WRITERS, summary  # every in-flight one failed
    assert "timeout" not in summary["failure_kinds"], summary  # noticed, not timed out
    assert summary["writes_acknowledged"] >= 3 * 2 * kill.WRITERS  # the kill hit a stream of I/O
    assert summary["rng_failures"] == 0 and summary["rng_reads_during_kills"] >= 3  # other backend
    assert summary["sectors_verified_after_restarts"] > 0  # acknowledged writes survived
    # the bridge REMOVEd, reconnected and ADDed again each round, and exited cleanly
    assert summary["expected_bridge_events"] and summary["bridge_exit_status"] == 0, summary
    assert summary["bridge_fds_end"] <= summary["bridge_fds_start"] + 2, summary
    assert kill.ok(summary, timed=False)
