"""``conformance device --connect PATH``: the tool dials a backend that listens.

``virtio-msg backend --listen PATH`` serves every built-in model in both wire
profiles and passes every scenario (DEV-, G-); a listening backend with each
deliberate defect fails, naming exactly its scenarios.  The JUnit file of a
passing run is well-formed and counts every scenario run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtio_msg.bus.client import accept_bus
from virtio_msg.cli import main
from virtio_msg.conformance.broken import DEFECTS, BrokenBackend
from virtio_msg.devices.catalog import make_device

TYPES = ("rng", "blk", "console", "i2c")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp) / "backend.sock"


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_connect_to_a_listening_virtio_msg_backend_passes(
        profile: str, sock_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", "backend", "--listen", str(sock_path),
         "--quiet", *TYPES], env=env, stderr=subprocess.PIPE)
    junit = tmp_path / "connect.xml"
    try:
        status = main(["conformance", "device", "--connect", str(sock_path), "--profile",
                       profile, "--silence-ms", "30", "--settle-ms", "300",
                       "--junit", str(junit)])
    finally:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    out = capsys.readouterr().out
    assert status == 0, out
    assert child.returncode == 0, child.stderr.read() if child.stderr else ""
    lines = out.splitlines()
    assert lines[-1].startswith(f"PASSED: device conformance ({profile})")
    for n, name in enumerate(TYPES):
        assert any(f"dev {n} ({name})" in line for line in lines)
    suite = ET.fromstring(junit.read_bytes()).find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert int(suite.get("tests") or 0) == len(lines) - 1
    assert not sock_path.exists()  # the backend removed its socket file


def _listening_broken_backend(path: Path, defect: str, ready: threading.Event,
                              errors: list[BaseException]) -> None:
    try:
        client = accept_bus(path, accept_timeout=30.0, on_listening=ready.set)
        with client:
            backend = BrokenBackend(defect, client.region, client.params)
            backend.attach(client)
            client.backend = backend
            client.serve(0, make_device("rng"))
            client.wait(60.0)
    except BaseException as exc:  # reported by the test
        errors.append(exc)
        ready.set()


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_connect_names_the_scenarios_a_broken_listening_backend_fails(
        defect: str, sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = DEFECTS[defect][1] or frozenset({"device-info", "token-echo"})
    if defect == "answers-malformed":
        # Over the socket the backend library drops a datagram above the announced
        # maximum before any device sees it: only the truncated frames get answered.
        expected = frozenset({"malformed-dropped"})
    ready = threading.Event()
    errors: list[BaseException] = []
    t = threading.Thread(target=_listening_broken_backend,
                         args=(sock_path, defect, ready, errors), daemon=True)
    t.start()
    assert ready.wait(30)
    status = main(["conformance", "device", "--connect", str(sock_path), "--silence-ms", "30",
                   "--settle-ms", "300", "-k", ",".join(sorted(expected | {"device-info"}))])
    t.join(30)
    assert not errors, errors
    assert status == 1
    lines = capsys.readouterr().out.splitlines()
    failed = {line.split()[1] for line in lines if line.startswith("FAIL ")}
    assert failed == expected, lines


def test_listen_and_connect_errors_are_bounded_and_named(
        sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backend", "--listen", str(sock_path), "--accept-timeout", "0.2",
                 "rng"]) == 1
    assert "no bus connected" in capsys.readouterr().err
    assert not sock_path.exists()
    assert main(["conformance", "device", "--connect", str(sock_path), "--wait-ms",
                 "200"]) == 1
    assert "no backend listening" in capsys.readouterr().err
