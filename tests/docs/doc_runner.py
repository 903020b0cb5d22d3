"""Run the marked blocks of one page, in order, in one temporary directory.

A page is run the way a reader follows it: its blocks share one directory (a
copy of the repository's ``docs/`` is in it, so ``docs/examples/...`` paths
work), a server block keeps running until the page ends, a ``file:`` block is
there for the blocks after it.  ``virtio-msg``, ``python3`` and ``python``
run the interpreter and the package under test; ``HOME`` and ``TMPDIR`` are
inside the directory.

* ``sh``: one ``bash -e -o pipefail`` script; it must exit 0.
* ``sh`` with ``server=PATH``: started in its own session; the page waits
  (bounded) until PATH exists; it is stopped (SIGTERM, then SIGKILL) when the
  page ends, and must not have failed before.
* ``console``: each ``$ `` command runs on its own; where the page shows output
  its stdout, or its stderr and stdout together, must match it; else the
  command must exit 0.
* ``python``: a script; it must exit 0.  ``pycon``: a doctest session.

Output is compared after :func:`normalise` (times, decimals, paths, pids,
spacing); a line ``...`` stands for any lines, ``...`` in a line for any text.
Every wait is bounded; a page that needs a tool that is not installed is
skipped, naming it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import virtio_msg
from docs.doc_blocks import REPO, Block

BLOCK_TIMEOUT = 120.0
"""Bound on one block (or one transcript command), seconds."""
SERVER_START = 20.0
"""Bound on a server creating its socket, seconds."""
SERVER_STOP = 10.0
"""Bound on a server exiting after SIGTERM, before SIGKILL."""
TALLY: Counter[str] = Counter()
"""What the collector did to the real docs in this session, by kind (reported at the end)."""
_BUILTINS = frozenset({
    "cd", "export", "set", "until", "while", "for", "do", "done", "if", "then", "else", "fi",
    "wait", "exit", "[", "source", ".", "true", "false", "kill", "echo", "printf", "read",
    "eval", "exec", "trap", "type", "ulimit", "umask",
})
_PACKAGE_ROOT = Path(virtio_msg.__file__).resolve().parents[1]


class ExampleFailed(AssertionError):
    """A documented example did not do what its page says."""


def normalise(text: str, tmp: Path | None = None) -> str:
    """``text`` with its volatile parts replaced: paths, times, decimals, pids, spacing."""
    if tmp is not None:
        text = text.replace(str(tmp) + "/", "").replace(str(tmp), ".")
    text = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?", "<time>", text)
    text = re.sub(r"\b\d\d:\d\d:\d\d\b", "<time>", text)
    text = re.sub(r"\b\d+\.\d+\b", "<num>", text)
    text = re.sub(r"\b(pid[ =:]?)\d+", r"\1<pid>", text)
    text = re.sub(r"([─━═])\1+", r"\1", text)  # table rules: their width follows the values
    lines = [re.sub(r"[ \t]+", " ", line).rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def matches(expected: str, actual: str) -> bool:
    """Whether normalised ``actual`` fits normalised ``expected`` (``...`` wildcards)."""
    parts = []
    for line in expected.split("\n"):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.fullmatch("".join(parts), actual + "\n", re.DOTALL) is not None


def transcript(text: str) -> list[tuple[str, str]]:
    """A console block as (command, shown output) pairs; a final backslash continues a line."""
    pairs: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + lines[i]
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(line)
        i += 1
    return [(c, "\n".join(out)) for c, out in pairs]


def tools(block: Block) -> set[str]:
    """The programs a runnable block needs: its commands' first words and ``requires=``."""
    assert block.marker is not None
    needed = {t for t in block.marker.options.get("requires", "").split(",") if t}
    if block.lang == "sh":
        lines = block.text.replace("\\\n", " ").splitlines()
    elif block.lang == "console":
        lines = [command for command, _ in transcript(block.text)]
    else:
        return needed
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: not a command line we can judge
            continue
        start = True
        for token in tokens:
            if token and set(token) <= set("();<>|&"):
                start = True
            elif start and re.fullmatch(r"\w+=.*", token):
                continue  # VAR=value before the command
            elif start:
                if token not in _BUILTINS and not token.startswith(("$", "-")):
                    needed.add(token)
                start = False
    return needed


