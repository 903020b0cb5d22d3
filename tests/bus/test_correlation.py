"""The bus's response matching by expected class is the old match by message id.

A request in flight records the one response class that answers it
(``virtio_msg.bus.pending.EXPECT``) and the channel it went to; the bus
used to compare message ids and look up the device's owner for every
response.  These tests feed every response of the profile to a request in
flight and check the same outcome as the id rule: only the request's own id
completes it, everything else is dropped and counted under the same reason
(seed defect 7: a response never completes another request).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from virtio_msg.bus import Backend, LoopbackBus
from virtio_msg.bus.pending import EXPECT, KIND, REQUEST, RESPONSE
from virtio_msg.devices import RngDevice
from virtio_msg.testing import GatedChannel
from virtio_msg.transport import BusParams
from virtio_msg.wire import Codec
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S
from virtio_msg.wire._layout import Layout


@pytest.fixture(params=["spec", "linux-rfc1"])
def gated(request: pytest.FixtureRequest) -> Iterator[tuple[LoopbackBus, Backend, GatedChannel]]:
    bus = LoopbackBus(BusParams(request.param, timeout_ms=10_000), size=1 << 20)
    backend = Backend(bus.region, bus.params)
    channel = GatedChannel(bus, backend)
    backend.serve(0, RngDevice())
    backend.serve(1, RngDevice())
    try:
        yield bus, backend, channel
    finally:
        bus.close()


def _raw(codec: Codec, lay: Layout, dev_num: int, token: int) -> bytes:
    """A response of ``lay`` with an all-zero payload (every count 0)."""
    payload = bytes(lay.fixed.size)
    size = codec.header_size + len(payload)
    if codec.header_size == 8:
        head = struct.pack("<BBHHH", lay.type_bits, lay.msg_id, dev_num, token, size)
    else:
        head = struct.pack("<BBHH", lay.type_bits, lay.msg_id, dev_num, size)
    return head + payload


def _held_status_request(
    bus: LoopbackBus, channel: GatedChannel
) -> tuple[threading.Thread, list[object], int]:
    entry = bus.device(0)
    assert entry is not None
    channel.hold = True
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(entry.transport.get_status()))
    t.start()
    deadline = time.monotonic() + 5
    while not channel.held:
        assert time.monotonic() < deadline, "the request never reached the channel"
        time.sleep(0.001)
    return t, result, bus.adapter.codec.decode_header(channel.held[0]).token


def test_expect_is_the_response_of_the_same_message_id() -> None:
    """Every request class expects exactly the response class with its id."""
    for profile in ("spec", "linux-rfc1"):
        for req in Codec(profile).layouts():
            if KIND.get(req.cls) is not REQUEST:
                continue
            resp = EXPECT[req.cls]
            same_id = [
                lay.cls for lay in Codec(profile).layouts()
                if KIND.get(lay.cls) is RESPONSE and lay.msg_id == req.msg_id
            ]
            assert same_id == [resp], req.name
    assert EXPECT[S.EventAvail] is R.EventAvailResp  # linux-rfc1's kick acknowledgement


def test_seed_defect_7_only_the_requests_own_id_completes_it(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, channel = gated
    codec = bus.adapter.codec
    received = bus.received
    t, result, token = _held_status_request(bus, channel)
    want = codec.layout_for(S.GetDeviceStatusResp if codec.has_token else R.GetDeviceStatusResp)
    others = [lay for lay in codec.layouts()
              if lay.response and not lay.bus and lay.msg_id != want.msg_id]
    assert len(others) >= 10
    for lay in others:
        before = bus.dropped.copy()
        bus.receive(_raw(codec, lay, 0, token), channel)
        assert bus.dropped - before == {"unmatched-response": 1}, lay.name
    # the right id from another device number (present, same owner): unmatched
    bus.receive(_raw(codec, want, 1, token), channel)
    assert bus.dropped["unmatched-response"] == len(others) + 1
    # the right id for a device number that is not present: not from its owner
    bus.receive(_raw(codec, want, 9, token), channel)
    assert bus.dropped["response-not-from-owner"] == 1
    assert not result and t.is_alive()
    channel.release()  # the backend's own answer completes the request
    t.join(5)
    assert result == [backend.devices[0].status]
    assert bus.received - received == {"GET_DEVICE_STATUS resp": 1}  # dropped ones are not


def test_response_from_a_channel_that_does_not_own_the_device_is_dropped(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, _backend, channel = gated
    other = GatedChannel(bus, Backend(bus.region, bus.params))
    codec = bus.adapter.codec
    t, result, token = _held_status_request(bus, channel)
    want = codec.layout_for(S.GetDeviceStatusResp if codec.has_token else R.GetDeviceStatusResp)
    bus.receive(_raw(codec, want, 0, token), other)  # right id, token, device: wrong channel
    assert bus.dropped == {"response-not-from-owner": 1}
    assert not result
    bus.receive(_raw(codec, want, 0, token), channel)  # status 0 (all-zero payload)
    t.join(5)
    assert result == [0]
    channel.held.clear()


def test_statistics_by_name_count_every_message(
    gated: tuple[LoopbackBus, Backend, GatedChannel],
) -> None:
    bus, backend, _channel = gated
    entry = bus.device(0)
    assert entry is not None
    sent, received = bus.sent, bus.received
    handled = backend.devices[0].handled
    for _ in range(3):
        entry.transport.get_status()
    assert bus.sent - sent == {"GET_DEVICE_STATUS": 3}
    assert bus.received - received == {"GET_DEVICE_STATUS resp": 3}
    assert backend.devices[0].handled - handled == {"GetDeviceStatus": 3}
    assert bus.sent - sent == {"GET_DEVICE_STATUS": 3}  # a snapshot, not a live view
