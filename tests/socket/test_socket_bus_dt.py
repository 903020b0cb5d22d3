"""``virtio-msg bus --dt FILE``: region and wire parameters come from the tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent.parent / "docs" / "examples"


def test_bus_serves_the_selected_tree_instance(tmp_path: Path) -> None:
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virtio_msg",
            "bus",
            "--json",
            "--socket",
            str(sock_dir / "bus.sock"),
            "--dt",
            str(EXAMPLES / "two-buses.dts"),
            "--instance",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert first["event"] == "listening"
    assert first["profile"] == "linux-rfc1"
    assert first["max_msg_size"] == 44
    assert first["region"] == {"base": 0x1_0040_0000, "size": 1 << 20}
    assert not os.path.exists(sock_dir / "bus.sock")  # removed on exit


def test_bus_refuses_an_instance_the_tree_does_not_have(tmp_path: Path) -> None:
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtio_msg",
            "bus",
            "--socket",
            str(sock_dir / "bus.sock"),
            "--dt",
            str(EXAMPLES / "two-buses.dts"),
            "--instance",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "2 bus instance(s)" in proc.stdout + proc.stderr
