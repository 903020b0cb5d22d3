"""The main job: ``virtio-msg run`` on the embedded default and on a user tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_msg.compose import RunConfig, run_loopback, run_one
from virtio_msg.transport import BusParams


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_msg", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_run_json_reports_every_builtin_device_ok(profile: str) -> None:
    proc = run_cli("--json", "--profile", profile)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    devices = {(d["dev_num"], d["type"]): d for d in report["devices"]}
    assert set(devices) == {(0, "rng"), (1, "blk"), (2, "console"), (3, "i2c")}
    assert all(d["ok"] for d in devices.values())
    assert "VERSION_1" in devices[(0, "rng")]["features"]
    assert "ACCESS_PLATFORM" in devices[(1, "blk")]["features"]
    rtc = devices[(3, "i2c")]["result"]
    assert rtc["set"] == rtc["read"]  # the clock read back what was set
    assert report["messages"]["GET_DEVICE_INFO"] == 4
    assert report["messages"]["GET_DEVICE_INFO resp"] == 4
    assert report["pool"]["slots_total"] == 2048  # 4 MiB of 2 KiB slots
    bus = report["buses"][0]
    assert bus["profile"] == profile
    assert bus["region"] == {"base": 0x1_0000_0000, "size": 4 << 20}
    assert bus["latency_us"]["requests"] > 0


def test_run_human_summary() -> None:
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr
    for word in ("rng", "blk", "console", "i2c", "GET_DEVICE_INFO", "p50", "all devices ok"):
        assert word in proc.stdout


def test_run_from_a_user_tree_with_two_buses(tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "docs" / "examples" / "two-buses.dts"
    proc = run_cli("--json", "--dt", str(examples))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [b["profile"] for b in report["buses"]] == ["spec", "linux-rfc1"]
    assert [d["dev_num"] for d in report["buses"][1]["devices"]] == [10, 11]
    assert report["buses"][1]["region"]["base"] == 0x1_0040_0000


def test_run_refuses_a_missing_tree(tmp_path: Path) -> None:
    proc = run_cli("--dt", str(tmp_path / "nope.dtb"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert "nope.dtb" in proc.stderr


def test_failed_device_makes_the_run_fail() -> None:
    report = run_loopback([RunConfig(devices=((0, "rng"), (1, "bogus")))])
    assert report["ok"] is False
    bad = report["devices"][1]
    assert bad["ok"] is False and "unknown device type 'bogus'" in bad["error"]
    assert report["devices"][0]["ok"] is True


def test_run_with_the_smallest_message_size_chunks_config() -> None:
    report = run_one(RunConfig(params=BusParams("spec", 52), devices=((1, "blk"),)))
    assert report["devices"][0]["ok"] is True
    # blk's 60-byte config cannot come in one 52-byte message: several GET_CONFIGs.
    assert report["messages"]["GET_CONFIG"] >= 2


@pytest.mark.parametrize("ring", ["split", "packed"])
@pytest.mark.parametrize("socket", [False, True], ids=["in-process", "socket"])
def test_run_with_a_forced_ring_kind_reports_every_device_ok(ring: str, socket: bool) -> None:
    proc = run_cli("--json", "--ring", ring, *(["--socket"] if socket else []))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and len(report["devices"]) == 4
    for device in report["devices"]:
        assert device["ok"], device
        assert ("RING_PACKED" in device["features"]) == (ring == "packed")
        assert "IN_ORDER" in device["features"]
        assert "NOTIFICATION_DATA" in device["features"]
