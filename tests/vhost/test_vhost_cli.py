"""``virtio-msg backend vhost-user`` (over the socket bus) and ``run --vhost-user`` (in process)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from vhost_daemons import DRIVERS_UNDER_TEST, MiB, bus, make_image, storage_daemon

from virtio_msg.bus import DeviceEntry, LoopbackBus
from virtio_msg.bus.socket import SocketServer
from virtio_msg.cli.backend import add_vhost_parser
from virtio_msg.cli.run import add_vhost_run_arguments
from virtio_msg.compose.vhost import VhostSpec, assign_numbers, parse_vhost_spec, run_vhost_devices
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.transport.params import BusParams
from virtio_msg.vhost import OptionError

WAIT = 20.0
PATTERN = b"virtio-msg over vhost-user! " * 4


# --- option parsing ---------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert parse_vhost_spec("/run/x.sock") == VhostSpec("/run/x.sock")
    spec = parse_vhost_spec("socket=/s,type=net,dev-num=0x10,mac=52:54:00:00:00:01,queue-size=64")
    assert spec == VhostSpec("/s", "net", 16, "52:54:00:00:00:01", None, None, 64)
    assert parse_vhost_spec("path=/f,type=fs,tag=share,queues=2").tag == "share"


@pytest.mark.parametrize(
    "text, match",
    [
        ("type=blk", "names no socket"),
        ("socket=/a,color=red", "unknown"),
        ("socket=/a,type=gpu", "type 'gpu' unknown"),
        ("socket=/a,dev-num=70000", "outside"),
        ("socket=/a,socket=/b", "twice"),
        ("socket=/a,queues=x", "not a number"),
    ],
)
def test_bad_specs_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        parse_vhost_spec(text)


def test_numbers_are_assigned_around_the_taken_ones() -> None:
    specs = [VhostSpec("/a"), VhostSpec("/b", dev_num=1), VhostSpec("/c")]
    assert [n for n, _ in assign_numbers(specs, taken=[0])] == [2, 1, 3]
    with pytest.raises(OptionError):
        assign_numbers([VhostSpec("/a", dev_num=0)], taken=[0])


def test_parsers_declare_the_documented_options() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_vhost_parser(sub)
    args = parser.parse_args(
        ["vhost-user", "--vhost-user", "/v.sock", "--type", "blk", "--dev-num", "3",
         "--socket", "/bus.sock"]
    )
    assert (args.vhost_user, args.type, args.dev_num) == (Path("/v.sock"), "blk", 3)
    assert args.socket == Path("/bus.sock")
    run = argparse.ArgumentParser()
    add_vhost_run_arguments(run)
    args = run.parse_args(["--vhost-user", "socket=/a", "--vhost-user", "/b,type=net"])
    assert [s.socket for s in args.vhost_user] == ["/a", "/b"]


# --- run --vhost-user (in process) ------------------------------------------------------------


def test_run_serves_exercises_and_withdraws_the_device(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 4 * MiB, PATTERN)
    with storage_daemon(tmp_path, image) as qsd, bus() as (lb, backend):
        specs = [(2, VhostSpec(str(qsd.socket))), (3, VhostSpec(str(tmp_path / "absent.sock")))]
        results = run_vhost_devices(lb, backend, specs)
        ok, bad = results
        assert ok["ok"] and ok["type"] == "vhost-user-blk" and ok["dev_num"] == 2
        assert ok["result"]["verified"] == "64 KiB" and "ACCESS_PLATFORM" in ok["features"]
        assert not bad["ok"] and "cannot connect" in bad["error"]
        assert lb.device(2) is None  # withdrawn again
        assert image.read_bytes() == make_image(tmp_path / "ref.img", 4 * MiB, PATTERN).read_bytes()


# --- backend vhost-user (a separate process on the socket bus) --------------------------------


class SocketBus:
    """A bus in this process serving a socket; records ADD/REMOVE."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700)
        self.bus = LoopbackBus(BusParams(timeout_ms=5000), size=4 * MiB, drivers=DRIVERS_UNDER_TEST)
        self.cv = threading.Condition()
        self.added: list[int] = []
        self.removed: list[int] = []
        self.bus.on_added.append(self._on(self.added))
        self.bus.on_removed.append(self._on(self.removed))
        self.server = SocketServer(self.bus, directory / "bus.sock")
        self.server.start()

    def _on(self, seen: list[int]) -> Callable[[DeviceEntry], None]:
        def record(entry: DeviceEntry) -> None:
            with self.cv:
                seen.append(entry.dev_num)
                self.cv.notify_all()

        return record

    def wait(self, seen: list[int], dev_num: int) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: dev_num in seen, WAIT)

    def close(self) -> None:
        self.server.close()
        self.bus.close()


