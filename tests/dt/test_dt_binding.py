"""The dt-schema binding: dtschema accepts it, its copies agree, the code matches it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dt_helpers import WriteDts, dts_writer
from dt_helpers import need_dtschema as require_dtschema

from virtio_msg.dt import DeviceSpec, check_tree, default_tree_path, load_tree
from virtio_msg.dt.binding import (
    BUILTIN_DEVICE_TYPES,
    COMPATIBLE,
    MAX_DEVICES,
    MAX_TIMEOUT_MS,
    PROFILES,
    VENDOR_PROPERTIES,
    min_pool_size,
)
from virtio_msg.dt.schema import binding_path
from virtio_msg.dt.tree import read_tree


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


@pytest.fixture
def need_dtschema() -> None:
    """Skip the test when dtschema is not installed."""
    require_dtschema()


REPO = Path(__file__).resolve().parents[2]
DOC_BINDING = REPO / "docs" / "bindings" / "virtio,msg-loopback.yaml"
DATA = REPO / "src" / "virtio_msg" / "data"


def load_binding() -> Any:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with dtschema")
    return yaml.YAML(typ="safe").load(DOC_BINDING.read_text(encoding="utf-8"))


def test_binding_passes_dt_doc_validate(need_dtschema: None) -> None:
    runner = (
        "import sys; sys.argv[0] = 'dt-doc-validate'; "
        "from dtschema.doc_validate import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", runner, "-u", str(DOC_BINDING.parent), str(DOC_BINDING)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_shipped_binding_is_the_documented_one() -> None:
    assert binding_path().read_bytes() == DOC_BINDING.read_bytes()


def test_example_default_tree_is_the_embedded_one() -> None:
    shipped = (DATA / "default.dts").read_text(encoding="utf-8")
    assert (REPO / "docs" / "examples" / "default.dts").read_text(encoding="utf-8") == shipped


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc is not installed")
def test_embedded_dtb_is_compiled_from_the_embedded_dts(need_dtschema: None) -> None:
    # Same configs, and neither dtc, the schema nor the checks find anything in the DTB.
    from_source = read_tree(DATA / "default.dts")
    embedded = read_tree(default_tree_path())
    assert from_source.nodes == embedded.nodes
    assert load_tree(DATA / "default.dts") == load_tree(default_tree_path())
    assert check_tree(default_tree_path()).problems == ()


def test_code_constants_match_the_binding() -> None:
    binding = load_binding()
    props = binding["properties"]
    assert props["compatible"] == {"const": COMPATIBLE}
    assert set(props) == {"compatible", "memory-region", *VENDOR_PROPERTIES}
    assert binding["required"] == ["compatible", "memory-region"]
    assert props["virtio,msg-profile"]["enum"] == list(PROFILES)
    assert props["virtio,devices"]["items"]["enum"] == list(BUILTIN_DEVICE_TYPES)
    assert props["virtio,devices"]["maxItems"] == MAX_DEVICES
    assert props["virtio,device-numbers"]["maxItems"] == MAX_DEVICES
    assert props["virtio,device-numbers"]["items"]["maximum"] == 0xFFFF
    assert props["virtio,timeout-ms"]["maximum"] == MAX_TIMEOUT_MS
    assert props["virtio,max-msg-size"]["minimum"] == 44
    assert props["virtio,max-msg-size"]["maximum"] == 65535
    assert binding["additionalProperties"] is False
    # The documented sizing rule is the one the checks apply.
    doc = " ".join(DOC_BINDING.read_text(encoding="utf-8").split())
    assert "256 KiB plus 288 KiB per device" in doc
    assert min_pool_size(1) == (256 + 288) * 1024


def test_binding_example_is_a_valid_tree(write_dts: WriteDts, need_dtschema: None) -> None:
    (example,) = load_binding()["examples"]
    path = write_dts(example, "example.dts")
    (config,) = load_tree(path)
    assert config.devices == (DeviceSpec(0, "rng"), DeviceSpec(7, "blk"))
    report = check_tree(path)
    assert report.ok, report.problems
    assert report.schema_checked


EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.dts"))


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc is not installed")
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_documented_examples_check_as_documented(example: Path, need_dtschema: None) -> None:
    if example.name == "seed-legacy.dts":
        assert [p.message.split(":")[0] for p in check_tree(example).errors] == ["seed-era tree"]
        report = check_tree(example, legacy_pool_name="vmsglb")
        assert report.ok
        assert [p.severity for p in report.problems] == ["warning"]
    elif example.name == "bad.dts":  # the mistakes docs/device-tree.md shows dt check finding
        report = check_tree(example)
        assert not report.ok
        assert [(p.severity, p.prop) for p in report.problems] == [
            ("error", "no-map"), ("error", "reg"), ("warning", "reg"),
            ("error", "virtio,max-msg-size"),
        ]
        return
    elif example.name == "small-pool.dts":  # valid, but too small for run's four devices
        report = check_tree(example)
        assert report.ok
        assert [p.severity for p in report.problems] == ["warning"]
        assert "too small" in report.problems[0].message
    else:
        report = check_tree(example)
        assert report.ok, report.problems
        assert report.problems == ()
    assert report.configs


def test_examples_are_present() -> None:
    assert {e.name for e in EXAMPLES} >= {
        "default.dts", "two-buses.dts", "seed-legacy.dts", "bad.dts", "small-pool.dts",
    }
