"""The virtio-fs driver: FUSE_INIT, GETATTR and LOOKUP through virtiofsd, and hostile replies.

``virtio-msg run --vhost-user`` with virtiofsd is judged in run's table like
every other device: the driver starts a FUSE session, reads the root's
attributes and looks a name up.  Replies are untrusted: each malformed one
below is refused with an error naming what was wrong.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from vhost_daemons import MiB, virtiofsd

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.compose.vhost import VhostSpec, run_vhost_devices
from virtio_msg.drivers import DRIVERS, FsDriver
from virtio_msg.drivers.fs import FUSE_GETATTR, PROBE_NAME, FuseError, check_reply
from virtio_msg.errors import TransportError
from virtio_msg.transport.params import BusParams


def _reply(error: int, unique: int, body: bytes = b"", length: int | None = None) -> bytes:
    size = 16 + len(body) if length is None else length
    return struct.pack("<IiQ", size, error, unique) + body


def test_a_good_reply_gives_its_body() -> None:
    assert check_reply(FUSE_GETATTR, 7, _reply(0, 7, b"body")) == b"body"


def test_an_errno_reply_is_a_fuse_error_naming_the_request() -> None:
    with pytest.raises(FuseError, match=r"FUSE GETATTR failed: No such file or directory") as e:
        check_reply(FUSE_GETATTR, 7, _reply(-2, 7))
    assert e.value.errno == 2


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x10\x00", "reply of 2 bytes has no header"),
        (_reply(0, 7, b"xx", length=40), "reply says 40 bytes, the device wrote 18"),
        (_reply(0, 8), "reply for request 8, not 7"),
        (_reply(5, 7), "reply carries error 5"),
        (_reply(-5000, 7), "reply carries error -5000"),
    ],
)
def test_hostile_replies_are_refused_with_what_was_wrong(data: bytes, match: str) -> None:
    with pytest.raises(TransportError, match=match):
        check_reply(FUSE_GETATTR, 7, data)


def test_the_fs_driver_is_built_in() -> None:
    assert DRIVERS[26] is FsDriver


def _in_process_run(tmp_path: Path, share: Path) -> dict[str, object]:
    with virtiofsd(tmp_path, share) as daemon:
        lb = LoopbackBus(BusParams(timeout_ms=5000), size=4 * MiB)  # the built-in drivers
        try:
            lb, backend, _channel = loopback_pair(lb)
            spec = VhostSpec(str(daemon.socket), tag="share1")
            (result,) = run_vhost_devices(lb, backend, [(0, spec)])
        finally:
            lb.close()
    return result


def test_run_judges_virtiofsd_by_init_getattr_and_lookup(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir(mode=0o750)
    result = _in_process_run(tmp_path, share)
    assert result["ok"], result
    assert result["type"] == "vhost-user-fs"
    facts = result["result"]
    assert isinstance(facts, dict)
    assert facts["tag"] == "share1" and str(facts["fuse"]).startswith("7.")
    assert facts["root"] == "dir 0750"  # the shared directory's own mode, through FUSE
    assert facts["lookup"] == "ENOENT"


def test_lookup_finds_a_file_in_the_share(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / PROBE_NAME).write_bytes(b"x" * 20)
    result = _in_process_run(tmp_path, share)
    assert result["ok"], result
    facts = result["result"]
    assert isinstance(facts, dict)
    assert str(facts["lookup"]).startswith("file (node ")


def test_virtio_msg_run_with_virtiofsd_reports_the_fs_device_ok(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    with virtiofsd(tmp_path, share) as daemon:
        proc = subprocess.run(
            [sys.executable, "-m", "virtio_msg", "run", "--json",
             "--vhost-user", f"socket={daemon.socket}"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    devices = json.loads(proc.stdout)["buses"][0]["devices"]
    fs = [d for d in devices if d["type"] == "vhost-user-fs"]
    assert len(fs) == 1 and fs[0]["ok"] and fs[0]["result"]["lookup"] == "ENOENT"