def _vhost_backend(
    vhost_sock: Path, bus_sock: Path, dev_num: int, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", "backend", "vhost-user",
         "--vhost-user", str(vhost_sock), "--socket", str(bus_sock),
         "--dev-num", str(dev_num), "--json", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
        raise AssertionError(f"backend process did not exit: {err}") from None
    return proc.returncode, out, err


def test_backend_vhost_user_serves_a_socket_bus_and_removes_the_device_when_qsd_dies(
    tmp_path: Path,
) -> None:
    image = make_image(tmp_path / "disk.img", 4 * MiB, PATTERN)
    sb = SocketBus(tmp_path / "bus")
    proc: subprocess.Popen[str] | None = None
    try:
        with storage_daemon(tmp_path, image) as qsd:
            proc = _vhost_backend(qsd.socket, sb.server.path, 5)
            assert sb.wait(sb.added, 5), "device 5 was never added"
            entry = sb.bus.device(5)
            assert entry is not None and isinstance(entry.driver, BlkDriver), entry
            drv = entry.driver
            assert drv.read(1000, 200) == (PATTERN * 1000)[1000:1200]  # three processes, one memfd
            drv.write(4096, b"written through the socket bus")
            drv.flush()
            assert image.read_bytes()[4096:4126] == b"written through the socket bus"
            qsd.kill(signal.SIGKILL)
            assert sb.wait(sb.removed, 5), "device 5 was not removed after its back end died"
            code, out, err = _finish(proc)
            assert code == 1 and "back end gone" in err
            events = [json.loads(line)["event"] for line in out.splitlines()]
            assert events == ["added", "removed"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        sb.close()


def test_backend_vhost_user_removes_the_device_on_sigterm(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2 * MiB)
    sb = SocketBus(tmp_path / "bus")
    proc: subprocess.Popen[str] | None = None
    try:
        with storage_daemon(tmp_path, image) as qsd:
            proc = _vhost_backend(qsd.socket, sb.server.path, 0)
            assert sb.wait(sb.added, 0)
            os.kill(proc.pid, signal.SIGTERM)
            assert sb.wait(sb.removed, 0)
            code, _out, err = _finish(proc)
            assert code == 0, err
            assert qsd.alive()  # the back end itself is left running
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        sb.close()


def test_backend_vhost_user_reports_an_unreachable_backend(tmp_path: Path) -> None:
    sb = SocketBus(tmp_path / "bus")
    try:
        proc = _vhost_backend(tmp_path / "nothing.sock", sb.server.path, 0)
        code, _out, err = _finish(proc)  # exits by itself (bounded wait)
        assert code == 1 and "cannot connect" in err
    finally:
        sb.close()


def test_run_refuses_socket_with_vhost_user(tmp_path: Path) -> None:
    """A socket run serves only built-in devices: it must not claim a vhost-user device ran."""
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "run", "--socket",
         "--vhost-user", f"socket={tmp_path / 'absent.sock'}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "--socket and --vhost-user cannot be combined" in proc.stderr
    assert "all devices ok" not in proc.stdout


def test_backend_vhost_user_reconnects_when_qsd_is_killed_and_restarted(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 4 * MiB, PATTERN)
    sb = SocketBus(tmp_path / "bus")
    proc: subprocess.Popen[str] | None = None
    try:
        with storage_daemon(tmp_path, image) as qsd:
            proc = _vhost_backend(qsd.socket, sb.server.path, 6, "--reconnect", "60")
            assert sb.wait(sb.added, 6), "device 6 was never added"
            entry = sb.bus.device(6)
            assert entry is not None and isinstance(entry.driver, BlkDriver), entry
            entry.driver.write(8192, b"before the back end died")
            entry.driver.flush()
            qsd.kill(signal.SIGKILL)
            assert sb.wait(sb.removed, 6), "device 6 was not removed after its back end died"
        with sb.cv:
            sb.added.clear()
        with storage_daemon(tmp_path, image):
            assert sb.wait(sb.added, 6), "device 6 did not come back with its back end"
            entry = sb.bus.device(6)
            assert entry is not None and isinstance(entry.driver, BlkDriver), entry
            assert entry.driver.read(8192, 24) == b"before the back end died"  # data intact
            assert entry.driver.read(1000, 200) == (PATTERN * 1000)[1000:1200]
            os.kill(proc.pid, signal.SIGTERM)
            code, out, err = _finish(proc)
            assert code == 0, err
            events = [json.loads(line)["event"] for line in out.splitlines()]
            assert events == ["added", "removed", "reconnected", "added", "removed"], events
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        sb.close()
