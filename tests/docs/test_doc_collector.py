"""The docs collector itself: it finds unmarked examples and fails on wrong ones.

Synthetic pages in a temporary directory: a wrong shown output, a failing
script, a server that dies or never creates its socket, an unmarked block, a
made-up option -- each must be caught, and a server must be gone afterwards.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from docs.doc_blocks import Block, blocks, command_lines, parse_marker, problems
from docs.doc_runner import (
    ExampleFailed,
    Page,
    matches,
    normalise,
    run_page,
    tools,
    transcript,
)
from docs.test_doc_examples import command_problems

FENCE = "`" * 3


def page(tmp_path: Path, body: str) -> list[Block]:
    """Write ``body`` (with ``~~~`` for fences) as page.md under ``tmp_path``; its blocks."""
    (tmp_path / "page.md").write_text(textwrap.dedent(body).replace("~~~", FENCE))
    return blocks(Path("page.md"), tmp_path)


def all_problems(found: list[Block]) -> list[str]:
    return [p for b in found for p in problems(b)]


def test_unmarked_and_hidden_examples_are_reported(tmp_path: Path) -> None:
    found = page(tmp_path, """
        ~~~sh
        virtio-msg run
        ~~~

        ~~~
        untagged
        ~~~

        ~~~text
        $ virtio-msg run
        ~~~

        ~~~text
        virtio-msg run --json
        ~~~

        <!-- needs: nothing said -->
        ~~~python
        print(1)
        ~~~

        <!-- runnable -->
        ~~~text
        not an example
        ~~~
        """)
    got = all_problems(found)
    assert len(got) == 6, got
    assert "page.md:2: unmarked sh example" in got[0]
    assert "no language" in got[1]
    assert "'$ ' transcript in a text block" in got[2]
    assert "virtio-msg commands in a text block" in got[3]
    assert "needs: WHAT (reason)" in got[4]
    assert "only sh, console, python and pycon blocks can be runnable" in got[5]


def test_marked_blocks_pass_the_rules(tmp_path: Path) -> None:
    found = page(tmp_path, """
        <!-- needs: a board (it has no emulator) -->

        ~~~sh
        virtio-msg backend --kernel
        ~~~

        <!-- synopsis -->
        ~~~text
        virtio-msg dt check FILE [--json]
                   [--no-schema]
        ~~~

        <!-- runnable server=s.sock requires=dtc -->
        ~~~sh
        sleep 1
        ~~~
        """)
    assert all_problems(found) == []
    assert found[1].marker is not None and found[1].marker.kind == "synopsis"
    assert command_lines(found[1]) == ["virtio-msg dt check FILE [--json] [--no-schema]"]
    assert found[2].marker is not None
    assert found[2].marker.options == {"server": "s.sock", "requires": "dtc"}
    assert parse_marker("<!-- runnable sever=x -->") == (
        "unknown marker option 'sever=x' (runnable takes server=PATH, requires=A,B)"
    )


def test_normalise_and_ellipsis() -> None:
    assert normalise("t 0.035 ms  pid 4711 at 18:02:03\n\n") == "t <num> ms pid <pid> at <time>"
    assert normalise("┏━━━━┳━━┓") == "┏━┳━┓"
    assert matches("a\n...\nz", "a\nb\nc\nz")
    assert matches("a\n...\nz", "a\nz")
    assert matches('{"x": 1, ...}', '{"x": 1, "y": 2}')
    assert not matches("a\nz", "a\nb\nz")
    assert not matches("a", "b")
    assert transcript("$ echo a \\\n  b\na b\n$ true\n") == [("echo a   b", "a b"), ("true", "")]


def test_tools_are_the_commands_of_a_block(tmp_path: Path) -> None:
    (block,) = page(tmp_path, """
        <!-- runnable requires=dt-validate,py:dtschema -->
        ~~~sh
        X=1 qemu-img info a | python3 -c 'import sys; print(1)'  # a comment; ls
        cd /tmp && tshark -r $(virtio-msg wireshark path) \\
            --flag
        ~~~
        """)
    assert tools(block) == {
        "dt-validate", "py:dtschema", "qemu-img", "python3", "tshark", "virtio-msg",
    }


def test_a_wrong_shown_output_fails(tmp_path: Path) -> None:
    found = page(tmp_path, """
        <!-- runnable -->
        ~~~console
        $ echo 'took 1.5 s'
        took 2.25 s
        $ echo one; echo two
        one
        three
        ~~~
        """)
    with pytest.raises(ExampleFailed, match=r"page.md:3: `echo one; echo two` printed"):
        run_page(found, tmp_path / "run")


def test_a_failing_script_fails_and_a_good_page_passes(tmp_path: Path) -> None:
    bad = page(tmp_path, """
        <!-- runnable -->
        ~~~sh
        true
        false
        echo never
        ~~~
        """)
    with pytest.raises(ExampleFailed, match="exit status 1"):
        run_page(bad, tmp_path / "bad")
    good = page(tmp_path, """
        <!-- file: tree.txt -->
        ~~~text
        hello
        ~~~

        <!-- runnable -->
        ~~~console
        $ cat tree.txt; ls docs/examples/default.dts; echo "$HOME" | grep -c '/.home$'
        hello
        docs/examples/default.dts
        1
        ~~~

        <!-- runnable -->
        ~~~pycon
        >>> open("tree.txt").read()
        'hello\\n'
        ~~~
        """)
    run_page(good, tmp_path / "good")


def test_a_server_runs_for_the_page_and_is_stopped(tmp_path: Path) -> None:
    found = page(tmp_path, """
        <!-- runnable server=up -->
        ~~~sh
        echo $$ > server.pid
        touch up
        exec sleep 300
        ~~~

        <!-- runnable -->
        ~~~sh
        kill -0 "$(cat server.pid)"
        ~~~
        """)
    run_page(found, tmp_path / "run")
    pid = int((tmp_path / "run" / "server.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_dies_or_never_listens_fails(tmp_path: Path) -> None:
    died = page(tmp_path, """
        <!-- runnable server=never -->
        ~~~sh
        echo broken >&2
        exit 3
        ~~~
        """)
    with pytest.raises(ExampleFailed, match=r"exited \(3\) before creating never\nbroken"):
        run_page(died, tmp_path / "died")
    early = page(tmp_path, """
        <!-- runnable server=up -->
        ~~~sh
        touch up
        sleep 0.2
        exit 4
        ~~~

        <!-- runnable -->
        ~~~sh
        sleep 1
        ~~~
        """)
    with pytest.raises(ExampleFailed, match="exited with status 4 before the page ended"):
        run_page(early, tmp_path / "early")


def test_an_option_a_command_lacks_is_reported(tmp_path: Path) -> None:
    (block,) = page(tmp_path, """
        <!-- synopsis -->
        ~~~text
        virtio-msg dt check FILE [--json] [--no-such-flag]
        ~~~
        """)
    (line,) = command_lines(block)
    assert command_problems(block, line) == [
        "page.md:3: --no-such-flag is not an option of `virtio-msg dt check`"
    ]


def test_missing_tools_are_named(tmp_path: Path) -> None:
    (block,) = page(tmp_path, """
        <!-- runnable requires=py:no_such_module_here,py:json -->
        ~~~sh
        no-such-tool-here --version | grep x
        ~~~
        """)
    probe = Page(tmp_path / "probe")
    assert probe.missing(block) == ["no-such-tool-here", "py:no_such_module_here"]
