"""Both engines back to back: a complete virtio-rng initialization plus real requests.

A :class:`DriverEngine` initializes an :class:`RngDevice` behind a
:class:`DeviceTransport` through :class:`EnginePair` (the real wire encoding
of each profile), sets up queue 0 with a :class:`DriverQueue` whose rings
live in ``pair.pool``, and sends entropy requests through the ring:
EVENT_AVAIL from the driver engine, the device model fills the buffer,
EVENT_USED comes back, and the driver reaps the bytes.  EVENT_IDX and
INDIRECT_DESC are switched on and off through the driver's feature selection.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

import virtio_msg.spec as C
from virtio_msg.devices.rng import RngDevice
from virtio_msg.testing import EnginePair
from virtio_msg.transport import BusParams
from virtio_msg.virtqueue import DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE, DriverQueue
from virtio_msg.wire import Profile
from virtio_msg.wire import spec as S

SEED = 0x5EED
DEV = 5
QSIZE = 16
EVENT_IDX = 1 << C.VIRTIO_F_EVENT_IDX
INDIRECT = 1 << C.VIRTIO_F_INDIRECT_DESC
ACK = C.Status.ACKNOWLEDGE
DRV = C.Status.DRIVER
FOK = C.Status.FEATURES_OK
DOK = C.Status.DRIVER_OK


@pytest.fixture(params=["spec", "linux-rfc1"])
def pair(request: pytest.FixtureRequest) -> Iterator[EnginePair]:
    """An rng device and a driver engine joined through the profile's wire encoding."""
    p = EnginePair(RngDevice(seed=SEED), BusParams(profile=Profile(request.param)), dev_num=DEV)
    yield p
    p.close()


def bring_up(pair: EnginePair, event_idx: bool, indirect: bool) -> DriverQueue:
    """Initialize the device completely and return the live queue 0."""
    d = pair.driver
    info = pair.run(d.get_device_info())
    assert (info.device_id, info.max_virtqueues) == (C.DeviceId.ENTROPY, 1)
    pair.run(d.reset())
    pair.run(d.set_status(ACK))
    pair.run(d.set_status(ACK | DRV))
    offered = pair.run(d.read_features())
    assert offered & EVENT_IDX and offered & INDIRECT
    # These tests drive split rings (packed: tests/virtqueue and tests/transport/test_packed_*).
    want = offered & ~((1 << C.VIRTIO_F_RING_PACKED) | (1 << C.VIRTIO_F_NOTIFICATION_DATA))
    if not event_idx:
        want &= ~EVENT_IDX
    if not indirect:
        want &= ~INDIRECT
    features = pair.run(d.write_features(want))
    assert features == want
    assert pair.model.negotiated_features == features
    q = DriverQueue(pair.pool, 0, QSIZE, features)
    got = pair.run(d.setup_vqueue(0, QSIZE, q.desc_addr, q.driver_addr, q.device_addr))
    assert (got.cur_size, got.enabled) == (QSIZE, True)
    assert pair.run(d.set_status(d.status | DOK)) == ACK | DRV | FOK | DOK
    live = pair.device.live_queue(0)
    assert live is not None
    assert live.features == features
    return q


@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_rng_request_through_a_real_ring(
    pair: EnginePair, event_idx: bool, indirect: bool
) -> None:
    q = bring_up(pair, event_idx, indirect)
    d = pair.driver
    expected = random.Random(SEED)
    layout = q.layout
    for round_ in range(3):
        token = f"req{round_}"
        q.add([], [24, 8], token)  # a two-buffer chain: indirect when negotiated
        head = pair.region.read_u16(layout.avail_ring + 2 * (round_ % QSIZE))
        _addr, length, flags, _next = pair.region.unpack(DESC, layout.descriptor(head))
        if indirect:
            assert flags == VIRTQ_DESC_F_INDIRECT
            assert length == 2 * DESC.size
        else:
            assert flags & VIRTQ_DESC_F_WRITE
            assert length == 24
        assert q.kick_prepare()
        events_before = len(pair.events)
        ev = d.event_avail(0, q.next_avail)
        assert (ev.vq_index, ev.next_offset, ev.dev_num) == (0, 0, DEV)
        assert pair.send(ev) is None  # an event: no response
        new = pair.events[events_before:]
        assert new == [S.EventUsed(0, dev_num=DEV)]
        assert d.accept_event(new[0]) == new[0]
        assert q.get_used() == [(token, expected.randbytes(32))]
        model = pair.model
        assert isinstance(model, RngDevice)
        assert model.bytes_served == 32 * (round_ + 1)
        if event_idx:  # the device publishes how far it has read
            assert pair.region.read_u16(layout.avail_event) == round_ + 1
        else:
            assert pair.region.read_u16(layout.avail_event) == 0
    assert pair.region.read_u16(layout.used_idx) == 3
    kinds = [type(m).__name__ for direction, m in pair.trace if direction == "event"]
    assert kinds == ["EventUsed"] * 3
    assert not pair.device.discarded
    assert pair.run(d.get_status()) == ACK | DRV | FOK | DOK


def test_batch_of_requests_one_notification(pair: EnginePair) -> None:
    q = bring_up(pair, event_idx=True, indirect=False)
    for i in range(4):
        q.add([], [8], i)
    assert q.kick_prepare()
    pair.send(pair.driver.event_avail(0, q.next_avail))
    assert pair.events == [S.EventUsed(0, dev_num=DEV)]
    expected = random.Random(SEED)
    assert q.get_used() == [(i, expected.randbytes(8)) for i in range(4)]


def test_reset_and_reinitialize_serves_again(pair: EnginePair) -> None:
    q = bring_up(pair, event_idx=False, indirect=True)
    q.add([], [4], "before")
    q.kick_prepare()
    pair.send(pair.driver.event_avail(0))
    expected = random.Random(SEED)
    assert q.get_used() == [("before", expected.randbytes(4))]
    pair.run(pair.driver.reset())
    assert pair.device.live_queue(0) is None
    q.close()
    q = bring_up(pair, event_idx=True, indirect=True)
    q.add([], [4, 4], "after")
    q.kick_prepare()
    pair.send(pair.driver.event_avail(0))
    assert q.get_used() == [("after", expected.randbytes(8))]
