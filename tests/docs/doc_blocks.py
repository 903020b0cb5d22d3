"""The fenced blocks of the Markdown docs, their markers, and the rules for marking them.

Every fenced block of README.md and docs/**/*.md is read with the one-line HTML
comment right above it (blank lines between are allowed), which says what the
block is for (docs/contributing.md, "Runnable docs"):

* ``<!-- runnable -->`` runs it; ``runnable server=PATH`` starts it in the
  background and waits for PATH; ``requires=a,b`` names tools it needs beyond
  the commands it runs;
* ``<!-- needs: WHAT (reason) -->`` does not run it: CI lacks WHAT;
* ``<!-- file: NAME -->`` writes the block to NAME for the page's later blocks;
* ``<!-- synopsis -->`` a usage line: its ``--options`` are checked, not run.

:func:`problems` lists every block that breaks the rules: a fence with no
language, a shell or Python block with no marker, a transcript or a
``virtio-msg`` command hidden in a ``text`` block, a malformed marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL = frozenset({"sh", "console"})
"""Shell blocks: ``sh`` is a script (run as one), ``console`` a transcript (``$ `` lines)."""
PYTHON = frozenset({"python", "pycon"})
"""Python blocks: ``python`` is a script, ``pycon`` a doctest session (``>>> `` lines)."""
OTHER = frozenset({"text", "dts", "c", "yaml", "json"})
"""Languages that are not examples: diagrams, listings, output, source files."""
_FENCE = re.compile(r"^(`{3,})(.*)$")
_MARKER = re.compile(r"^<!--\s*(runnable|needs|file|synopsis)\b:?\s*(.*?)\s*-->$")
_COMMENT = re.compile(r"^<!--.*-->$")
_NEEDS = re.compile(r"^\S.*\(.+\)$", re.DOTALL)


@dataclass(frozen=True)
class Marker:
    """What the comment above a block says: its kind and its arguments."""

    kind: str
    """``runnable``, ``needs``, ``file`` or ``synopsis``."""
    text: str = ""
    """The rest of the comment (for ``needs``: what and why; for ``file``: the name)."""
    options: dict[str, str] = field(default_factory=dict)
    """``key=value`` words of a ``runnable`` marker (``server``, ``requires``)."""


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    """The page, relative to the repository."""
    line: int
    """Line number of the opening fence (1-based)."""
    lang: str
    text: str
    marker: Marker | None
    marker_error: str = ""

    @property
    def where(self) -> str:
        """``page:line``, for messages."""
        return f"{self.page}:{self.line}"

    @property
    def runnable(self) -> bool:
        """Whether the collector runs this block."""
        return self.marker is not None and self.marker.kind == "runnable"


def pages(root: Path = REPO) -> list[Path]:
    """README.md and every Markdown page under docs/, relative to ``root``."""
    found = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [p.relative_to(root) for p in found if p.exists()]


def parse_marker(comment: str) -> Marker | str | None:
    """The marker in one comment line; an error message if it is malformed; None if none."""
    m = _MARKER.match(comment.strip())
    if m is None:
        return None
    kind, rest = m.groups()
    if kind == "needs":
        if not _NEEDS.match(rest):
            return "a needs: marker says what is needed and why: <!-- needs: WHAT (reason) -->"
        return Marker(kind, rest)
    if kind == "file":
        if not re.fullmatch(r"[\w.-]+", rest):
            return f"file: needs a plain file name, not {rest!r}"
        return Marker(kind, rest)
    options: dict[str, str] = {}
    for word in rest.split():
        key, eq, value = word.partition("=")
        if kind != "runnable" or not eq or key not in ("server", "requires") or not value:
            return f"unknown marker option {word!r} (runnable takes server=PATH, requires=A,B)"
        options[key] = value
    return Marker(kind, "", options)


def blocks(page: Path, root: Path = REPO) -> list[Block]:
    """Every fenced block of ``page`` (relative to ``root``) with its marker."""
    lines = (root / page).read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).strip()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker: Marker | None = None
        error = ""
        if above >= 0 and _COMMENT.match(lines[above].strip()):
            parsed = parse_marker(lines[above])
            if isinstance(parsed, str):
                error = parsed
            else:
                marker = parsed
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(page, i + 1, lang, text, marker, error))
        i = end + 1
    return found


def problems(block: Block) -> list[str]:
    """What is wrong with how ``block`` is marked (empty when nothing is)."""
    where, lang, kind = block.where, block.lang, block.marker.kind if block.marker else None
    if block.marker_error:
        return [f"{where}: {block.marker_error}"]
    if not lang:
        return [f"{where}: a fence with no language: sh, console, python, pycon or text"]
    if lang not in SHELL | PYTHON | OTHER:
        return [f"{where}: unknown language {lang!r} (one of {sorted(SHELL | PYTHON | OTHER)})"]
    found: list[str] = []
    lines = block.text.splitlines()
    if lang in SHELL | PYTHON and kind in (None, "synopsis"):
        found.append(
            f"{where}: unmarked {lang} example: mark it <!-- runnable --> or "
            "<!-- needs: WHAT (reason) -->"
        )
    if kind == "runnable" and lang not in SHELL | PYTHON:
        found.append(f"{where}: only sh, console, python and pycon blocks can be runnable")
    if kind == "runnable" and "server" in block.marker.options and lang != "sh":  # type: ignore[union-attr]
        found.append(f"{where}: a server is an sh block")
    if kind == "needs" and lang not in SHELL | PYTHON:
        found.append(f"{where}: needs: marks an example; a {lang} block is not one")
    if kind == "synopsis" and lang != "text":
        found.append(f"{where}: a synopsis is a text block")
    if lang == "console" and not (lines and lines[0].startswith("$ ")):
        found.append(f"{where}: a console transcript starts with a '$ ' command line")
    if lang == "pycon" and not (lines and lines[0].startswith(">>> ")):
        found.append(f"{where}: a pycon session starts with a '>>> ' line")
    if lang == "text" and kind != "file":
        if any(line.startswith("$ ") for line in lines):
            found.append(f"{where}: a '$ ' transcript in a text block: make it console and mark it")
        if kind != "synopsis" and any(line.startswith("virtio-msg ") for line in lines):
            found.append(
                f"{where}: virtio-msg commands in a text block: mark a usage line "
                "<!-- synopsis -->, or make an example sh and mark it"
            )
    return found


def command_lines(block: Block) -> list[str]:
    """The ``virtio-msg`` command lines of a shell block or synopsis (for the option check)."""
    if block.lang not in SHELL and not (block.marker and block.marker.kind == "synopsis"):
        return []
    found: list[str] = []
    for raw in block.text.replace("\\\n", " ").splitlines():
        if block.lang == "console" and not raw.startswith("$ "):
            continue  # output, not a command
        line = raw[2:] if raw.startswith("$ ") else raw
        line = line.split(" #")[0]
        if line.startswith("virtio-msg "):
            found.append(line.strip())
        elif found and line[:1].isspace() and line.strip().startswith(("[", "-")):
            found[-1] += " " + line.strip()  # a synopsis continued on an indented line
    return found
