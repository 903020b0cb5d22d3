"""Reading files: DTS via dtc, DTB via fdt; hostile or broken input never crashes."""

from __future__ import annotations

import contextlib
import struct
import subprocess
from pathlib import Path

import fdt  # type: ignore[import-untyped]
import pytest
from dt_helpers import WriteDts, dts_writer, need_dtc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtio_msg.dt import DeviceTreeError, default_tree_path, load_tree
from virtio_msg.dt.loader import analyze
from virtio_msg.dt.tree import (
    MAX_TREE_BYTES,
    parse_dtb,
    parse_fdt,
    prop_strings,
    prop_u32s,
    read_tree,
)


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


DEFAULT_DTB = default_tree_path().read_bytes()


def read_errors(path: Path) -> str:
    with pytest.raises(DeviceTreeError) as info:
        load_tree(path)
    return str(info.value)


def test_tree_indexes_paths_phandles_and_labels() -> None:
    tree = parse_dtb(DEFAULT_DTB, source="default.dtb")
    assert list(tree.nodes)[:3] == ["/", "/reserved-memory", "/reserved-memory/dma-pool@100000000"]
    pool = tree.node("/reserved-memory/dma-pool@100000000")
    assert pool is not None
    assert pool.base_name == "dma-pool"
    assert pool.compatibles() == ["restricted-dma-pool"]
    assert tree.by_phandle(prop_u32s(pool.props["phandle"])[0]) == pool
    assert tree.label_of(pool.path) == "vmsg_pool"  # from /__symbols__ (dtc -@)


def test_property_decoders_reject_wrong_shapes() -> None:
    assert prop_u32s(b"\x00\x00\x01\x08") == [264]
    assert prop_strings(b"rng\0blk\0") == ["rng", "blk"]
    for raw in (b"", b"\x00\x01", b"\x00\x00\x00\x01\x02"):
        with pytest.raises(ValueError, match="32-bit cells"):
            prop_u32s(raw)
    for raw in (b"", b"abc", b"a\0\0b\0", b"\xff\0", b"a\nb\0"):
        with pytest.raises(ValueError, match="string"):
            prop_strings(raw)


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read the file" in read_errors(tmp_path / "absent.dtb")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read the file" in read_errors(tmp_path)


def test_oversized_file(tmp_path: Path) -> None:
    big = tmp_path / "big.dtb"
    with big.open("wb") as f:
        f.truncate(MAX_TREE_BYTES + 1)
    assert f"larger than the {MAX_TREE_BYTES} accepted" in read_errors(big)


def test_dtb_extension_without_magic(tmp_path: Path) -> None:
    bad = tmp_path / "text.dtb"
    bad.write_text("/dts-v1/; / { };")
    assert "the DTB magic 0xd00dfeed is missing" in read_errors(bad)


