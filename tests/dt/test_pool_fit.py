"""Whether a pool fits a run's devices is a property of the run, not of the tree.

``dt check`` and the loader accept a pool too small for the devices
``virtio-msg run`` would create, with a warning; ``run --dt`` refuses such a
run with a clear error; ``bus --dt`` creates no devices and serves it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from dt_helpers import CompileDtb, WriteDts, dtb_compiler, dts_writer, need_dtschema

from virtio_msg.compose import from_tree
from virtio_msg.dt import check_tree, load_tree, min_pool_size
from virtio_msg.errors import ConfigError

MiB = 1 << 20


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


@pytest.fixture
def compile_dtb() -> CompileDtb:
    """Compile a DTS into a DTB beside it (skips without dtc)."""
    return dtb_compiler()


def pool_node(label: str, addr: int, size: int) -> str:
    """A restricted-dma-pool child of /reserved-memory at ``addr`` of ``size`` bytes."""
    return (
        f'{label}: pool@{addr:x} {{\ncompatible = "restricted-dma-pool";\n'
        f"reg = <{addr >> 32:#x} {addr & 0xFFFFFFFF:#x} 0x0 {size:#x}>;\n}};"
    )


def reserved(*children: str) -> str:
    """/reserved-memory with 2-cell addresses and sizes."""
    return (
        "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
        + "\n".join(children)
        + "\n};"
    )


def loop(name: str, target: str, extra: str = "") -> str:
    """A virtio,msg-loopback node whose memory-region is ``<&target>``."""
    return (
        f'{name} {{\ncompatible = "virtio,msg-loopback";\nmemory-region = <&{target}>;\n'
        f"{extra}\n}};"
    )


SMALL = reserved(pool_node("small", 0x1_0000_0000, 1 * MiB)) + loop("lb", "small")
"""A 1 MiB pool and a node without virtio,devices (run would create four devices)."""

ADJACENT = reserved(
    pool_node("first", 0x1_0000_0000, 1 * MiB),
    pool_node("second", 0x1_0010_0000, 4 * MiB),
) + (
    # document order: lb0 refers to the second pool, lb1 to the first
    loop("lb0", "second") + loop("lb1", "first")
)
"""Two instances whose pools touch (1 MiB then 4 MiB), references crossed."""


def test_small_pool_is_valid_with_a_warning(write_dts: WriteDts, compile_dtb: CompileDtb) -> None:
    dts = write_dts(SMALL, "small.dts")
    for path in (dts, compile_dtb(dts)):
        report = check_tree(path, schema=False)
        assert report.ok, report.problems
        (warning,) = report.warnings
        assert warning.node == "/reserved-memory/pool@100000000"
        assert "too small for the 4 device(s) `virtio-msg run` would create for /lb" in (
            warning.message
        )
        assert f"{min_pool_size(4):#x}" in warning.message


def test_dt_check_exits_0_and_prints_the_warning(write_dts: WriteDts) -> None:
    dts = write_dts(SMALL, "small.dts")
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "dt", "check", "--no-schema", str(dts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: /reserved-memory/pool@100000000: reg: pool is 0x100000 bytes" in proc.stdout
    assert "bus 0: /lb: pool /reserved-memory/pool@100000000" in proc.stdout


def test_loader_accepts_it_and_run_refuses_its_devices(
    write_dts: WriteDts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        (config,) = load_tree(write_dts(SMALL, "small.dts"))
    assert config.size == 1 * MiB
    assert "too small for the 4 device(s)" in caplog.text
    with pytest.raises(ConfigError, match=r"/lb: its pool .* is too small for the 4 device\(s\)"):
        from_tree(config)


def test_run_fits_when_the_tree_lists_fewer_devices(write_dts: WriteDts) -> None:
    tree = reserved(pool_node("small", 0x1_0000_0000, 1 * MiB)) + loop(
        "lb", "small", 'virtio,devices = "rng";'
    )
    (config,) = load_tree(write_dts(tree, "one.dts"))
    assert from_tree(config).devices == ((0, "rng"),)


def test_run_dt_with_a_pool_too_small_is_a_clear_error(write_dts: WriteDts) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "run", "--dt", str(write_dts(SMALL, "s.dts"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    expected = "error: /lb: its pool (/reserved-memory/pool@100000000, 0x100000 bytes) is too"
    assert expected in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_adjacent_pools_with_crossed_references_validate(
    write_dts: WriteDts, compile_dtb: CompileDtb
) -> None:
    dts = write_dts(ADJACENT, "adjacent.dts")
    reports = [check_tree(dts, schema=False), check_tree(compile_dtb(dts), schema=False)]
    for report in reports:
        assert report.ok, report.problems
        assert [(c.node_path, c.base, c.size) for c in report.configs] == [
            ("/lb0", 0x1_0010_0000, 4 * MiB),
            ("/lb1", 0x1_0000_0000, 1 * MiB),
        ]
        # the 1 MiB pool is too small for run's four default devices: a warning only
        assert [w.node for w in report.warnings] == ["/reserved-memory/pool@100000000"]
    assert reports[0].problems == reports[1].problems


def test_adjacent_pools_validate_against_the_schema(
    write_dts: WriteDts, compile_dtb: CompileDtb
) -> None:
    need_dtschema()
    dts = write_dts(ADJACENT, "adjacent.dts")
    for path in (dts, compile_dtb(dts)):
        report = check_tree(path)
        assert report.ok, report.problems
        assert report.schema_checked
        assert not [p for p in report.problems if p.source == "schema"]


def test_json_report_marks_the_fit_as_a_warning(write_dts: WriteDts) -> None:
    report = check_tree(write_dts(SMALL, "small.dts"), schema=False)
    data = json.loads(json.dumps(report.to_json()))
    assert (data["valid"], data["errors"], data["warnings"]) == (True, 0, 1)
    assert [p["severity"] for p in data["problems"]] == ["warning"]
