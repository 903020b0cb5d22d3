"""Tests of ``virtio-msg decode`` / ``virtio-msg encode`` run as a subprocess.

The hex vectors are the hand-written golden vectors of test_golden_spec.py and
test_golden_rfc1.py (copied, so that this file stands alone); the expected JSON
objects were written by hand from the same reference layouts
(virtio-msg-spec.md sections 2-4, linux-rfc1.md sections 1.2-1.3).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any, NamedTuple

import pytest


class Case(NamedTuple):
    profile: str
    hex_text: str
    name: str
    msg_id: int
    response: bool
    bus: bool
    dev_num: int
    token: int | None
    fields: dict[str, Any]

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex_text)


SP = "spec"
RF = "linux-rfc1"
DEV = 0x1234
TOK = 0xBEEF

SPEC_CASES = [
    # spec header: type u8 | msg_id u8 | dev_num le16 | token le16 | msg_size le16
    Case(SP, "00 02 3412 efbe 0800", "GET_DEVICE_INFO", 0x02, False, False, DEV, TOK, {}),
    Case(
        SP,
        "01 02 3412 efbe 3400 1a000000 51454d55 f0e1d2c3b4a5469788796a5b4c3d2e1f"
        " 03000000 24010000 11000000 10000000 01000000",
        "GET_DEVICE_INFO",
        0x02,
        True,
        False,
        DEV,
        TOK,
        {
            "device_id": 0x1A,
            "vendor_id": 0x554D4551,
            "device_uuid": "f0e1d2c3b4a5469788796a5b4c3d2e1f",
            "num_feature_blocks": 3,
            "config_size": 0x124,
            "max_virtqueues": 17,
            "admin_vq_start": 16,
            "admin_vq_count": 1,
        },
    ),
    Case(
        SP,
        "00 03 3412 efbe 1000 01000000 02000000",
        "GET_DEVICE_FEATURES",
        0x03,
        False,
        False,
        DEV,
        TOK,
        {"block_index": 1, "num_blocks": 2},
    ),
    Case(
        SP,
        "01 03 3412 efbe 1800 01000000 02000000 03010000 040000a5",
        "GET_DEVICE_FEATURES",
        0x03,
        True,
        False,
        DEV,
        TOK,
        {"block_index": 1, "num_blocks": 2, "features": [0x103, 0xA5000004]},
    ),
    Case(
        SP,
        "00 04 3412 efbe 1c00 00000000 03000000 20000030 03010000 08000000",
        "SET_DRIVER_FEATURES",
        0x04,
        False,
        False,
        DEV,
        TOK,
        {"block_index": 0, "num_blocks": 3, "features": [0x30000020, 0x103, 0x8]},
    ),
    Case(SP, "01 04 3412 efbe 0800", "SET_DRIVER_FEATURES", 0x04, True, False, DEV, TOK, {}),
    Case(
        SP,
        "00 05 3412 efbe 1000 10000000 06000000",
        "GET_CONFIG",
        0x05,
        False,
        False,
        DEV,
        TOK,
        {"offset": 0x10, "length": 6},
    ),
    Case(
        SP,
        "01 05 3412 efbe 1a00 0d0c0b0a 10000000 06000000 525400123456",
        "GET_CONFIG",
        0x05,
        True,
        False,
        DEV,
        TOK,
        {"generation": 0x0A0B0C0D, "offset": 0x10, "length": 6, "data": "525400123456"},
    ),
    Case(
        SP,
        "00 06 3412 efbe 1700 07000000 20000000 03000000 aabbcc",
        "SET_CONFIG",
        0x06,
        False,
        False,
        DEV,
        TOK,
        {"generation": 7, "offset": 0x20, "length": 3, "data": "aabbcc"},
    ),
    Case(
        SP,
        "01 06 3412 efbe 1400 08000000 20000000 03000000",
        "SET_CONFIG",
        0x06,
        True,
        False,
        DEV,
        TOK,
        {"generation": 8, "offset": 0x20, "length": 3, "data": ""},
    ),
    Case(SP, "00 07 3412 efbe 0800", "GET_DEVICE_STATUS", 0x07, False, False, DEV, TOK, {}),
    Case(
        SP,
        "01 07 3412 efbe 0c00 4b000000",
        "GET_DEVICE_STATUS",
        0x07,
        True,
        False,
        DEV,
        TOK,
        {"status": 0x4B},
    ),
    Case(
        SP,
        "00 08 3412 efbe 0c00 0b000000",
        "SET_DEVICE_STATUS",
        0x08,
        False,
        False,
        DEV,
        TOK,
        {"status": 0x0B},
    ),
    Case(
        SP,
        "01 08 3412 efbe 0c00 03000000",
        "SET_DEVICE_STATUS",
        0x08,
        True,
        False,
        DEV,
        TOK,
        {"status": 0x03},
    ),
    Case(
        SP,
        "00 09 3412 efbe 0c00 02000000",
        "GET_VQUEUE",
        0x09,
        False,
        False,
        DEV,
        TOK,
        {"index": 2},
    ),
    Case(
        SP,
        "01 09 3412 efbe 3000 02000000 00010000 80000000 01000000"
        " 0000004001000000 0010004002000000 4020004003000000",
        "GET_VQUEUE",
        0x09,
        True,
        False,
        DEV,
        TOK,
        {
            "index": 2,
            "max_size": 0x100,
            "cur_size": 0x80,
            "flags": 1,
            "desc_addr": 0x1_4000_0000,
            "driver_addr": 0x2_4000_1000,
            "device_addr": 0x3_4000_2040,
        },
    ),
    Case(
        SP,
        "00 0a 3412 efbe 3000 02000000 01000000 80000000 00000000"
        " 0000004001000000 0010004002000000 4020004003000000",
        "SET_VQUEUE",
        0x0A,
        False,
        False,
        DEV,
        TOK,
        {
            "index": 2,
            "flags": 1,
            "size": 0x80,
            "reserved": 0,
            "desc_addr": 0x1_4000_0000,
            "driver_addr": 0x2_4000_1000,
            "device_addr": 0x3_4000_2040,
        },
    ),
    Case(SP, "01 0a 3412 efbe 0800", "SET_VQUEUE", 0x0A, True, False, DEV, TOK, {}),
    Case(
        SP,
        "00 0b 3412 efbe 0c00 05000000",
        "RESET_VQUEUE",
        0x0B,
        False,
        False,
        DEV,
        TOK,
        {"index": 5},
    ),
    Case(SP, "01 0b 3412 efbe 0800", "RESET_VQUEUE", 0x0B, True, False, DEV, TOK, {}),
    Case(
        SP, "00 0c 3412 efbe 0c00 01000000", "GET_SHM", 0x0C, False, False, DEV, TOK, {"shmid": 1}
    ),
    Case(
        SP,
        "01 0c 3412 efbe 2000 01000000 00000000 0000800000000000 0000000010000000",
        "GET_SHM",
        0x0C,
        True,
        False,
        DEV,
        TOK,
        {"shmid": 1, "reserved": 0, "length": 0x80_0000, "address": 0x10_0000_0000},
    ),
    Case(
        SP,
        "00 40 3412 0000 1a00 0f000000 0e0c0b0a 04000000 02000000 dcba",
        "EVENT_CONFIG",
        0x40,
        False,
        False,
        DEV,
        0,
        {"device_status": 0x0F, "generation": 0x0A0B0C0E, "offset": 4, "length": 2, "data": "dcba"},
    ),
    Case(
        SP,
        "00 41 3412 0000 1000 01000000 23010080",
        "EVENT_AVAIL",
        0x41,
        False,
        False,
        DEV,
        0,
        {"vq_index": 1, "next_offset": 0x80000123},
    ),
    Case(
        SP,
        "00 42 3412 5713 0c00 03000000",
        "EVENT_USED",
        0x42,
        False,
        False,
        DEV,
        0x1357,
        {"vq_index": 3},
    ),
    Case(
        SP,
        "02 02 0000 3175 0c00 0800 1000",
        "GET_DEVICES",
        0x02,
        False,
        True,
        0,
        0x7531,
        {"offset": 8, "count": 16},
    ),
    Case(
        SP,
        "03 02 0000 3175 1000 0800 4000 0c00 250a",
        "GET_DEVICES",
        0x02,
        True,
        True,
        0,
        0x7531,
        {"offset": 8, "next_offset": 0x40, "count": 12, "bitmap": "250a"},
    ),
    Case(
        SP,
        "02 03 0000 a55a 0c00 efbeadde",
        "PING",
        0x03,
        False,
        True,
        0,
        0x5AA5,
        {"data": 0xDEADBEEF},
    ),
    Case(
        SP,
        "03 03 0000 a55a 0c00 efbeadde",
        "PING",
        0x03,
        True,
        True,
        0,
        0x5AA5,
        {"data": 0xDEADBEEF},
    ),
    Case(
        SP,
        "02 40 0000 0000 0c00 3412 0100",
        "EVENT_DEVICE",
        0x40,
        False,
        True,
        0,
        0,
        {"device_number": 0x1234, "device_bus_state": 1},
    ),
    Case(
        SP,
        "02 80 0000 4200 1000 0102030405060708",
        "IMPLEMENTATION_DEFINED",
        0x80,
        False,
        True,
        0,
        0x42,
        {"payload": "0102030405060708"},
    ),
    Case(
        SP,
        "01 81 3412 efbe 0b00 a1b2c3",
        "IMPLEMENTATION_DEFINED",
        0x81,
        True,
        False,
        DEV,
        TOK,
        {"payload": "a1b2c3"},
    ),
    Case(
        SP,
        "00 ff 3412 0000 0900 5a",
        "IMPLEMENTATION_DEFINED",
        0xFF,
        False,
        False,
        DEV,
        0,
        {"payload": "5a"},
    ),
]

RFC1_CASES = [
    # linux-rfc1 header: type u8 | msg_id u8 | dev_id le16 | msg_size le16 ; token is null
    Case(RF, "00 02 3412 0600", "DEVICE_INFO", 0x02, False, False, DEV, None, {}),
    Case(
        RF,
        "01 02 3412 1e00 02000000 51454d55 40000000 3c000000 04000000 0300 0100",
        "DEVICE_INFO",
        0x02,
        True,
        False,
        DEV,
        None,
        {
            "device_id": 2,
            "vendor_id": 0x554D4551,
            "num_feature_bits": 64,
            "config_size": 0x3C,
            "max_vq_count": 4,
            "admin_vq_start_idx": 3,
            "admin_vq_count": 1,
        },
    ),
    Case(
        RF,
        "00 03 3412 0e00 01000000 02000000",
        "GET_DEV_FEATURES",
        0x03,
        False,
        False,
        DEV,
        None,
        {"index": 1, "num": 2},
    ),
    Case(
        RF,
        "01 03 3412 1600 01000000 02000000 20000010 03000000",
        "GET_DEV_FEATURES",
        0x03,
        True,
        False,
        DEV,
        None,
        {"index": 1, "num": 2, "features": [0x10000020, 0x3]},
    ),
    Case(
        RF,
        "00 04 3412 1600 00000000 02000000 00000010 01000000",
        "SET_DRV_FEATURES",
        0x04,
        False,
        False,
        DEV,
        None,
        {"index": 0, "num": 2, "features": [0x10000000, 0x1]},
    ),
    Case(RF, "01 04 3412 0600", "SET_DRV_FEATURES", 0x04, True, False, DEV, None, {}),
    Case(
        RF,
        "00 05 3412 0e00 08000000 04000000",
        "GET_CONFIG",
        0x05,
        False,
        False,
        DEV,
        None,
        {"offset": 8, "size": 4},
    ),
    Case(
        RF,
        "01 05 3412 1600 04030201 08000000 04000000 11223344",
        "GET_CONFIG",
        0x05,
        True,
        False,
        DEV,
        None,
        {"generation": 0x01020304, "offset": 8, "size": 4, "config": "11223344"},
    ),
    Case(
        RF,
        "00 06 3412 1400 05000000 0c000000 02000000 a55a",
        "SET_CONFIG",
        0x06,
        False,
        False,
        DEV,
        None,
        {"generation": 5, "offset": 0x0C, "size": 2, "config": "a55a"},
    ),
    Case(
        RF,
        "01 06 3412 1400 06000000 0c000000 02000000 a55a",
        "SET_CONFIG",
        0x06,
        True,
        False,
        DEV,
        None,
        {"generation": 6, "offset": 0x0C, "size": 2, "config": "a55a"},
    ),
    Case(RF, "00 07 3412 0600", "GET_DEVICE_STATUS", 0x07, False, False, DEV, None, {}),
    Case(
        RF,
        "01 07 3412 0a00 07000000",
        "GET_DEVICE_STATUS",
        0x07,
        True,
        False,
        DEV,
        None,
        {"status": 7},
    ),
    Case(
        RF,
        "00 08 3412 0a00 0f000000",
        "SET_DEVICE_STATUS",
        0x08,
        False,
        False,
        DEV,
        None,
        {"status": 0x0F},
    ),
    Case(
        RF,
        "01 08 3412 0a00 07000000",
        "SET_DEVICE_STATUS",
        0x08,
        True,
        False,
        DEV,
        None,
        {"status": 7},
    ),
    Case(RF, "00 09 3412 0a00 01000000", "GET_VQUEUE", 0x09, False, False, DEV, None, {"index": 1}),
    Case(
        RF,
        "01 09 3412 2a00 01000000 00040000 00010000"
        " 0060452301000000 0070452302000000 0080452303000000",
        "GET_VQUEUE",
        0x09,
        True,
        False,
        DEV,
        None,
        {
            "index": 1,
            "max_size": 0x400,
            "size": 0x100,
            "descriptor_addr": 0x1_2345_6000,
            "driver_addr": 0x2_2345_7000,
            "device_addr": 0x3_2345_8000,
        },
    ),
    Case(
        RF,
        "00 0a 3412 2a00 01000000 00000000 00010000"
        " 0060452301000000 0070452302000000 0080452303000000",
        "SET_VQUEUE",
        0x0A,
        False,
        False,
        DEV,
        None,
        {
            "index": 1,
            "unused": 0,
            "size": 0x100,
            "descriptor_addr": 0x1_2345_6000,
            "driver_addr": 0x2_2345_7000,
            "device_addr": 0x3_2345_8000,
        },
    ),
    Case(RF, "01 0a 3412 0600", "SET_VQUEUE", 0x0A, True, False, DEV, None, {}),
    Case(
        RF, "00 0b 3412 0a00 03000000", "RESET_VQUEUE", 0x0B, False, False, DEV, None, {"index": 3}
    ),
    Case(RF, "01 0b 3412 0600", "RESET_VQUEUE", 0x0B, True, False, DEV, None, {}),
    Case(RF, "00 0c 3412 0a00 02000000", "GET_SHM", 0x0C, False, False, DEV, None, {"index": 2}),
    Case(
        RF,
        "01 0c 3412 1200 02000000 00100000 00000080",
        "GET_SHM",
        0x0C,
        True,
        False,
        DEV,
        None,
        {"index": 2, "count": 0x1000, "addr": 0x80000000},
    ),
    Case(
        RF,
        "00 40 3412 1a00 0f000000 07000000 10000000 04000000 0a0b0c0d",
        "EVENT_CONFIG",
        0x40,
        False,
        False,
        DEV,
        None,
        {"status": 0x0F, "generation": 7, "offset": 0x10, "size": 4, "config": "0a0b0c0d"},
    ),
    Case(
        RF,
        "00 41 3412 0e00 02000000 10000080",
        "EVENT_AVAIL",
        0x41,
        False,
        False,
        DEV,
        None,
        {"index": 2, "next_offset_wrap": 0x80000010},
    ),
    Case(RF, "00 42 3412 0a00 03000000", "EVENT_USED", 0x42, False, False, DEV, None, {"index": 3}),
    Case(
        RF,
        "02 02 0000 0a00 1000 1800",
        "BUS_GET_DEVICES",
        0x02,
        False,
        True,
        0,
        None,
        {"offset": 0x10, "num": 24},
    ),
    Case(
        RF,
        "03 02 0000 0f00 1000 1800 2800 018004",
        "BUS_GET_DEVICES",
        0x02,
        True,
        True,
        0,
        None,
        {"offset": 0x10, "num": 24, "next_offset": 0x28, "devices": "018004"},
    ),
    Case(
        RF, "02 03 0000 0a00 78563412", "BUS_PING", 0x03, False, True, 0, None, {"data": 0x12345678}
    ),
    Case(
        RF, "03 03 0000 0a00 78563412", "BUS_PING", 0x03, True, True, 0, None, {"data": 0x12345678}
    ),
    Case(
        RF,
        "02 40 0000 0a00 0700 0200",
        "BUS_EVENT_DEVICE",
        0x40,
        False,
        True,
        0,
        None,
        {"dev_num": 7, "dev_state": 2},
    ),
]

CASES = {SP: SPEC_CASES, RF: RFC1_CASES}


def _find(profile: str, name: str, response: bool) -> Case:
    [case] = [c for c in CASES[profile] if c.name == name and c.response is response]
    return case


STATUS_RESP = _find(SP, "GET_DEVICE_STATUS", True)
PING_REQ = _find(SP, "PING", False)
EVENT_DEVICE = _find(SP, "EVENT_DEVICE", False)
INFO_REQ = _find(SP, "GET_DEVICE_INFO", False)
INFO_RESP = _find(SP, "GET_DEVICE_INFO", True)


def _case_id(case: Case) -> str:
    kind = "resp" if case.response else "req"
    return f"{case.name.lower()}-{kind}-{case.msg_id:#04x}"


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(i, case, id=_case_id(case)) for i, case in enumerate(cases)]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_msg", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict), line
            out.append(obj)
    return out


def _error_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert line.startswith("error: "), line
    return lines


@functools.cache
def _decode_all(profile: str) -> tuple[dict[str, Any], ...]:
    """Decode every vector of a profile in one CLI run (hex passed as argv)."""
    proc = run_cli("decode", "--profile", profile, *(c.hex_text for c in CASES[profile]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    objs = _json_lines(proc.stdout)
    assert len(objs) == len(CASES[profile])
    return tuple(objs)


def _check_json(obj: dict[str, Any], case: Case) -> None:
    expected = {
        "profile": case.profile,
        "name": case.name,
        "msg_id": case.msg_id,
        "response": case.response,
        "bus": case.bus,
        "dev_num": case.dev_num,
        "token": case.token,
        "msg_size": len(case.raw),
        "fields": case.fields,
    }
    got = {key: obj.get(key, "<missing>") for key in expected}
    assert got == expected
    # JSON types: booleans are booleans, integers are numbers (not strings)
    assert obj["response"] is case.response
    assert obj["bus"] is case.bus
    assert type(obj["msg_id"]) is int


def test_self_check_vectors() -> None:
    for profile, cases in CASES.items():
        header = 8 if profile == SP else 6
        for case in cases:
            raw = case.raw
            assert int.from_bytes(raw[header - 2 : header], "little") == len(raw), case
            assert raw[0] == (case.response | case.bus << 1), case
            assert raw[1] == case.msg_id, case
            assert int.from_bytes(raw[2:4], "little") == case.dev_num, case
            if profile == SP:
                assert int.from_bytes(raw[4:6], "little") == case.token, case


@pytest.mark.parametrize(("index", "case"), _params(SPEC_CASES))
def test_decode_spec_json(index: int, case: Case) -> None:
    _check_json(_decode_all(SP)[index], case)


@pytest.mark.parametrize(("index", "case"), _params(RFC1_CASES))
def test_decode_rfc1_json(index: int, case: Case) -> None:
    _check_json(_decode_all(RF)[index], case)


def test_every_message_name_is_covered() -> None:
    spec_names = {c.name for c in SPEC_CASES}
    assert spec_names == {
        "GET_DEVICE_INFO", "GET_DEVICE_FEATURES", "SET_DRIVER_FEATURES", "GET_CONFIG",
        "SET_CONFIG", "GET_DEVICE_STATUS", "SET_DEVICE_STATUS", "GET_VQUEUE", "SET_VQUEUE",
        "RESET_VQUEUE", "GET_SHM", "EVENT_CONFIG", "EVENT_AVAIL", "EVENT_USED", "GET_DEVICES",
        "PING", "EVENT_DEVICE", "IMPLEMENTATION_DEFINED",
    }  # fmt: skip
    rfc1_names = {c.name for c in RFC1_CASES}
    assert rfc1_names == {
        "DEVICE_INFO", "GET_DEV_FEATURES", "SET_DRV_FEATURES", "GET_CONFIG", "SET_CONFIG",
        "GET_DEVICE_STATUS", "SET_DEVICE_STATUS", "GET_VQUEUE", "SET_VQUEUE", "RESET_VQUEUE",
        "GET_SHM", "EVENT_CONFIG", "EVENT_AVAIL", "EVENT_USED", "BUS_GET_DEVICES", "BUS_PING",
        "BUS_EVENT_DEVICE",
    }  # fmt: skip
    # every request/response pair is present
    for cases in CASES.values():
        kinds = {(c.name, c.response) for c in cases}
        for name, response in kinds:
            if response:
                assert (name, False) in kinds


@pytest.mark.parametrize("profile", [SP, RF])
def test_round_trip_decode_then_encode(profile: str) -> None:
    decoded = _decode_all(profile)
    stdin = "".join(json.dumps(obj) + "\n" for obj in decoded)
    proc = run_cli("encode", "--profile", profile, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines == [c.raw.hex() for c in CASES[profile]]


def test_decode_default_profile_is_spec() -> None:
    proc = run_cli("decode", "01 07 3412 efbe 0c00 4b000000")
    assert proc.returncode == 0, proc.stderr
    [obj] = _json_lines(proc.stdout)
    _check_json(obj, STATUS_RESP)


def test_decode_accepts_spaces_and_colons_in_arguments() -> None:
    proc = run_cli(
        "decode",
        "--profile",
        "spec",
        "01:07:34:12:ef:be:0c:00:4b:00:00:00",
        "01 07 3412 efbe 0c00 4b000000",
        "01073412efbe0c004b000000",
    )
    assert proc.returncode == 0, proc.stderr
    objs = _json_lines(proc.stdout)
    assert len(objs) == 3
    for obj in objs:
        _check_json(obj, STATUS_RESP)


def test_decode_stdin_one_message_per_line() -> None:
    stdin = (
        "01:07:34:12:ef:be:0c:00:4b:00:00:00\n"
        "02 03 0000 a55a 0c00 efbeadde\n"
        "0240000000000c0034120100\n"
    )
    proc = run_cli("decode", "--profile", "spec", "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    objs = _json_lines(proc.stdout)
    assert len(objs) == 3
    _check_json(objs[0], STATUS_RESP)
    _check_json(objs[1], PING_REQ)
    _check_json(objs[2], EVENT_DEVICE)


def test_decode_stdin_rfc1() -> None:
    stdin = "".join(c.hex_text + "\n" for c in RFC1_CASES[:5])
    proc = run_cli("decode", "--profile", "linux-rfc1", "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    objs = _json_lines(proc.stdout)
    assert len(objs) == 5
    for obj, case in zip(objs, RFC1_CASES[:5], strict=True):
        _check_json(obj, case)


BAD_HEX_LINES = [
    "zz",  # not hex
    "01 07 3412 efbe 0d00 4b000000",  # msg_size 13 > 12-byte buffer
    "01 07 34",  # truncated header
    "00 0d 3412 efbe 0800",  # unknown msg_id 0x0d
]


def test_decode_stdin_mixed_good_and_bad_lines() -> None:
    lines = [
        STATUS_RESP.hex_text,
        BAD_HEX_LINES[0],
        PING_REQ.hex_text,
        BAD_HEX_LINES[1],
        BAD_HEX_LINES[2],
        INFO_RESP.hex_text,
        BAD_HEX_LINES[3],
    ]
    proc = run_cli("decode", "--profile", "spec", "-", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1
    objs = _json_lines(proc.stdout)
    assert len(objs) == 3
    _check_json(objs[0], STATUS_RESP)
    _check_json(objs[1], PING_REQ)
    _check_json(objs[2], INFO_RESP)
    assert len(_error_lines(proc.stderr)) == 4


def test_decode_arguments_mixed_good_and_bad() -> None:
    proc = run_cli(
        "decode", "--profile", "spec", BAD_HEX_LINES[1], INFO_REQ.hex_text, BAD_HEX_LINES[3]
    )
    assert proc.returncode == 1
    [obj] = _json_lines(proc.stdout)
    _check_json(obj, INFO_REQ)
    assert len(_error_lines(proc.stderr)) == 2


def test_decode_all_bad_exits_1() -> None:
    proc = run_cli("decode", "--profile", "linux-rfc1", "01 07 3412 0b00 07000000")
    assert proc.returncode == 1
    assert _json_lines(proc.stdout) == []
    assert len(_error_lines(proc.stderr)) == 1


# 53-byte GET_CONFIG response: 8 + 12 + 33 (msg_size 0x35)
SPEC_53 = "01 05 3412 efbe 3500 01000000 00000000 21000000" + " 5a" * 33
# 52-byte GET_CONFIG response: 8 + 12 + 32 (msg_size 0x34)
SPEC_52 = "01 05 3412 efbe 3400 01000000 00000000 20000000" + " 5a" * 32
# 46-byte linux-rfc1 GET_CONFIG response: 6 + 12 + 28 (msg_size 0x2e)
RFC1_46 = "01 05 3412 2e00 01000000 00000000 1c000000" + " 5a" * 28


def test_self_check_size_vectors() -> None:
    assert len(bytes.fromhex(SPEC_53)) == 0x35
    assert len(bytes.fromhex(SPEC_52)) == 0x34
    assert len(bytes.fromhex(RFC1_46)) == 0x2E


def test_decode_max_size_enforced() -> None:
    ok = run_cli("decode", "--profile", "spec", SPEC_53)
    assert ok.returncode == 0, ok.stderr
    [obj] = _json_lines(ok.stdout)
    assert obj["fields"]["data"] == "5a" * 33
    assert obj["msg_size"] == 53

    small = run_cli("decode", "--profile", "spec", "--max-size", "52", SPEC_53, SPEC_52)
    assert small.returncode == 1
    [obj] = _json_lines(small.stdout)
    assert obj["msg_size"] == 52
    assert len(_error_lines(small.stderr)) == 1


def test_decode_max_size_rfc1() -> None:
    default = run_cli("decode", "--profile", "linux-rfc1", RFC1_46)
    assert default.returncode == 1  # default max_size 44
    assert len(_error_lines(default.stderr)) == 1
    bigger = run_cli("decode", "--profile", "linux-rfc1", "--max-size", "46", RFC1_46)
    assert bigger.returncode == 0, bigger.stderr
    [obj] = _json_lines(bigger.stdout)
    assert obj["name"] == "GET_CONFIG"
    assert obj["token"] is None
    assert obj["fields"] == {"generation": 1, "offset": 0, "size": 28, "config": "5a" * 28}


def _request(**kw: Any) -> str:
    return json.dumps(kw)


def test_encode_hand_written_json() -> None:
    lines = [
        # by name, no msg_id; msg_size / type are not needed
        _request(
            name="GET_DEVICE_STATUS",
            response=True,
            bus=False,
            dev_num=DEV,
            token=TOK,
            fields={"status": 0x4B},
        ),
        # by msg_id, no name
        _request(
            msg_id=0x02,
            response=True,
            bus=True,
            dev_num=0,
            token=0x7531,
            fields={"offset": 8, "next_offset": 0x40, "count": 12, "bitmap": "250a"},
        ),
        # implementation-defined message
        _request(
            name="IMPLEMENTATION_DEFINED",
            msg_id=0x81,
            response=True,
            bus=False,
            dev_num=DEV,
            token=TOK,
            fields={"payload": "a1b2c3"},
        ),
        # a msg_size that disagrees is ignored
        _request(
            name="EVENT_AVAIL",
            msg_id=0x41,
            response=False,
            bus=False,
            dev_num=DEV,
            token=0,
            msg_size=999,
            type=7,
            fields={"vq_index": 1, "next_offset": 0x80000123},
        ),
    ]
    proc = run_cli("encode", "--profile", "spec", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "01073412efbe0c004b000000",
        "030200003175100008004000" + "0c00250a",
        "01813412efbe0b00a1b2c3",
        "004134120000100001000000" + "23010080",
    ]


def test_encode_hand_written_json_rfc1() -> None:
    lines = [
        _request(
            name="BUS_EVENT_DEVICE",
            response=False,
            bus=True,
            dev_num=0,
            token=None,
            fields={"dev_num": 7, "dev_state": 2},
        ),
        _request(
            name="GET_VQUEUE",
            response=True,
            bus=False,
            dev_num=DEV,
            token=None,
            fields={
                "index": 1,
                "max_size": 0x400,
                "size": 0x100,
                "descriptor_addr": 0x1_2345_6000,
                "driver_addr": 0x2_2345_7000,
                "device_addr": 0x3_2345_8000,
            },
        ),
    ]
    proc = run_cli("encode", "--profile", "linux-rfc1", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "024000000a0007000200",
        "010934122a00" + "01000000" + "00040000" + "00010000"
        "0060452301000000" + "0070452302000000" + "0080452303000000",
    ]


def test_encode_mixed_good_and_bad_lines() -> None:
    good1 = _request(
        name="PING", response=False, bus=True, dev_num=0, token=0x5AA5, fields={"data": 0xDEADBEEF}
    )
    good2 = _request(
        name="GET_VQUEUE", response=False, bus=False, dev_num=DEV, token=TOK, fields={"index": 2}
    )
    bad = [
        "this is not json",
        _request(name="NO_SUCH_MESSAGE", response=False, bus=False, dev_num=1, token=0, fields={}),
        # missing field
        _request(name="PING", response=False, bus=True, dev_num=0, token=0, fields={}),
        # bus message with dev_num != 0
        _request(name="PING", response=False, bus=True, dev_num=1, token=0, fields={"data": 1}),
        # field out of range
        _request(
            name="SET_DEVICE_STATUS",
            response=False,
            bus=False,
            dev_num=1,
            token=0,
            fields={"status": 2**32},
        ),
        # features length disagrees with num_blocks
        _request(
            name="GET_DEVICE_FEATURES",
            response=True,
            bus=False,
            dev_num=1,
            token=0,
            fields={"block_index": 0, "num_blocks": 2, "features": [1]},
        ),
    ]
    lines = [bad[0], good1, bad[1], bad[2], good2, bad[3], bad[4], bad[5]]
    proc = run_cli("encode", "--profile", "spec", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1
    assert proc.stdout.split() == ["02030000a55a0c00efbeadde", "00093412efbe0c0002000000"]
    assert len(_error_lines(proc.stderr)) == len(bad)


def test_encode_rfc1_rejects_token() -> None:
    line = _request(
        name="BUS_PING", response=False, bus=True, dev_num=0, token=5, fields={"data": 1}
    )
    proc = run_cli("encode", "--profile", "linux-rfc1", stdin=line + "\n")
    assert proc.returncode == 1
    assert proc.stdout.strip() == ""
    assert len(_error_lines(proc.stderr)) == 1


def test_encode_max_size_enforced() -> None:
    decoded = run_cli("decode", "--profile", "spec", SPEC_53)
    assert decoded.returncode == 0, decoded.stderr
    line = decoded.stdout.strip()
    ok = run_cli("encode", "--profile", "spec", stdin=line + "\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == bytes.fromhex(SPEC_53).hex()
    small = run_cli("encode", "--profile", "spec", "--max-size", "52", stdin=line + "\n")
    assert small.returncode == 1
    assert small.stdout.strip() == ""
    assert len(_error_lines(small.stderr)) == 1


def test_encode_max_size_rfc1() -> None:
    line = _request(
        name="GET_CONFIG",
        response=True,
        bus=False,
        dev_num=DEV,
        token=None,
        fields={"generation": 1, "offset": 0, "size": 28, "config": "5a" * 28},
    )
    default = run_cli("encode", "--profile", "linux-rfc1", stdin=line + "\n")
    assert default.returncode == 1
    assert len(_error_lines(default.stderr)) == 1
    bigger = run_cli("encode", "--profile", "linux-rfc1", "--max-size", "46", stdin=line + "\n")
    assert bigger.returncode == 0, bigger.stderr
    assert bigger.stdout.strip() == bytes.fromhex(RFC1_46).hex()
