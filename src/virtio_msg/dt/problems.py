"""Problems found in a device tree, and the one exception that carries them.

Strategy: nothing in ``virtio_msg.dt`` stops at the first mistake.  Reading,
schema validation and the semantic checks each append :class:`Problem` records
(node path, message, hint, severity) to a list; :func:`load_tree` raises one
:class:`DeviceTreeError` holding every error, and ``dt check`` prints them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from virtio_msg.errors import ConfigError

__all__ = ["ERROR", "WARNING", "DeviceTreeError", "Problem", "Severity", "errors_of"]

Severity = Literal["error", "warning"]
ERROR: Final = "error"
WARNING: Final = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in a tree.

    ``node`` is the node's full path ("/" for the tree as a whole); ``prop`` the
    property concerned, if any; ``hint`` says how to fix it; ``source`` names the
    check that found it: "read" (file, dtc), "schema" (dtschema) or "binding"
    (the semantic checks of this package).
    """

    node: str
    message: str
    hint: str = ""
    severity: Severity = "error"
    prop: str | None = None
    source: str = "binding"

    @property
    def is_error(self) -> bool:
        """True for an error, false for a warning."""
        return self.severity == ERROR

    def __str__(self) -> str:
        """Return ``severity: node: [prop: ]message``, without the hint."""
        where = f"{self.node}: {self.prop}: " if self.prop else f"{self.node}: "
        return f"{self.severity}: {where}{self.message}"

    def to_json(self) -> dict[str, object]:
        """Return the problem as plain JSON-ready data."""
        return {
            "severity": self.severity,
            "node": self.node,
            "property": self.prop,
            "message": self.message,
            "hint": self.hint,
            "source": self.source,
        }


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    """Return the problems of severity "error", in order."""
    return [p for p in problems if p.is_error]


class DeviceTreeError(ConfigError):
    """A device tree cannot be used: it holds one or more errors.

    ``problems`` lists every error (and the warnings found with them); the
    message names the file and lists each error with its node and hint.
    """

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        """Build the readable message from ``problems`` found in ``source``."""
        self.source = source
        self.problems = tuple(problems)
        errors = errors_of(self.problems)
        lines = [f"{source}: {len(errors)} error(s) in the device tree:"]
        for problem in errors:
            lines.append(f"  {problem}")
            lines.extend(f"      {line}" for line in problem.hint.splitlines())
        super().__init__("\n".join(lines))