@dataclass
class Page:
    """The state of one page's run: its directory, environment and servers."""

    tmp: Path
    servers: list[tuple[Block, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ran: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        """Copy docs/, make the command shims and the environment."""
        shutil.copytree(REPO / "docs", self.tmp / "docs")
        bindir = self.tmp / ".bin"
        bindir.mkdir()
        shims = {
            "virtio-msg": f'exec {shlex.quote(sys.executable)} -m virtio_msg "$@"\n',
            "python3": f'exec {shlex.quote(sys.executable)} "$@"\n',
            "python": f'exec {shlex.quote(sys.executable)} "$@"\n',
        }
        for name, body in shims.items():
            shim = bindir / name
            shim.write_text("#!/bin/sh\n" + body)
            shim.chmod(0o755)
        (self.tmp / ".home").mkdir()
        (self.tmp / ".tmp").mkdir()
        path = os.pathsep.join([str(bindir), os.environ.get("PATH", "/usr/bin:/bin")])
        pythonpath = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env = {
            **os.environ,
            "PATH": path,
            "PYTHONPATH": pythonpath,
            "HOME": str(self.tmp / ".home"),
            "TMPDIR": str(self.tmp / ".tmp"),
            "COLUMNS": "100",
            "NO_COLOR": "1",
        }

    def missing(self, block: Block) -> list[str]:
        """The tools ``block`` needs that are not installed (``py:NAME``: a Python module)."""
        path = self.env["PATH"]
        return sorted(
            t for t in tools(block)
            if (importlib.util.find_spec(t[3:]) is None if t.startswith("py:")
                else shutil.which(t, path=path) is None)
        )

    def _run(
        self, argv: list[str], block: Block, what: str, *, split: bool = False
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv, cwd=self.tmp, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE if split else subprocess.STDOUT,
                text=True, timeout=BLOCK_TIMEOUT, start_new_session=True, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
            raise ExampleFailed(
                f"{block.where}: {what} did not finish in {BLOCK_TIMEOUT:.0f} s\n{out}"
            ) from None

    def _script(self, block: Block, suffix: str) -> Path:
        path = self.tmp / f".block-{block.line}{suffix}"
        path.write_text(block.text)
        return path

    def run(self, block: Block) -> None:
        """Run one marked block (``file:`` blocks are written); raise ExampleFailed if it fails."""
        marker = block.marker
        assert marker is not None
        if marker.kind == "file":
            (self.tmp / marker.text).write_text(block.text)
            return
        if "server" in marker.options:
            self._start_server(block, marker.options["server"])
        elif block.lang == "sh":
            script = self._script(block, ".sh")
            done = self._run(["bash", "-e", "-o", "pipefail", str(script)], block, "the script")
            if done.returncode != 0:
                raise ExampleFailed(
                    f"{block.where}: exit status {done.returncode}\n{done.stdout}"
                )
        elif block.lang == "console":
            self._console(block)
        elif block.lang == "python":
            done = self._run([sys.executable, str(self._script(block, ".py"))], block, "it")
            if done.returncode != 0:
                raise ExampleFailed(f"{block.where}: exit status {done.returncode}\n{done.stdout}")
        else:  # pycon
            doctest = [sys.executable, "-m", "doctest", "-o", "ELLIPSIS", "-o",
                       "NORMALIZE_WHITESPACE", str(self._script(block, ".txt"))]
            done = self._run(doctest, block, "the doctest")
            if done.returncode != 0:
                raise ExampleFailed(f"{block.where}: the session differs\n{done.stdout}")
        self.ran[f"ran {block.lang}"] += 1

    def _console(self, block: Block) -> None:
        for command, shown in transcript(block.text):
            argv = ["bash", "-o", "pipefail", "-c", command]
            done = self._run(argv, block, repr(command), split=True)
            out, err = done.stdout, done.stderr
            if shown.strip():
                # What the page shows is stdout, or stderr and stdout together (diagnostics
                # on stderr, e.g. tshark's warning when run as root, may be left out).
                expected = normalise(shown)
                candidates = [normalise(t, self.tmp) for t in (out, err + out, out + err)]
                if not any(matches(expected, actual) for actual in candidates):
                    raise ExampleFailed(
                        f"{block.where}: `{command}` printed (normalised)\n{candidates[1]}\n"
                        f"--- but the page shows (normalised)\n{expected}"
                    )
            elif done.returncode != 0:
                raise ExampleFailed(
                    f"{block.where}: `{command}` exit status {done.returncode}\n{err}{out}"
                )

    def _start_server(self, block: Block, socket: str) -> None:
        log = self.tmp / f".server-{block.line}.log"
        script = self._script(block, ".sh")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-e", str(script)], cwd=self.tmp, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append((block, proc, log))
        target = self.tmp / socket
        deadline = time.monotonic() + SERVER_START
        while not target.exists():
            if proc.poll() is not None:
                raise ExampleFailed(
                    f"{block.where}: the server exited ({proc.returncode}) before creating "
                    f"{socket}\n{log.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise ExampleFailed(f"{block.where}: no {socket} after {SERVER_START:.0f} s")
            time.sleep(0.02)

    def close(self) -> list[str]:
        """Stop every server (bounded); return the failures of those that died early."""
        failures = []
        for block, proc, log in self.servers:
            early = proc.poll()
            if early is not None and early != 0:
                failures.append(
                    f"{block.where}: the server exited with status {early} before the page "
                    f"ended\n{log.read_text(errors='replace')}"
                )
            _stop(proc)
        self.servers.clear()
        return failures


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole session; SIGKILL what is left after the bound."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + SERVER_STOP
    while time.monotonic() < deadline:
        proc.poll()  # reap bash, or the group never empties
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(SERVER_STOP)


def run_page(blocks: list[Block], tmp: Path) -> Counter[str]:
    """Run the marked blocks of one page in order; raise ExampleFailed on the first failure.

    Returns how many blocks of each language ran.
    """
    page = Page(tmp)
    try:
        for block in blocks:
            if block.marker is not None and block.marker.kind in ("runnable", "file"):
                page.run(block)
    finally:
        failures = page.close()
    if failures:
        raise ExampleFailed("\n".join(failures))
    return page.ran
