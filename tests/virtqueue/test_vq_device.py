"""Device side: one test per validation rule, plus add_used and notification suppression.

Rings are written by hand (``RawRing``), so every rule is exercised with
exactly the bad value it forbids.  Section numbers are virtio 1.x.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vq_testlib import RawRing

from virtio_msg.errors import VirtqueueError
from virtio_msg.memory import Region
from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VQ_MAX_SIZE,
)
from virtio_msg.virtqueue import (
    DESC,
    USED_ELEM,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    AvailIndexTooFar,
    BufferOutOfRegion,
    ChainTooLarge,
    ChainTooLong,
    DescriptorAfterIndirect,
    DescriptorIndexOutOfRange,
    DeviceQueue,
    DriverViolation,
    HeadInFlight,
    IndirectBadLength,
    IndirectNotNegotiated,
    IndirectOutOfRegion,
    NestedIndirect,
    QueueAreaMisaligned,
    QueueAreaOutOfRegion,
    QueueBroken,
    QueueFeaturesInvalid,
    QueueSizeInvalid,
    ReadableAfterWritable,
    desc_table_size,
)

INDIRECT = 1 << VIRTIO_F_INDIRECT_DESC
EVENT_IDX = 1 << VIRTIO_F_EVENT_IDX
SIZE = 8


@pytest.fixture
def region() -> Iterator[Region]:
    with Region(64 * 1024) as r:
        yield r


@pytest.fixture
def ring(region: Region) -> RawRing:
    return RawRing(region, SIZE, INDIRECT)


def buf(ring: RawRing, data: bytes = b"data", writable: bool = False) -> tuple[int, int, bool]:
    return (ring.buffer(len(data), b"" if writable else data), len(data), writable)


def pop_violation(ring: RawRing, rule: type[DriverViolation]) -> DeviceQueue:
    """Pop from the ring, expect ``rule``, and check the queue stays broken."""
    dev = ring.device()
    with pytest.raises(rule):
        dev.pop()
    assert dev.broken
    assert isinstance(dev.broken_reason, rule)
    with pytest.raises(QueueBroken):
        dev.pop()
    with pytest.raises(QueueBroken):
        dev.needs_notification()
    return dev


def test_every_rule_is_a_distinct_virtqueue_error() -> None:
    rules = [
        QueueSizeInvalid,
        QueueAreaMisaligned,
        QueueAreaOutOfRegion,
        QueueFeaturesInvalid,
        AvailIndexTooFar,
        DescriptorIndexOutOfRange,
        HeadInFlight,
        ChainTooLong,
        ChainTooLarge,
        ReadableAfterWritable,
        BufferOutOfRegion,
        IndirectNotNegotiated,
        IndirectOutOfRegion,
        IndirectBadLength,
        NestedIndirect,
        DescriptorAfterIndirect,
    ]
    assert len(set(rules)) == len(rules)
    for rule in rules:
        assert issubclass(rule, DriverViolation)
        assert issubclass(rule, VirtqueueError)
        assert not any(rule is not other and issubclass(rule, other) for other in rules)


# --- the validating constructor ------------------------------------------------


def test_queue_is_created_only_through_create(region: Region) -> None:
    with pytest.raises(TypeError, match="create"):
        DeviceQueue(object(), region, RawRing(region, 4).layout, 0, 0)


@pytest.mark.parametrize("size", [0, 3, 6, 100, 65536, 2 * VQ_MAX_SIZE, -8])
def test_queue_size_must_be_a_power_of_two_at_most_32768(region: Region, size: int) -> None:
    with pytest.raises(QueueSizeInvalid):
        DeviceQueue.create(region, size, region.base, region.base, region.base, 0)


def test_queue_size_32768_is_allowed() -> None:
    with Region(1 << 20) as r:
        lay = RawRing(r, VQ_MAX_SIZE).layout
        dev = DeviceQueue.create(r, VQ_MAX_SIZE, lay.desc, lay.avail, lay.used, 0)
        assert dev.size == VQ_MAX_SIZE


def test_queue_size_must_not_exceed_the_device_maximum(region: Region) -> None:
    lay = RawRing(region, 16).layout
    DeviceQueue.create(region, 16, lay.desc, lay.avail, lay.used, 0, max_size=16)
    with pytest.raises(QueueSizeInvalid, match=r"1\.\.8"):
        DeviceQueue.create(region, 16, lay.desc, lay.avail, lay.used, 0, max_size=8)
    with pytest.raises(QueueSizeInvalid):
        DeviceQueue.create(region, 1, lay.desc, lay.avail, lay.used, 0, max_size=0)


@pytest.mark.parametrize(
    ("area", "offset", "align"),
    [
        ("descriptor table", (8, 0, 0), 16),
        ("available ring", (0, 1, 0), 2),
        ("used ring", (0, 0, 2), 4),
    ],
)
def test_queue_areas_must_be_aligned(
    ring: RawRing, area: str, offset: tuple[int, int, int], align: int
) -> None:
    lay = ring.layout
    with pytest.raises(QueueAreaMisaligned, match=f"{area}.*{align}-byte"):
        DeviceQueue.create(
            ring.region, SIZE, lay.desc + offset[0], lay.avail + offset[1], lay.used + offset[2], 0
        )


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("where", ["below", "crossing-end", "past-end", "wrapping"])
def test_queue_areas_must_lie_entirely_inside_the_region(
    ring: RawRing, which: int, where: str
) -> None:
    region = ring.region
    lay = ring.layout
    addrs = [lay.desc, lay.avail, lay.used]
    addrs[which] = {
        "below": region.base - 64,
        "crossing-end": region.end - 16,
        "past-end": region.end + 64,
        "wrapping": (1 << 64) - 16,
    }[where]
    with pytest.raises(QueueAreaOutOfRegion):
        DeviceQueue.create(region, SIZE, addrs[0], addrs[1], addrs[2], 0)


def test_queue_area_may_end_exactly_at_the_region_end(region: Region) -> None:
    desc = region.end - desc_table_size(SIZE)
    dev = DeviceQueue.create(region, SIZE, desc, region.base, region.base + 64, 0)
    assert dev.layout.desc == desc


def test_packed_ring_feature_cannot_drive_a_split_queue(ring: RawRing) -> None:
    ring.features = 1 << VIRTIO_F_RING_PACKED
    with pytest.raises(QueueFeaturesInvalid):
        ring.device()


# --- popping: the available ring ----------------------------------------------


def test_empty_ring_pops_none(ring: RawRing) -> None:
    assert ring.device().pop() is None


def test_avail_index_at_most_size_ahead(ring: RawRing) -> None:
    dev = ring.device()
    for head in range(SIZE):
        ring.chain([buf(ring)], first=head)
    ring.publish(*range(SIZE))  # exactly size ahead is fine
    for _ in range(SIZE):
        chain = dev.pop()
        assert chain is not None
        dev.add_used(chain.head, 0)
    ring.region.write_u16(ring.layout.avail_idx, 2 * SIZE + 1)
    with pytest.raises(AvailIndexTooFar, match="9 entries"):
        dev.pop()
    assert dev.broken


def test_avail_index_moving_backwards_is_too_far(ring: RawRing) -> None:
    ring.chain([buf(ring)])
    ring.publish(0)
    dev = ring.device()
    assert dev.pop() is not None
    ring.region.write_u16(ring.layout.avail_idx, 0)  # the driver "takes back" an entry
    with pytest.raises(AvailIndexTooFar):
        dev.pop()


def test_head_index_below_size(ring: RawRing) -> None:
    ring.publish(SIZE)
    pop_violation(ring, DescriptorIndexOutOfRange)


def test_next_index_below_size(ring: RawRing) -> None:
    ring.set_desc(0, ring.buffer(4), 4, VIRTQ_DESC_F_NEXT, SIZE)
    ring.publish(0)
    pop_violation(ring, DescriptorIndexOutOfRange)


def test_head_may_not_be_made_available_while_in_flight(ring: RawRing) -> None:
    ring.chain([buf(ring)])
    ring.publish(0, 0)
    dev = ring.device()
    assert dev.pop() is not None
    with pytest.raises(HeadInFlight):
        dev.pop()


def test_chain_longer_than_size_is_a_loop(ring: RawRing) -> None:
    ring.set_desc(0, ring.buffer(4), 4, VIRTQ_DESC_F_NEXT, 1)
    ring.set_desc(1, ring.buffer(4), 4, VIRTQ_DESC_F_NEXT, 0)
    ring.publish(0)
    pop_violation(ring, ChainTooLong)


def test_self_loop_is_detected(ring: RawRing) -> None:
    ring.set_desc(3, ring.buffer(4), 4, VIRTQ_DESC_F_NEXT, 3)
    ring.publish(3)
    pop_violation(ring, ChainTooLong)


def test_chain_of_exactly_size_descriptors_is_allowed(ring: RawRing) -> None:
    ring.chain([buf(ring, bytes([i])) for i in range(SIZE)], first=5)
    ring.publish(5)
    chain = ring.device().pop()
    assert chain is not None
    assert len(chain) == SIZE
    assert chain.read() == bytes(range(SIZE))


def test_total_length_below_2_32() -> None:
    # Sixteen 256 MiB descriptors over the same (sparse) memory total exactly 2**32.
    with Region((1 << 28) + (1 << 16)) as big:
        ring = RawRing(big, 16)
        data = ring.buffer(1 << 28)
        ring.chain([(data, 1 << 28, False)] * 15 + [(data, (1 << 28) - 1, False)])
        ring.publish(0)
        chain = ring.device().pop()
        assert chain is not None
        assert chain.readable_len == (1 << 32) - 1
        ring.chain([(data, 1 << 28, False)] * 16)
        ring.publish(0)
        pop_violation(ring, ChainTooLarge)


def test_readable_after_writable_is_rejected(ring: RawRing) -> None:
    ring.chain([buf(ring, writable=True), buf(ring)])
    ring.publish(0)
    pop_violation(ring, ReadableAfterWritable)


@pytest.mark.parametrize(
    "where", ["below", "past-end", "crossing-end", "wrapping", "zero-length-past-end"]
)
def test_buffer_must_lie_inside_the_region(ring: RawRing, where: str) -> None:
    region = ring.region
    addr, length = {
        "below": (region.base - 16, 16),
        "past-end": (region.end, 1),
        "crossing-end": (region.end - 8, 16),
        "wrapping": ((1 << 64) - 8, 16),
        "zero-length-past-end": (region.end + 1, 0),
    }[where]
    ring.set_desc(0, addr, length)
    ring.publish(0)
    pop_violation(ring, BufferOutOfRegion)


def test_zero_length_buffer_inside_the_region_is_allowed(ring: RawRing) -> None:
    ring.set_desc(0, ring.region.end, 0)
    ring.publish(0)
    chain = ring.device().pop()
    assert chain is not None
    assert chain.readable == [(ring.region.end, 0)]


# --- popping: indirect tables --------------------------------------------------


def test_indirect_requires_the_feature(ring: RawRing) -> None:
    ring.features = 0
    ring.indirect(0, [buf(ring)])
    ring.publish(0)
    pop_violation(ring, IndirectNotNegotiated)


def test_indirect_chain_is_walked(ring: RawRing) -> None:
    ring.indirect(2, [buf(ring, b"ab"), buf(ring, b"cd"), buf(ring, b"....", writable=True)])
    ring.publish(2)
    chain = ring.device().pop()
    assert chain is not None
    assert chain.indirect
    assert chain.head == 2
    assert chain.read() == b"abcd"
    assert [length for _, length in chain.writable] == [4]


def test_indirect_after_direct_descriptors_is_allowed(ring: RawRing) -> None:
    # §2.7.5.3.2: the device MUST handle normal descriptors followed by one indirect one.
    table, length = ring.indirect_table([buf(ring, b"2"), buf(ring, b"3")])
    ring.set_desc(0, ring.buffer(1, b"1"), 1, VIRTQ_DESC_F_NEXT, 1)
    ring.set_desc(1, table, length, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE)
    ring.publish(0)
    chain = ring.device().pop()
    assert chain is not None
    assert chain.read() == b"123"  # the WRITE flag of the table pointer is ignored


@pytest.mark.parametrize("where", ["below", "past-end", "crossing-end", "wrapping"])
def test_indirect_table_must_lie_inside_the_region(ring: RawRing, where: str) -> None:
    region = ring.region
    addr = {
        "below": region.base - 32,
        "past-end": region.end,
        "crossing-end": region.end - 16,
        "wrapping": (1 << 64) - 16,
    }[where]
    ring.set_desc(0, addr, 32, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    pop_violation(ring, IndirectOutOfRegion)


@pytest.mark.parametrize("length", [0, 15, 17, 24])
def test_indirect_length_is_a_nonzero_multiple_of_16(ring: RawRing, length: int) -> None:
    table, _ = ring.indirect_table([buf(ring), buf(ring)])
    ring.set_desc(0, table, length, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    pop_violation(ring, IndirectBadLength)


def test_no_nested_indirect(ring: RawRing) -> None:
    inner, inner_len = ring.indirect_table([buf(ring)])
    outer, outer_len = ring.indirect_table([(inner, inner_len, False)], VIRTQ_DESC_F_INDIRECT)
    ring.set_desc(0, outer, outer_len, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    pop_violation(ring, NestedIndirect)


def test_nothing_chained_after_an_indirect_descriptor(ring: RawRing) -> None:
    table, length = ring.indirect_table([buf(ring)])
    ring.set_desc(0, table, length, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    ring.set_desc(1, ring.buffer(4), 4)
    ring.publish(0)
    pop_violation(ring, DescriptorAfterIndirect)


def test_indirect_next_index_below_table_size(ring: RawRing) -> None:
    table, length = ring.indirect_table([buf(ring), buf(ring)])
    ring.region.pack(DESC, table, ring.buffer(4), 4, VIRTQ_DESC_F_NEXT, 2)  # entry 0 -> 2
    ring.set_desc(0, table, length, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    pop_violation(ring, DescriptorIndexOutOfRange)


def test_indirect_table_loop_is_detected(ring: RawRing) -> None:
    table, length = ring.indirect_table([buf(ring), buf(ring)])
    ring.region.pack(USED_ELEM, table + 16 + 12, VIRTQ_DESC_F_NEXT, 0)  # entry 1: flags, next=0
    ring.set_desc(0, table, length, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    dev = ring.device()
    with pytest.raises(ChainTooLong, match="loops"):
        dev.pop()


def test_indirect_entries_count_toward_the_queue_size(ring: RawRing) -> None:
    ring.indirect(0, [buf(ring, b"x") for _ in range(SIZE)])
    ring.publish(0)
    dev = ring.device()
    chain = dev.pop()
    assert chain is not None
    assert len(chain) == SIZE
    ring.set_desc(1, ring.buffer(1), 1, VIRTQ_DESC_F_NEXT, 2)
    ring.indirect(2, [buf(ring, b"x") for _ in range(SIZE)])  # 1 + 8 > 8
    ring.publish(1)
    with pytest.raises(ChainTooLong, match="at most 7 more"):
        dev.pop()


def test_readable_after_writable_inside_an_indirect_table(ring: RawRing) -> None:
    ring.indirect(0, [buf(ring, writable=True), buf(ring)])
    ring.publish(0)
    pop_violation(ring, ReadableAfterWritable)


def test_buffer_in_an_indirect_table_must_lie_inside_the_region(ring: RawRing) -> None:
    ring.indirect(0, [buf(ring), (ring.region.end - 2, 4, False)])
    ring.publish(0)
    pop_violation(ring, BufferOutOfRegion)


def test_a_violation_does_not_advance_the_queue(ring: RawRing) -> None:
    ring.publish(SIZE + 1)
    dev = ring.device()
    with pytest.raises(DescriptorIndexOutOfRange):
        dev.pop()
    assert dev.next_avail == 0
    assert dev.in_flight == 0


# --- chains, add_used ----------------------------------------------------------


def test_chain_read_and_write_go_through_the_region(ring: RawRing) -> None:
    w1, w2 = ring.buffer(3), ring.buffer(5)
    ring.chain([buf(ring, b"req"), (w1, 3, True), (w2, 5, True)])
    ring.publish(0)
    chain = ring.device().pop()
    assert chain is not None
    assert [bytes(v) for v in chain.readable_views()] == [b"req"]
    assert chain.write(b"abcdefg") == 7
    assert ring.region.read(w1, 3) + ring.region.read(w2, 5) == b"abcdefg\x00"
    assert chain.write(b"Z", offset=7) == 1
    assert ring.region.read(w2 + 4, 1) == b"Z"
    with pytest.raises(ValueError, match="do not fit"):
        chain.write(b"123456789")


def test_add_used_publishes_the_element_and_index(ring: RawRing) -> None:
    ring.chain([buf(ring), buf(ring, b"xxxxxxxx", writable=True)], first=4)
    ring.publish(4)
    dev = ring.device()
    chain = dev.pop()
    assert chain is not None
    dev.add_used(chain.head, 6)
    assert ring.region.unpack(USED_ELEM, ring.layout.used_ring) == (4, 6)
    assert ring.region.read_u16(ring.layout.used_idx) == 1
    assert dev.in_flight == 0


def test_add_used_rejects_a_head_not_in_flight(ring: RawRing) -> None:
    dev = ring.device()
    with pytest.raises(ValueError, match="not an in-flight"):
        dev.add_used(0, 0)
    with pytest.raises(ValueError):
        dev.add_used(SIZE, 0)


def test_add_used_rejects_more_than_the_writable_length(ring: RawRing) -> None:
    ring.chain([buf(ring, b"1234", writable=True)])
    ring.publish(0)
    dev = ring.device()
    assert dev.pop() is not None
    with pytest.raises(ValueError, match="exceeds"):
        dev.add_used(0, 5)
    dev.add_used(0, 4)


def test_indices_wrap_at_65536(region: Region) -> None:
    ring = RawRing(region, 4, start=0xFFFE)
    dev = ring.device()
    ring.chain([buf(ring, b"a")])
    for i in range(6):
        ring.publish(0)
        chain = dev.pop()
        assert chain is not None
        dev.add_used(0, 0)
        assert dev.next_avail == (0xFFFE + i + 1) & 0xFFFF
    assert region.read_u16(ring.layout.used_idx) == 4
    assert dev.pop() is None


# --- notification suppression --------------------------------------------------


def _one(ring: RawRing, dev: DeviceQueue) -> None:
    ring.publish(0)
    chain = dev.pop()
    assert chain is not None
    dev.add_used(chain.head, 0)


def test_needs_notification_follows_no_interrupt_without_event_idx(ring: RawRing) -> None:
    ring.chain([buf(ring)])
    dev = ring.device()
    assert not dev.needs_notification()  # nothing used yet
    _one(ring, dev)
    assert dev.needs_notification()
    assert not dev.needs_notification()  # nothing new since
    ring.region.write_u16(ring.layout.avail_flags, VRING_AVAIL_F_NO_INTERRUPT)
    _one(ring, dev)
    assert not dev.needs_notification()


def test_needs_notification_follows_used_event(region: Region) -> None:
    ring = RawRing(region, SIZE, EVENT_IDX)
    ring.chain([buf(ring)])
    dev = ring.device()
    region.write_u16(ring.layout.used_event, 2)  # "notify me when entry 2 is used"
    answers = []
    for _ in range(4):
        _one(ring, dev)
        answers.append(dev.needs_notification())
    assert answers == [False, False, True, False]


def test_needs_notification_batches_cover_used_event(region: Region) -> None:
    ring = RawRing(region, SIZE, EVENT_IDX)
    ring.chain([buf(ring)])
    dev = ring.device()
    region.write_u16(ring.layout.used_event, 1)
    _one(ring, dev)
    _one(ring, dev)
    _one(ring, dev)
    assert dev.needs_notification()  # entries 0..2 published since; 1 is among them


@pytest.mark.parametrize("start", [0xFFFD, 0xFFFF, 0])
def test_needs_notification_is_correct_across_the_16_bit_wrap(region: Region, start: int) -> None:
    ring = RawRing(region, SIZE, EVENT_IDX, start=start)
    ring.chain([buf(ring)])
    dev = ring.device()
    target = (start + 3) & 0xFFFF
    region.write_u16(ring.layout.used_event, target)
    answers = []
    for _ in range(6):
        _one(ring, dev)
        answers.append(dev.needs_notification())
    assert answers == [False, False, False, True, False, False]


def test_avail_event_tracks_popped_entries_with_event_idx(region: Region) -> None:
    ring = RawRing(region, SIZE, EVENT_IDX, start=0xFFFF)
    ring.chain([buf(ring)])
    dev = ring.device()
    ring.publish(0)
    assert dev.pop() is not None
    assert region.read_u16(ring.layout.avail_event) == 0


def test_disable_and_enable_notification_with_event_idx(region: Region) -> None:
    ring = RawRing(region, SIZE, EVENT_IDX)
    ring.chain([buf(ring)])
    dev = ring.device()
    dev.disable_notification()
    ring.publish(0)
    assert dev.pop() is not None
    assert region.read_u16(ring.layout.avail_event) == 0  # not advanced while disabled
    dev.add_used(0, 0)
    assert not dev.enable_notification()
    assert region.read_u16(ring.layout.avail_event) == 1
    ring.publish(0)
    assert dev.enable_notification()  # a buffer arrived: keep polling


def test_disable_and_enable_notification_with_flags(ring: RawRing) -> None:
    dev = ring.device()
    dev.disable_notification()
    assert ring.region.read_u16(ring.layout.used_flags) == VRING_USED_F_NO_NOTIFY
    assert not dev.enable_notification()
    assert ring.region.read_u16(ring.layout.used_flags) == 0
