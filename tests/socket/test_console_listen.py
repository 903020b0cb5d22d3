"""``virtio-msg console --listen PATH``: the console's device side in another process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest


def _spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_console_talks_to_a_backend_process(tmp_path: Path, profile: str) -> None:
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    path = sock_dir / "bus.sock"
    console = _spawn(
        "console",
        "--listen",
        str(path),
        "--profile",
        profile,
        "--wait-ms",
        "30000",
        stdin=subprocess.PIPE,
    )
    backend: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert console.poll() is None, console.stderr.read() if console.stderr else b""
            assert time.monotonic() < deadline, "the console's bus never listened"
            time.sleep(0.05)
        backend = _spawn("backend", "--socket", str(path), "console")
        out, err = console.communicate(b"typed into the console\n", timeout=60)
        assert console.returncode == 0, err.decode()
        assert out == b"typed into the console\n"  # echoed by the other process
    finally:
        _stop(console)
        if backend is not None:
            _stop(backend)


def test_console_gives_up_when_no_backend_comes(tmp_path: Path) -> None:
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtio_msg",
            "console",
            "--listen",
            str(sock_dir / "b.sock"),
            "--wait-ms",
            "300",
        ],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"no console device added within 300 ms" in proc.stderr
