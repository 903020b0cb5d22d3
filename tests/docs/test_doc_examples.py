"""The docs' examples: every one is marked, the runnable ones run as the page shows.

See docs/contributing.md ("Runnable docs") for the markers.  One test per page
runs that page's runnable blocks in order (:mod:`doc_runner`); the ``virtio-msg``
command lines of every shell block and synopsis, run or not, are checked
against the command's ``--help``; the vhost-user back ends' command lines on
their page are the ones the tests start.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from docs.doc_blocks import REPO, Block, blocks, command_lines, pages, problems
from docs.doc_runner import TALLY, ExampleFailed, Page, run_page
from virtio_msg.cli import main

PAGES = pages()
BLOCKS = {page: blocks(page) for page in PAGES}
RUN_PAGES = [p for p in PAGES if any(b.runnable for b in BLOCKS[p])]
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_pages_are_found() -> None:
    assert Path("README.md") in PAGES and Path("docs/device-tree.md") in PAGES
    assert len(RUN_PAGES) >= 5


def test_every_example_is_marked_runnable_or_with_what_it_needs() -> None:
    found = [p for page in PAGES for block in BLOCKS[page] for p in problems(block)]
    assert not found, "\n".join(found)
    TALLY["examples marked as needing what CI lacks"] = sum(
        b.marker is not None and b.marker.kind == "needs" for bs in BLOCKS.values() for b in bs
    )


def test_the_markers_are_documented() -> None:
    guide = (REPO / "docs" / "contributing.md").read_text(encoding="utf-8")
    for marker in ("<!-- runnable -->", "server=", "requires=", "<!-- needs:", "<!-- file:",
                   "<!-- synopsis -->"):
        assert marker in guide, marker


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p) for p in RUN_PAGES])
def test_page_examples_run_as_shown(page: Path, tmp_path: Path) -> None:
    marked = BLOCKS[page]
    probe = Page(tmp_path / "probe")
    missing = sorted({t for b in marked if b.runnable for t in probe.missing(b)})
    if missing:
        pytest.skip(f"{page}: {', '.join(missing)} not installed (scripts/install-test-deps.sh)")
    work = tmp_path / "page"
    work.mkdir()
    try:
        ran = run_page(marked, work)
    except ExampleFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    assert sum(ran.values()) == sum(b.runnable for b in marked)  # every runnable block ran
    TALLY.update(ran)


def _help(words: list[str]) -> str:
    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.suppress(SystemExit),
    ):
        main([*words, "--help"])
    return out.getvalue()


def command_problems(block: Block, line: str) -> list[str]:
    """Options of one ``virtio-msg`` line that its command's --help does not list."""
    words = shlex.split(line.replace("|", " | "), comments=True)[1:]
    sub: list[str] = []
    text = _help(sub)
    for word in words:  # subcommand words: each has a usage of its own
        deeper = _help([*sub, word]) if re.fullmatch(r"[a-z][a-z0-9-]*", word) else ""
        if not deeper.startswith("usage:") or deeper == text:
            break
        sub.append(word)
        text = deeper
    if not text.startswith("usage:"):
        return [f"{block.where}: `virtio-msg {' '.join(sub)} --help` printed no usage"]
    rest = line.split("|")[0]
    return [
        f"{block.where}: {opt} is not an option of `virtio-msg {' '.join(sub)}`"
        for opt in _OPTION.findall(rest)
        if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text)
    ]


def test_documented_command_lines_use_real_options() -> None:
    found = []
    checked = 0
    for page in PAGES:
        for block in BLOCKS[page]:
            for line in command_lines(block):
                found += command_problems(block, line)
                checked += 1
    assert checked >= 30
    assert not found, "\n".join(found)
    TALLY["virtio-msg command lines checked against --help"] = checked


def _sh(page: str, first_word: str) -> list[str]:
    (block,) = [
        b for b in BLOCKS[Path(page)]
        if b.lang == "sh" and b.text.replace("\\\n", " ").split()[:1] == [first_word]
    ]
    return shlex.split(block.text.replace("\\\n", " "))


def test_vhost_user_page_gives_the_tests_command_lines() -> None:
    sys.path.insert(0, str(REPO / "tests" / "vhost"))
    try:
        import vhost_daemons as d
    finally:
        sys.path.remove(str(REPO / "tests" / "vhost"))
    page = "docs/vhost-user.md"
    assert _sh(page, "qemu-storage-daemon") == d.storage_daemon_argv(
        "qemu-storage-daemon", "disk.img", "vub.sock", "qsd.pid"
    )
    assert _sh(page, "dpdk-testpmd") == d.testpmd_argv("dpdk-testpmd", "vhn.sock", "vmsg")
    fs = _sh(page, "mkdir")
    assert fs[:3] == ["mkdir", "-p", "share"]
    assert fs[3:] == d.virtiofsd_argv(d.VIRTIOFSD, "vfs.sock", "share")
