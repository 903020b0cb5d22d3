"""Golden vectors for the ``linux-rfc1`` profile (the Linux RFC v1 "seed" wire format).

Every vector was composed by hand from the project's shared reference linux-rfc1.md
sections 1.2 (header) and 1.3 (payload layouts).  Nothing here was produced by
the codec under test.

Header layout (6 bytes, all little-endian, packed, no token)::

    type u8 | msg_id u8 | dev_id le16 | msg_size le16

``type`` bit 0 = response, bit 1 = bus message.  Each literal below is written
one field per group, header first, so ``"01 02 3412 1e00"`` reads type=0x01,
msg_id=0x02, dev_id=0x1234, msg_size=0x001e (30).  The ``dev_id`` header field is
the ``dev_num`` attribute of the message objects.
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_msg.errors import EncodeError, VirtioMsgError
from virtio_msg.wire import Codec
from virtio_msg.wire import rfc1 as R

DEV = 0x1234  # dev_id on the wire: 34 12

# Addresses with distinct high dwords so that 32/64-bit or field-order slips show up.
DESC = 0x0000_0001_2345_6000  # 00 60 45 23 01 00 00 00
DRV = 0x0000_0002_2345_7000  # 00 70 45 23 02 00 00 00
DEVA = 0x0000_0003_2345_8000  # 00 80 45 23 03 00 00 00

VECTORS = [
    # ---------------------------------------------------------------- 0x02 DEVICE_INFO
    pytest.param(
        # type=00 msg_id=02 dev_id=1234 msg_size=6 ; no payload
        "00 02 3412 0600",
        R.DeviceInfo(dev_num=DEV),
        id="device_info",
    ),
    pytest.param(
        # type=01 msg_id=02 msg_size=30 (6 + 24)
        "01 02 3412 1e00"
        " 02000000"  # device_id          = 2 (block)
        " 51454d55"  # vendor_id          = 0x554d4551
        " 40000000"  # num_feature_bits   = 64
        " 3c000000"  # config_size        = 0x3c
        " 04000000"  # max_vq_count       = 4
        " 0300"  # admin_vq_start_idx (u16) = 3
        " 0100",  # admin_vq_count     (u16) = 1
        R.DeviceInfoResp(2, 0x554D4551, 64, 0x3C, 4, 3, 1, dev_num=DEV),
        id="device_info_resp",
    ),
    # ---------------------------------------------------------------- 0x03 GET_DEV_FEATURES
    pytest.param(
        # type=00 msg_id=03 msg_size=14 ; index=1 num=2
        "00 03 3412 0e00 01000000 02000000",
        R.GetDevFeatures(1, 2, dev_num=DEV),
        id="get_dev_features",
    ),
    pytest.param(
        # type=01 msg_id=03 msg_size=22 (6 + 8 + 2*4)
        "01 03 3412 1600"
        " 01000000"  # index       = 1
        " 02000000"  # num         = 2
        " 20000010"  # features[0] = 0x10000020
        " 03000000",  # features[1] = 0x00000003
        R.GetDevFeaturesResp(1, 2, (0x10000020, 0x00000003), dev_num=DEV),
        id="get_dev_features_resp",
    ),
    # ---------------------------------------------------------------- 0x04 SET_DRV_FEATURES
    pytest.param(
        # type=00 msg_id=04 msg_size=22 (6 + 8 + 2*4)
        "00 04 3412 1600"
        " 00000000"  # index       = 0
        " 02000000"  # num         = 2
        " 00000010"  # features[0] = 0x10000000 (bit 28 INDIRECT_DESC)
        " 01000000",  # features[1] = 0x00000001 (bit 32 VERSION_1)
        R.SetDrvFeatures(0, 2, (0x10000000, 0x00000001), dev_num=DEV),
        id="set_drv_features",
    ),
    pytest.param(
        # type=01 msg_id=04 msg_size=6 ; empty
        "01 04 3412 0600",
        R.SetDrvFeaturesResp(dev_num=DEV),
        id="set_drv_features_resp",
    ),
    # ---------------------------------------------------------------- 0x05 GET_CONFIG
    pytest.param(
        # type=00 msg_id=05 msg_size=14 ; offset=8 size=4
        "00 05 3412 0e00 08000000 04000000",
        R.GetConfig(8, 4, dev_num=DEV),
        id="get_config",
    ),
    pytest.param(
        # type=01 msg_id=05 msg_size=22 (6 + 12 + 4)
        "01 05 3412 1600"
        " 04030201"  # generation = 0x01020304
        " 08000000"  # offset     = 8
        " 04000000"  # size       = 4
        " 11223344",  # config
        R.GetConfigResp(0x01020304, 8, 4, b"\x11\x22\x33\x44", dev_num=DEV),
        id="get_config_resp",
    ),
    # ---------------------------------------------------------------- 0x06 SET_CONFIG
    pytest.param(
        # type=00 msg_id=06 msg_size=20 (6 + 12 + 2)
        "00 06 3412 1400"
        " 05000000"  # generation = 5
        " 0c000000"  # offset     = 0x0c
        " 02000000"  # size       = 2
        " a55a",  # config
        R.SetConfig(5, 0x0C, 2, b"\xa5\x5a", dev_num=DEV),
        id="set_config",
    ),
    pytest.param(
        # type=01 msg_id=06 msg_size=20 ; generation=6 offset=0x0c size=2 config echoed
        "01 06 3412 1400 06000000 0c000000 02000000 a55a",
        R.SetConfigResp(6, 0x0C, 2, b"\xa5\x5a", dev_num=DEV),
        id="set_config_resp",
    ),
    pytest.param(
        # type=01 msg_id=06 msg_size=18 ; same header fields, no config echo
        "01 06 3412 1200 06000000 0c000000 02000000",
        R.SetConfigResp(6, 0x0C, 2, b"", dev_num=DEV),
        id="set_config_resp_no_config",
    ),
    # ---------------------------------------------------------------- 0x07 GET_DEVICE_STATUS
    pytest.param(
        "00 07 3412 0600",
        R.GetDeviceStatus(dev_num=DEV),
        id="get_device_status",
    ),
    pytest.param(
        # type=01 msg_id=07 msg_size=10 ; status=0x07
        "01 07 3412 0a00 07000000",
        R.GetDeviceStatusResp(0x07, dev_num=DEV),
        id="get_device_status_resp",
    ),
    # ---------------------------------------------------------------- 0x08 SET_DEVICE_STATUS
    pytest.param(
        # type=00 msg_id=08 msg_size=10 ; status=0x0f
        "00 08 3412 0a00 0f000000",
        R.SetDeviceStatus(0x0F, dev_num=DEV),
        id="set_device_status",
    ),
    pytest.param(
        # type=01 msg_id=08 msg_size=10 ; status=0x07
        "01 08 3412 0a00 07000000",
        R.SetDeviceStatusResp(0x07, dev_num=DEV),
        id="set_device_status_resp",
    ),
    # ---------------------------------------------------------------- 0x09 GET_VQUEUE
    pytest.param(
        # type=00 msg_id=09 msg_size=10 ; index=1
        "00 09 3412 0a00 01000000",
        R.GetVqueue(1, dev_num=DEV),
        id="get_vqueue",
    ),
    pytest.param(
        # type=01 msg_id=09 msg_size=42 (6 + 36)
        "01 09 3412 2a00"
        " 01000000"  # index           = 1
        " 00040000"  # max_size        = 0x400
        " 00010000"  # size            = 0x100
        " 0060452301000000"  # descriptor_addr @12 = 0x1_2345_6000
        " 0070452302000000"  # driver_addr     @20 = 0x2_2345_7000
        " 0080452303000000",  # device_addr     @28 = 0x3_2345_8000
        R.GetVqueueResp(1, 0x400, 0x100, DESC, DRV, DEVA, dev_num=DEV),
        id="get_vqueue_resp",
    ),
    # ---------------------------------------------------------------- 0x0a SET_VQUEUE
    pytest.param(
        # type=00 msg_id=0a msg_size=42 (6 + 36)
        "00 0a 3412 2a00"
        " 01000000"  # index  = 1
        " 00000000"  # unused = 0
        " 00010000"  # size   = 0x100
        " 0060452301000000"  # descriptor_addr
        " 0070452302000000"  # driver_addr
        " 0080452303000000",  # device_addr
        R.SetVqueue(1, 0, 0x100, DESC, DRV, DEVA, dev_num=DEV),
        id="set_vqueue",
    ),
    pytest.param(
        "01 0a 3412 0600",
        R.SetVqueueResp(dev_num=DEV),
        id="set_vqueue_resp",
    ),
    # ---------------------------------------------------------------- 0x0b RESET_VQUEUE
    pytest.param(
        # type=00 msg_id=0b msg_size=10 ; index=3
        "00 0b 3412 0a00 03000000",
        R.ResetVqueue(3, dev_num=DEV),
        id="reset_vqueue",
    ),
    pytest.param(
        "01 0b 3412 0600",
        R.ResetVqueueResp(dev_num=DEV),
        id="reset_vqueue_resp",
    ),
    # ---------------------------------------------------------------- 0x0c GET_SHM
    pytest.param(
        # type=00 msg_id=0c msg_size=10 ; index=2
        "00 0c 3412 0a00 02000000",
        R.GetShm(2, dev_num=DEV),
        id="get_shm",
    ),
    pytest.param(
        # type=01 msg_id=0c msg_size=18 (6 + 12) ; index=2 count=0x1000 addr=0x80000000
        "01 0c 3412 1200 02000000 00100000 00000080",
        R.GetShmResp(2, 0x1000, 0x80000000, dev_num=DEV),
        id="get_shm_resp",
    ),
    # ---------------------------------------------------------------- 0x40 EVENT_CONFIG
    pytest.param(
        # type=00 msg_id=40 msg_size=26 (6 + 16 + 4)
        "00 40 3412 1a00"
        " 0f000000"  # status     = 0x0f
        " 07000000"  # generation = 7
        " 10000000"  # offset     = 0x10
        " 04000000"  # size       = 4
        " 0a0b0c0d",  # config
        R.EventConfig(0x0F, 7, 0x10, 4, bytes.fromhex("0a0b0c0d"), dev_num=DEV),
        id="event_config",
    ),
    pytest.param(
        # type=00 msg_id=40 msg_size=22 ; status=0x0f generation=8 offset=0 size=0, no config
        "00 40 3412 1600 0f000000 08000000 00000000 00000000",
        R.EventConfig(0x0F, 8, 0, 0, b"", dev_num=DEV),
        id="event_config_no_config",
    ),
    # ---------------------------------------------------------------- 0x41 EVENT_AVAIL
    pytest.param(
        # type=00 msg_id=41 msg_size=14 ; index=2 next_offset_wrap=0x80000010 (wrap + 0x10)
        "00 41 3412 0e00 02000000 10000080",
        R.EventAvail(2, 0x80000010, dev_num=DEV),
        id="event_avail",
    ),
    pytest.param(
        # type=01 msg_id=41 msg_size=6 ; the seed's answer to a kick (linux-rfc1.md 4.1:
        # "A response is required even for EVENT_AVAIL"), no payload
        "01 41 3412 0600",
        R.EventAvailResp(dev_num=DEV),
        id="event_avail_ack",
    ),
    # ---------------------------------------------------------------- 0x42 EVENT_USED
    pytest.param(
        # type=00 msg_id=42 msg_size=10 ; index=3
        "00 42 3412 0a00 03000000",
        R.EventUsed(3, dev_num=DEV),
        id="event_used",
    ),
    # ---------------------------------------------------------------- bus 0x02 BUS_GET_DEVICES
    pytest.param(
        # type=02 msg_id=02 dev_id=0 msg_size=10 ; offset=0x10 num=24
        "02 02 0000 0a00 1000 1800",
        R.BusGetDevices(0x10, 24),
        id="bus_get_devices",
    ),
    pytest.param(
        # type=03 msg_id=02 msg_size=15 (6 + 6 + ceil(24/8)=3)
        "03 02 0000 0f00"
        " 1000"  # offset      = 0x10
        " 1800"  # num         = 24
        " 2800"  # next_offset = 0x28
        " 018004",  # devices bitmap: 0x10, 0x1f, 0x22
        R.BusGetDevicesResp(0x10, 24, 0x28, b"\x01\x80\x04"),
        id="bus_get_devices_resp",
    ),
    pytest.param(
        # num=10 -> ceil(10/8) = 2 bytes; msg_size=14 ; offset=0 next_offset=0
        "03 02 0000 0e00 0000 0a00 0000 ff03",
        R.BusGetDevicesResp(0, 10, 0, b"\xff\x03"),
        id="bus_get_devices_resp_num_10",
    ),
    # ---------------------------------------------------------------- bus 0x03 BUS_PING
    pytest.param(
        # type=02 msg_id=03 msg_size=10 ; data=0x12345678
        "02 03 0000 0a00 78563412",
        R.BusPing(0x12345678),
        id="bus_ping",
    ),
    pytest.param(
        "03 03 0000 0a00 78563412",
        R.BusPingResp(0x12345678),
        id="bus_ping_resp",
    ),
    # ---------------------------------------------------------------- bus 0x40 BUS_EVENT_DEVICE
    pytest.param(
        # type=02 msg_id=40 msg_size=10 ; dev_num=7 dev_state=2 (REMOVED)
        "02 40 0000 0a00 0700 0200",
        R.BusEventDevice(7, 2),
        id="bus_event_device",
    ),
]

ALL_RFC1_CLASSES = {
    "DeviceInfo", "DeviceInfoResp", "GetDevFeatures", "GetDevFeaturesResp",
    "SetDrvFeatures", "SetDrvFeaturesResp", "GetConfig", "GetConfigResp",
    "SetConfig", "SetConfigResp", "GetDeviceStatus", "GetDeviceStatusResp",
    "SetDeviceStatus", "SetDeviceStatusResp", "GetVqueue", "GetVqueueResp",
    "SetVqueue", "SetVqueueResp", "ResetVqueue", "ResetVqueueResp", "GetShm", "GetShmResp",
    "EventConfig", "EventAvail", "EventAvailResp", "EventUsed", "BusGetDevices",
    "BusGetDevicesResp", "BusPing", "BusPingResp", "BusEventDevice",
}  # fmt: skip


def _raw(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec("linux-rfc1")


def test_every_message_kind_has_a_vector() -> None:
    covered = {type(p.values[1]).__name__ for p in VECTORS}
    assert covered == ALL_RFC1_CLASSES


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_vector_msg_size_matches_its_length(hex_text: str, expected: Any) -> None:
    """Self-check of the hand-written vectors (independent of the codec)."""
    raw = _raw(hex_text)
    assert len(raw) >= 6
    assert int.from_bytes(raw[4:6], "little") == len(raw)
    assert len(raw) <= 44  # the seed's VIRTIO_MSG_MIN_SIZE bus buffer
    assert raw[0] in (0x00, 0x01, 0x02, 0x03)
    if raw[0] & 0x02:
        assert raw[2:4] == b"\x00\x00"


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_decode_golden(codec: Codec, hex_text: str, expected: Any) -> None:
    msg: Any = codec.decode(_raw(hex_text))
    assert type(msg) is type(expected)
    assert msg == expected
    assert msg.dev_num == expected.dev_num
    assert msg.token == 0


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_encode_golden(codec: Codec, hex_text: str, expected: Any) -> None:
    raw = codec.encode(expected)
    assert isinstance(raw, bytes)
    assert raw.hex() == _raw(hex_text).hex()


@pytest.mark.parametrize(("hex_text", "expected"), VECTORS)
def test_decode_from_a_44_byte_buffer_with_stale_tail(
    codec: Codec, hex_text: str, expected: Any
) -> None:
    # linux-rfc1.md 1.3: bytes of the 44-byte buffer beyond msg_size keep stale data.
    raw = _raw(hex_text)
    buf = raw + bytes([0xA5]) * (44 - len(raw))
    assert len(buf) == 44
    assert codec.decode(buf) == expected
    assert codec.decode(memoryview(bytearray(buf))) == expected


def test_seed_kernel_request_sizes() -> None:
    """linux-rfc1.md 1.3 lists the msg_size the seed kernel uses; the codec agrees."""
    codec = Codec("linux-rfc1")
    sizes: list[tuple[Any, int]] = [
        (R.DeviceInfo(), 6),
        (R.GetDevFeatures(0, 2), 14),
        (R.GetConfig(0, 0), 14),
        (R.GetDeviceStatus(), 6),
        (R.SetDeviceStatus(0), 10),
        (R.GetVqueue(0), 10),
        (R.SetVqueue(0, 0, 0, 0, 0, 0), 42),
        (R.ResetVqueue(0), 10),
        (R.EventAvail(0, 0), 14),
    ]
    for msg, size in sizes:
        raw = codec.encode(msg)
        assert len(raw) == size, msg
        assert int.from_bytes(raw[4:6], "little") == size


def test_largest_config_chunk_at_44() -> None:
    # 44 - 6 - 12 = 26 config bytes (linux-rfc1.md 2.4); msg_size 0x2c = 44
    data = bytes(range(0x40, 0x40 + 26))
    raw = _raw("01 05 3412 2c00 09000000 00000000 1a000000") + data
    msg = R.GetConfigResp(9, 0, 26, data, dev_num=DEV)
    codec = Codec("linux-rfc1")
    assert codec.decode(raw) == msg
    assert codec.encode(msg) == raw


def test_larger_max_size_codec() -> None:
    big = Codec("linux-rfc1", max_size=65535)
    data = bytes(range(256)) * 4
    # msg_size = 6 + 12 + 1024 = 1042 = 0x0412
    raw = _raw("01 05 3412 1204 09000000 00000000 00040000") + data
    msg = R.GetConfigResp(9, 0, 1024, data, dev_num=DEV)
    assert big.decode(raw) == msg
    assert big.encode(msg) == raw


def test_rfc1_messages_are_distinct_from_spec_messages() -> None:
    from virtio_msg.wire import spec as S

    pairs: list[tuple[object, object]] = [
        (R.GetDeviceStatusResp(5), S.GetDeviceStatusResp(5)),
        (R.GetConfig(1, 2), S.GetConfig(1, 2)),
        (R.GetDeviceStatusResp(5), R.SetDeviceStatusResp(5)),
        (R.BusPing(5), (5, 0, 0)),
    ]
    for left, right in pairs:
        assert left != right


def test_bus_event_device_attribute_names(codec: Codec) -> None:
    msg: Any = codec.decode(_raw("02 40 0000 0a00 0700 0200"))
    assert msg.event_dev_num == 7
    assert msg.dev_state == 2
    assert msg.dev_num == 0  # the header field
    assert msg == R.BusEventDevice(event_dev_num=7, dev_state=2)


def test_rfc1_token_must_be_zero() -> None:
    with pytest.raises(EncodeError):
        Codec("linux-rfc1").encode(R.GetDeviceStatus(dev_num=DEV, token=1))


def test_codec_rejects_max_size_outside_44_to_65535() -> None:
    for bad in (0, 6, 43, 65536):
        with pytest.raises((ValueError, VirtioMsgError)):
            Codec("linux-rfc1", max_size=bad)
