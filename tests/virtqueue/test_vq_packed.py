"""Packed rings (virtio 1.2 §2.8), IN_ORDER and notification data: one test per rule.

Driver and device share one region; hostile ring contents are written by hand
over a real driver's ring so each device-side rule is hit on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
)
from virtio_msg.virtqueue import (
    EVENT_SUPPRESSION,
    PACKED_DESC,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    BufferOutOfRegion,
    ChainDescriptorNotAvailable,
    ChainTooLong,
    DescriptorAfterIndirect,
    DeviceQueue,
    DriverQueue,
    EventSuppressionInvalid,
    HeadInFlight,
    IndirectEntryInvalid,
    IndirectInChain,
    IndirectNotNegotiated,
    NotificationDataInvalid,
    OutOfOrderDescriptor,
    PackedDeviceQueue,
    PackedDriverQueue,
    QueueAreaMisaligned,
    QueueBroken,
    QueueFeaturesInvalid,
    QueueSizeInvalid,
    UsedIdNotOutstanding,
    UsedLengthTooLarge,
)

PACKED = 1 << VIRTIO_F_RING_PACKED
EVENT_IDX = 1 << VIRTIO_F_EVENT_IDX
INDIRECT = 1 << VIRTIO_F_INDIRECT_DESC
IN_ORDER = 1 << VIRTIO_F_IN_ORDER
AVAIL = VIRTQ_DESC_F_AVAIL  # wrap counter 1: AVAIL set, USED clear


@pytest.fixture
def region() -> Iterator[Region]:
    with Region(1 << 20) as r:
        yield r


def pair(
    region: Region, size: int = 7, features: int = PACKED
) -> tuple[PackedDriverQueue, PackedDeviceQueue]:
    drv = PackedDriverQueue(DmaPool(region), 0, size, features)
    dev = PackedDeviceQueue.create(
        region, size, drv.desc_addr, drv.driver_addr, drv.device_addr, features
    )
    return drv, dev


def put(region: Region, drv: PackedDriverQueue, pos: int, addr: int, length: int, flags: int,
        buf_id: int = 0) -> None:
    region.pack(PACKED_DESC, drv.layout.descriptor(pos), addr, length, buf_id, flags)


# --- creation (§2.8, spec reference §5.2 step 8) ---------------------------------------


def test_packed_size_need_not_be_a_power_of_two(region: Region) -> None:
    _drv, dev = pair(region, size=7)
    assert dev.size == 7


@pytest.mark.parametrize("size", [0, 32769])
def test_packed_size_out_of_range_is_refused(region: Region, size: int) -> None:
    with pytest.raises(QueueSizeInvalid):
        PackedDeviceQueue.create(region, size, region.base, region.base + 0x10000,
                                 region.base + 0x10004, PACKED)


def test_packed_event_areas_must_be_4_aligned(region: Region) -> None:
    with pytest.raises(QueueAreaMisaligned):
        PackedDeviceQueue.create(region, 8, region.base, region.base + 0x1002,
                                 region.base + 0x1008, PACKED)


def test_packed_queue_needs_ring_packed_and_split_refuses_it(region: Region) -> None:
    with pytest.raises(QueueFeaturesInvalid):
        PackedDeviceQueue.create(region, 8, region.base, region.base + 0x1000,
                                 region.base + 0x1004, 0)
    with pytest.raises(QueueFeaturesInvalid):
        DeviceQueue.create(region, 8, region.base, region.base + 0x1000,
                           region.base + 0x2000, PACKED)


# --- a working ring across many wraps ---------------------------------------------------


@pytest.mark.parametrize("features", [PACKED, PACKED | INDIRECT | EVENT_IDX, PACKED | IN_ORDER])
def test_packed_round_trip_across_wrap_around(region: Region, features: int) -> None:
    drv, dev = pair(region, size=5, features=features)
    wraps = 0
    last_wrap = 1
    for i in range(1, 80):
        drv.add([bytes([i]) * i], [3, 2], i)
        drv.kick_prepare()
        chain = dev.pop()
        assert chain is not None and chain.read() == bytes([i]) * i
        chain.write(b"abcde")
        dev.add_used(chain.head, 5)
        assert drv.get_used() == [(i, b"abcde")]
        wrap = dev.next_avail >> 15
        wraps += wrap != last_wrap
        last_wrap = wrap
    assert wraps >= 10  # both wrap counters toggled many times
    assert not drv.broken and not dev.broken


# --- device-side pop rules (hostile ring) ------------------------------------------------


def test_packed_chain_into_unavailable_descriptor_breaks_the_queue(region: Region) -> None:
    drv, dev = pair(region)
    put(region, drv, 0, region.base + 0x8000, 16, AVAIL | VIRTQ_DESC_F_NEXT)
    # descriptor 1 still zero: not available for wrap counter 1
    with pytest.raises(ChainDescriptorNotAvailable):
        dev.pop()
    assert dev.broken
    with pytest.raises(QueueBroken):
        dev.pop()


def test_packed_chain_cannot_loop_around_the_ring(region: Region) -> None:
    # After a full ring the walk meets descriptors of the other lap: not available.
    drv, dev = pair(region, size=4)
    for pos in range(4):
        put(region, drv, pos, region.base + 0x8000, 16, AVAIL | VIRTQ_DESC_F_NEXT)
    with pytest.raises(ChainDescriptorNotAvailable):
        dev.pop()


def test_packed_indirect_table_longer_than_the_queue_is_too_long(region: Region) -> None:
    drv, dev = pair(region, size=2, features=PACKED | INDIRECT)
    put(region, drv, 0, region.base + 0x9000, 3 * 16, AVAIL | VIRTQ_DESC_F_INDIRECT)
    with pytest.raises(ChainTooLong):
        dev.pop()


def test_packed_buffer_outside_region_is_refused(region: Region) -> None:
    drv, dev = pair(region)
    put(region, drv, 0, region.end - 8, 16, AVAIL)
    with pytest.raises(BufferOutOfRegion):
        dev.pop()


def test_packed_indirect_needs_the_feature(region: Region) -> None:
    drv, dev = pair(region)
    put(region, drv, 0, region.base + 0x8000, 16, AVAIL | VIRTQ_DESC_F_INDIRECT)
    with pytest.raises(IndirectNotNegotiated):
        dev.pop()


def test_packed_indirect_with_next_is_refused(region: Region) -> None:
    drv, dev = pair(region, features=PACKED | INDIRECT)
    put(region, drv, 0, region.base + 0x8000, 16, AVAIL | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)
    with pytest.raises(DescriptorAfterIndirect):
        dev.pop()


def test_packed_indirect_inside_a_linked_list_is_refused(region: Region) -> None:
    drv, dev = pair(region, features=PACKED | INDIRECT)
    put(region, drv, 0, region.base + 0x8000, 16, AVAIL | VIRTQ_DESC_F_NEXT)
    put(region, drv, 1, region.base + 0x9000, 16, AVAIL | VIRTQ_DESC_F_INDIRECT)
    with pytest.raises(IndirectInChain):
        dev.pop()


def test_packed_indirect_entry_with_flags_other_than_write_is_refused(region: Region) -> None:
    drv, dev = pair(region, features=PACKED | INDIRECT)
    table = region.base + 0x9000
    region.pack(PACKED_DESC, table, region.base + 0xA000, 8, 0, VIRTQ_DESC_F_NEXT)
    put(region, drv, 0, table, 16, AVAIL | VIRTQ_DESC_F_INDIRECT)
    with pytest.raises(IndirectEntryInvalid):
        dev.pop()


def test_packed_buffer_id_in_flight_is_refused(region: Region) -> None:
    drv, dev = pair(region)
    put(region, drv, 0, region.base + 0x8000, 16, AVAIL, buf_id=3)
    put(region, drv, 1, region.base + 0x8000, 16, AVAIL, buf_id=3)
    assert dev.pop() is not None
    with pytest.raises(HeadInFlight):
        dev.pop()


def test_packed_driver_event_flags_reserved_break_the_queue(region: Region) -> None:
    drv, dev = pair(region)
    drv.add([b"x"], [], 1)
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    dev.add_used(chain.head, 0)
    region.pack(EVENT_SUPPRESSION, drv.driver_addr, 0, 3)
    with pytest.raises(EventSuppressionInvalid):
        dev.needs_notification()
    assert dev.broken


def test_packed_descriptor_event_mode_without_event_idx_is_refused(region: Region) -> None:
    drv, dev = pair(region)
    drv.add([b"x"], [], 1)
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    dev.add_used(chain.head, 0)
    region.pack(EVENT_SUPPRESSION, drv.driver_addr, 1 | 1 << 15, 2)
    with pytest.raises(EventSuppressionInvalid):
        dev.needs_notification()


# --- event suppression, descriptor-specific mode (§2.8.10) --------------------------------


def test_packed_descriptor_specific_events_both_directions(region: Region) -> None:
    drv, dev = pair(region, size=4, features=PACKED | EVENT_IDX)
    dev.enable_notification()  # device area: DESC mode at its next position (0, wrap 1)
    drv.add([b"a"], [], 1)
    assert drv.kick_prepare()  # descriptor 0 is the event: notify
    first = dev.pop()
    assert first is not None
    drv.add([b"b"], [], 2)
    assert drv.kick_prepare()  # the pop moved the event to descriptor 1
    dev.disable_notification()
    drv.add([b"c"], [], 3)
    assert not drv.kick_prepare()  # DISABLE
    # used side: the driver asks for an event at its next used position
    assert drv.enable_callbacks() is False
    dev.add_used(first.head, 0)
    assert dev.needs_notification()  # descriptor 0 was the event
    assert [t for t, _ in drv.get_used()] == [1]
    second = dev.pop()
    assert second is not None
    drv.disable_callbacks()
    dev.add_used(second.head, 0)
    assert not dev.needs_notification()  # the driver area says DISABLE


# --- driver side: the device lies ----------------------------------------------------------


def test_packed_driver_refuses_unknown_used_id(region: Region) -> None:
    drv, _dev = pair(region)
    drv.add([b"x"], [8], "t")
    drv.kick_prepare()
    put(region, drv, 0, 0, 0, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, buf_id=5)
    with pytest.raises(UsedIdNotOutstanding):
        drv.get_used()
    assert drv.broken


def test_packed_driver_refuses_used_length_too_large(region: Region) -> None:
    drv, dev = pair(region)
    drv.add([], [8], "t")
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    put(region, drv, 0, 0, 9, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, buf_id=chain.head)
    with pytest.raises(UsedLengthTooLarge):
        drv.get_used()


# --- VIRTIO_F_IN_ORDER (§2.7.9, §2.8.20) ------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_in_order_device_publishes_in_the_order_made_available(
    region: Region, packed: bool
) -> None:
    features = IN_ORDER | (PACKED if packed else 0)
    pool = DmaPool(region)
    drv = (PackedDriverQueue if packed else DriverQueue)(pool, 0, 8, features)
    dev = (PackedDeviceQueue if packed else DeviceQueue).create(
        region, 8, drv.desc_addr, drv.driver_addr, drv.device_addr, features
    )
    for token in range(3):
        drv.add([b"x"], [4], token)
    drv.kick_prepare()
    chains = [c for c in (dev.pop() for _ in range(3)) if c is not None]
    assert len(chains) == 3
    dev.add_used(chains[2].head, 1)  # completed first, published last
    dev.add_used(chains[1].head, 2)
    assert drv.get_used() == []
    dev.add_used(chains[0].head, 3)
    assert [t for t, _ in drv.get_used()] == [0, 1, 2]


def test_in_order_split_driver_accepts_one_used_entry_for_a_batch(region: Region) -> None:
    drv = DriverQueue(DmaPool(region), 0, 8, IN_ORDER)
    for token in range(3):
        drv.add([], [4], token)
    drv.kick_prepare()
    lay = drv.layout
    region.pack(PACKED_DESC.__class__("<II"), lay.used_ring, 2, 4)  # id of the batch's last head
    region.write_u16(lay.used_idx, 3)  # used.idx moves by the batch size
    got = drv.get_used()
    assert [t for t, _ in got] == [0, 1, 2]
    assert all(len(data) == 4 for _, data in got)


def test_in_order_packed_driver_accepts_one_used_descriptor_for_a_batch(region: Region) -> None:
    drv, _dev = pair(region, size=8, features=PACKED | IN_ORDER)
    for token in range(3):
        drv.add([], [4], token)
    drv.kick_prepare()
    put(region, drv, 0, 0, 4, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, buf_id=drv._order[2])
    assert [t for t, _ in drv.get_used()] == [0, 1, 2]


def test_in_order_split_device_refuses_out_of_order_heads(region: Region) -> None:
    from vq_testlib import RawRing

    ring = RawRing(region, 8, IN_ORDER)
    dev = ring.device()
    ring.chain([(ring.buffer(8), 8, False)], first=3)
    ring.publish(3) if hasattr(ring, "publish") else None
    region.write_u16(ring.layout.avail_ring, 3)
    region.write_u16(ring.layout.avail_idx, 1)
    with pytest.raises(OutOfOrderDescriptor):
        dev.pop()


# --- VIRTIO_F_NOTIFICATION_DATA (DRV-73, §3.13 of the spec reference) ------------------------


def test_drv_73_notification_data_split_is_the_avail_index(region: Region) -> None:
    drv = DriverQueue(DmaPool(region), 0, 8, 0, start_index=0xFFFE)
    for token in range(3):
        drv.add([b"x"], [], token)
    assert drv.notification_data == 0x0001  # 0xFFFE + 3, wrapped, bit 31 clear


def test_drv_73_notification_data_packed_has_offset_and_wrap(region: Region) -> None:
    drv, _dev = pair(region, size=5)
    assert drv.notification_data == 1 << 31  # offset 0, wrap counter 1
    for token in range(2):
        drv.add([b"x", b"y"], [], token)
    drv.kick_prepare()
    assert drv.notification_data == 4 | 1 << 31
    for _ in range(2):
        chain = _dev.pop()
        assert chain is not None
        _dev.add_used(chain.head, 0)
    assert len(drv.get_used()) == 2
    drv.add([b"x", b"y"], [], 9)  # descriptors 4 and 0: the driver wraps
    assert drv.notification_data == 1  # offset 1, wrap counter 0


def test_notification_data_ahead_of_the_split_ring_breaks_the_queue(region: Region) -> None:
    drv = DriverQueue(DmaPool(region), 0, 8, 0)
    dev = DeviceQueue.create(region, 8, drv.desc_addr, drv.driver_addr, drv.device_addr, 0)
    drv.add([b"x"], [], 1)
    drv.kick_prepare()
    dev.check_notification(drv.notification_data)  # agrees with the ring
    dev.check_notification(0)  # stale: fine
    with pytest.raises(NotificationDataInvalid):
        dev.check_notification(5)  # claims 4 more than avail.idx shows
    assert dev.broken


def test_notification_data_split_bits_16_to_30_are_refused(region: Region) -> None:
    drv = DriverQueue(DmaPool(region), 0, 8, 0)
    dev = DeviceQueue.create(region, 8, drv.desc_addr, drv.driver_addr, drv.device_addr, 0)
    with pytest.raises(NotificationDataInvalid):
        dev.check_notification(1 << 16)


def test_notification_data_packed_checked_against_the_ring(region: Region) -> None:
    drv, dev = pair(region, size=5)
    drv.add([b"x"], [], 1)
    drv.kick_prepare()
    dev.check_notification(drv.notification_data)
    with pytest.raises(NotificationDataInvalid):
        dev.check_notification(9 | 1 << 31)  # offset past the ring
    _drv2, dev2 = pair(Region(1 << 16), size=5)
    with pytest.raises(NotificationDataInvalid):
        dev2.check_notification(3 | 1 << 31)  # says 3 available, the ring has none
