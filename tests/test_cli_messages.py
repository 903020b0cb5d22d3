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
        (["nbd", "x.sock", "--size", "1.5M"], "'1.5M' is not a byte count"),
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
        assert parser.parse_args(["nbd", "x.sock", "--size", form]).size == 16 << 20
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
