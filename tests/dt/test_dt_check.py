"""check_tree: dtschema validation plus the semantic checks, one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dt_helpers import CompileDtb, WriteDts, dtb_compiler, dts_writer
from dt_helpers import need_dtschema as require_dtschema

from virtio_msg.dt import check_tree, default_tree_path
from virtio_msg.dt.schema import SchemaUnavailable


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


@pytest.fixture
def compile_dtb() -> CompileDtb:
    """Compile a DTS into a DTB beside it (skips without dtc)."""
    return dtb_compiler()


@pytest.fixture
def need_dtschema() -> None:
    """Skip the test when dtschema is not installed."""
    require_dtschema()


POOL = (
    "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
    'pool0: dma-pool@100000000 {\ncompatible = "restricted-dma-pool";\n'
    "reg = <0x1 0x0 0x0 0x400000>;\n%s\n};\n%s\n};\n"
)
LOOP = 'lb {\ncompatible = "virtio,msg-loopback";\nmemory-region = <&pool0>;\n%s\n};\n'


def tree(pool_extra: str = "", loop_extra: str = "", other: str = "") -> str:
    """Root body: the standard pool (plus extra lines), another reserved child, the bus node."""
    return POOL % (pool_extra, other) + LOOP % loop_extra


def test_default_tree_is_valid_with_one_summary(need_dtschema: None) -> None:
    report = check_tree(default_tree_path())
    assert report.ok
    assert report.schema_checked
    assert report.format == "dtb"
    assert report.problems == ()
    assert report.summaries == [
        "/virtio-msg-loopback: pool /reserved-memory/dma-pool@100000000 at 0x100000000 "
        "size 4 MiB, profile spec, max msg 264, features 0x0, timeout 5000 ms, "
        "devices rng@0 blk@1 console@2 i2c@3"
    ]


def test_schema_finds_what_only_the_schema_knows(write_dts: WriteDts, need_dtschema: None) -> None:
    # shared-dma-pool.yaml has unevaluatedProperties: false; the semantic checks do not
    # look at unknown pool properties, so this error proves dtschema ran.
    report = check_tree(write_dts(tree(pool_extra="acme,colour = <1>;"), "colour.dts"))
    assert not report.ok
    (error,) = report.errors
    assert error.source == "schema"
    assert error.node == "/reserved-memory/dma-pool@100000000"
    assert "acme,colour" in error.message
    assert "shared-dma-pool.yaml" in error.hint
    assert report.configs == ()


def test_schema_errors_on_other_nodes_are_warnings(
    write_dts: WriteDts, need_dtschema: None
) -> None:
    # memory-region.yaml applies to every node; /video belongs to another binding.
    video = "video {\nmemory-region = <&pool0>;\nmemory-region-names = <5>;\n};"
    report = check_tree(write_dts(tree() + video, "video.dts"))
    assert report.ok
    assert [(p.node, p.prop, p.severity, p.source) for p in report.problems] == [
        ("/video", "memory-region-names", "warning", "read"),  # dtc's names_is_string
        ("/video", "memory-region-names", "warning", "schema"),
    ]


def test_schema_errors_on_any_reserved_memory_child_are_errors(
    write_dts: WriteDts, need_dtschema: None
) -> None:
    # Every /reserved-memory child is set aside at boot, so a broken one matters.
    fb = (
        'fb@80000000 {\ncompatible = "shared-dma-pool";\n'
        "reg = <0x0 0x80000000 0x0 0x1000>;\nbogus-prop;\n};"
    )
    report = check_tree(write_dts(tree(other=fb), "other.dts"))
    assert [(p.node, p.severity) for p in report.problems] == [
        ("/reserved-memory/fb@80000000", "error")
    ]


def test_no_map_is_reported_once_with_a_hint(write_dts: WriteDts, need_dtschema: None) -> None:
    report = check_tree(write_dts(tree(pool_extra="no-map;"), "nomap.dts"))
    (error,) = report.errors
    assert error.node == "/reserved-memory/dma-pool@100000000"
    assert error.prop == "no-map"
    assert error.message.startswith("no-map is not allowed on a restricted-dma-pool")
    assert error.hint == "delete the line 'no-map;' from /reserved-memory/dma-pool@100000000"


def test_binding_violation_is_reported_once(write_dts: WriteDts, need_dtschema: None) -> None:
    report = check_tree(write_dts(tree(loop_extra='virtio,devices = "rng", "net";'), "net.dts"))
    (error,) = report.errors
    assert (error.node, error.prop, error.source) == ("/lb", "virtio,devices", "binding")
    assert error.message == '"net" is not a built-in device'


def test_unknown_property_is_reported_once(write_dts: WriteDts, need_dtschema: None) -> None:
    report = check_tree(write_dts(tree(loop_extra="virtio,bus-id = <1>;"), "busid.dts"))
    assert [(p.node, p.prop) for p in report.errors] == [("/lb", "virtio,bus-id")]


def test_loader_and_schema_agree_on_extra_properties(
    write_dts: WriteDts, need_dtschema: None
) -> None:
    standard = 'bootph-all;\npinctrl-0 = <0>;\npinctrl-names = "default";\nstatus = "okay";'
    extra = 'foo = <1>;\nmemory-region-names = "pool";'
    path = write_dts(tree(loop_extra=f"{standard}\n{extra}"), "extra.dts")
    report = check_tree(path)
    assert [(p.prop, p.source) for p in report.errors] == [
        ("foo", "binding"),
        ("memory-region-names", "binding"),
    ]
    assert check_tree(write_dts(tree(loop_extra=standard), "std.dts")).ok


def test_schema_only_extra_properties_name_each_property(
    write_dts: WriteDts, need_dtschema: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the semantic check silenced, dtschema's combined message is split per property.
    monkeypatch.setattr("virtio_msg.dt.loader._check_unknown_properties", lambda *_: None)
    path = write_dts(tree(loop_extra="foo = <1>;\nbar = <2>;"), "extra2.dts")
    errors = check_tree(path).errors
    assert sorted((p.prop, p.source) for p in errors) == [("bar", "schema"), ("foo", "schema")]
    assert all("additionalProperties" in p.message for p in errors)


@pytest.mark.parametrize(
    ("pool_extra", "loop_extra", "expected"),
    [
        ("", "", None),
        ("no-map;", "", "no-map is not allowed"),
        ("", "virtio,max-msg-size = <40>;", "40 is outside 52..65535"),
    ],
)
def test_dts_and_dtb_give_the_same_report(
    write_dts: WriteDts,
    compile_dtb: CompileDtb,
    need_dtschema: None,
    pool_extra: str,
    loop_extra: str,
    expected: str | None,
) -> None:
    dts = write_dts(tree(pool_extra, loop_extra), "same.dts")
    from_dts = check_tree(dts)
    from_dtb = check_tree(compile_dtb(dts))
    assert (from_dts.format, from_dtb.format) == ("dts", "dtb")
    assert from_dts.problems == from_dtb.problems
    assert from_dts.configs == from_dtb.configs
    if expected is None:
        assert from_dts.ok
    else:
        assert any(expected in p.message for p in from_dts.errors)


def test_two_instances_give_two_summaries(write_dts: WriteDts, need_dtschema: None) -> None:
    body = (
        tree(
            other='p1: second@200000000 {\ncompatible = "restricted-dma-pool";\n'
            "reg = <0x2 0x0 0x0 0x100000>;\n};"
        )
        + 'lb2 {\ncompatible = "virtio,msg-loopback";\nmemory-region = <&p1>;\n'
        + 'virtio,devices = "i2c";\n};'
    )
    report = check_tree(write_dts(body, "two.dts"))
    assert report.ok, report.problems
    assert len(report.summaries) == 2
    assert report.summaries[1].startswith(
        "/lb2: pool /reserved-memory/second@200000000 at 0x200000000 size 1 MiB"
    )


def test_semantic_only_without_schema(write_dts: WriteDts) -> None:
    report = check_tree(write_dts(tree(), "plain.dts"), schema=False)
    assert report.ok
    assert not report.schema_checked


def test_missing_dtschema_is_a_warning_not_an_invalid_tree(
    write_dts: WriteDts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("virtio_msg.dt.schema.dtschema_available", lambda: False)
    report = check_tree(write_dts(tree(), "plain.dts"))
    assert report.ok and report.errors == []
    assert report.schema_missing and not report.schema_checked
    (warning,) = report.warnings
    assert warning.message.startswith("schema not checked (install virtio-msg[dt])")
    assert "dtschema is not installed" in warning.message
    assert "--no-schema" in warning.hint
    assert report.to_json()["schema_missing"] is True


def test_a_dtschema_that_fails_to_run_is_still_an_error(
    write_dts: WriteDts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_dtb: bytes) -> list[object]:
        raise SchemaUnavailable("running dt-validate failed: boom")

    monkeypatch.setattr("virtio_msg.dt.check.validate_dtb", broken)
    report = check_tree(write_dts(tree(), "plain.dts"))
    (error,) = report.errors
    assert "boom" in error.message and not report.schema_missing


def test_unreadable_input_is_a_report_not_an_exception(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dtb"
    junk.write_bytes(b"\xd0\x0d\xfe\xed" + b"\xff" * 60)
    report = check_tree(junk)
    assert not report.ok
    assert report.format is None
    assert report.errors[0].message.startswith("malformed DTB")


def test_seed_tree_check_and_legacy_opt_in(write_dts: WriteDts, need_dtschema: None) -> None:
    seed = (
        "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
        'vmsglb@100000000 {\ncompatible = "restricted-dma-pool";\n'
        "reg = <0x1 0x0 0x0 0x400000>;\n};\n};"
    )
    path = write_dts(seed, "seed.dts")
    refused = check_tree(path)
    assert [p.message.split(":")[0] for p in refused.errors] == ["seed-era tree"]
    accepted = check_tree(path, legacy_pool_name="vmsglb")
    assert accepted.ok
    (warning,) = accepted.warnings
    assert warning.message.startswith('legacy: pool found by its node name "vmsglb"')
    assert accepted.configs[0].legacy


def test_json_form(need_dtschema: None) -> None:
    data = json.loads(json.dumps(check_tree(default_tree_path()).to_json()))
    assert data["valid"] is True
    assert data["errors"] == 0
    (instance,) = data["instances"]
    assert instance["base"] == 0x1_0000_0000
    assert instance["size"] == 4 * 1024 * 1024
    assert instance["max_msg_size"] == 264
    assert [d["type"] for d in instance["devices"]] == ["rng", "blk", "console", "i2c"]
