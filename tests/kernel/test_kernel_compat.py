"""linux-rfc1 kernel-compat decoding: the 16 frames a real seed kernel sent are golden vectors."""

from __future__ import annotations

import struct

import pytest
from kernel_observed import PROBE_SEQUENCE

import virtio_msg.spec as C
from virtio_msg.errors import MalformedMessage
from virtio_msg.wire import spec as S
from virtio_msg.wire.compat import kernel_frame
from virtio_msg.wire.translate import WireAdapter

STRICT = WireAdapter("linux-rfc1")
COMPAT = WireAdapter("linux-rfc1", kernel_compat=True)
NAMES = {
    "DEVICE_INFO": S.GetDeviceInfo,
    "SET_DEVICE_STATUS": S.SetDeviceStatus,
    "GET_DEVICE_STATUS": S.GetDeviceStatus,
    "GET_DEV_FEATURES": S.GetDeviceFeatures,
    "SET_DRV_FEATURES": S.SetDriverFeatures,
    "GET_VQUEUE": S.GetVqueue,
    "SET_VQUEUE": S.SetVqueue,
    "EVENT_AVAIL": S.EventAvail,
}


@pytest.mark.parametrize("i", range(len(PROBE_SEQUENCE)), ids=[n for n, _ in PROBE_SEQUENCE])
def test_observed_frame_decodes_in_compat_mode(i: int) -> None:
    name, frame = PROBE_SEQUENCE[i]
    msg = COMPAT.decode(frame)
    assert type(msg) is NAMES[name]
    assert getattr(msg, "dev_num", None) == 0


def test_observed_values_are_read_from_the_right_bytes() -> None:
    msgs = [COMPAT.decode(f) for _, f in PROBE_SEQUENCE]
    statuses = [m.status for m in msgs if type(m) is S.SetDeviceStatus]
    assert statuses == [0, 1, 3, 0xB, 0xF]  # stale bytes after msg_size are not read
    feats = msgs[7]
    assert feats == S.SetDriverFeatures(0, 2, (0, 3))  # VERSION_1 | ACCESS_PLATFORM, high word
    vq = msgs[12]
    assert (vq.index, vq.size, vq.flags) == (0, 64, C.VQ_OP_ENABLE)
    assert (vq.desc_addr, vq.driver_addr, vq.device_addr) == (
        0x1_0000_0000,
        0x1_0000_0400,
        0x1_0000_1000,
    )
    assert (msgs[15].vq_index, msgs[15].next_offset) == (0, 0)


def test_strict_decoder_still_rejects_the_kernels_set_drv_features() -> None:
    _, frame = PROBE_SEQUENCE[7]
    with pytest.raises(MalformedMessage, match="num=2 needs 8 bytes"):
        STRICT.decode(frame)
    # every other observed frame is valid even for the strict decoder
    for name, f in PROBE_SEQUENCE:
        if name != "SET_DRV_FEATURES":
            assert type(STRICT.decode(f)) is NAMES[name]


def test_seed_set_config_size_18_reads_the_data_past_it() -> None:
    frame = bytearray(44)
    struct.pack_into("<BBHHIII", frame, 0, 0, C.TransportMsg.SET_CONFIG, 3, 18, 7, 4, 2)
    frame[18:20] = b"\xab\xcd"
    with pytest.raises(MalformedMessage):
        STRICT.decode(bytes(frame))
    msg = COMPAT.decode(bytes(frame))
    assert msg == S.SetConfig(7, 4, 2, b"\xab\xcd", dev_num=3)


def test_compat_rule_touches_only_the_two_documented_sizes() -> None:
    _, frame = PROBE_SEQUENCE[7]
    wrong = bytearray(frame)
    wrong[4] = 12  # not the seed's 14: left alone, rejected strictly
    assert kernel_frame(bytes(wrong)) == bytes(wrong)
    with pytest.raises(MalformedMessage):
        COMPAT.decode(bytes(wrong))
    response = bytearray(frame)
    response[0] = 0x01  # a response is never corrected
    assert kernel_frame(bytes(response)) == bytes(response)
    short = frame[:20]  # the feature words would lie past the frame
    assert kernel_frame(short) == short
    with pytest.raises(MalformedMessage):
        COMPAT.decode(short)
    huge = bytearray(frame)
    struct.pack_into("<I", huge, 10, 0xFFFFFFFF)  # num past anything a frame can hold
    with pytest.raises(MalformedMessage):
        COMPAT.decode(bytes(huge))


@pytest.mark.parametrize(
    ("msg_id", "size"), [(C.TransportMsg.SET_DRIVER_FEATURES, 14), (C.TransportMsg.SET_CONFIG, 18)]
)
def test_seed_size_in_a_frame_too_short_for_the_count_is_malformed_not_struct_error(
    msg_id: int, size: int
) -> None:
    """Found by fuzz/fuzz_codec.py: the count field was read past the end of a short frame."""
    for length in range(6, size):  # the count ends exactly at the seed size
        frame = struct.pack("<BBHH", 0, msg_id, 0, size) + bytes(length - 6)
        assert kernel_frame(frame) == frame
        with pytest.raises(MalformedMessage):
            COMPAT.decode(frame)


def test_kernel_compat_exists_only_for_linux_rfc1() -> None:
    with pytest.raises(ValueError, match="linux-rfc1"):
        WireAdapter("spec", kernel_compat=True)


def test_decode_command_kernel_compat(capsys: pytest.CaptureFixture[str]) -> None:
    from virtio_msg.cli import main

    frame = PROBE_SEQUENCE[7][1].hex()
    assert main(["decode", "--profile", "linux-rfc1", frame]) == 1
    assert "num=2 needs 8 bytes" in capsys.readouterr().err
    assert main(["decode", "--profile", "linux-rfc1", "--kernel-compat", frame]) == 0
    assert '"features": [0, 3]' in capsys.readouterr().out
    assert main(["decode", "--kernel-compat", frame]) == 2
