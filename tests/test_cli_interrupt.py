"""Ctrl-C: a starting command ends with status 130 and no traceback; ``console`` ends at once.

A real SIGINT is delivered to a child process at chosen points of its start:
an import hook sends it when the named module is first imported (while the
parser or the command's stack is loading), so the moment does not depend on
how fast this machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child that sends itself SIGINT when TARGET is first imported, then runs main(ARGV).
INTERRUPT_AT_IMPORT = r"""
import importlib.abc, os, signal, sys
target, argv = sys.argv[1], sys.argv[2:]

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target_module=None):
        if name == target:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
from virtio_msg.cli import main
sys.exit(main(argv))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize(
    "target, argv",
    [
        ("virtio_msg.cli.run", ["run"]),  # while the parser is being built
        ("virtio_msg.compose", ["run"]),  # while run's stack is imported
        ("virtio_msg.compose.console", ["console"]),
        ("virtio_msg.cli.dt", ["dt", "check", "x.dts"]),
    ],
)
def test_ctrl_c_while_starting_is_status_130_without_a_traceback(
    target: str, argv: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_IMPORT, target, *argv],
        capture_output=True, text=True, timeout=120, env=_env(), check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert proc.returncode == 130, proc.stderr


def test_console_ends_promptly_after_ctrl_c() -> None:
    """Ctrl-C while typing: exit 130 well before the bus timeout (60 s here) would let it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", "console", "--timeout-ms", "60000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping\n"  # running: the echo came back
        proc.send_signal(signal.SIGINT)
        # Without the fix the input thread waits for the reader for the whole bus timeout.
        _out, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err, err.decode()
        assert proc.returncode == 130, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
