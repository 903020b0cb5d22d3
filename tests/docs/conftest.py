"""Report what the docs collector did: how many documented examples it ran."""

from __future__ import annotations

import pytest

from docs.doc_runner import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: runnable examples run (by language), synopses and commands checked."""
    if not TALLY:
        return
    ran = sum(n for kind, n in TALLY.items() if kind.startswith("ran "))
    kinds = ", ".join(
        f"{n} {kind[4:]}" for kind, n in sorted(TALLY.items()) if kind.startswith("ran ")
    )
    others = ", ".join(
        f"{n} {kind}" for kind, n in sorted(TALLY.items()) if not kind.startswith("ran ")
    )
    line = f"docs: ran {ran} runnable examples ({kinds})"
    terminalreporter.write_line(line + (f"; {others}" if others else ""))
