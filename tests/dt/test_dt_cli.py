"""The argparse glue: ``virtio-msg dt check`` and ``--dt`` / ``--legacy-pool-name``."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import pytest
from dt_helpers import WriteDts, dts_writer
from dt_helpers import need_dtschema as require_dtschema

from virtio_msg.cli.dt import SCHEMA_NOT_CHECKED, add_dt_arguments, add_parser, configs_from_args
from virtio_msg.dt import DeviceTreeError, default_tree_path


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


@pytest.fixture
def need_dtschema() -> None:
    """Skip the test when dtschema is not installed."""
    require_dtschema()


SEED = (
    "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
    'vmsglb@100000000 {\ncompatible = "restricted-dma-pool";\n'
    "reg = <0x1 0x0 0x0 0x400000>;\n};\n};"
)
BAD = (
    "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
    'pool0: p@100000000 {\ncompatible = "restricted-dma-pool";\n'
    "reg = <0x1 0x0 0x0 0x400000>;\nno-map;\n};\n};\n"
    'lb {\ncompatible = "virtio,msg-loopback";\nmemory-region = <&pool0 &pool0>;\n};'
)


def main_parser() -> argparse.ArgumentParser:
    """A stand-in for virtio_msg.cli's parser: dt registered, run with --dt."""
    parser = argparse.ArgumentParser(prog="virtio-msg")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    run = sub.add_parser("run")
    add_dt_arguments(run)
    return parser


def dt_check(*argv: str) -> tuple[int, str]:
    args = main_parser().parse_args(["dt", "check", *argv])
    out = io.StringIO()
    status = args.func(args, out)
    return status, out.getvalue()


def test_check_valid_tree_prints_one_line_per_bus(need_dtschema: None) -> None:
    status, out = dt_check(str(default_tree_path()))
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{default_tree_path()}: bus 0: /virtio-msg-loopback: pool ")
    assert "at 0x100000000 size 4 MiB" in lines[0]


def test_check_invalid_tree_prints_node_message_and_hint(
    write_dts: WriteDts, need_dtschema: None
) -> None:
    path = write_dts(BAD, "bad.dts")
    status, out = dt_check(str(path))
    assert status == 1
    assert f"{path}: error: /reserved-memory/p@100000000: no-map: no-map is not allowed" in out
    assert "    hint: delete the line 'no-map;' from /reserved-memory/p@100000000" in out
    assert "error: /lb: memory-region: lists 2 regions" in out
    assert out.splitlines()[-1] == f"{path}: invalid: 2 error(s), 0 warning(s)"


def test_check_json(write_dts: WriteDts, need_dtschema: None) -> None:
    status, out = dt_check(str(write_dts(BAD, "bad.dts")), "--json")
    assert status == 1
    report = json.loads(out)
    assert report["valid"] is False
    assert {(p["node"], p["property"]) for p in report["problems"]} == {
        ("/reserved-memory/p@100000000", "no-map"),
        ("/lb", "memory-region"),
    }
    assert report["instances"] == []


def test_check_seed_tree_needs_the_opt_in(write_dts: WriteDts, need_dtschema: None) -> None:
    path = str(write_dts(SEED, "seed.dts"))
    status, out = dt_check(path)
    assert status == 1
    assert "seed-era tree" in out
    assert "memory-region = <&{/reserved-memory/vmsglb@100000000}>;" in out
    status, out = dt_check(path, "--legacy-pool-name", "vmsglb")
    assert status == 0
    assert "warning: /reserved-memory/vmsglb@100000000: legacy: pool found by its node name" in out
    assert "bus 0: /reserved-memory/vmsglb@100000000: pool" in out
    assert out.rstrip().endswith("[legacy: pool found by name]")


def test_check_no_schema(write_dts: WriteDts) -> None:
    ok = (
        SEED.replace("vmsglb@100000000 {", "pool0: any@100000000 {")
        + '\nlb {\ncompatible = "virtio,msg-loopback";\nmemory-region = <&pool0>;\n};'
    )
    status, out = dt_check(str(write_dts(ok, "ok.dts")), "--no-schema")
    assert status == 0
    assert out.splitlines()[-1].endswith("note: schema validation skipped (--no-schema)")


def test_check_without_dtschema_warns_and_exits_3_never_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a user sees right after `pip install .` (no [dt] extra): the embedded tree."""
    monkeypatch.setattr("virtio_msg.dt.schema.dtschema_available", lambda: False)
    status, out = dt_check(str(default_tree_path()))
    assert status == SCHEMA_NOT_CHECKED == 3
    assert "invalid" not in out
    assert "warning: /: schema not checked (install virtio-msg[dt])" in out
    assert out.splitlines()[-1].endswith(
        "valid by the semantic checks; schema not checked (install virtio-msg[dt])"
    )
    status, out = dt_check(str(default_tree_path()), "--json")
    assert status == 3 and json.loads(out)["valid"] is True


def test_dt_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    args = main_parser().parse_args(["dt"])
    assert args.func(args) == 2
    assert "usage: virtio-msg dt" in capsys.readouterr().err


def test_run_without_dt_uses_the_embedded_tree() -> None:
    (config,) = configs_from_args(main_parser().parse_args(["run"]))
    assert (config.base, config.size) == (0x1_0000_0000, 4 * 1024 * 1024)


def test_run_with_dt(write_dts: WriteDts) -> None:
    path = write_dts(SEED, "seed.dts")
    with pytest.raises(DeviceTreeError, match="seed-era tree"):
        configs_from_args(main_parser().parse_args(["run", "--dt", str(path)]))


def test_run_with_legacy_pool_name_warns(
    write_dts: WriteDts, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_dts(SEED, "seed.dts")
    args = main_parser().parse_args(["run", "--dt", str(path), "--legacy-pool-name", "vmsglb"])
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        (config,) = configs_from_args(args)
    assert config.legacy
    assert "legacy: pool found by its node name" in caplog.text


def test_legacy_pool_name_without_dt_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = main_parser().parse_args(["run", "--legacy-pool-name", "vmsglb"])
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        (config,) = configs_from_args(args)
    assert not config.legacy
    assert "--legacy-pool-name vmsglb ignored" in caplog.text
