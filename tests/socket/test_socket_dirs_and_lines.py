"""Socket directories the bus creates, and the lines ``backend`` and ``console`` print.

A missing socket directory is created with every missing parent at mode 0700
(docs/socket-protocol.md), whatever the umask lets ``os.makedirs`` do; the
backend's last line says why it stopped without repeating itself; the
console starts with one line saying how to end it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sockbus_helpers import WAIT, BusHarness, private_dir, spawn, stop

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.socket import SocketServer


@pytest.fixture
def pdir() -> Iterator[Path]:
    d = private_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_missing_parents_of_the_socket_directory_are_created_0700(pdir: Path) -> None:
    old = os.umask(0o022)  # the common umask: makedirs would leave parents 0755
    try:
        sock = pdir / "a" / "b" / "c" / "bus.sock"
        with LoopbackBus(size=1 << 20) as bus, SocketServer(bus, sock):
            assert sock.exists()
    finally:
        os.umask(old)
    for folder in (pdir / "a", pdir / "a" / "b", pdir / "a" / "b" / "c"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_console_listen_creates_its_parents_0700_too(pdir: Path) -> None:
    sock = pdir / "x" / "y" / "c.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "console", "--listen", str(sock), "--wait-ms", "1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1 and "no console device added" in proc.stderr
    assert stat.S_IMODE((pdir / "x").stat().st_mode) == 0o700


def test_run_socket_path_puts_the_bus_socket_there(pdir: Path) -> None:
    sock = pdir / "runs" / "bus.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "run", "--socket", str(sock), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["buses"][0]["channel"]["socket"] == str(sock)
    assert stat.S_IMODE((pdir / "runs").stat().st_mode) == 0o700
    assert not sock.exists()  # removed with the bus


def test_backend_says_once_that_the_bus_closed_the_connection() -> None:
    harness = BusHarness()
    backend = spawn("backend", "--socket", str(harness.path), "rng")
    try:
        harness.wait_for(lambda: harness.added, "the backend's rng")
    finally:
        harness.close()  # the bus goes away: the backend ends by itself
    try:
        out, err = backend.communicate(timeout=WAIT)  # it ends by itself, bounded
    finally:
        stop(backend)
    last = out.splitlines()[-1]
    assert last == "disconnected: the bus closed the connection", (out, err)


def test_console_starts_with_a_line_saying_how_to_end_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "console"],
        input=b"hi\n", capture_output=True, timeout=60, check=False,
    )
    assert proc.returncode == 0 and proc.stdout == b"hi\n"
    first = proc.stderr.decode().splitlines()[0]
    assert first.startswith("console ready, device side echo:")
    assert "Ctrl-D ends the input" in first and "Ctrl-C quits" in first
