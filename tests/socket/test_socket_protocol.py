"""The channel's own messages (ANNOUNCE, ADD, REMOVE): layouts, round trips, strict decoding."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtio_msg.bus.protocol import (
    ANNOUNCE_LAYOUT,
    MSG_ADD,
    MSG_ANNOUNCE,
    MSG_REMOVE,
    Announcement,
    ControlError,
    ControlRequest,
    ControlResponse,
    Status,
    decode_announcement,
    parse_control_request,
    parse_control_response,
    sniff_profile,
)
from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Codec, GenericMessage, Profile

SPEC = Announcement(Profile.SPEC, 264, 1, 0x5, 0x1_0000_0000, 4 << 20, 5000, 64)
RFC1 = Announcement(Profile.LINUX_RFC1, 44, 1, 0, 0x1_0000_0000, 4 << 20, 1000, 8)


def test_announce_layout_fits_the_smallest_bus() -> None:
    assert ANNOUNCE_LAYOUT.size == 38
    assert len(RFC1.encode()) == 44  # linux-rfc1's whole message buffer
    assert len(SPEC.encode()) == 46


def test_announce_bytes_are_as_documented() -> None:
    data = SPEC.encode()
    assert data[:8] == bytes([0x02, 0x80, 0, 0, 0, 0, 46, 0])  # bus request, token 0
    assert data[8:] == struct.pack("<BBHIQQQIH", 1, 0, 264, 1, 5, 1 << 32, 4 << 20, 5000, 64)
    data = RFC1.encode()
    assert data[:6] == bytes([0x02, 0x80, 0, 0, 44, 0])
    assert data[6] == 1 and data[7] == 1  # version 1, profile linux-rfc1


@pytest.mark.parametrize("ann", [SPEC, RFC1])
def test_announcement_round_trip(ann: Announcement) -> None:
    data = ann.encode()
    assert sniff_profile(data) is ann.profile
    assert decode_announcement(data) == ann
    assert ann.params() == BusParams(ann.profile, ann.max_msg_size,
                                     transport_features=ann.transport_features,
                                     timeout_ms=ann.timeout_ms)


def test_announcement_for_bus_takes_the_bus_parameters() -> None:
    params = BusParams("linux-rfc1", 100, timeout_ms=77)
    ann = Announcement.for_bus(params, 0x2000, 0x1000, 3)
    assert (ann.profile, ann.max_msg_size, ann.timeout_ms, ann.region_base, ann.region_size,
            ann.max_devices) == (Profile.LINUX_RFC1, 100, 77, 0x2000, 0x1000, 3)


def _spec_announce(**fields: int) -> bytes:
    values = dict(version=1, profile=0, max_msg_size=264, revision=1, features=0,
                  base=1 << 32, size=1 << 20, timeout_ms=1000, max_devices=4)
    values.update(fields)
    payload = ANNOUNCE_LAYOUT.pack(*values.values())
    return Codec("spec").encode(GenericMessage(MSG_ANNOUNCE, False, True, payload))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\x02\x80\x00", "header"),
        (_spec_announce(version=2), "version"),
        (_spec_announce(profile=1), "profile"),
        (_spec_announce(profile=9), "profile"),
        (_spec_announce(max_msg_size=51), "max_msg_size"),
        (_spec_announce(max_msg_size=45), "max_msg_size"),
        (_spec_announce(revision=2), "revision"),
        (_spec_announce(size=0), "region_size"),
        (_spec_announce(base=(1 << 64) - 10, size=20), "region_size"),
        (_spec_announce(timeout_ms=0), "timeout_ms"),
        (_spec_announce(max_devices=0), "max_devices"),
        (_spec_announce() + b"\x00", "msg_size"),  # trailing bytes after msg_size
        (_spec_announce()[:-1], "msg_size"),
        (bytes([0x03]) + _spec_announce()[1:], "type"),  # response bit
        (bytes([0x06]) + _spec_announce()[1:], "type"),  # reserved type bit
        (bytes([0x02, 0x81]) + _spec_announce()[2:], "msg_id"),
        (bytes([0x00]) + _spec_announce()[1:], "msg_id"),  # transport message
        (Codec("spec").encode(GenericMessage(MSG_ANNOUNCE, False, True, b"\x01" * 30)),
         "msg_size"),
    ],
)
def test_announcement_rules(data: bytes, field: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        decode_announcement(data)
    assert exc.value.field == field, exc.value


@given(st.binary(max_size=80))
def test_garbage_announcement_only_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_announcement(data)


@given(st.binary(min_size=0, max_size=12), st.booleans())
def test_garbage_control_payload_only_raises_malformed(payload: bytes, response: bool) -> None:
    msg = GenericMessage(MSG_ADD, response, True, payload)
    with contextlib.suppress(MalformedMessage):
        (parse_control_response if response else parse_control_request)(msg)


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
@pytest.mark.parametrize("op", [MSG_ADD, MSG_REMOVE])
def test_control_round_trip_through_the_codec(profile: str, op: int) -> None:
    codec = Codec(profile)
    token = 9 if profile == "spec" else 0
    req = ControlRequest(op, 0x1234, token)
    data = codec.encode(req.to_message())
    assert data[0] == 0x02 and data[1] == op
    assert parse_control_request(codec.decode(data)) == req
    resp = req.response(Status.NOT_OWNER)
    data = codec.encode(resp.to_message())
    assert data[0] == 0x03 and data[-8:] == struct.pack("<HHI", 0x1234, 0, 3)
    assert parse_control_response(codec.decode(data)) == resp


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (GenericMessage(MSG_ADD, False, True, b"\x01\x00"), "msg_size"),
        (GenericMessage(MSG_ADD, False, True, b"\x01\x00\x01\x00"), "reserved"),
        (GenericMessage(MSG_ADD, True, True, b"\x01\x00\x00\x00"), "type"),
        (GenericMessage(MSG_ADD, False, False, b"\x01\x00\x00\x00"), "type"),
        (GenericMessage(0x90, False, True, b"\x01\x00\x00\x00"), "msg_id"),
    ],
)
def test_control_request_rules(msg: GenericMessage, field: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        parse_control_request(msg)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (struct.pack("<HHI", 1, 0, 99), "status"),
        (struct.pack("<HHI", 1, 5, 0), "reserved"),
        (struct.pack("<HH", 1, 0), "msg_size"),
    ],
)
def test_control_response_rules(payload: bytes, field: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        parse_control_response(GenericMessage(MSG_REMOVE, True, True, payload))
    assert exc.value.field == field


def test_encoding_refuses_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        ControlRequest(MSG_ADD, 0x10000).to_message()
    with pytest.raises(EncodeError):
        ControlRequest(0x83, 1).to_message()
    with pytest.raises(EncodeError):
        Announcement(Profile.SPEC, 264, 1, 1 << 64, 0, 1, 1, 1).encode()


def test_control_error_explains_the_status() -> None:
    err = ControlError("ADD", 4, Status.EXISTS)
    assert str(err) == "ADD of device 4 failed: device number already present on the bus"
    assert err.status is Status.EXISTS
    assert "did not answer" in str(ControlError("REMOVE", 1, None, "the bus did not answer"))
    assert ControlResponse(MSG_ADD, 1, Status.OK).to_message().response
