"""``benchmarks/bench_codec.py`` says how long it will take and shows its progress.

The timing itself is replaced by a stand-in (this checks the feedback, never a
time); the figures it prints are the benchmark's own table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # its `figures` helper
    spec = importlib.util.spec_from_file_location("bench_codec_t", BENCH / "bench_codec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_codec_announces_its_measurements_and_shows_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load(monkeypatch)
    calls: list[object] = []

    def stand_in(fns: list[object], seconds: float) -> list[float]:
        calls.extend(fns)  # the codec and its bare baseline, measured in turn
        return [1e-6] * len(fns)

    monkeypatch.setattr(bench, "measure", stand_in)
    monkeypatch.setattr(sys, "argv", ["bench_codec.py", "--profile", "linux-rfc1", "--progress"])
    bench.main()
    out, err = capsys.readouterr()
    steps = 2 * len(bench.RFC1_SAMPLES)
    assert len(calls) == steps
    assert err.splitlines()[0].startswith(f"bench_codec: {steps} measurements (8 messages")
    assert "about " in err.splitlines()[0]
    assert f"{steps}/{steps}" in err and "left" in err  # the bar, finished
    assert "codec linux-rfc1: EVENT_USED" in out
