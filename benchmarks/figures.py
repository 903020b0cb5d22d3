"""Shared output of the benchmarks: every figure as one table row or one JSON object.

Each benchmark builds its figures with :func:`figure` (value, the raw baseline
measured in the same run, their ratio, the target and whether it is met) and
prints them with :func:`emit`: with ``--json`` one JSON object per line, with the
keys ``name, value, unit, baseline, ratio, target, met`` and the machine's
``loadavg`` at the time, so results can be compared across runs and machines;
otherwise an aligned table.  ``benchmarks/run_all.py`` reads the JSON lines.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Figure = dict[str, Any]
_OPS = {"<=": operator.le, ">=": operator.ge}


def loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg prints them ("" if unknown)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def figure(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
) -> Figure:
    """One figure; ``target`` is ``"<= 3.0"`` or ``">= 0.5"`` (applied to ``ratio``).

    ``ratio`` defaults to ``value / baseline``.  ``met`` is None when there is
    no target, otherwise whether the ratio satisfies it.
    """
    if ratio is None and baseline:
        ratio = value / baseline
    met: bool | None = None
    if target is not None and ratio is not None:
        op, bound = target.split()
        met = bool(_OPS[op](ratio, float(bound)))
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
        "met": met,
        "loadavg": loadavg(),
    }


def table(figures: Iterable[Figure]) -> str:
    """The figures as an aligned text table."""
    rows = [("figure", "value", "unit", "baseline", "ratio", "target", "met")]
    for f in figures:
        met = "" if f["met"] is None else ("met" if f["met"] else "NOT met")
        rows.append((
            f["name"], f"{f['value']:g}", f["unit"],
            "" if f["baseline"] is None else f"{f['baseline']:g}",
            "" if f["ratio"] is None else f"{f['ratio']:.2f}",
            f["target"] or "", met,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def emit(figures: list[Figure], as_json: bool) -> None:
    """Print ``figures``: JSON lines if ``as_json``, else a table with the load average."""
    if as_json:
        for f in figures:
            print(json.dumps(f))
        return
    print(table(figures))
    print(f"(loadavg {loadavg()})")
