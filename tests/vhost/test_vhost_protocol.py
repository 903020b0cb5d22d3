"""The vhost-user codec: exact request bytes, strict reply checks, garbage in.

Golden bytes follow QEMU's docs/interop/vhost-user.rst (as summarised in
peers.md §16.1, the layouts that worked against qemu-storage-daemon).
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtio_msg.vhost.profiles import (
    PROFILES,
    OptionError,
    fs_config,
    infer_type,
    net_config,
    parse_mac,
    profile,
)
from virtio_msg.vhost.protocol import (
    MAX_CONFIG_SIZE,
    MemoryRegion,
    Request,
    VhostUserError,
    VhostUserProtocolError,
    VhostUserRefused,
    check_ack,
    decode_header,
    encode,
    encode_config,
    encode_mem_table,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
    parse_config,
    parse_u64,
    parse_vring_state,
    protocol_feature_names,
    with_need_reply,
)

LE = struct.pack("=H", 1) == b"\x01\x00"
pytestmark = pytest.mark.skipif(not LE, reason="golden bytes are little-endian (native order)")


# --- requests -------------------------------------------------------------------------------


def test_header_is_request_flags_size_with_version_1() -> None:
    assert encode(Request.GET_FEATURES) == bytes.fromhex("01000000 01000000 00000000")
    assert encode(Request.SET_OWNER, need_reply=True) == bytes.fromhex("03000000 09000000 00000000")


def test_set_features_carries_one_u64() -> None:
    data = encode_u64(Request.SET_FEATURES, 0x1_4000_0000)
    assert data == bytes.fromhex("02000000 01000000 08000000 0000004001000000")


def test_vring_addr_puts_used_before_avail() -> None:
    data = encode_vring_addr(1, desc=0x1000, used=0x3000, avail=0x2000)
    request, flags, size = struct.unpack_from("=III", data)
    assert (request, flags, size) == (9, 1, 40)
    assert struct.unpack_from("=IIQQQQ", data, 12) == (1, 0, 0x1000, 0x3000, 0x2000, 0)


def test_mem_table_is_count_padding_and_regions() -> None:
    region = MemoryRegion(guest_addr=0x1_0000_0000, size=4 << 20, user_addr=0x1_0000_0000)
    data = encode_mem_table([region], need_reply=True)
    assert struct.unpack_from("=III", data) == (5, 0x9, 8 + 32)
    assert struct.unpack_from("=IIQQQQ", data, 12) == (1, 0, 1 << 32, 4 << 20, 1 << 32, 0)


def test_mem_table_takes_one_to_eight_regions() -> None:
    with pytest.raises(ValueError):
        encode_mem_table([])
    with pytest.raises(ValueError):
        encode_mem_table([MemoryRegion(0, 4096, 0)] * 9)


def test_config_requests_of_any_size_up_to_256_bytes() -> None:
    data = encode_config(Request.GET_CONFIG, 0, bytes(MAX_CONFIG_SIZE))
    assert struct.unpack_from("=IIIIII", data) == (24, 1, 12 + 256, 0, 256, 0)
    assert len(data) == 12 + 12 + 256
    data = encode_config(Request.SET_CONFIG, 32, b"\x01", need_reply=True)
    assert data == bytes.fromhex("19000000 09000000 0d000000 20000000 01000000 00000000 01")
    for bad in (b"", bytes(257)):
        with pytest.raises(ValueError):
            encode_config(Request.GET_CONFIG, 0, bad)
    with pytest.raises(ValueError):
        encode_config(Request.SET_CONFIG, 250, bytes(8))  # past the 256-byte space


def test_need_reply_is_never_set_on_requests_that_have_a_reply() -> None:
    with pytest.raises(ValueError):
        encode(Request.GET_VRING_BASE, need_reply=True)
    with pytest.raises(ValueError):
        with_need_reply(encode(Request.GET_CONFIG))
    assert struct.unpack_from("=I", with_need_reply(encode(Request.SET_OWNER)), 4)[0] == 0x9


def test_vring_state_ranges() -> None:
    assert encode_vring_state(Request.SET_VRING_NUM, 2, 256)[12:] == struct.pack("=II", 2, 256)
    with pytest.raises(ValueError):
        encode_vring_state(Request.SET_VRING_NUM, -1, 8)


# --- replies -----------------------------------------------------------------------------------


def _header(request: int, flags: int = 0x5, size: int = 8) -> bytes:
    return struct.pack("=III", request, flags, size)


@pytest.mark.parametrize(
    "raw, match",
    [
        (_header(1, flags=0x1), "REPLY flag"),
        (_header(1, flags=0x4), "version 0"),
        (_header(1, flags=0x7), "version 3"),
        (_header(2), "expected GET_FEATURES"),
        (_header(99), "unknown"),
        (_header(1, size=4097), "claims 4097"),
        (_header(1)[:11], "11 bytes"),
    ],
)
def test_reply_header_violations(raw: bytes, match: str) -> None:
    with pytest.raises(VhostUserProtocolError, match=match):
        decode_header(raw, Request.GET_FEATURES)


def test_reply_header_accepts_need_reply_echoed() -> None:
    assert decode_header(_header(1, flags=0xD), Request.GET_FEATURES).size == 8


def test_u64_and_ack() -> None:
    assert parse_u64(struct.pack("=Q", 7), Request.GET_QUEUE_NUM) == 7
    with pytest.raises(VhostUserProtocolError):
        parse_u64(b"\0" * 4, Request.GET_QUEUE_NUM)
    check_ack(bytes(8), Request.SET_MEM_TABLE)
    with pytest.raises(VhostUserRefused, match="SET_MEM_TABLE"):
        check_ack(struct.pack("=Q", 1), Request.SET_MEM_TABLE)


def test_vring_base_must_answer_for_the_ring_asked() -> None:
    assert parse_vring_state(struct.pack("=II", 3, 2003), 3) == 2003
    with pytest.raises(VhostUserProtocolError, match="answered for ring 1"):
        parse_vring_state(struct.pack("=II", 1, 0), 3)
    with pytest.raises(VhostUserProtocolError, match="split-ring index"):
        parse_vring_state(struct.pack("=II", 3, 0x1_0000), 3)


def test_config_reply_must_echo_offset_and_size() -> None:
    body = struct.pack("=III", 0, 4, 0) + b"abcd"
    assert parse_config(body, 0, 4) == b"abcd"
    with pytest.raises(VhostUserRefused):
        parse_config(b"", 0, 4)
    with pytest.raises(VhostUserProtocolError, match="asked 4 at 0"):
        parse_config(struct.pack("=III", 8, 4, 0) + b"abcd", 0, 4)
    with pytest.raises(VhostUserProtocolError, match="not 12 \\+ 4"):
        parse_config(body + b"x", 0, 4)


@given(st.binary(max_size=64), st.sampled_from(list(Request)))
def test_garbage_only_ever_raises_the_vhost_error_types(data: bytes, request: Request) -> None:
    for parse in (
        lambda: decode_header(data[:12], request),
        lambda: parse_u64(data, request),
        lambda: parse_vring_state(data, 0),
        lambda: parse_config(data, 0, 8),
    ):
        with contextlib.suppress(VhostUserError):
            parse()


def test_protocol_feature_names() -> None:
    assert protocol_feature_names(0x8F2B)[:3] == ["MQ", "LOG_SHMFD", "REPLY_ACK"]


# --- device profiles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/usr/bin/qemu-storage-daemon", "--export", "type=vhost-user-blk,id=e"], "blk"),
        (["qemu-storage-daemon", "--export", "type=nbd"], None),
        (["/usr/lib/qemu/virtiofsd", "--socket-path=/x"], "fs"),
        (["dpdk-testpmd", "--vdev", "net_vhost0,iface=/x"], "net"),
        (["/opt/app", "--vdev", "net_vhost0,iface=/x"], "net"),
        (["/usr/lib/qemu/vhost-user-gpu", "-s", "/x"], None),
        ([], None),
    ],
)
def test_type_inferred_from_the_backends_command_line(
    argv: list[str], expected: str | None
) -> None:
    assert infer_type(1234, lambda pid: argv) == expected


def test_no_pid_no_inference() -> None:
    assert infer_type(None) is None


def test_profiles_allow_only_data_path_features() -> None:
    qsd = 0x175007E46  # what qemu-storage-daemon 7.2 offers
    blk = PROFILES["blk"]
    passed = qsd & (blk.backend_features | (1 << 28) | (1 << 29) | (1 << 32))
    for vhost_only in (24, 26, 30):  # NOTIFY_ON_EMPTY, LOG_ALL, PROTOCOL_FEATURES
        assert not passed >> vhost_only & 1
    testpmd = 0xD7C66E7CB
    net = PROFILES["net"]
    for bit in (17, 18, 21, 22, 34):  # CTRL_VQ, CTRL_RX, GUEST_ANNOUNCE, MQ, RING_PACKED
        assert not (testpmd & net.backend_features) >> bit & 1


def test_mac_tag_and_configs() -> None:
    assert parse_mac("52:54:00:12:34:56") == bytes.fromhex("525400123456")
    for bad in ("52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01"):
        with pytest.raises(OptionError):
            parse_mac(bad)
    assert net_config(bytes(6)) == bytes(6) + b"\x01\x00\x01\x00"
    assert fs_config("tag", 1) == b"tag" + bytes(33) + b"\x01\x00\x00\x00"
    with pytest.raises(OptionError):
        fs_config("x" * 37, 1)
    with pytest.raises(OptionError):
        profile("gpu")


def test_queue_counts() -> None:
    assert profile("net").queues_for(128, None) == 2
    assert profile("fs").queues_for(2, None) == 2
    assert profile("fs").queues_for(5, 3) == 4
    with pytest.raises(OptionError):
        profile("fs").queues_for(1, None)
    assert profile("blk").queues_for(4, None) == 4
    assert profile("blk").queues_for(4, 2) == 2
