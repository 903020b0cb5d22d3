"""Conformance results and how they are printed: text lines, JSON and JUnit XML.

Every scenario ends in one :class:`Outcome`: ``pass``, ``fail``, ``skip`` (it
could not run here, the detail says why) or ``lenient`` (the spec permits
several behaviours; the detail names the one the implementation chose).  A
:class:`Report` collects the results of one run; :meth:`Report.line` is the
one line per scenario the command prints, :meth:`Report.to_json` and
:meth:`Report.to_junit` are the machine forms (``--json``, ``--junit FILE``).
A run fails, and the command exits 1, when any scenario failed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How a scenario ended."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    LENIENT = "lenient"


@dataclass(frozen=True)
class Result:
    """The result of one scenario run against one target (a device number, a driver)."""

    scenario: str
    """Scenario id, e.g. ``token-echo``."""
    ids: tuple[str, ...]
    """Checklist ids the scenario checks (spec reference section 6)."""
    target: str
    """What was tested, e.g. ``dev 0 (rng)``."""
    outcome: Outcome
    detail: str = ""
    """Why it failed or was skipped, or the behaviour a lenient scenario saw."""
    seconds: float = 0.0

    def line(self) -> str:
        """One line: outcome, scenario, target, checklist ids, detail."""
        text = f"{self.outcome.value.upper():8} {self.scenario:28} {self.target:18} " \
               f"[{','.join(self.ids)}]"
        return f"{text} {self.detail}" if self.detail else text


@dataclass
class Report:
    """All results of one conformance run."""

    suite: str
    """``device`` or ``driver``."""
    profile: str
    results: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        """Append one result."""
        self.results.append(result)

    def counts(self) -> dict[str, int]:
        """Number of results per outcome (every outcome present)."""
        out = {o.value: 0 for o in Outcome}
        for r in self.results:
            out[r.outcome.value] += 1
        return out

    @property
    def ok(self) -> bool:
        """True when no scenario failed."""
        return all(r.outcome is not Outcome.FAIL for r in self.results)

    def failed(self) -> list[Result]:
        """The failed results, in run order."""
        return [r for r in self.results if r.outcome is Outcome.FAIL]

    def summary(self) -> str:
        """One summary line."""
        c = self.counts()
        verdict = "PASSED" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.suite} conformance ({self.profile}): {len(self.results)} "
            f"scenario runs, {c['pass']} passed, {c['fail']} failed, {c['lenient']} lenient, "
            f"{c['skip']} skipped"
        )

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-ready object."""
        return {
            "suite": self.suite,
            "profile": self.profile,
            "ok": self.ok,
            "counts": self.counts(),
            "results": [
                {
                    "scenario": r.scenario, "ids": list(r.ids), "target": r.target,
                    "outcome": r.outcome.value, "detail": r.detail,
                    "seconds": round(r.seconds, 6),
                }
                for r in self.results
            ],
        }

    def to_junit(self) -> bytes:
        """JUnit XML: one testsuite, one testcase per result (lenient cases pass)."""
        c = self.counts()
        suite = ET.Element(
            "testsuite",
            name=f"virtio-msg-{self.suite}-conformance-{self.profile}",
            tests=str(len(self.results)),
            failures=str(c["fail"]),
            errors="0",
            skipped=str(c["skip"]),
            time=f"{sum(r.seconds for r in self.results):.6f}",
        )
        for r in self.results:
            case = ET.SubElement(
                suite, "testcase", classname=f"{self.suite}.{r.target}",
                name=f"{r.scenario} [{','.join(r.ids)}]", time=f"{r.seconds:.6f}",
            )
            if r.outcome is Outcome.FAIL:
                ET.SubElement(case, "failure", message=r.detail or "failed").text = r.detail
            elif r.outcome is Outcome.SKIP:
                ET.SubElement(case, "skipped", message=r.detail or "skipped")
            elif r.outcome is Outcome.LENIENT:
                ET.SubElement(case, "system-out").text = f"lenient: {r.detail}"
        root = ET.Element("testsuites")
        root.append(suite)
        return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


__all__ = ["Outcome", "Report", "Result"]
