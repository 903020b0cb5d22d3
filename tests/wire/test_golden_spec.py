"""Golden vectors for the ``spec`` profile (the 8-byte-header virtio-msg chapter).

Every vector was composed by hand from the project's shared reference virtio-msg-spec.md:
section 2 (common header), section 3 (transport messages), section 4 (bus
messages) and Appendix A (struct formats).  Nothing here was produced by the
codec under test.

Header layout (8 bytes, all little-endian)::

    type u8 | msg_id u8 | dev_num le16 | token le16 | msg_size le16

``type`` bit 0 = response, bit 1 = bus message.  Each literal below is written
one field per group, header first, so ``"01 02 3412 efbe 3400"`` reads
type=0x01, msg_id=0x02, dev_num=0x1234, token=0xBEEF, msg_size=0x0034 (52).
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_msg.errors import VirtioMsgError
from virtio_msg.wire import Codec, GenericMessage
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S

DEV = 0x1234  # dev_num on the wire: 34 12
TOK = 0xBEEF  # token on the wire:   ef be
BUS_TOK = 0x7531  # bus token:       31 75
UUID = bytes.fromhex("f0e1d2c3b4a5469788796a5b4c3d2e1f")

# Addresses with distinct high dwords so that 32/64-bit or field-order slips show up.
DESC = 0x0000_0001_4000_0000  # 00 00 00 40 01 00 00 00
DRV = 0x0000_0002_4000_1000  # 00 10 00 40 02 00 00 00
DEVA = 0x0000_0003_4000_2040  # 40 20 00 40 03 00 00 00

VECTORS = [
    # ---------------------------------------------------------------- 0x02 GET_DEVICE_INFO
    pytest.param(
        # type=00 msg_id=02 dev_num=1234 token=beef msg_size=8 ; no payload
        "00 02 3412 efbe 0800",
        S.GetDeviceInfo(dev_num=DEV, token=TOK),
        id="get_device_info",
    ),
    pytest.param(
        # type=01 msg_id=02 dev_num=1234 token=beef msg_size=52 (8 + 44)
        "01 02 3412 efbe 3400"
        " 1a000000"  # device_id          = 0x1a (26, virtio-fs)
        " 51454d55"  # vendor_id          = 0x554d4551
        " f0e1d2c3b4a5469788796a5b4c3d2e1f"  # device_uuid (16 raw bytes)
        " 03000000"  # num_feature_blocks = 3
        " 24010000"  # config_size        = 0x124
        " 11000000"  # max_virtqueues     = 17
        " 10000000"  # admin_vq_start     = 16
        " 01000000",  # admin_vq_count    = 1
        S.GetDeviceInfoResp(0x1A, 0x554D4551, UUID, 3, 0x124, 17, 16, 1, dev_num=DEV, token=TOK),
        id="get_device_info_resp",
    ),
    # ---------------------------------------------------------------- 0x03 GET_DEVICE_FEATURES
    pytest.param(
        # type=00 msg_id=03 msg_size=16 ; block_index=1 num_blocks=2
        "00 03 3412 efbe 1000 01000000 02000000",
        S.GetDeviceFeatures(1, 2, dev_num=DEV, token=TOK),
        id="get_device_features",
    ),
    pytest.param(
        # type=01 msg_id=03 msg_size=24 (8 + 8 + 2*4)
        "01 03 3412 efbe 1800"
        " 01000000"  # block_index = 1
        " 02000000"  # num_blocks  = 2
        " 03010000"  # features[0] = 0x00000103 (VERSION_1, ACCESS_PLATFORM, RING_RESET)
        " 040000a5",  # features[1] = 0xa5000004
        S.GetDeviceFeaturesResp(1, 2, (0x00000103, 0xA5000004), dev_num=DEV, token=TOK),
        id="get_device_features_resp",
    ),
    # ---------------------------------------------------------------- 0x04 SET_DRIVER_FEATURES
    pytest.param(
        # type=00 msg_id=04 msg_size=28 (8 + 8 + 3*4)
        "00 04 3412 efbe 1c00"
        " 00000000"  # block_index = 0
        " 03000000"  # num_blocks  = 3
        " 20000030"  # features[0] = 0x30000020
        " 03010000"  # features[1] = 0x00000103
        " 08000000",  # features[2] = 0x00000008
        S.SetDriverFeatures(0, 3, (0x30000020, 0x00000103, 0x00000008), dev_num=DEV, token=TOK),
        id="set_driver_features",
    ),
    pytest.param(
        # type=01 msg_id=04 msg_size=8 ; empty response
        "01 04 3412 efbe 0800",
        S.SetDriverFeaturesResp(dev_num=DEV, token=TOK),
        id="set_driver_features_resp",
    ),
    # ---------------------------------------------------------------- 0x05 GET_CONFIG
    pytest.param(
        # type=00 msg_id=05 msg_size=16 ; offset=0x10 length=6
        "00 05 3412 efbe 1000 10000000 06000000",
        S.GetConfig(0x10, 6, dev_num=DEV, token=TOK),
        id="get_config",
    ),
    pytest.param(
        # type=01 msg_id=05 msg_size=26 (8 + 12 + 6)
        "01 05 3412 efbe 1a00"
        " 0d0c0b0a"  # generation = 0x0a0b0c0d
        " 10000000"  # offset     = 0x10
        " 06000000"  # length     = 6
        " 525400123456",  # data (6 bytes)
        S.GetConfigResp(0x0A0B0C0D, 0x10, 6, bytes.fromhex("525400123456"), dev_num=DEV, token=TOK),
        id="get_config_resp",
    ),
    pytest.param(
        # type=01 msg_id=05 msg_size=20 ; generation-only read: generation=0x0a0b0c0e offset=0 len=0
        "01 05 3412 efbe 1400 0e0c0b0a 00000000 00000000",
        S.GetConfigResp(0x0A0B0C0E, 0, 0, b"", dev_num=DEV, token=TOK),
        id="get_config_resp_length_0",
    ),
    # ---------------------------------------------------------------- 0x06 SET_CONFIG
    pytest.param(
        # type=00 msg_id=06 msg_size=23 (8 + 12 + 3)
        "00 06 3412 efbe 1700"
        " 07000000"  # generation = 7
        " 20000000"  # offset     = 0x20
        " 03000000"  # length     = 3
        " aabbcc",  # data
        S.SetConfig(7, 0x20, 3, b"\xaa\xbb\xcc", dev_num=DEV, token=TOK),
        id="set_config",
    ),
    pytest.param(
        # type=01 msg_id=06 msg_size=23 ; applied, data echoed: generation=8 offset=0x20 length=3
        "01 06 3412 efbe 1700 08000000 20000000 03000000 aabbcc",
        S.SetConfigResp(8, 0x20, 3, b"\xaa\xbb\xcc", dev_num=DEV, token=TOK),
        id="set_config_resp_echo",
    ),
    pytest.param(
        # type=01 msg_id=06 msg_size=20 ; applied, no echo: generation=8 offset=0x20 length=3
        "01 06 3412 efbe 1400 08000000 20000000 03000000",
        S.SetConfigResp(8, 0x20, 3, b"", dev_num=DEV, token=TOK),
        id="set_config_resp_no_echo",
    ),
    pytest.param(
        # type=01 msg_id=06 msg_size=20 ; rejected: generation=9 offset=0x20 length=0
        "01 06 3412 efbe 1400 09000000 20000000 00000000",
        S.SetConfigResp(9, 0x20, 0, b"", dev_num=DEV, token=TOK),
        id="set_config_resp_rejected",
    ),
    # ---------------------------------------------------------------- 0x07 GET_DEVICE_STATUS
    pytest.param(
        "00 07 3412 efbe 0800",
        S.GetDeviceStatus(dev_num=DEV, token=TOK),
        id="get_device_status",
    ),
    pytest.param(
        # type=01 msg_id=07 msg_size=12 ; status=0x4b (NEEDS_RESET|FEATURES_OK|DRIVER|ACK)
        "01 07 3412 efbe 0c00 4b000000",
        S.GetDeviceStatusResp(0x4B, dev_num=DEV, token=TOK),
        id="get_device_status_resp",
    ),
    pytest.param(
        # device number 0 is a valid transport device number; token=0x0001
        "00 07 0000 0100 0800",
        S.GetDeviceStatus(dev_num=0, token=1),
        id="get_device_status_dev_num_0",
    ),
    # ---------------------------------------------------------------- 0x08 SET_DEVICE_STATUS
    pytest.param(
        # type=00 msg_id=08 msg_size=12 ; status=0x0b
        "00 08 3412 efbe 0c00 0b000000",
        S.SetDeviceStatus(0x0B, dev_num=DEV, token=TOK),
        id="set_device_status",
    ),
    pytest.param(
        # type=01 msg_id=08 msg_size=12 ; status=0x03 (FEATURES_OK refused)
        "01 08 3412 efbe 0c00 03000000",
        S.SetDeviceStatusResp(0x03, dev_num=DEV, token=TOK),
        id="set_device_status_resp",
    ),
    # ---------------------------------------------------------------- 0x09 GET_VQUEUE
    pytest.param(
        # type=00 msg_id=09 msg_size=12 ; index=2
        "00 09 3412 efbe 0c00 02000000",
        S.GetVqueue(2, dev_num=DEV, token=TOK),
        id="get_vqueue",
    ),
    pytest.param(
        # type=01 msg_id=09 msg_size=48 (8 + 40)
        "01 09 3412 efbe 3000"
        " 02000000"  # index       = 2
        " 00010000"  # max_size    = 0x100
        " 80000000"  # cur_size    = 0x80
        " 01000000"  # flags       = 1 (enabled)
        " 0000004001000000"  # desc_addr   = 0x1_4000_0000
        " 0010004002000000"  # driver_addr = 0x2_4000_1000
        " 4020004003000000",  # device_addr = 0x3_4000_2040
        S.GetVqueueResp(2, 0x100, 0x80, 1, DESC, DRV, DEVA, dev_num=DEV, token=TOK),
        id="get_vqueue_resp",
    ),
    pytest.param(
        # unavailable-queue sentinel: index=0x20 echoed, everything else zero
        "01 09 3412 efbe 3000 20000000 00000000 00000000 00000000"
        " 0000000000000000 0000000000000000 0000000000000000",
        S.GetVqueueResp(0x20, 0, 0, 0, 0, 0, 0, dev_num=DEV, token=TOK),
        id="get_vqueue_resp_unavailable",
    ),
    # ---------------------------------------------------------------- 0x0A SET_VQUEUE
    pytest.param(
        # type=00 msg_id=0a msg_size=48 (8 + 40)
        "00 0a 3412 efbe 3000"
        " 02000000"  # index    = 2
        " 01000000"  # flags    = 1 (enable)
        " 80000000"  # size     = 0x80
        " 00000000"  # reserved = 0
        " 0000004001000000"  # desc_addr
        " 0010004002000000"  # driver_addr
        " 4020004003000000",  # device_addr
        S.SetVqueue(2, 1, 0x80, 0, DESC, DRV, DEVA, dev_num=DEV, token=TOK),
        id="set_vqueue",
    ),
    pytest.param(
        # flags=0x3e (keep state + all four ignore bits), size=0x40
        "00 0a 3412 efbe 3000 07000000 3e000000 40000000 00000000"
        " 0000000000000000 0000000000000000 0000000000000000",
        S.SetVqueue(7, 0x3E, 0x40, 0, 0, 0, 0, dev_num=DEV, token=TOK),
        id="set_vqueue_ignore_flags",
    ),
    pytest.param(
        "01 0a 3412 efbe 0800",
        S.SetVqueueResp(dev_num=DEV, token=TOK),
        id="set_vqueue_resp",
    ),
    # ---------------------------------------------------------------- 0x0B RESET_VQUEUE
    pytest.param(
        # type=00 msg_id=0b msg_size=12 ; index=5
        "00 0b 3412 efbe 0c00 05000000",
        S.ResetVqueue(5, dev_num=DEV, token=TOK),
        id="reset_vqueue",
    ),
    pytest.param(
        "01 0b 3412 efbe 0800",
        S.ResetVqueueResp(dev_num=DEV, token=TOK),
        id="reset_vqueue_resp",
    ),
    # ---------------------------------------------------------------- 0x0C GET_SHM
    pytest.param(
        # type=00 msg_id=0c msg_size=12 ; shmid=1
        "00 0c 3412 efbe 0c00 01000000",
        S.GetShm(1, dev_num=DEV, token=TOK),
        id="get_shm",
    ),
    pytest.param(
        # type=01 msg_id=0c msg_size=32 (8 + 24)
        "01 0c 3412 efbe 2000"
        " 01000000"  # shmid    = 1
        " 00000000"  # reserved = 0
        " 0000800000000000"  # length  (le64) = 0x80_0000 (8 MiB)
        " 0000000010000000",  # address (le64) = 0x10_0000_0000
        S.GetShmResp(1, 0, 0x80_0000, 0x10_0000_0000, dev_num=DEV, token=TOK),
        id="get_shm_resp",
    ),
    # ---------------------------------------------------------------- 0x40 EVENT_CONFIG
    pytest.param(
        # type=00 msg_id=40 token=0 msg_size=26 (8 + 16 + 2)
        "00 40 3412 0000 1a00"
        " 0f000000"  # device_status = 0x0f
        " 0e0c0b0a"  # generation    = 0x0a0b0c0e
        " 04000000"  # offset        = 4
        " 02000000"  # length        = 2
        " dcba",  # data
        S.EventConfig(0x0F, 0x0A0B0C0E, 4, 2, b"\xdc\xba", dev_num=DEV, token=0),
        id="event_config",
    ),
    pytest.param(
        # status-only event: device_status=0x4f generation=0x11 offset=0 length=0, msg_size=24
        "00 40 3412 0000 1800 4f000000 11000000 00000000 00000000",
        S.EventConfig(0x4F, 0x11, 0, 0, b"", dev_num=DEV, token=0),
        id="event_config_status_only",
    ),
    pytest.param(
        # range without data (spec 8 item 8): offset=8 length=0x10, msg_size=24
        "00 40 3412 0000 1800 0f000000 12000000 08000000 10000000",
        S.EventConfig(0x0F, 0x12, 8, 0x10, b"", dev_num=DEV, token=0),
        id="event_config_range_without_data",
    ),
    # ---------------------------------------------------------------- 0x41 EVENT_AVAIL
    pytest.param(
        # type=00 msg_id=41 msg_size=16 ; vq_index=1 next_offset=0x80000123 (wrap + 0x123)
        "00 41 3412 0000 1000 01000000 23010080",
        S.EventAvail(1, 0x80000123, dev_num=DEV, token=0),
        id="event_avail",
    ),
    # ---------------------------------------------------------------- 0x42 EVENT_USED
    pytest.param(
        # type=00 msg_id=42 token=0x1357 (no value mandated for events) msg_size=12 ; vq_index=3
        "00 42 3412 5713 0c00 03000000",
        S.EventUsed(3, dev_num=DEV, token=0x1357),
        id="event_used",
    ),
    # ---------------------------------------------------------------- bus 0x02 GET_DEVICES
    pytest.param(
        # type=02 msg_id=02 dev_num=0 token=7531 msg_size=12 ; offset=8 count=16
        "02 02 0000 3175 0c00 0800 1000",
        S.GetDevices(8, 16, token=BUS_TOK),
        id="get_devices",
    ),
    pytest.param(
        # type=03 msg_id=02 msg_size=16 (8 + 6 + ceil(12/8)=2)
        "03 02 0000 3175 1000"
        " 0800"  # offset      = 8
        " 4000"  # next_offset = 0x40
        " 0c00"  # count       = 12
        " 250a",  # bitmap: devices 8,10,13 and 17,19
        S.GetDevicesResp(8, 0x40, 12, b"\x25\x0a", token=BUS_TOK),
        id="get_devices_resp",
    ),
    pytest.param(
        # count=17 -> ceil(17/8) = 3 bitmap bytes; msg_size=17 ; next_offset=0 (done)
        "03 02 0000 3175 1100 0000 0000 1100 ffff01",
        S.GetDevicesResp(0, 0, 17, b"\xff\xff\x01", token=BUS_TOK),
        id="get_devices_resp_count_17",
    ),
    pytest.param(
        # count=0 -> empty bitmap; msg_size=14 ; offset=0x20 next_offset=0
        "03 02 0000 3175 0e00 2000 0000 0000",
        S.GetDevicesResp(0x20, 0, 0, b"", token=BUS_TOK),
        id="get_devices_resp_count_0",
    ),
    # ---------------------------------------------------------------- bus 0x03 PING
    pytest.param(
        # type=02 msg_id=03 token=0x5aa5 msg_size=12 ; data=0xdeadbeef
        "02 03 0000 a55a 0c00 efbeadde",
        S.Ping(0xDEADBEEF, token=0x5AA5),
        id="ping",
    ),
    pytest.param(
        "03 03 0000 a55a 0c00 efbeadde",
        S.PingResp(0xDEADBEEF, token=0x5AA5),
        id="ping_resp",
    ),
    # ---------------------------------------------------------------- bus 0x40 EVENT_DEVICE
    pytest.param(
        # type=02 msg_id=40 msg_size=12 ; device_number=0x1234 device_bus_state=1 (ADDED)
        "02 40 0000 0000 0c00 3412 0100",
        S.EventDevice(0x1234, 1),
        id="event_device",
    ),
    pytest.param(
        # device_number=7 device_bus_state=0x8001 (implementation-defined state)
        "02 40 0000 0000 0c00 0700 0180",
        S.EventDevice(7, 0x8001),
        id="event_device_impl_state",
    ),
    # ---------------------------------------------------------------- implementation-defined
    pytest.param(
        # bus request 0x80, token=0x0042, msg_size=16, 8-byte opaque payload
        "02 80 0000 4200 1000 0102030405060708",
        GenericMessage(0x80, False, True, bytes.fromhex("0102030405060708"), token=0x42),
        id="impl_bus_request_80",
    ),
    pytest.param(
        # bus response 0xbf (last impl request id), token=9, msg_size=10
        "03 bf 0000 0900 0a00 beef",
        GenericMessage(0xBF, True, True, b"\xbe\xef", token=9),
        id="impl_bus_response_bf",
    ),
    pytest.param(
        # transport response 0x81, msg_size=11, payload a1 b2 c3
        "01 81 3412 efbe 0b00 a1b2c3",
        GenericMessage(0x81, True, False, b"\xa1\xb2\xc3", dev_num=DEV, token=TOK),
        id="impl_transport_response_81",
    ),
    pytest.param(
        # bus event 0xc0, empty payload
        "02 c0 0000 0000 0800",
        GenericMessage(0xC0, False, True, b""),
        id="impl_bus_event_c0",
    ),
    pytest.param(
        # transport event 0xff, one payload byte
        "00 ff 3412 0000 0900 5a",
        GenericMessage(0xFF, False, False, b"\x5a", dev_num=DEV),
        id="impl_transport_event_ff",
    ),
]

# Every class of the spec profile must have at least one golden vector.
ALL_SPEC_CLASSES = {
    "GetDeviceInfo", "GetDeviceInfoResp", "GetDeviceFeatures", "GetDeviceFeaturesResp",
    "SetDriverFeatures", "SetDriverFeaturesResp", "GetConfig", "GetConfigResp",
    "SetConfig", "SetConfigResp", "GetDeviceStatus", "GetDeviceStatusResp",
    "SetDeviceStatus", "SetDeviceStatusResp", "GetVqueue", "GetVqueueResp",
    "SetVqueue", "SetVqueueResp", "ResetVqueue", "ResetVqueueResp", "GetShm", "GetShmResp",
    "EventConfig", "EventAvail", "EventUsed", "GetDevices", "GetDevicesResp", "Ping",
    "PingResp", "EventDevice", "GenericMessage",
}  # fmt: skip


def _raw(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec("spec")


def test_every_message_kind_has_a_vector() -> None:
    covered = {type(p.values[1]).__name__ for p in VECTORS}
    assert covered == ALL_SPEC_CLASSES


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_vector_msg_size_matches_its_length(hex_text: str, expected: Any) -> None:
    """Self-check of the hand-written vectors (independent of the codec)."""
    raw = _raw(hex_text)
    assert len(raw) >= 8
    assert int.from_bytes(raw[6:8], "little") == len(raw)
    assert raw[0] in (0x00, 0x01, 0x02, 0x03)
    if raw[0] & 0x02:
        assert raw[2:4] == b"\x00\x00"  # bus messages carry dev_num 0


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_decode_golden(codec: Codec, hex_text: str, expected: Any) -> None:
    msg: Any = codec.decode(_raw(hex_text))
    assert type(msg) is type(expected)
    assert msg == expected
    assert msg.dev_num == expected.dev_num
    assert msg.token == expected.token


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_encode_golden(codec: Codec, hex_text: str, expected: Any) -> None:
    raw = codec.encode(expected)
    assert isinstance(raw, bytes)
    assert raw.hex() == _raw(hex_text).hex()


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_decode_accepts_bytearray_and_memoryview(
    codec: Codec, hex_text: str, expected: Any
) -> None:
    raw = _raw(hex_text)
    assert codec.decode(bytearray(raw)) == expected
    # a memoryview that does not start at offset 0 of its buffer
    assert codec.decode(memoryview(b"\xee\xee" + raw)[2:]) == expected


def test_min_max_size_codec_carries_device_info_resp() -> None:
    # 52 = 8 + 44, the smallest maximum a bus may advertise (spec 1.4)
    small = Codec("spec", max_size=52)
    msg = S.GetDeviceInfoResp(1, 2, bytes(16), 3, 4, 5, 0, 0, dev_num=DEV, token=TOK)
    raw = small.encode(msg)
    assert len(raw) == 52
    assert small.decode(raw) == msg


def test_default_max_size_allows_244_config_bytes() -> None:
    # 264 - 8 - 12 = 244 (spec 1.4); header: type 01, id 05, msg_size 0x0108 = 264
    data = bytes(range(244))
    raw = _raw("01 05 3412 efbe 0801 01000000 00000000 f4000000") + data
    msg = S.GetConfigResp(1, 0, 244, data, dev_num=DEV, token=TOK)
    codec = Codec("spec")
    assert codec.decode(raw) == msg
    assert codec.encode(msg) == raw


def test_max_size_65535_codec() -> None:
    # SET_DRIVER_FEATURES with 16381 blocks: 8 + 8 + 4*16381 = 65540 > 65535 is too big,
    # 16380 blocks -> 65536 still too big, 16379 blocks -> 65532 fits.
    big = Codec("spec", max_size=65535)
    feats = tuple(range(16379))
    msg = S.SetDriverFeatures(0, 16379, feats, dev_num=DEV, token=TOK)
    raw = big.encode(msg)
    assert len(raw) == 65532
    assert raw[:8] == _raw("00 04 3412 efbe fcff")
    assert big.decode(raw) == msg


# ------------------------------------------------------------------ message-object semantics


def _eq(a: object, b: object) -> bool:
    """Compare as plain objects (keeps mypy's strict-equality check out of the way)."""
    return a == b


def test_messages_of_different_classes_are_not_equal() -> None:
    assert not _eq(S.GetDeviceStatusResp(5), S.SetDeviceStatusResp(5))
    assert not _eq(S.GetDeviceStatus(), S.GetDeviceInfo())
    assert not _eq(S.Ping(5), S.PingResp(5))
    assert not _eq(S.GetDeviceStatus(), R.GetDeviceStatus())


def test_messages_are_not_equal_to_plain_tuples() -> None:
    assert not _eq(S.Ping(5), (5, 0, 0))
    assert not _eq(S.Ping(5), (5,))
    assert not _eq(S.SetDeviceStatus(3, dev_num=1, token=2), (3, 1, 2))


def test_header_fields_take_part_in_equality() -> None:
    assert S.GetDeviceStatusResp(5, dev_num=1) != S.GetDeviceStatusResp(5, dev_num=2)
    assert S.GetDeviceStatusResp(5, token=1) != S.GetDeviceStatusResp(5, token=2)
    assert S.GetDeviceStatusResp(5, dev_num=1, token=2) == S.GetDeviceStatusResp(
        5, dev_num=1, token=2
    )


def test_keyword_and_positional_construction_agree() -> None:
    assert S.GetConfig(0x10, 6, dev_num=DEV, token=TOK) == S.GetConfig(
        offset=0x10, length=6, dev_num=DEV, token=TOK
    )
    assert S.GetDevicesResp(8, 0x40, 12, b"\x25\x0a") == S.GetDevicesResp(
        offset=8, next_offset=0x40, count=12, bitmap=b"\x25\x0a"
    )
    assert GenericMessage(0x80, False, True, b"x") == GenericMessage(
        msg_id=0x80, response=False, bus=True, payload=b"x"
    )


def test_messages_are_immutable(codec: Codec) -> None:
    msg = codec.decode(_raw("01 07 3412 efbe 0c00 4b000000"))
    with pytest.raises(AttributeError):
        setattr(msg, "status", 0)  # noqa: B010
    with pytest.raises(AttributeError):
        setattr(msg, "token", 0)  # noqa: B010
    assert msg == S.GetDeviceStatusResp(0x4B, dev_num=DEV, token=TOK)


def test_decoded_fields_have_documented_types(codec: Codec) -> None:
    resp: Any = codec.decode(_raw("01 03 3412 efbe 1800 01000000 02000000 03010000 040000a5"))
    assert resp.features == (0x00000103, 0xA5000004)
    assert type(resp.features) is tuple
    cfg: Any = codec.decode(_raw("01 05 3412 efbe 1a00 0d0c0b0a 10000000 06000000 525400123456"))
    assert type(cfg.data) is bytes
    info: Any = codec.decode(
        _raw(
            "01 02 3412 efbe 3400 1a000000 51454d55 f0e1d2c3b4a5469788796a5b4c3d2e1f"
            " 03000000 24010000 11000000 10000000 01000000"
        )
    )
    assert type(info.device_uuid) is bytes
    assert info.device_uuid == UUID
    assert info.device_id == 0x1A
    assert info.admin_vq_count == 1


def test_codec_rejects_max_size_outside_52_to_65535() -> None:
    for bad in (0, 8, 44, 51, 65536):
        with pytest.raises((ValueError, VirtioMsgError)):
            Codec("spec", max_size=bad)


def test_codec_rejects_unknown_profile() -> None:
    with pytest.raises((ValueError, VirtioMsgError)):
        Codec("no-such-profile")
