"""``virtio-msg bus`` / ``backend`` as real processes, and ``run --socket``'s report."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sockbus_helpers import WAIT, private_dir, spawn, stop

from virtio_msg.cli import main
from virtio_msg.compose import RunConfig, parse_device_specs, run_loopback, run_over_socket
from virtio_msg.transport.params import BusParams


@pytest.fixture
def pdir() -> Iterator[Path]:
    d = private_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ([], []),
        (["rng"], [(0, "rng")]),
        (["rng", "rng"], [(0, "rng"), (1, "rng")]),
        (["0:rng", "rng"], [(0, "rng"), (1, "rng")]),
        (["rng", "0x10:rng", "0:rng"], [(1, "rng"), (16, "rng"), (0, "rng")]),
    ],
)
def test_device_specs(specs: list[str], expected: list[tuple[int, str]]) -> None:
    assert parse_device_specs(specs) == expected


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["x:rng"], "not a device number"),
        (["70000:rng"], "outside 0..65535"),
        (["1:rng", "1:rng"], "repeat"),
        (["disk"], "unknown device type 'disk'"),
    ],
)
def test_bad_device_specs(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_device_specs(specs)


def _shape(report: dict[str, Any]) -> Any:
    """Keys and nesting of a report, values left out."""
    if isinstance(report, dict):
        return {k: _shape(v) for k, v in report.items() if k not in ("messages", "dropped")}
    if isinstance(report, list):
        return [_shape(x) for x in report[:1]]
    return type(report).__name__


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_run_over_socket_reports_like_the_in_process_run(profile: str) -> None:
    config = RunConfig(params=BusParams(profile))  # every built-in device
    report = run_over_socket([config])
    assert report["ok"], report
    assert [(d["dev_num"], d["type"]) for d in report["devices"]] == list(config.devices)
    assert report["devices"][0]["result"]["bytes"] == 64
    assert report["buses"][0]["channel"]["kind"] == "socket"
    reference = run_loopback([config])
    ours = _shape(report)
    del ours["buses"][0]["channel"]
    assert ours == _shape(reference)
    assert set(report["messages"]) == set(reference["messages"])
    json.dumps(report)  # --json can print it


def test_run_over_socket_reports_unknown_device_types() -> None:
    report = run_over_socket([RunConfig(devices=((0, "rng"), (1, "floppy")))])
    assert not report["ok"]
    ok, bad = report["devices"]
    assert ok["ok"] and not bad["ok"] and "unknown device type 'floppy'" in bad["error"]


def _lines(proc: Any, until: str, count: int = 1) -> list[dict[str, Any]]:
    """Read JSON lines until ``count`` of them have event ``until`` (bounded wait)."""
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            got.append(json.loads(line))
            if sum(e.get("event") == until for e in got) >= count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(WAIT), f"no {until!r} line; got {got}"
    return got


def _text_lines(proc: Any, needle: str, count: int) -> list[str]:
    """Read text lines until ``count`` of them contain ``needle`` (bounded wait)."""
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            got.append(line.rstrip("\n"))
            if sum(needle in seen for seen in got) >= count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(WAIT), f"no {count} lines with {needle!r}; got {got}"
    return got


def test_two_terminals_one_bus(pdir: Path) -> None:
    sock = pdir / "bus.sock"
    bus = spawn("bus", "--socket", str(sock), "--json", "--timeout-ms", "2000")
    backend = None
    try:
        first = _lines(bus, "listening")
        assert first[0]["socket"] == str(sock)
        backend = spawn("backend", "--socket", str(sock), "rng", "3:rng")
        events = _lines(bus, "selftest", 2)
        added = [e for e in events if e["event"] == "added"]
        assert sorted(e["dev_num"] for e in added) == [0, 3]
        assert all(e["type"] == "rng" and e["driver"] for e in added)
        assert all(e["ok"] for e in events if e["event"] == "selftest")
        # The bus can see an ADD before the backend has printed it: wait for its lines.
        printed = _text_lines(backend, " added: rng", 2)
        assert "device 0 added: rng" in printed and "device 3 added: rng" in printed
        stop(backend)  # SIGTERM: the backend REMOVEs its devices and leaves
        assert backend.returncode == 0
        gone = _lines(bus, "disconnected")
        assert sorted(e["dev_num"] for e in gone if e["event"] == "removed") == [0, 3]
        out, _err = stop(bus, signal.SIGINT)
        assert bus.returncode == 0
        assert json.loads(out.splitlines()[-1])["event"] == "closed"
        assert not sock.exists()
    finally:
        for proc in (backend, bus):
            if proc is not None:
                stop(proc, signal.SIGKILL)


def test_backend_without_a_bus_fails_cleanly(pdir: Path) -> None:
    proc = spawn("backend", "--socket", str(pdir / "none.sock"), "--connect-timeout", "1")
    _out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1
    assert "error: cannot connect to" in err


def test_backend_bad_device_and_bus_bad_directory(
    pdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backend", "--socket", str(pdir / "x.sock"), "tape"]) == 2
    assert "unknown device type 'tape'" in capsys.readouterr().err
    assert main(["bus", "--socket", "/tmp/virtio-msg-public-test.sock"]) == 1
    assert "writable by others" in capsys.readouterr().err


def test_backend_exits_when_the_bus_goes_away(pdir: Path) -> None:
    sock = pdir / "bus.sock"
    bus = spawn("bus", "--socket", str(sock), "--json", "--no-selftest")
    backend = None
    try:
        _lines(bus, "listening")
        backend = spawn("backend", "--socket", str(sock), "--json")  # every built-in device
        added = _lines(bus, "added", 4)
        assert sorted(e["type"] for e in added if e["event"] == "added") == [
            "blk", "console", "i2c", "rng"]
        stop(bus, signal.SIGTERM)
        deadline = time.monotonic() + WAIT
        while backend.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        out, _ = stop(backend)
        assert backend.returncode == 0
        assert json.loads(out.splitlines()[-1])["event"] == "disconnected"
    finally:
        for proc in (backend, bus):
            if proc is not None:
                stop(proc, signal.SIGKILL)
