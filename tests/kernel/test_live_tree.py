"""The loopback region from a live device tree (/sys/firmware/devicetree/base layout)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from virtio_msg.dt.live import kernel_region, read_live_tree
from virtio_msg.errors import ConfigError


def _cells(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _node(path: Path, props: dict[str, bytes] | None = None) -> Path:
    """One node directory, with the ``name`` property Linux adds."""
    path.mkdir(parents=True)
    (path / "name").write_bytes(path.name.split("@")[0].encode() + b"\0")
    for key, value in (props or {}).items():
        (path / key).write_bytes(value)
    return path


def _reserved(root: Path, name: str, base: int, size: int, phandle: int | None = None) -> None:
    rm = root / "reserved-memory"
    if not rm.exists():
        _node(rm, {"#address-cells": _cells(2), "#size-cells": _cells(2), "ranges": b""})
    props = {
        "compatible": b"restricted-dma-pool\0",
        "reg": _cells(base >> 32, base & 0xFFFFFFFF, size >> 32, size & 0xFFFFFFFF),
    }
    if phandle is not None:
        props["phandle"] = _cells(phandle)
    _node(rm / f"{name}@{base:x}", props)


def test_seed_kernel_tree_finds_the_legacy_vmsglb_pool(tmp_path: Path) -> None:
    _reserved(tmp_path, "vmsglb", 0x1_0000_0000, 0x40_0000)
    region = kernel_region(tmp_path)
    assert (region.base, region.size, region.legacy) == (0x1_0000_0000, 0x40_0000, True)
    assert region.node == "/reserved-memory/vmsglb@100000000"


def test_binding_node_and_its_memory_region_win(tmp_path: Path) -> None:
    _reserved(tmp_path, "vmsglb", 0x1_0000_0000, 0x40_0000)
    _reserved(tmp_path, "pool", 0x8000_0000, 0x80_0000, phandle=7)
    _node(
        tmp_path / "virtio-msg-loopback",
        {"compatible": b"virtio,msg-loopback\0", "memory-region": _cells(7)},
    )
    region = kernel_region(tmp_path)
    assert (region.base, region.size, region.legacy) == (0x8000_0000, 0x80_0000, False)


def test_no_region_is_a_clear_error(tmp_path: Path) -> None:
    _node(tmp_path / "chosen")
    with pytest.raises(ConfigError, match=r"vmsglb.*--base and --size"):
        kernel_region(tmp_path)


def test_missing_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no live device tree"):
        kernel_region(tmp_path / "absent")


def test_live_tree_drops_the_name_property_and_indexes_phandles(tmp_path: Path) -> None:
    _reserved(tmp_path, "pool", 0x8000_0000, 0x10_0000, phandle=3)
    tree = read_live_tree(tmp_path)
    node = tree.by_phandle(3)
    assert node is not None and node.name == "pool@80000000"
    assert "name" not in node.props
