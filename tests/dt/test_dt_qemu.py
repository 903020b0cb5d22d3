"""QEMU's real ``virt`` machine tree, merged with a pool and a loopback node.

Two sources: ``fixtures/qemu-virt-7.2.dts``, decompiled from the DTB that QEMU
7.2 (Debian qemu-system-arm) dumps, always available; and a live dump made by
``qemu-system-aarch64 -machine virt -machine dumpdtb=...`` when QEMU is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from virtio_msg.dt import DeviceTreeError, check_tree, load_tree

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "qemu-virt-7.2.dts"
MiB = 1024 * 1024

# QEMU's virt RAM starts at 0x40000000 (128 MiB by default); carve two pools from it.
ADDITIONS = """
/ {
	reserved-memory {
		#address-cells = <2>;
		#size-cells = <2>;
		ranges;

		lb_pool_a: carveout@44000000 {
			compatible = "restricted-dma-pool";
			reg = <0x0 0x44000000 0x0 0x00400000>;
		};

		lb_pool_b: carveout@44400000 {
			compatible = "restricted-dma-pool";
			reg = <0x0 0x44400000 0x0 0x00200000>;
		};
	};

	msgbus-a {
		compatible = "virtio,msg-loopback";
		memory-region = <&lb_pool_a>;
	};

	msgbus-b {
		compatible = "virtio,msg-loopback";
		memory-region = <&lb_pool_b>;
		virtio,msg-profile = "linux-rfc1";
		virtio,devices = "rng", "console";
		virtio,device-numbers = <0 1>;
	};
};
"""


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package {package})")
    return path


def merged_source(tmp_path: Path, base_dts: Path) -> Path:
    """A DTS that includes QEMU's tree and adds the pools and loopback nodes."""
    merged = tmp_path / "virt-with-loopback.dts"
    merged.write_text(f'/include/ "{base_dts}"\n{ADDITIONS}', encoding="utf-8")
    return merged


def assert_two_buses(path: Path) -> None:
    a, b = load_tree(path)
    assert (a.node_path, a.pool_path) == ("/msgbus-a", "/reserved-memory/carveout@44000000")
    assert (a.base, a.size) == (0x4400_0000, 4 * MiB)
    assert (b.node_path, b.base, b.size) == ("/msgbus-b", 0x4440_0000, 2 * MiB)
    assert b.profile == "linux-rfc1"
    assert [d.type for d in b.devices] == ["rng", "console"]


def test_fixture_tree_merged_as_dts(tmp_path: Path) -> None:
    need("dtc", "device-tree-compiler")
    assert_two_buses(merged_source(tmp_path, FIXTURE))


def test_fixture_tree_merged_as_dtb(tmp_path: Path) -> None:
    dtc = need("dtc", "device-tree-compiler")
    dts = merged_source(tmp_path, FIXTURE)
    dtb = tmp_path / "virt-with-loopback.dtb"
    subprocess.run([dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(dts)], check=True)
    assert_two_buses(dtb)


def test_fixture_tree_merged_passes_check(tmp_path: Path) -> None:
    need("dtc", "device-tree-compiler")
    pytest.importorskip("dtschema")
    report = check_tree(merged_source(tmp_path, FIXTURE))
    assert report.ok, report.errors
    assert report.schema_checked
    assert len(report.summaries) == 2
    # QEMU's own tree draws dtc warnings (raw clock phandles); they stay warnings.
    assert all(p.source == "read" for p in report.warnings)


def test_fixture_tree_alone_has_no_loopback(tmp_path: Path) -> None:
    need("dtc", "device-tree-compiler")
    with pytest.raises(DeviceTreeError, match="no enabled virtio,msg-loopback node"):
        load_tree(FIXTURE)


@pytest.fixture
def live_virt_dtb(tmp_path: Path) -> Path:
    """QEMU's virt DTB, dumped now by qemu-system-aarch64."""
    qemu = need("qemu-system-aarch64", "qemu-system-arm")
    out = tmp_path / "virt.dtb"
    subprocess.run(
        [
            qemu,
            "-machine",
            "virt",
            "-machine",
            f"dumpdtb={out}",
            "-cpu",
            "cortex-a57",
            "-nographic",
            "-nodefaults",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def test_live_qemu_dtb_is_read_as_is(live_virt_dtb: Path) -> None:
    # The unmodified, 1 MiB padded DTB parses; it just has no loopback node yet.
    assert live_virt_dtb.stat().st_size == MiB
    with pytest.raises(DeviceTreeError, match="no enabled virtio,msg-loopback node"):
        load_tree(live_virt_dtb)


def test_live_qemu_dtb_merged(live_virt_dtb: Path, tmp_path: Path) -> None:
    dtc = need("dtc", "device-tree-compiler")
    base = tmp_path / "virt.dts"
    subprocess.run(
        [dtc, "-q", "-I", "dtb", "-O", "dts", "-o", str(base), str(live_virt_dtb)], check=True
    )
    merged = merged_source(tmp_path, base)
    assert_two_buses(merged)
    if _has_dtschema():
        assert check_tree(merged).ok


def test_live_qemu_dtb_extended_in_binary_form(live_virt_dtb: Path, tmp_path: Path) -> None:
    # Keep QEMU's own blob (its phandles, its layout) and add nodes with the fdt
    # package, as a tool that patches a firmware-provided DTB would.
    import fdt  # type: ignore[import-untyped]

    blob = fdt.parse_dtb(live_virt_dtb.read_bytes())
    additions = fdt.parse_dts(
        "/dts-v1/;\n/ {\n"
        "    reserved-memory {\n"
        "        #address-cells = <0x2>;\n        #size-cells = <0x2>;\n        ranges;\n"
        "        pool@48000000 {\n"
        '            compatible = "restricted-dma-pool";\n'
        "            reg = <0x0 0x48000000 0x0 0x400000>;\n"
        "            phandle = <0x7000>;\n"
        "        };\n"
        "    };\n"
        "    loopback {\n"
        '        compatible = "virtio,msg-loopback";\n'
        "        memory-region = <0x7000>;\n"
        "    };\n"
        "};\n"
    )
    blob.merge(additions)
    patched = tmp_path / "patched.dtb"
    patched.write_bytes(blob.to_dtb(version=17))
    (config,) = load_tree(patched)
    assert (config.node_path, config.base, config.size) == ("/loopback", 0x4800_0000, 4 * MiB)


def _has_dtschema() -> bool:
    import importlib.util

    return importlib.util.find_spec("dtschema") is not None
