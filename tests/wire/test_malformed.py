"""Malformed-input and unencodable-message tests for both wire profiles.

Decoding rules come from virtio-msg-spec.md section 2 ("Rules of thumb for
receiving endpoints"), section 8 item 3 (what counts as malformed) and item 8
(EVENT_CONFIG data), and from linux-rfc1.md sections 1.2-1.3.  Every byte string
below was written by hand; the header layouts are

    spec:        type u8 | msg_id u8 | dev_num le16 | token le16 | msg_size le16
    linux-rfc1:  type u8 | msg_id u8 | dev_id le16 | msg_size le16

A decoder must raise :class:`MalformedMessage` (and nothing else) for bad input.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import Codec, GenericMessage
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S

DEV = 0x1234
TOK = 0xBEEF

# Hex snippets reused below (all hand-written).
SPEC_DEVICE_INFO_RESP_PAYLOAD = (
    "1a000000 51454d55 f0e1d2c3b4a5469788796a5b4c3d2e1f 03000000 24010000 11000000"
    " 10000000 01000000"
)  # 44 bytes: device_id, vendor_id, uuid, num_feature_blocks, config_size, max_vq, admin x2
# 40 bytes: index, max_size, cur_size, flags, desc, driver, device
SPEC_VQ_PAYLOAD = (
    "02000000 00010000 80000000 01000000 0000004001000000 0010004002000000 4020004003000000"
)
RFC1_DEVICE_INFO_RESP_PAYLOAD = "02000000 51454d55 40000000 3c000000 04000000 0300 0100"  # 24
# 36 bytes: index, max_size, size, descriptor, driver, device
RFC1_VQ_PAYLOAD = "01000000 00040000 00010000 0060452301000000 0070452302000000 0080452303000000"


def _raw(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


@pytest.fixture(scope="module")
def spec_codec() -> Codec:
    return Codec("spec")


@pytest.fixture(scope="module")
def rfc1_codec() -> Codec:
    return Codec("linux-rfc1")


def _codec(profile: str) -> Codec:
    return Codec(profile)


def _malformed(codec: Codec, data: bytes) -> MalformedMessage:
    with pytest.raises(MalformedMessage) as exc_info:
        codec.decode(data)
    return exc_info.value


def test_self_check_payload_snippets() -> None:
    assert len(_raw(SPEC_DEVICE_INFO_RESP_PAYLOAD)) == 44
    assert len(_raw(SPEC_VQ_PAYLOAD)) == 40
    assert len(_raw(RFC1_DEVICE_INFO_RESP_PAYLOAD)) == 24
    assert len(_raw(RFC1_VQ_PAYLOAD)) == 36


# ====================================================================== header-level rules


@pytest.mark.parametrize(
    ("profile", "hex_text"),
    [
        pytest.param("spec", "", id="spec-empty"),
        pytest.param("spec", "01", id="spec-1-byte"),
        pytest.param("spec", "01 07 3412 efbe", id="spec-6-bytes"),
        pytest.param("spec", "01 07 3412 efbe 0c", id="spec-7-bytes"),
        pytest.param("linux-rfc1", "", id="rfc1-empty"),
        pytest.param("linux-rfc1", "01 07", id="rfc1-2-bytes"),
        pytest.param("linux-rfc1", "01 07 3412 0a", id="rfc1-5-bytes"),
    ],
)
def test_rejects_truncated_header(profile: str, hex_text: str) -> None:
    _malformed(_codec(profile), _raw(hex_text))


@pytest.mark.parametrize("msg_size", range(8))
def test_rejects_msg_size_smaller_than_header_spec(spec_codec: Codec, msg_size: int) -> None:
    # GET_DEVICE_STATUS response, 12-byte buffer, msg_size 0..7
    data = _raw("01 07 3412 efbe") + bytes([msg_size, 0]) + _raw("4b000000")
    assert _malformed(spec_codec, data).field == "msg_size"


@pytest.mark.parametrize("msg_size", range(6))
def test_rejects_msg_size_smaller_than_header_rfc1(rfc1_codec: Codec, msg_size: int) -> None:
    data = _raw("01 07 3412") + bytes([msg_size, 0]) + _raw("07000000")
    assert _malformed(rfc1_codec, data).field == "msg_size"


@pytest.mark.parametrize(
    ("profile", "hex_text"),
    [
        # msg_size 13 in a 12-byte buffer
        pytest.param("spec", "01 07 3412 efbe 0d00 4b000000", id="spec-one-short"),
        # GET_DEVICE_INFO response: msg_size 52, only 48 bytes present
        pytest.param(
            "spec", "01 02 3412 efbe 3400" + SPEC_DEVICE_INFO_RESP_PAYLOAD[:-9], id="spec-info"
        ),
        # msg_size 0xffff in an 8-byte buffer
        pytest.param("spec", "00 02 3412 efbe ffff", id="spec-ffff"),
        pytest.param("linux-rfc1", "01 07 3412 0b00 07000000", id="rfc1-one-short"),
        pytest.param("linux-rfc1", "00 02 3412 2c00", id="rfc1-44-in-6"),
    ],
)
def test_rejects_msg_size_larger_than_buffer(profile: str, hex_text: str) -> None:
    assert _malformed(_codec(profile), _raw(hex_text)).field == "msg_size"


def test_rejects_msg_size_larger_than_default_max_size_spec(spec_codec: Codec) -> None:
    # GET_CONFIG response with 245 data bytes: 8 + 12 + 245 = 265 = 0x0109 > 264
    data = _raw("01 05 3412 efbe 0901 01000000 00000000 f5000000") + bytes(245)
    assert len(data) == 265
    assert _malformed(spec_codec, data).field == "msg_size"


def test_rejects_msg_size_larger_than_configured_max_size_spec() -> None:
    # 8 + 12 + 33 = 53 = 0x35 > 52; the same message fits a 264 codec
    data = _raw("01 05 3412 efbe 3500 01000000 00000000 21000000") + bytes(range(33))
    assert _malformed(Codec("spec", max_size=52), data).field == "msg_size"
    assert Codec("spec").decode(data) == S.GetConfigResp(
        1, 0, 33, bytes(range(33)), dev_num=DEV, token=TOK
    )


def test_rejects_msg_size_larger_than_default_max_size_rfc1(rfc1_codec: Codec) -> None:
    # 6 + 12 + 28 = 46 = 0x2e > 44; fits a codec with max_size 46
    data = _raw("01 05 3412 2e00 01000000 00000000 1c000000") + bytes(range(28))
    assert _malformed(rfc1_codec, data).field == "msg_size"
    assert Codec("linux-rfc1", max_size=46).decode(data) == R.GetConfigResp(
        1, 0, 28, bytes(range(28)), dev_num=DEV
    )


# ====================================================================== payload length rules

SPEC_SHORT_PAYLOADS = [
    pytest.param("01 02 3412 efbe 3300" + SPEC_DEVICE_INFO_RESP_PAYLOAD[:-2], id="info_resp-43"),
    pytest.param("00 03 3412 efbe 0f00 01000000 020000", id="get_features-7"),
    pytest.param("01 03 3412 efbe 0c00 01000000", id="get_features_resp-4"),
    pytest.param("00 04 3412 efbe 0800", id="set_features-0"),
    pytest.param("00 05 3412 efbe 0c00 10000000", id="get_config-4"),
    pytest.param("01 05 3412 efbe 1300 0d0c0b0a 10000000 060000", id="get_config_resp-11"),
    pytest.param("00 06 3412 efbe 1000 07000000 20000000", id="set_config-8"),
    pytest.param("01 06 3412 efbe 1000 08000000 20000000", id="set_config_resp-8"),
    pytest.param("01 07 3412 efbe 0b00 4b0000", id="get_status_resp-3"),
    pytest.param("00 08 3412 efbe 0800", id="set_status-0"),
    pytest.param("01 08 3412 efbe 0a00 0300", id="set_status_resp-2"),
    pytest.param("00 09 3412 efbe 0800", id="get_vqueue-0"),
    # the 36-byte linux-rfc1 GET_VQUEUE response layout is too short for the spec (40)
    pytest.param("01 09 3412 efbe 2c00" + SPEC_VQ_PAYLOAD[:-8], id="get_vqueue_resp-36"),
    pytest.param("00 0a 3412 efbe 2f00" + SPEC_VQ_PAYLOAD[:-2], id="set_vqueue-39"),
    pytest.param("00 0b 3412 efbe 0800", id="reset_vqueue-0"),
    pytest.param("00 0c 3412 efbe 0800", id="get_shm-0"),
    # the old 12-byte GET_SHM response (index, length le32, address le32)
    pytest.param("01 0c 3412 efbe 1400 01000000 00100000 00000080", id="get_shm_resp-12"),
    pytest.param("00 40 3412 0000 1400 0f000000 0e0c0b0a 04000000", id="event_config-12"),
    pytest.param("00 41 3412 0000 0c00 01000000", id="event_avail-4"),
    pytest.param("00 42 3412 0000 0800", id="event_used-0"),
    pytest.param("02 02 0000 3175 0a00 0800", id="get_devices-2"),
    pytest.param("03 02 0000 3175 0c00 0800 4000", id="get_devices_resp-4"),
    pytest.param("02 03 0000 a55a 0800", id="ping-0"),
    pytest.param("03 03 0000 a55a 0b00 efbead", id="ping_resp-3"),
    pytest.param("02 40 0000 0000 0a00 3412", id="event_device-2"),
]

RFC1_SHORT_PAYLOADS = [
    pytest.param("01 02 3412 1d00" + RFC1_DEVICE_INFO_RESP_PAYLOAD[:-2], id="info_resp-23"),
    pytest.param("01 02 3412 1a00 02000000 51454d55 40000000 3c000000 04000000", id="info-20"),
    pytest.param("00 03 3412 0a00 01000000", id="get_features-4"),
    pytest.param("01 03 3412 0a00 01000000", id="get_features_resp-4"),
    pytest.param("00 04 3412 0a00 00000000", id="set_features-4"),
    pytest.param("00 05 3412 0a00 08000000", id="get_config-4"),
    pytest.param("01 05 3412 0e00 04030201 08000000", id="get_config_resp-8"),
    pytest.param("00 06 3412 0e00 05000000 0c000000", id="set_config-8"),
    pytest.param("01 06 3412 0e00 06000000 0c000000", id="set_config_resp-8"),
    pytest.param("01 07 3412 0600", id="get_status_resp-0"),
    pytest.param("00 08 3412 0800 0f00", id="set_status-2"),
    pytest.param("01 08 3412 0600", id="set_status_resp-0"),
    pytest.param("00 09 3412 0600", id="get_vqueue-0"),
    pytest.param("01 09 3412 2900" + RFC1_VQ_PAYLOAD[:-2], id="get_vqueue_resp-35"),
    pytest.param("00 0a 3412 2200" + RFC1_VQ_PAYLOAD[:-17], id="set_vqueue-28"),
    pytest.param("00 0b 3412 0600", id="reset_vqueue-0"),
    pytest.param("00 0c 3412 0600", id="get_shm-0"),
    pytest.param("01 0c 3412 0e00 02000000 00100000", id="get_shm_resp-8"),
    pytest.param("00 40 3412 1200 0f000000 07000000 10000000", id="event_config-12"),
    pytest.param("00 41 3412 0a00 02000000", id="event_avail-4"),
    pytest.param("00 42 3412 0600", id="event_used-0"),
    pytest.param("02 02 0000 0800 1000", id="bus_get_devices-2"),
    pytest.param("03 02 0000 0a00 1000 1800", id="bus_get_devices_resp-4"),
    pytest.param("02 03 0000 0600", id="bus_ping-0"),
    pytest.param("03 03 0000 0900 785634", id="bus_ping_resp-3"),
    pytest.param("02 40 0000 0800 0700", id="bus_event_device-2"),
]


def test_self_check_short_payload_vectors() -> None:
    for params, header in ((SPEC_SHORT_PAYLOADS, 8), (RFC1_SHORT_PAYLOADS, 6)):
        for p in params:
            raw = _raw(str(p.values[0]))
            assert int.from_bytes(raw[header - 2 : header], "little") == len(raw), p.id


@pytest.mark.parametrize("hex_text", SPEC_SHORT_PAYLOADS)
def test_rejects_payload_shorter_than_fixed_part_spec(spec_codec: Codec, hex_text: str) -> None:
    _malformed(spec_codec, _raw(hex_text))


@pytest.mark.parametrize("hex_text", RFC1_SHORT_PAYLOADS)
def test_rejects_payload_shorter_than_fixed_part_rfc1(rfc1_codec: Codec, hex_text: str) -> None:
    _malformed(rfc1_codec, _raw(hex_text))


SPEC_TAIL_MISMATCH = [
    # GET_DEVICE_FEATURES resp: block_index=1, num_blocks=2, one block present
    pytest.param("01 03 3412 efbe 1400 01000000 02000000 03010000", "features", id="feat-2-vs-1"),
    # num_blocks=2, three blocks present
    pytest.param(
        "01 03 3412 efbe 1c00 01000000 02000000 03010000 040000a5 00000000",
        "features",
        id="feat-2-vs-3",
    ),
    # num_blocks=1, 5 bytes (a partial block)
    pytest.param(
        "01 03 3412 efbe 1500 01000000 01000000 03010000 04", "features", id="feat-1-vs-5B"
    ),
    # num_blocks=0, one block present
    pytest.param("01 03 3412 efbe 1400 01000000 00000000 03010000", "features", id="feat-0-vs-1"),
    # SET_DRIVER_FEATURES: num_blocks=3, two blocks present
    pytest.param(
        "00 04 3412 efbe 1800 00000000 03000000 20000030 03010000", "features", id="set-3-vs-2"
    ),
    # SET_DRIVER_FEATURES: num_blocks=0x40000002 (4 * n overflows 32 bits), two blocks present
    pytest.param(
        "00 04 3412 efbe 1800 00000000 02000040 20000030 03010000",
        "features",
        id="set-huge-vs-2",
    ),
    # GET_CONFIG resp: length=6, 5 data bytes
    pytest.param(
        "01 05 3412 efbe 1900 0d0c0b0a 10000000 06000000 5254001234", "data", id="getcfg-6-vs-5"
    ),
    # length=6, 7 data bytes
    pytest.param(
        "01 05 3412 efbe 1b00 0d0c0b0a 10000000 06000000 52540012345600",
        "data",
        id="getcfg-6-vs-7",
    ),
    # length=6, no data at all
    pytest.param("01 05 3412 efbe 1400 0d0c0b0a 10000000 06000000", "data", id="getcfg-6-vs-0"),
    # length=0xffffffff, 2 data bytes
    pytest.param("01 05 3412 efbe 1600 0d0c0b0a 10000000 ffffffff 5254", "data", id="getcfg-huge"),
    # SET_CONFIG req: length=3, 2 data bytes
    pytest.param(
        "00 06 3412 efbe 1600 07000000 20000000 03000000 aabb", "data", id="setcfg-3-vs-2"
    ),
    # SET_CONFIG req: length=3, no data (a request always carries 12 + length bytes)
    pytest.param("00 06 3412 efbe 1400 07000000 20000000 03000000", "data", id="setcfg-3-vs-0"),
    # SET_CONFIG req: length=0, 1 data byte
    pytest.param("00 06 3412 efbe 1500 07000000 20000000 00000000 aa", "data", id="setcfg-0-vs-1"),
    # SET_CONFIG resp: length=3, 2 data bytes (neither 0 nor length)
    pytest.param(
        "01 06 3412 efbe 1600 08000000 20000000 03000000 aabb", "data", id="setcfg_resp-3-vs-2"
    ),
    # SET_CONFIG resp: length=0 (rejected) must not carry data (spec DEV-53)
    pytest.param(
        "01 06 3412 efbe 1500 09000000 20000000 00000000 aa", "data", id="setcfg_resp-0-vs-1"
    ),
    # EVENT_CONFIG: length=4, 2 data bytes
    pytest.param(
        "00 40 3412 0000 1a00 0f000000 0e0c0b0a 04000000 04000000 dcba", "data", id="evcfg-4-vs-2"
    ),
    # EVENT_CONFIG: length=0, 2 data bytes (spec 8 item 8: anything else is malformed)
    pytest.param(
        "00 40 3412 0000 1a00 0f000000 0e0c0b0a 04000000 00000000 dcba", "data", id="evcfg-0-vs-2"
    ),
    # GET_DEVICES resp: count=12 needs 2 bitmap bytes, 1 present
    pytest.param("03 02 0000 3175 0f00 0800 4000 0c00 25", "bitmap", id="devs-12-vs-1"),
    # count=12, 3 bitmap bytes
    pytest.param("03 02 0000 3175 1100 0800 4000 0c00 250a00", "bitmap", id="devs-12-vs-3"),
    # count=0, 1 bitmap byte
    pytest.param("03 02 0000 3175 0f00 2000 0000 0000 00", "bitmap", id="devs-0-vs-1"),
    # count=8 needs exactly 1 byte, 2 present
    pytest.param("03 02 0000 3175 1000 0000 0000 0800 ff00", "bitmap", id="devs-8-vs-2"),
]

RFC1_TAIL_MISMATCH = [
    # GET_DEV_FEATURES resp: index=1 num=2, one word present
    pytest.param("01 03 3412 1200 01000000 02000000 20000010", ("features",), id="feat-2-vs-1"),
    # SET_DRV_FEATURES: num=2, three words present
    pytest.param(
        "00 04 3412 1a00 00000000 02000000 00000010 01000000 00000000",
        ("features",),
        id="set-2-vs-3",
    ),
    # the seed kernel's SET_DRV_FEATURES (linux-rfc1.md 5 item 22): msg_size 14 while the
    # 8 feature bytes sit after msg_size in the buffer -> tail empty, num=2
    pytest.param(
        "00 04 3412 0e00 00000000 02000000 00000010 01000000",
        ("features",),
        id="seed-set-drv-features-msg-size-14",
    ),
    # GET_CONFIG resp: size=4, 3 config bytes
    pytest.param(
        "01 05 3412 1500 04030201 08000000 04000000 112233", ("config", "data"), id="getcfg-4-vs-3"
    ),
    # SET_CONFIG: size=2, 1 config byte
    pytest.param(
        "00 06 3412 1300 05000000 0c000000 02000000 a5", ("config", "data"), id="setcfg-2-vs-1"
    ),
    # the seed kernel's SET_CONFIG (linux-rfc1.md 5 item 22): msg_size 18 regardless of size
    pytest.param(
        "00 06 3412 1200 05000000 0c000000 02000000 a55a",
        ("config", "data"),
        id="seed-set-config-msg-size-18",
    ),
    # SET_CONFIG resp: size=2, 1 config byte
    pytest.param(
        "01 06 3412 1300 06000000 0c000000 02000000 a5", ("config", "data"), id="setcfg_resp-2-vs-1"
    ),
    # EVENT_CONFIG: size=4, 2 config bytes
    pytest.param(
        "00 40 3412 1800 0f000000 07000000 10000000 04000000 0a0b",
        ("config", "data"),
        id="evcfg-4-vs-2",
    ),
    # BUS_GET_DEVICES resp: num=24 needs 3 bytes, 2 present
    pytest.param("03 02 0000 0e00 1000 1800 2800 0180", ("devices", "bitmap"), id="devs-24-vs-2"),
    # num=10 needs 2 bytes, 1 present
    pytest.param("03 02 0000 0d00 0000 0a00 0000 ff", ("devices", "bitmap"), id="devs-10-vs-1"),
]


def test_self_check_tail_vectors() -> None:
    for params, header in ((SPEC_TAIL_MISMATCH, 8), (RFC1_TAIL_MISMATCH, 6)):
        for p in params:
            raw = _raw(str(p.values[0]))
            end = int.from_bytes(raw[header - 2 : header], "little")
            # the seed-kernel vectors deliberately carry bytes after msg_size
            assert end == len(raw) or str(p.id).startswith("seed-"), p.id


@pytest.mark.parametrize(("hex_text", "field"), SPEC_TAIL_MISMATCH)
def test_rejects_variable_tail_disagreeing_with_count_spec(
    spec_codec: Codec, hex_text: str, field: str
) -> None:
    assert _malformed(spec_codec, _raw(hex_text)).field == field


@pytest.mark.parametrize(("hex_text", "fields"), RFC1_TAIL_MISMATCH)
def test_rejects_variable_tail_disagreeing_with_count_rfc1(
    rfc1_codec: Codec, hex_text: str, fields: tuple[str, ...]
) -> None:
    assert _malformed(rfc1_codec, _raw(hex_text)).field in fields


# ====================================================================== type / msg_id / dev_num


@pytest.mark.parametrize(
    ("profile", "hex_text"),
    [
        pytest.param(
            "spec", "01 40 3412 0000 1800 4f000000 11000000 00000000 00000000", id="spec-0x40"
        ),
        pytest.param("spec", "01 41 3412 0000 1000 01000000 23010080", id="spec-0x41"),
        pytest.param("spec", "01 42 3412 0000 0c00 03000000", id="spec-0x42"),
        pytest.param("spec", "03 40 0000 0000 0c00 3412 0100", id="spec-bus-0x40"),
        pytest.param("spec", "01 c0 3412 0000 0800", id="spec-impl-0xc0"),
        pytest.param("spec", "03 ff 0000 0000 0900 5a", id="spec-impl-bus-0xff"),
        pytest.param(
            "linux-rfc1", "01 40 3412 1600 0f000000 08000000 00000000 00000000", id="rfc1-0x40"
        ),
        pytest.param("linux-rfc1", "01 42 3412 0a00 03000000", id="rfc1-0x42"),
        pytest.param("linux-rfc1", "03 40 0000 0a00 0700 0200", id="rfc1-bus-0x40"),
    ],
)
def test_rejects_event_with_response_bit(profile: str, hex_text: str) -> None:
    assert _malformed(_codec(profile), _raw(hex_text)).field in ("type", "msg_id")


def test_rfc1_accepts_only_the_kick_acknowledgement_as_event_response() -> None:
    """The seed answers EVENT_AVAIL (linux-rfc1.md 4.1); spec and other events refuse it."""
    assert _codec("linux-rfc1").decode(_raw("01 41 3412 0600")) == R.EventAvailResp(dev_num=0x1234)
    assert _malformed(_codec("spec"), _raw("01 41 3412 0000 0800")).field in ("type", "msg_id")
    assert _malformed(_codec("linux-rfc1"), _raw("03 41 0000 0600")).field in ("type", "msg_id")


@pytest.mark.parametrize(
    ("profile", "hex_text"),
    [
        pytest.param("spec", "02 02 0100 3175 0c00 0800 1000", id="spec-get_devices"),
        pytest.param(
            "spec", "03 02 3412 3175 1000 0800 4000 0c00 250a", id="spec-get_devices_resp"
        ),
        pytest.param("spec", "02 03 0080 a55a 0c00 efbeadde", id="spec-ping"),
        pytest.param("spec", "03 03 0100 a55a 0c00 efbeadde", id="spec-ping_resp"),
        pytest.param("spec", "02 40 0100 0000 0c00 3412 0100", id="spec-event_device"),
        pytest.param("spec", "02 80 0100 4200 0800", id="spec-impl-bus"),
        pytest.param("linux-rfc1", "02 02 0100 0a00 1000 1800", id="rfc1-bus_get_devices"),
        pytest.param("linux-rfc1", "03 03 3412 0a00 78563412", id="rfc1-bus_ping_resp"),
        pytest.param("linux-rfc1", "02 40 0700 0a00 0700 0200", id="rfc1-bus_event_device"),
    ],
)
def test_rejects_bus_message_with_nonzero_dev_num(profile: str, hex_text: str) -> None:
    assert _malformed(_codec(profile), _raw(hex_text)).field == "dev_num"


@pytest.mark.parametrize(
    ("profile", "hex_text"),
    [
        # transport namespace (type 00/01), 4 payload bytes each
        pytest.param("spec", "00 00 3412 efbe 0c00 00000000", id="spec-t-0x00"),
        pytest.param("spec", "00 01 3412 efbe 0c00 00000000", id="spec-t-0x01"),
        pytest.param("spec", "01 01 3412 efbe 0c00 00000000", id="spec-t-resp-0x01"),
        pytest.param("spec", "00 0d 3412 efbe 0c00 00000000", id="spec-t-0x0d"),
        pytest.param("spec", "01 0d 3412 efbe 0c00 00000000", id="spec-t-resp-0x0d"),
        pytest.param("spec", "00 3f 3412 efbe 0c00 00000000", id="spec-t-0x3f"),
        pytest.param("spec", "00 43 3412 0000 0c00 00000000", id="spec-t-0x43"),
        pytest.param("spec", "00 7f 3412 0000 0c00 00000000", id="spec-t-0x7f"),
        # bus namespace (type 02/03)
        pytest.param("spec", "02 00 0000 0000 0c00 00000000", id="spec-b-0x00"),
        pytest.param("spec", "02 01 0000 0000 0c00 00000000", id="spec-b-0x01"),
        pytest.param("spec", "02 04 0000 0000 0c00 00000000", id="spec-b-0x04"),
        pytest.param("spec", "03 04 0000 0000 0c00 00000000", id="spec-b-resp-0x04"),
        pytest.param("spec", "02 0c 0000 0000 0c00 00000000", id="spec-b-0x0c"),
        pytest.param("spec", "02 3f 0000 0000 0c00 00000000", id="spec-b-0x3f"),
        pytest.param("spec", "02 41 0000 0000 0c00 00000000", id="spec-b-0x41"),
        pytest.param("spec", "02 42 0000 0000 0c00 00000000", id="spec-b-0x42"),
        pytest.param("linux-rfc1", "00 00 3412 0a00 00000000", id="rfc1-t-0x00"),
        pytest.param("linux-rfc1", "00 01 3412 0a00 00000000", id="rfc1-t-0x01"),
        pytest.param("linux-rfc1", "00 0d 3412 0a00 00000000", id="rfc1-t-0x0d"),
        pytest.param("linux-rfc1", "01 3f 3412 0a00 00000000", id="rfc1-t-resp-0x3f"),
        pytest.param("linux-rfc1", "00 43 3412 0a00 00000000", id="rfc1-t-0x43"),
        pytest.param("linux-rfc1", "02 04 0000 0a00 00000000", id="rfc1-b-0x04"),
        pytest.param("linux-rfc1", "03 05 0000 0a00 00000000", id="rfc1-b-resp-0x05"),
        pytest.param("linux-rfc1", "02 41 0000 0a00 00000000", id="rfc1-b-0x41"),
    ],
)
def test_rejects_unknown_standard_msg_id(profile: str, hex_text: str) -> None:
    assert _malformed(_codec(profile), _raw(hex_text)).field == "msg_id"


# ====================================================================== accepted oddities


@pytest.mark.parametrize(
    ("profile", "hex_text", "expected"),
    [
        pytest.param(
            "spec",
            "01 07 3412 efbe 0c00 4b000000 00000000",
            S.GetDeviceStatusResp(0x4B, dev_num=DEV, token=TOK),
            id="spec-status-resp-4-padding",
        ),
        pytest.param(
            "spec",
            # variable tail: data length comes from `length`/msg_size, not from the buffer
            "01 05 3412 efbe 1a00 0d0c0b0a 10000000 06000000 525400123456 0000",
            S.GetConfigResp(
                0x0A0B0C0D, 0x10, 6, bytes.fromhex("525400123456"), dev_num=DEV, token=TOK
            ),
            id="spec-get_config_resp-padding",
        ),
        pytest.param(
            "spec",
            "03 02 0000 3175 1000 0800 4000 0c00 250a 000000",
            S.GetDevicesResp(8, 0x40, 12, b"\x25\x0a", token=0x7531),
            id="spec-get_devices_resp-padding",
        ),
        pytest.param(
            "spec",
            "01 03 3412 efbe 1800 01000000 02000000 03010000 040000a5 00000000",
            S.GetDeviceFeaturesResp(1, 2, (0x103, 0xA5000004), dev_num=DEV, token=TOK),
            id="spec-features_resp-padding",
        ),
        pytest.param(
            "linux-rfc1",
            # the brief's example: a 44-byte rfc1 buffer holding a 10-byte message
            "01 07 3412 0a00 07000000" + " ee" * 34,
            R.GetDeviceStatusResp(7, dev_num=DEV),
            id="rfc1-10-in-44",
        ),
        pytest.param(
            "linux-rfc1",
            "01 05 3412 1600 04030201 08000000 04000000 11223344" + " 55" * 22,
            R.GetConfigResp(0x01020304, 8, 4, b"\x11\x22\x33\x44", dev_num=DEV),
            id="rfc1-get_config_resp-in-44",
        ),
    ],
)
def test_ignores_bytes_after_msg_size(profile: str, hex_text: str, expected: Any) -> None:
    assert _codec(profile).decode(_raw(hex_text)) == expected


@pytest.mark.parametrize(
    ("profile", "hex_text", "expected"),
    [
        pytest.param(
            "spec",
            "fd 07 3412 efbe 0c00 4b000000",  # fd = 0xfc | response
            S.GetDeviceStatusResp(0x4B, dev_num=DEV, token=TOK),
            id="spec-0xfd",
        ),
        pytest.param(
            "spec",
            "fc 41 3412 0000 1000 01000000 23010080",  # fc = reserved bits only
            S.EventAvail(1, 0x80000123, dev_num=DEV),
            id="spec-0xfc-event",
        ),
        pytest.param(
            "spec",
            "ff 03 0000 a55a 0c00 efbeadde",  # ff = reserved | bus | response
            S.PingResp(0xDEADBEEF, token=0x5AA5),
            id="spec-0xff-bus",
        ),
        pytest.param(
            "spec",
            "06 02 0000 3175 0c00 0800 1000",  # 06 = bit 2 | bus
            S.GetDevices(8, 16, token=0x7531),
            id="spec-0x06",
        ),
        pytest.param(
            "spec", "80 02 3412 efbe 0800", S.GetDeviceInfo(dev_num=DEV, token=TOK), id="spec-0x80"
        ),
        pytest.param(
            "spec",
            "fe 80 0000 4200 0900 77",  # fe = reserved | bus
            GenericMessage(0x80, False, True, b"\x77", token=0x42),
            id="spec-0xfe-impl",
        ),
        pytest.param(
            "linux-rfc1",
            "fd 07 3412 0a00 07000000",
            R.GetDeviceStatusResp(7, dev_num=DEV),
            id="rfc1-0xfd",
        ),
        pytest.param(
            "linux-rfc1",
            "0e 40 0000 0a00 0700 0200",  # 0e = bits 2,3 | bus
            R.BusEventDevice(7, 2),
            id="rfc1-0x0e-bus",
        ),
    ],
)
def test_ignores_reserved_type_bits(profile: str, hex_text: str, expected: Any) -> None:
    codec = _codec(profile)
    raw = _raw(hex_text)
    msg = codec.decode(raw)
    assert msg == expected
    # re-encoding sends the reserved bits as 0
    assert codec.encode(msg) == bytes([raw[0] & 0x03]) + raw[1:]


@pytest.mark.parametrize(
    ("profile", "hex_text", "expected"),
    [
        pytest.param(
            "spec",
            "00 02 3412 efbe 0c00 01020304",
            S.GetDeviceInfo(dev_num=DEV, token=TOK),
            id="spec-get_device_info+4",
        ),
        pytest.param(
            "spec",
            "01 02 3412 efbe 3800 " + SPEC_DEVICE_INFO_RESP_PAYLOAD + " ffffffff",
            S.GetDeviceInfoResp(
                0x1A,
                0x554D4551,
                bytes.fromhex("f0e1d2c3b4a5469788796a5b4c3d2e1f"),
                3,
                0x124,
                17,
                16,
                1,
                dev_num=DEV,
                token=TOK,
            ),
            id="spec-get_device_info_resp+4",
        ),
        pytest.param(
            "spec",
            "00 03 3412 efbe 1400 01000000 02000000 aabbccdd",
            S.GetDeviceFeatures(1, 2, dev_num=DEV, token=TOK),
            id="spec-get_device_features+4",
        ),
        pytest.param(
            "spec",
            "01 04 3412 efbe 0a00 0102",
            S.SetDriverFeaturesResp(dev_num=DEV, token=TOK),
            id="spec-set_driver_features_resp+2",
        ),
        pytest.param(
            "spec",
            "00 05 3412 efbe 1400 10000000 06000000 99999999",
            S.GetConfig(0x10, 6, dev_num=DEV, token=TOK),
            id="spec-get_config+4",
        ),
        pytest.param(
            "spec",
            "01 07 3412 efbe 1000 4b000000 11111111",
            S.GetDeviceStatusResp(0x4B, dev_num=DEV, token=TOK),
            id="spec-get_device_status_resp+4",
        ),
        pytest.param(
            "spec",
            "00 08 3412 efbe 1000 0b000000 00000001",
            S.SetDeviceStatus(0x0B, dev_num=DEV, token=TOK),
            id="spec-set_device_status+4",
        ),
        pytest.param(
            "spec",
            "01 09 3412 efbe 3800 " + SPEC_VQ_PAYLOAD + " 0102030405060708",
            S.GetVqueueResp(
                2,
                0x100,
                0x80,
                1,
                0x1_4000_0000,
                0x2_4000_1000,
                0x3_4000_2040,
                dev_num=DEV,
                token=TOK,
            ),
            id="spec-get_vqueue_resp+8",
        ),
        pytest.param(
            "spec",
            "01 0b 3412 efbe 0900 00",
            S.ResetVqueueResp(dev_num=DEV, token=TOK),
            id="spec-reset_vqueue_resp+1",
        ),
        pytest.param(
            "spec",
            "01 0c 3412 efbe 2800 01000000 00000000 0000800000000000 0000000010000000"
            " 0000000000000001",
            S.GetShmResp(1, 0, 0x80_0000, 0x10_0000_0000, dev_num=DEV, token=TOK),
            id="spec-get_shm_resp+8",
        ),
        pytest.param(
            "spec",
            "00 41 3412 0000 1400 01000000 23010080 ffffffff",
            S.EventAvail(1, 0x80000123, dev_num=DEV),
            id="spec-event_avail+4",
        ),
        pytest.param(
            "spec",
            "00 42 3412 0000 0d00 03000000 01",
            S.EventUsed(3, dev_num=DEV),
            id="spec-event_used+1",
        ),
        pytest.param(
            "spec",
            "02 02 0000 3175 0e00 0800 1000 ffff",
            S.GetDevices(8, 16, token=0x7531),
            id="spec-get_devices+2",
        ),
        pytest.param(
            "spec",
            "02 03 0000 a55a 1000 efbeadde 00000000",
            S.Ping(0xDEADBEEF, token=0x5AA5),
            id="spec-ping+4",
        ),
        pytest.param(
            "spec",
            "02 40 0000 0000 0e00 3412 0100 0200",
            S.EventDevice(0x1234, 1),
            id="spec-event_device+2",
        ),
        pytest.param(
            "linux-rfc1",
            "01 02 3412 2000 " + RFC1_DEVICE_INFO_RESP_PAYLOAD + " eeee",
            R.DeviceInfoResp(2, 0x554D4551, 64, 0x3C, 4, 3, 1, dev_num=DEV),
            id="rfc1-device_info_resp+2",
        ),
        pytest.param(
            "linux-rfc1",
            "01 09 3412 2c00 " + RFC1_VQ_PAYLOAD + " eeee",
            R.GetVqueueResp(
                1, 0x400, 0x100, 0x1_2345_6000, 0x2_2345_7000, 0x3_2345_8000, dev_num=DEV
            ),
            id="rfc1-get_vqueue_resp+2",
        ),
        pytest.param(
            "linux-rfc1",
            "01 0a 3412 0800 0000",
            R.SetVqueueResp(dev_num=DEV),
            id="rfc1-set_vqueue_resp+2",
        ),
        pytest.param(
            "linux-rfc1",
            "00 42 3412 0c00 03000000 0000",
            R.EventUsed(3, dev_num=DEV),
            id="rfc1-event_used+2",
        ),
        pytest.param(
            "linux-rfc1",
            "03 03 0000 0c00 78563412 eeee",
            R.BusPingResp(0x12345678),
            id="rfc1-bus_ping_resp+2",
        ),
    ],
)
def test_accepts_extra_payload_without_variable_tail(
    profile: str, hex_text: str, expected: Any
) -> None:
    raw = _raw(hex_text)
    header = 8 if profile == "spec" else 6
    assert int.from_bytes(raw[header - 2 : header], "little") == len(raw)  # self-check
    codec = _codec(profile)
    msg = codec.decode(raw)
    assert msg == expected
    # re-encoding produces the canonical (shorter) message
    assert len(codec.encode(msg)) < len(raw)


# ====================================================================== encode errors


def _large_features(n: int) -> tuple[int, ...]:
    return tuple(range(n))


@pytest.mark.parametrize(
    ("profile", "max_size", "make"),
    [
        # 8 + 12 + 245 = 265 > 264
        pytest.param("spec", None, lambda: S.GetConfigResp(0, 0, 245, bytes(245)), id="cfg-265"),
        # 8 + 8 + 4*63 = 268 > 264
        pytest.param(
            "spec",
            None,
            lambda: S.SetDriverFeatures(0, 63, _large_features(63)),
            id="features-268",
        ),
        # 8 + 12 + 33 = 53 > 52
        pytest.param("spec", 52, lambda: S.GetConfigResp(0, 0, 33, bytes(33)), id="cfg-53-at-52"),
        # 8 + 65528 = 65536 > 65535
        pytest.param(
            "spec",
            65535,
            lambda: GenericMessage(0x80, False, True, bytes(65528)),
            id="impl-65536",
        ),
        # 6 + 12 + 27 = 45 > 44
        pytest.param(
            "linux-rfc1", None, lambda: R.GetConfigResp(0, 0, 27, bytes(27)), id="rfc1-cfg-45"
        ),
        # 6 + 6 + 33 = 45 > 44 (num=264 -> 33 bitmap bytes)
        pytest.param(
            "linux-rfc1",
            None,
            lambda: R.BusGetDevicesResp(0, 264, 0, bytes(33)),
            id="rfc1-devices-45",
        ),
    ],
)
def test_encode_rejects_message_larger_than_max_size(
    profile: str, max_size: int | None, make: Callable[[], Any]
) -> None:
    codec = Codec(profile) if max_size is None else Codec(profile, max_size=max_size)
    with pytest.raises(EncodeError):
        codec.encode(make())


def test_encode_accepts_message_of_exactly_max_size() -> None:
    assert len(Codec("spec", max_size=52).encode(S.GetConfigResp(0, 0, 32, bytes(32)))) == 52
    assert len(Codec("spec").encode(S.SetDriverFeatures(0, 62, _large_features(62)))) == 264
    assert len(Codec("linux-rfc1").encode(R.GetConfigResp(0, 0, 26, bytes(26)))) == 44


@pytest.mark.parametrize(
    ("profile", "make"),
    [
        pytest.param("spec", lambda: S.GetDevices(0, 8, dev_num=5), id="get_devices"),
        pytest.param("spec", lambda: S.GetDevicesResp(0, 0, 0, b"", dev_num=1), id="resp"),
        pytest.param("spec", lambda: S.Ping(1, dev_num=1), id="ping"),
        pytest.param("spec", lambda: S.PingResp(1, dev_num=0x8000), id="ping_resp"),
        pytest.param("spec", lambda: S.EventDevice(1, 1, dev_num=1), id="event_device"),
        pytest.param(
            "spec", lambda: GenericMessage(0x80, False, True, b"", dev_num=1), id="impl-bus"
        ),
        pytest.param("linux-rfc1", lambda: R.BusPing(1, dev_num=1), id="rfc1-bus_ping"),
        pytest.param(
            "linux-rfc1", lambda: R.BusEventDevice(7, 2, dev_num=7), id="rfc1-bus_event_device"
        ),
    ],
)
def test_encode_rejects_bus_message_with_nonzero_dev_num(
    profile: str, make: Callable[[], Any]
) -> None:
    with pytest.raises(EncodeError):
        Codec(profile).encode(make())


_UUID = bytes(16)


@pytest.mark.parametrize(
    ("profile", "make"),
    [
        pytest.param("spec", lambda: S.SetDeviceStatus(2**32), id="status-2**32"),
        pytest.param("spec", lambda: S.SetDeviceStatus(-1), id="status-negative"),
        pytest.param("spec", lambda: S.GetDeviceStatus(dev_num=0x10000), id="dev_num-2**16"),
        pytest.param("spec", lambda: S.GetDeviceStatus(dev_num=-1), id="dev_num-negative"),
        pytest.param("spec", lambda: S.GetDeviceStatus(token=0x10000), id="token-2**16"),
        pytest.param("spec", lambda: S.GetDeviceStatus(token=-1), id="token-negative"),
        pytest.param("spec", lambda: S.GetDevices(0x10000, 0), id="get_devices-offset"),
        pytest.param("spec", lambda: S.GetDevices(0, -1), id="get_devices-count"),
        pytest.param("spec", lambda: S.EventDevice(0x10000, 1), id="event_device-number"),
        pytest.param("spec", lambda: S.EventDevice(1, 0x10000), id="event_device-state"),
        pytest.param("spec", lambda: S.Ping(2**32), id="ping-data"),
        pytest.param("spec", lambda: S.EventAvail(0, 2**32), id="event_avail-next_offset"),
        pytest.param(
            "spec", lambda: S.GetVqueueResp(0, 0, 0, 0, 2**64, 0, 0), id="vqueue-desc_addr-2**64"
        ),
        pytest.param(
            "spec", lambda: S.SetVqueue(0, 1, 8, 0, 0, 0, -1), id="vqueue-device_addr-negative"
        ),
        pytest.param("spec", lambda: S.GetShmResp(1, 0, -1, 0), id="shm-length-negative"),
        pytest.param("spec", lambda: S.GetShmResp(1, 0, 0, 2**64), id="shm-address-2**64"),
        pytest.param(
            "spec", lambda: S.GetDeviceFeaturesResp(0, 1, (2**32,)), id="features-word-2**32"
        ),
        pytest.param("spec", lambda: S.SetDriverFeatures(0, 1, (-1,)), id="features-word-negative"),
        pytest.param(
            "spec",
            lambda: S.GetDeviceInfoResp(2**32, 0, _UUID, 0, 0, 0, 0, 0),
            id="info-device_id",
        ),
        pytest.param(
            "spec",
            lambda: S.GetDeviceInfoResp(1, 0, bytes(15), 0, 0, 0, 0, 0),
            id="info-uuid-15-bytes",
        ),
        pytest.param(
            "spec",
            lambda: S.GetDeviceInfoResp(1, 0, bytes(17), 0, 0, 0, 0, 0),
            id="info-uuid-17-bytes",
        ),
        pytest.param(
            "spec", lambda: GenericMessage(0x7F, False, False, b""), id="impl-msg_id-standard"
        ),
        pytest.param(
            "spec", lambda: GenericMessage(0x100, False, False, b""), id="impl-msg_id-0x100"
        ),
        pytest.param(
            "spec", lambda: GenericMessage(0xC0, True, False, b""), id="impl-event-as-response"
        ),
        pytest.param("linux-rfc1", lambda: R.SetDeviceStatus(2**32), id="rfc1-status-2**32"),
        pytest.param("linux-rfc1", lambda: R.SetDeviceStatus(-1), id="rfc1-status-negative"),
        pytest.param(
            "linux-rfc1",
            lambda: R.DeviceInfoResp(1, 1, 64, 0, 1, 0x10000, 0),
            id="rfc1-admin_vq_start_idx-u16",
        ),
        pytest.param(
            "linux-rfc1",
            lambda: R.DeviceInfoResp(1, 1, 64, 0, 1, 0, 0x10000),
            id="rfc1-admin_vq_count-u16",
        ),
        pytest.param("linux-rfc1", lambda: R.BusGetDevices(0x10000, 0), id="rfc1-bus_offset"),
        pytest.param("linux-rfc1", lambda: R.GetShmResp(0, 0, 2**32), id="rfc1-shm-addr-is-u32"),
        pytest.param(
            "linux-rfc1",
            lambda: R.GetVqueueResp(0, 0, 0, 2**64, 0, 0),
            id="rfc1-vqueue-addr-2**64",
        ),
        pytest.param(
            "linux-rfc1", lambda: R.GetDeviceStatus(dev_num=0x10000), id="rfc1-dev_num-2**16"
        ),
        pytest.param("linux-rfc1", lambda: R.GetDeviceStatus(token=1), id="rfc1-token-nonzero"),
        pytest.param("linux-rfc1", lambda: R.BusPingResp(1, token=0xBEEF), id="rfc1-bus-token"),
    ],
)
def test_encode_rejects_field_out_of_range(profile: str, make: Callable[[], Any]) -> None:
    with pytest.raises(EncodeError):
        Codec(profile).encode(make())


@pytest.mark.parametrize(
    ("profile", "make"),
    [
        pytest.param("spec", lambda: S.GetDeviceFeaturesResp(0, 2, (1,)), id="get-feat-2-vs-1"),
        pytest.param("spec", lambda: S.GetDeviceFeaturesResp(0, 1, (1, 2)), id="get-feat-1-vs-2"),
        pytest.param("spec", lambda: S.GetDeviceFeaturesResp(0, 1, ()), id="get-feat-1-vs-0"),
        pytest.param("spec", lambda: S.SetDriverFeatures(0, 3, (1, 2)), id="set-feat-3-vs-2"),
        pytest.param("spec", lambda: S.GetConfigResp(0, 0, 3, b"ab"), id="getcfg-3-vs-2"),
        pytest.param("spec", lambda: S.GetConfigResp(0, 0, 0, b"a"), id="getcfg-0-vs-1"),
        pytest.param("spec", lambda: S.SetConfig(0, 0, 2, b"abc"), id="setcfg-2-vs-3"),
        pytest.param("spec", lambda: S.SetConfig(0, 0, 3, b""), id="setcfg-3-vs-0"),
        pytest.param("spec", lambda: S.SetConfigResp(0, 0, 2, b"a"), id="setcfg_resp-2-vs-1"),
        pytest.param("spec", lambda: S.SetConfigResp(0, 0, 0, b"a"), id="setcfg_resp-0-vs-1"),
        pytest.param("spec", lambda: S.EventConfig(0, 0, 0, 2, b"a"), id="evcfg-2-vs-1"),
        pytest.param("spec", lambda: S.EventConfig(0, 0, 0, 0, b"a"), id="evcfg-0-vs-1"),
        pytest.param("spec", lambda: S.GetDevicesResp(0, 0, 12, b"\x01"), id="devs-12-vs-1"),
        pytest.param("spec", lambda: S.GetDevicesResp(0, 0, 8, b"\x01\x00"), id="devs-8-vs-2"),
        pytest.param("spec", lambda: S.GetDevicesResp(0, 0, 0, b"\x00"), id="devs-0-vs-1"),
        pytest.param(
            "linux-rfc1", lambda: R.GetDevFeaturesResp(0, 2, (1,)), id="rfc1-get-feat-2-vs-1"
        ),
        pytest.param(
            "linux-rfc1", lambda: R.SetDrvFeatures(0, 2, (1, 2, 3)), id="rfc1-set-feat-2-vs-3"
        ),
        pytest.param(
            "linux-rfc1", lambda: R.GetConfigResp(0, 0, 4, b"abc"), id="rfc1-getcfg-4-vs-3"
        ),
        pytest.param("linux-rfc1", lambda: R.SetConfig(0, 0, 1, b"ab"), id="rfc1-setcfg-1-vs-2"),
        pytest.param(
            "linux-rfc1", lambda: R.SetConfigResp(0, 0, 2, b"a"), id="rfc1-setcfg_resp-2-vs-1"
        ),
        pytest.param(
            "linux-rfc1",
            lambda: R.BusGetDevicesResp(0, 10, 0, b"\xff"),
            id="rfc1-devs-10-vs-1",
        ),
    ],
)
def test_encode_rejects_tail_disagreeing_with_count(profile: str, make: Callable[[], Any]) -> None:
    with pytest.raises(EncodeError):
        Codec(profile).encode(make())


# ====================================================================== robustness sweep

# A handful of hand-written valid messages (copies of golden vectors) used as mutation seeds.
SPEC_SEEDS = [
    "00 02 3412 efbe 0800",
    "01 02 3412 efbe 3400 " + SPEC_DEVICE_INFO_RESP_PAYLOAD,
    "01 03 3412 efbe 1800 01000000 02000000 03010000 040000a5",
    "00 04 3412 efbe 1c00 00000000 03000000 20000030 03010000 08000000",
    "01 05 3412 efbe 1a00 0d0c0b0a 10000000 06000000 525400123456",
    "00 06 3412 efbe 1700 07000000 20000000 03000000 aabbcc",
    "01 06 3412 efbe 1400 08000000 20000000 03000000",
    "01 07 3412 efbe 0c00 4b000000",
    "01 09 3412 efbe 3000 " + SPEC_VQ_PAYLOAD,
    "01 0c 3412 efbe 2000 01000000 00000000 0000800000000000 0000000010000000",
    "00 40 3412 0000 1a00 0f000000 0e0c0b0a 04000000 02000000 dcba",
    "00 41 3412 0000 1000 01000000 23010080",
    "03 02 0000 3175 1000 0800 4000 0c00 250a",
    "02 03 0000 a55a 0c00 efbeadde",
    "02 40 0000 0000 0c00 3412 0100",
    "01 81 3412 efbe 0b00 a1b2c3",
]
RFC1_SEEDS = [
    "00 02 3412 0600",
    "01 02 3412 1e00 " + RFC1_DEVICE_INFO_RESP_PAYLOAD,
    "01 03 3412 1600 01000000 02000000 20000010 03000000",
    "01 05 3412 1600 04030201 08000000 04000000 11223344",
    "01 06 3412 1200 06000000 0c000000 02000000",
    "01 09 3412 2a00 " + RFC1_VQ_PAYLOAD,
    "01 0c 3412 1200 02000000 00100000 00000080",
    "00 40 3412 1a00 0f000000 07000000 10000000 04000000 0a0b0c0d",
    "03 02 0000 0f00 1000 1800 2800 018004",
    "02 40 0000 0a00 0700 0200",
]


def _decode_or_malformed(codec: Codec, data: bytes) -> Any:
    """Decode; a MalformedMessage is fine, any other exception fails the test."""
    try:
        msg = codec.decode(data)
    except MalformedMessage as exc:
        assert isinstance(exc.reason, str)
        return None
    # whatever decodes must re-encode and decode back to the same message
    again = codec.decode(codec.encode(msg))
    assert again == msg, data.hex()
    return msg


@pytest.mark.parametrize(("profile", "seeds"), [("spec", SPEC_SEEDS), ("linux-rfc1", RFC1_SEEDS)])
def test_every_strict_prefix_is_malformed(profile: str, seeds: list[str]) -> None:
    codec = _codec(profile)
    for seed in seeds:
        raw = _raw(seed)
        assert codec.decode(raw) is not None
        for n in range(len(raw)):
            with pytest.raises(MalformedMessage):
                codec.decode(raw[:n])


@pytest.mark.parametrize(("profile", "seeds"), [("spec", SPEC_SEEDS), ("linux-rfc1", RFC1_SEEDS)])
def test_bit_flips_raise_only_malformed_message(profile: str, seeds: list[str]) -> None:
    codec = _codec(profile)
    for seed in seeds:
        raw = _raw(seed)
        for pos in range(len(raw)):
            for bit in range(8):
                data = bytearray(raw)
                data[pos] ^= 1 << bit
                _decode_or_malformed(codec, bytes(data))


@pytest.mark.parametrize(
    ("profile", "seeds", "size_at"),
    [("spec", SPEC_SEEDS, 6), ("linux-rfc1", RFC1_SEEDS, 4)],
)
def test_msg_size_sweep_raises_only_malformed_message(
    profile: str, seeds: list[str], size_at: int
) -> None:
    codec = _codec(profile)
    for seed in seeds:
        raw = bytearray(_raw(seed)) + bytearray(8)  # 8 bytes of padding
        for size in (*range(0, len(raw) + 3), 0xFFFF):
            raw[size_at : size_at + 2] = size.to_bytes(2, "little")
            _decode_or_malformed(codec, bytes(raw))


TRANSPORT_IDS = {*range(0x02, 0x0D), 0x40, 0x41, 0x42}
BUS_IDS = {0x02, 0x03, 0x40}


@pytest.mark.parametrize(("profile", "header"), [("spec", 8), ("linux-rfc1", 6)])
def test_all_type_and_msg_id_combinations(profile: str, header: int) -> None:
    codec = _codec(profile)
    payload = bytes(36)
    size = header + len(payload)
    for type_ in range(256):
        for msg_id in range(256):
            hdr = bytes([type_, msg_id]) + bytes(header - 4) + size.to_bytes(2, "little")
            msg = _decode_or_malformed(codec, hdr + payload)
            if msg is None:
                continue
            # The one event response: linux-rfc1's acknowledgement of EVENT_AVAIL.
            seed_ack = profile == "linux-rfc1" and msg_id == 0x41 and type_ & 0x03 == 0x01
            if msg_id & 0x40 and not seed_ack:
                assert not type_ & 0x01, f"event {msg_id:#x} decoded with response bit"
            if msg_id < 0x80:
                known = BUS_IDS if type_ & 0x02 else TRANSPORT_IDS
                assert msg_id in known, f"type {type_:#x} msg_id {msg_id:#x} decoded"


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_random_buffers_raise_only_malformed_message(profile: str) -> None:
    codec = _codec(profile)
    rng = random.Random(0x5EED)
    header = 8 if profile == "spec" else 6
    for _ in range(3000):
        length = rng.randrange(0, 64)
        data = bytearray(rng.getrandbits(8) for _ in range(length))
        if length >= header and rng.random() < 0.7:
            # make msg_size plausible and the header mostly valid
            data[0] &= rng.choice((0x03, 0xFF))
            data[1] = rng.choice((0x02, 0x03, 0x04, 0x05, 0x06, 0x09, 0x0C, 0x40, 0x41, 0x80))
            data[2:4] = b"\x00\x00" if data[0] & 0x02 else data[2:4]
            size = rng.randrange(header, length + 1)
            data[header - 2 : header] = size.to_bytes(2, "little")
        _decode_or_malformed(codec, bytes(data))


@pytest.mark.parametrize(
    ("profile", "make"),
    [
        pytest.param("spec", lambda: R.GetDeviceStatus(), id="rfc1-message-to-spec"),
        pytest.param("spec", lambda: R.BusPing(1), id="rfc1-bus-message-to-spec"),
        pytest.param("linux-rfc1", lambda: S.GetDeviceStatus(), id="spec-message-to-rfc1"),
        pytest.param("linux-rfc1", lambda: S.Ping(1), id="spec-bus-message-to-rfc1"),
        pytest.param("spec", lambda: (0x07, 0, 0), id="plain-tuple"),
    ],
)
def test_encode_rejects_message_of_another_profile(profile: str, make: Callable[[], Any]) -> None:
    with pytest.raises(EncodeError):
        Codec(profile).encode(make())