@pytest.mark.parametrize("cut", [4, 40, 100, len(DEFAULT_DTB) // 2, len(DEFAULT_DTB) - 8])
def test_truncated_dtb(tmp_path: Path, cut: int) -> None:
    bad = tmp_path / "cut.dtb"
    bad.write_bytes(DEFAULT_DTB[:cut])
    assert "malformed DTB" in read_errors(bad)


def test_dts_syntax_error_is_reported_with_its_location(write_dts: WriteDts) -> None:
    message = read_errors(write_dts("node { prop = <1> }; broken", "syntax.dts"))
    assert "syntax.dts" in message
    assert "syntax error" in message


def test_dts_reference_to_missing_label(write_dts: WriteDts) -> None:
    message = read_errors(
        write_dts(
            'lb { compatible = "virtio,msg-loopback"; memory-region = <&nowhere>; };', "ref.dts"
        )
    )
    assert 'Reference to non-existent node or label "nowhere"' in message


def test_dts_without_dtc_says_what_to_install(
    write_dts: WriteDts, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_dts("", "plain.dts")
    monkeypatch.setattr("virtio_msg.dt.tree.shutil.which", lambda _name: None)
    message = read_errors(path)
    assert "needs the device tree compiler 'dtc'" in message
    assert "apt-get install device-tree-compiler" in message


def test_overlays_are_refused_with_the_fix(tmp_path: Path) -> None:
    need_dtc()
    overlay = tmp_path / "overlay.dts"
    overlay.write_text(
        '/dts-v1/;\n/plugin/;\n&{/} {\n\tlb {\n\t\tcompatible = "virtio,msg-loopback";\n'
        "\t\tmemory-region = <&pool>;\n\t};\n};\n",
        encoding="utf-8",
    )
    message = read_errors(overlay)
    assert "error: /__fixups__: this is a device tree overlay" in message
    assert "fdtoverlay" in message


@pytest.mark.parametrize("suffix", ["dts", "dtb"])
def test_path_reference_overlays_are_refused_as_overlays_too(tmp_path: Path, suffix: str) -> None:
    # No label references, so dtc writes no /__fixups__: only the fragment shows it.
    need_dtc()
    overlay = tmp_path / "overlay.dts"
    overlay.write_text(
        '/dts-v1/;\n/plugin/;\n&{/} {\n\tlb {\n\t\tcompatible = "virtio,msg-loopback";\n'
        "\t};\n};\n",
        encoding="utf-8",
    )
    if suffix == "dtb":
        compiled = tmp_path / "overlay.dtbo"
        subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(compiled), str(overlay)],
                       check=True, capture_output=True, timeout=60)
        overlay = compiled
    message = read_errors(overlay)
    assert "error: /fragment@0/__overlay__: this is a device tree overlay" in message
    assert "fdtoverlay -i base.dtb" in message
    assert "no enabled" not in message


def test_dtc_warnings_are_kept_as_warnings(write_dts: WriteDts) -> None:
    tree = read_tree(write_dts("thing@1 { };", "warn.dts"))
    assert [(w.node, w.severity) for w in tree.warnings] == [("/thing@1", "warning")]
    assert "unit_address_vs_reg" in tree.warnings[0].message


def test_duplicate_phandles_are_refused(tmp_path: Path) -> None:
    # dtc refuses this itself, so the DTB is built with the fdt package.
    text = (
        "/dts-v1/;\n/ {\n    a {\n        phandle = <7>;\n    };\n"
        "    b {\n        phandle = <7>;\n    };\n};\n"
    )
    blob = fdt.parse_dts(text)
    path = tmp_path / "dup.dtb"
    path.write_bytes(blob.to_dtb(version=17))
    message = read_errors(path)
    assert "error: /b: phandle: phandle 0x7 is also used by /a" in message


def test_deep_nesting_does_not_recurse(write_dts: WriteDts) -> None:
    depth = 3000  # deeper than Python's default recursion limit
    body = "n {" * depth + "};" * depth
    tree = read_tree(write_dts(body, "deep.dts"))
    assert len(tree.nodes) == depth + 1  # the root and the chain
    assert any(path.count("/") == depth for path in tree.nodes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(DEFAULT_DTB) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.integers(8, len(DEFAULT_DTB)),
)
def test_mutated_dtb_never_crashes(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(DEFAULT_DTB)
    for offset, value in edits:
        data[offset] = value
    try:
        tree = parse_dtb(bytes(data[:cut]), source="fuzz.dtb")
    except DeviceTreeError as exc:
        assert exc.problems and all(p.node for p in exc.problems)
        return
    configs, problems = analyze(tree)
    assert all(p.node.startswith("/") for p in problems)
    if not any(p.is_error for p in problems):
        assert configs


def _rsvmap_at_struct(dtb: bytes) -> bytes:
    """``dtb`` with its header's reservation-map offset pointing at the structure block."""
    off_struct = struct.unpack_from(">I", dtb, 8)[0]
    return dtb[:16] + struct.pack(">I", off_struct) + dtb[20:]


def test_a_malformed_blob_leaves_no_memreserve_in_later_trees() -> None:
    # fdt 0.3.3 shares one memreserve list between all trees; a blob whose
    # reservation map is really its structure block filled it with garbage.
    bad = _rsvmap_at_struct(DEFAULT_DTB)
    with contextlib.suppress(Exception):
        fdt.parse_dtb(bad)  # the library itself, as any other caller may use it
    with pytest.raises(Exception):  # noqa: B017 - fdt raises bare Exception
        parse_fdt(bad[:64])
    off = struct.unpack_from(">I", DEFAULT_DTB, 16)[0]
    assert struct.unpack_from(">QQ", DEFAULT_DTB, off) == (0, 0)
    assert parse_fdt(DEFAULT_DTB).entries == []
    # A blob with a reservation keeps exactly that one, and the next tree none.
    tree = fdt.FDT(entries=[{"address": 0x4800_0000, "size": 0x1000}])
    tree.root = parse_fdt(DEFAULT_DTB).root
    reserved = parse_fdt(tree.to_dtb(version=17))
    assert reserved.entries == [{"address": 0x4800_0000, "size": 0x1000}]
    assert parse_fdt(DEFAULT_DTB).entries == []
