"""The guest harness's device tree, initramfs and console parsing (no boot)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fdt  # type: ignore[import-untyped]
import pytest

from virtio_msg.dt.loader import analyze
from virtio_msg.dt.tree import read_tree
from virtio_msg.guest import GuestSetupError
from virtio_msg.guest.boot import (
    Check,
    GuestReport,
    parse_bench,
    parse_conformance,
    parse_console,
    parse_devices,
)
from virtio_msg.guest.dtb import MachineOptions, add_loopback, build_guest_dtb
from virtio_msg.guest.inguest_conformance import summarize
from virtio_msg.guest.initramfs import (
    ARM64_PACKAGES,
    PYTHON_DEPS,
    build_initramfs,
    cache_dir,
    copy_python_packages,
    find_debs,
    stage,
    write_cpio,
)

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None,
    reason="qemu-system-aarch64 missing (scripts/install-test-deps.sh installs qemu-system-arm)",
)


@needs_qemu
def test_guest_dtb_is_qemu_virt_plus_vmsglb_pool_and_binding_node(tmp_path: Path) -> None:
    machine = MachineOptions()
    dtb = build_guest_dtb(machine)
    path = tmp_path / "guest.dtb"
    path.write_bytes(dtb)
    configs, problems = analyze(read_tree(path))
    assert not [p for p in problems if p.is_error]
    assert len(configs) == 1
    config = configs[0]
    assert config.profile == "linux-rfc1"
    base = machine.pool_base()
    assert (config.base, config.size) == (base, 4 << 20)
    assert config.pool_path == f"/reserved-memory/vmsglb@{base:x}" and not config.legacy
    tree = fdt.parse_dtb(dtb)
    pool = tree.get_node(f"/reserved-memory/vmsglb@{base:x}")
    assert pool.get_property("compatible").value == "restricted-dma-pool"
    # QEMU's own nodes are kept, and the pool lies inside the guest's RAM.
    mem = tree.get_node("/memory@40000000").get_property("reg").data
    ram_base, ram_size = (mem[0] << 32) | mem[1], (mem[2] << 32) | mem[3]
    assert ram_base <= base and base + (4 << 20) <= ram_base + ram_size
    assert tree.exist_node("/pl011@9000000")
    # two vCPUs: the seed's kick sleeps in atomic context (defect 9), one CPU deadlocks
    cpus = [n for n in tree.get_node("/cpus").nodes if n.name.startswith("cpu@")]
    assert len(cpus) == machine.cpus == 2
    assert "-smp" in machine.args() and machine.args()[machine.args().index("-smp") + 1] == "2"


def test_add_loopback_refuses_an_unaligned_pool() -> None:
    empty = fdt.FDT()
    with pytest.raises(GuestSetupError, match="page aligned"):
        add_loopback(empty.to_dtb(version=17), 0x4000_0800)


def test_guest_tree_has_no_memreserve_left_by_an_earlier_malformed_blob() -> None:
    base = fdt.FDT(entries=[]).to_dtb(version=17)
    bad = bytearray(base)
    bad[16:20] = bad[8:12]  # reservation map offset -> the structure block
    with contextlib.suppress(Exception):
        fdt.parse_dtb(bytes(bad))  # leaves garbage in fdt's shared memreserve list
    out = add_loopback(base, 0x1_0000_0000)
    rsvmap = int.from_bytes(out[16:20], "big")
    assert out[rsvmap : rsvmap + 16] == bytes(16)  # no /memreserve/: all of RAM stays usable


def test_pool_base_needs_enough_guest_ram() -> None:
    assert MachineOptions(memory_mib=4096).pool_base() == 0x1_0000_0000
    with pytest.raises(GuestSetupError, match="below the pool"):
        MachineOptions(memory_mib=1024).pool_base()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing (install-test-deps.sh)")
def test_newc_cpio_round_trips_through_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"hello" * 3)
    (root / "x").write_bytes(b"")
    (root / "x").chmod(0o755)
    (root / "link").symlink_to("d/f.txt")
    archive = tmp_path / "a.cpio.gz"
    assert write_cpio(root, archive) == 6
    out = tmp_path / "out"
    out.mkdir()
    data = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=out, check=True)
    assert (out / "d" / "f.txt").read_bytes() == b"hello" * 3
    assert (out / "x").stat().st_mode & 0o777 == 0o755
    assert (out / "link").is_symlink() and str((out / "link").readlink()) == "d/f.txt"
    assert (out / "d" / "e").is_dir()


def test_missing_arm64_packages_are_named(tmp_path: Path) -> None:
    (tmp_path / "libc6_2.36_arm64.deb").write_bytes(b"")
    with pytest.raises(GuestSetupError, match=r"busybox-static.*install-test-deps"):
        find_debs(tmp_path)


@pytest.mark.skipif(
    not all(any(cache_dir().glob(f"{p}_*_arm64.deb")) for p in ARM64_PACKAGES),
    reason="arm64 packages not downloaded (scripts/install-test-deps.sh)",
)
@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing (install-test-deps.sh)")
def test_initramfs_holds_busybox_python_the_project_and_init(tmp_path: Path) -> None:
    archive = tmp_path / "initramfs.cpio.gz"
    build_initramfs(archive, ["rng", "i2c"])
    data = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    names = set(
        subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True)
        .stdout.decode()
        .split()
    )
    site = "usr/lib/python3/dist-packages"
    for name in (
        "init",
        "bin/busybox",
        "usr/bin/python3.11",
        "lib/ld-linux-aarch64.so.1",
        f"{site}/virtio_msg/guest/inguest.py",
        f"{site}/fdt/__init__.py",
        f"{site}/rich/__init__.py",
    ):
        assert name in names, name
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "init"], input=data, cwd=out, check=True)
    init = (out / "init").read_text()
    assert init.startswith("#!/bin/busybox sh")
    assert "-m virtio_msg.guest.inguest rng,i2c" in init


def test_console_verdicts_survive_interleaved_kernel_messages() -> None:
    text = (
        "[    1.0] Run /init as init process\nVMSG-BOOT 6.12.0\n"
        'VMSG-CHECK {"name": "boot", "ok": true, "detail": "init"}\n'
        "[    2.0] virtio_msg_lb: probe\r\n"
        'VMSG-CHECK {"name": "rng", "ok": false, "detail": "x"}\r\n'
        'VMSG-CHECK {not json}\nVMSG-CHECK {"name": 1}\nVMSG-END\n'
    )
    checks = parse_console(text)
    assert checks == [Check("boot", True, "init"), Check("rng", False, "x")]
    report = GuestReport("Image", checks)
    assert not report.ok
    assert report.to_json()["checks"] == [c.to_json() for c in checks]
    assert not GuestReport("Image", []).ok


def test_device_lists_are_validated() -> None:
    assert parse_devices("rng, blk") == ["rng", "blk"]
    with pytest.raises(ValueError, match="unknown device 'net'"):
        parse_devices("rng,net")
    with pytest.raises(ValueError, match="repeats"):
        parse_devices("rng,rng")


def test_guest_packages_cover_the_runtime_dependencies() -> None:
    """Every runtime dependency of the project is copied into the guest (dpkt was once missed)."""
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement

    dists = {
        Requirement(r).name.lower().replace("_", "-")
        for r in requires("virtio-msg") or []
        if "extra ==" not in r
    }
    copied = {
        d.lower().replace("_", "-")
        for name in PYTHON_DEPS
        for d in packages_distributions().get(name, [])
    }
    assert dists <= copied, f"not copied into the guest: {sorted(dists - copied)}"


def test_guest_entry_points_import_with_only_the_copied_packages(tmp_path: Path) -> None:
    """The in-guest program and ``backend --kernel`` import with no site-packages but the copy."""
    copy_python_packages(tmp_path)
    code = (
        "import sys; assert not any('site-packages' in p for p in sys.path), sys.path\n"
        "import virtio_msg.guest.inguest, virtio_msg.cli, virtio_msg.cli.backend\n"
        "import virtio_msg.bus.kernel\n"
        "from virtio_msg.cli import main\n"
        "sys.exit(main(['backend', '--help']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--kernel" in proc.stdout


def test_bench_timings_are_parsed_and_reported_only_when_present() -> None:
    text = (
        'VMSG-CHECK {"name": "rng", "ok": true, "detail": "x"}\n'
        'VMSG-BENCH {"rng": "virtio_rng.1", "via": "loopback", "reads_per_s": 120.5,'
        ' "bytes_per_s": 7712.0}\r\n'
        "VMSG-BENCH {broken\n"
        'VMSG-BENCH {"rng": "virtio_rng.0"}\n'  # incomplete: skipped
        'VMSG-BENCH {"rng": "virtio_rng.0", "via": "virtio-mmio", "reads_per_s": 900,'
        ' "bytes_per_s": 1e6}\n'
    )
    bench = parse_bench(text)
    assert [(b["rng"], b["via"]) for b in bench] == [
        ("virtio_rng.1", "loopback"),
        ("virtio_rng.0", "virtio-mmio"),
    ]
    report = GuestReport("Image", parse_console(text), bench=bench)
    assert report.to_json()["bench"] == bench
    assert "bench" not in GuestReport("Image", parse_console(text)).to_json()


def test_init_passes_the_watchdog_budget_and_the_bench_time(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stage(root, [], ["rng"], budget=123, bench=2.5)
    assert "-m virtio_msg.guest.inguest rng 123 --bench 2.5\n" in (root / "init").read_text()
    other = tmp_path / "other"
    stage(other, [], ["rng", "blk"], budget=50)
    init = (other / "init").read_text()
    assert "-m virtio_msg.guest.inguest rng,blk 50\n" in init


def test_conformance_report_is_parsed_and_summed_up_as_a_check() -> None:
    results: list[dict[str, Any]] = [
        {"scenario": "status-sequence", "ids": ["DRV-01"], "target": "rng", "outcome": "pass"},
        {"scenario": "token-echo", "ids": ["DRV-54"], "target": "blk", "outcome": "fail"},
    ]
    report: dict[str, Any] = {
        "suite": "driver",
        "profile": "linux-rfc1",
        "ok": False,
        "counts": {"pass": 40, "fail": 1, "lenient": 2, "skip": 3},
        "results": results,
    }
    text = f"noise\nVMSG-CONFORMANCE {json.dumps(report)}\r\nVMSG-CONFORMANCE {{cut\n"
    assert parse_conformance(text) == report
    assert parse_conformance("VMSG-CONFORMANCE {}\n") is None  # no results: not a report
    ok, detail = summarize(report)
    assert not ok
    assert detail.startswith("driver conformance (linux-rfc1): 40 passed, 1 failed, 2 lenient")
    assert "failed: token-echo [DRV-54] (blk)" in detail
    assert summarize({**report, "ok": True, "results": results[:1]})[0]
    assert GuestReport("Image", [], conformance=report).to_json()["conformance"] == report


def test_init_asks_for_the_conformance_run(tmp_path: Path) -> None:
    stage(tmp_path, [], ["rng", "i2c"], budget=90, conformance=True)
    init = (tmp_path / "init").read_text()
    assert "-m virtio_msg.guest.inguest rng,i2c 90 --conformance\n" in init
