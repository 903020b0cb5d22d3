"""What the command line says when something is wrong, and what its ``--help`` says.

Every bad value is named with the forms that are accepted (never argparse's
``invalid <function> value``), every integer option takes the same forms
(base prefixes; byte sizes also K/M/G), each flag name means one thing
across commands, and every command has a description in its ``--help``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_msg.cli import build_parser, main
from virtio_msg.cli.common import parse_size
from virtio_msg.cli.nbd import summary_line
from virtio_msg.cli.run import print_run_report


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``virtio-msg ARGV`` expecting a usage error (exit 2); its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid " not in err, err  # argparse's "invalid <function> value"
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bus", "--size", "12q"], "'12q' is not a byte count"),
        (["nbd", "x.sock", "--image-size", "1.5M"], "'1.5M' is not a byte count"),
        (["bus", "--timeout-ms", "soon"], "'soon' is not a whole number"),
        (["nbd", "x.sock", "--clients", "two"], "'two' is not a whole number"),
        (["run", "--vhost-user", "socket=/x,type=zz"], "vhost-user type 'zz' unknown (blk, fs,"),
        (["run", "--vhost-user", "socket=/x,colour=red"], "vhost-user option 'colour' unknown"),
        (["run", "--vhost-user", "socket=/x,queues=99"], "queue count 99 is outside 1..64"),
        (["backend", "vhost-user", "--dev-num", "zz"], "'zz' is not a whole number"),
        (["backend", "vhost-user", "--queues", "99"], "queue count 99 is outside 1..64"),
    ],
)
def test_bad_values_are_named_with_what_is_accepted(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in _fails(argv, capsys)


def test_sizes_take_the_same_forms_in_bus_nbd_and_backend() -> None:
    parser = build_parser()
    forms = ["16M", "16MiB", "16384K", "0x1000000", "16777216"]
    for form in forms:
        assert parser.parse_args(["bus", "--size", form]).size == 16 << 20
        assert parser.parse_args(["nbd", "x.sock", "--image-size", form]).image_size == 16 << 20
        assert parser.parse_args(["backend", "--kernel", "--size", form]).size == 16 << 20
    assert parse_size("1G") == 1 << 30 and parse_size("0x10") == 16
    assert parser.parse_args(["bus", "--max-size", "0x100"]).max_size == 256


def test_console_exec_with_an_empty_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["console", "--exec", ""]) == 2
    assert "--exec needs a command line" in capsys.readouterr().err


def test_nbd_on_a_missing_directory_names_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / "missing" / "dir" / "x.sock"
    assert main(["nbd", str(where)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on {where}: No such file or directory" in err
    assert f"the directory {where.parent} does not exist" in err
    assert "[Errno" not in err


def test_nbd_summary_is_a_sentence_not_a_dict() -> None:
    line = summary_line({"clients": 2, "commands": {"READ": 3, "DISC": 2}, "rejected": {}})
    assert line == "served 2 client(s); commands: 2 DISC, 3 READ"
    line = summary_line({"clients": 0, "commands": {}, "rejected": {"option-magic": 1}})
    assert line == "served 0 client(s); commands: none; refused: 1 option-magic"


def test_backend_help_lists_the_vhost_user_form() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "backend", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "vhost-user" in out
    assert "virtio-msg backend vhost-user --vhost-user PATH" in out


def test_socket_names_the_bus_in_backend_vhost_user_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The former meaning (the back end's socket) is refused with the way out.
    assert main(["backend", "vhost-user", "--socket", "/v.sock"]) == 2
    err = capsys.readouterr().err
    assert "--vhost-user PATH" in err and "--socket names the bus's socket" in err
    args = build_parser().parse_args(["backend", "--socket", "/bus.sock"])
    assert args.socket == Path("/bus.sock")


def test_bus_is_a_deprecated_alias_of_socket_in_backend_vhost_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.sock"
    assert main(["backend", "vhost-user", "--vhost-user", str(absent), "--bus", "/b.sock"]) == 1
    err = capsys.readouterr().err
    assert "warning: --bus is deprecated" in err
    assert err.count(str(absent)) == 1  # the path once, not "PATH: PATH: ..."
    both = ["--vhost-user", "/v", "--bus", "/b", "--socket", "/s"]
    assert main(["backend", "vhost-user", *both]) == 2


Named = list[tuple[str, argparse.ArgumentParser]]


def _parsers(parser: argparse.ArgumentParser, name: str) -> Named:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


def test_every_command_has_a_description_in_its_help() -> None:
    from virtio_msg.cli.backend import add_vhost_parser

    vhost = argparse.ArgumentParser()
    add_vhost_parser(vhost.add_subparsers())
    missing = [
        name for name, p in _parsers(build_parser(), "virtio-msg") + _parsers(vhost, "backend")[1:]
        if not (p.description or "").strip()
    ]
    assert missing == []


def test_run_table_folds_a_long_error_instead_of_cutting_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    error = "vhost-user /very/long/path/to/a/socket/directory/of/someone/vhost-blk-end.sock: gone"
    report = {
        "ok": False,
        "buses": [{
            "name": "loopback0", "profile": "spec", "max_msg_size": 264,
            "region": {"base": 0, "size": 1 << 22},
            "devices": [{"dev_num": 0, "type": "vhost-user-blk", "ok": False, "error": error}],
            "messages": {}, "dropped": {},
            "pool": {"slots_used": 0, "slots_total": 1, "high_water": 0, "live_mappings": 0,
                     "bytes_bounced_to_device": 0, "bytes_bounced_from_device": 0},
            "latency_us": {"requests": 0, "p50": 0, "p99": 0},
        }],
    }
    print_run_report(report)
    out = capsys.readouterr().out
    cells = "".join(
        line.split("│")[4].strip() for line in out.splitlines() if line.count("│") == 5
    )
    assert error.replace(" ", "") in cells.replace(" ", "")


@pytest.mark.parametrize(
    ("argv", "dest", "value", "new"),
    [
        (["nbd", "x.sock", "--size", "1M"], "image_size", 1 << 20, "--image-size"),
        (["nbd", "x.sock", "--name", "disk"], "export_name", "disk", "--export-name"),
        (["guest", "--kernel", "/boot/Image"], "kernel_image", Path("/boot/Image"),
         "--kernel-image"),
        (["backend", "--kernel", "--msg", "/dev/m0"], "msg_dev", "/dev/m0", "--msg-dev"),
    ],
)
def test_renamed_flags_keep_their_old_names_with_a_warning(
    argv: list[str], dest: str, value: object, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert "is deprecated in `virtio-msg " in err and f"use {new}" in err, err


def _flag_actions() -> dict[str, list[tuple[str, argparse.Action]]]:
    from virtio_msg.cli.backend import add_vhost_parser
    from virtio_msg.cli.common import DeprecatedAlias

    vhost = argparse.ArgumentParser()
    add_vhost_parser(vhost.add_subparsers())
    flags: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, parser in _parsers(build_parser(), "virtio-msg") + _parsers(vhost, "backend")[1:]:
        for action in parser._actions:
            if isinstance(action, DeprecatedAlias) or "deprecated" in (action.help or ""):
                continue
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    flags.setdefault(flag, []).append((name, action))
    return flags


def test_each_flag_name_means_one_thing_in_every_command() -> None:
    flags = _flag_actions()
    for flag, uses in flags.items():
        takes_value = {name: action.nargs != 0 for name, action in uses}
        assert len(set(takes_value.values())) == 1, (flag, takes_value)  # e.g. --kernel
    assert all("bus" in (a.help or "") for _, a in flags["--socket"]), flags["--socket"]
    assert all("region" in (a.help or "") for _, a in flags["--size"]), flags["--size"]
    assert [n for n, _ in flags["--name"]] == ["virtio-msg bus"]
    assert [n for n, _ in flags["--msg"]] == ["virtio-msg trace"]
    assert all(a.nargs == 0 for _, a in flags["--kernel"])


def test_run_socket_takes_an_optional_path_for_the_bus_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--socket"]).socket is True
    assert parser.parse_args(["run", "--socket", "/b.sock", "--json"]).socket == "/b.sock"
    assert parser.parse_args(["run"]).socket is False
    two = Path(__file__).resolve().parent.parent / "docs" / "examples" / "two-buses.dts"
    assert main(["run", "--socket", str(tmp_path / "b.sock"), "--dt", str(two)]) == 2
    assert "--socket PATH names one bus's socket" in capsys.readouterr().err
