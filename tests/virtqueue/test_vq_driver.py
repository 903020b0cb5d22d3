"""Driver side: adding chains through the pool, notification decisions, and lying devices."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtio_msg.memory import (
    DmaDirection,
    DmaPool,
    Mapping,
    MappingTooLarge,
    PoolExhausted,
    Region,
)
from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from virtio_msg.testing import SpyRegion
from virtio_msg.virtqueue import (
    DESC,
    USED_ELEM,
    VIRTQ_DESC_F_INDIRECT,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    DeviceLied,
    DeviceQueue,
    DriverQueue,
    QueueBroken,
    QueueFull,
    UsedIdNotOutstanding,
    UsedIdOutOfRange,
    UsedIndexTooFar,
    UsedLengthTooLarge,
    ring_bytes,
)

INDIRECT = 1 << VIRTIO_F_INDIRECT_DESC
EVENT_IDX = 1 << VIRTIO_F_EVENT_IDX


@pytest.fixture
def region() -> Iterator[Region]:
    with Region(256 * 1024) as r:
        yield r


@pytest.fixture
def pool(region: Region) -> DmaPool:
    return DmaPool(region)


def device_for(drv: DriverQueue, region: Region) -> DeviceQueue:
    return DeviceQueue.create(
        region,
        drv.size,
        drv.desc_addr,
        drv.driver_addr,
        drv.device_addr,
        drv.features,
        start_index=drv.start_index,
    )


def leave_free_slots(pool: DmaPool, free: int) -> list[Mapping]:
    """Map one-slot buffers until exactly ``free`` slots remain."""
    s = pool.stats()
    return [pool.map(1, DmaDirection.TO_DEVICE) for _ in range(s.slots_total - s.slots_used - free)]


def lie(drv: DriverQueue, region: Region, entries: list[tuple[int, int]]) -> None:
    """Write used elements straight into the used ring and advance used.idx."""
    lay = drv.layout
    idx = region.read_u16(lay.used_idx)
    for used_id, length in entries:
        region.pack(USED_ELEM, lay.used_ring + 8 * (idx % drv.size), used_id, length)
        idx = (idx + 1) & 0xFFFF
    region.write_u16(lay.used_idx, idx)


# --- rings and adding ----------------------------------------------------------


def test_rings_are_one_coherent_allocation_with_spec_alignment(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 3, 64, 0)
    assert drv.index == 3
    assert drv.desc_addr % 4096 == 0
    assert drv.driver_addr == drv.desc_addr + 16 * 64
    assert drv.device_addr % 4 == 0
    assert drv.device_addr + 6 + 8 * 64 <= drv.desc_addr + ring_bytes(64)
    assert pool.stats().coherent_allocations == 1
    assert drv.num_free == 64


@pytest.mark.parametrize("size", [0, 3, 65536])
def test_queue_size_is_validated(pool: DmaPool, size: int) -> None:
    with pytest.raises(ValueError):
        DriverQueue(pool, 0, size, 0)


def test_added_chain_is_visible_only_after_kick_prepare(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, 0)
    dev = device_for(drv, region)
    drv.add([b"hello"], [16], "t")
    assert dev.pop() is None
    assert drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    assert chain.read() == b"hello"
    assert [length for _, length in chain.writable] == [16]
    assert region.read(chain.writable[0][0], 16) == bytes(16)


def test_get_used_returns_token_and_the_first_len_written_bytes(
    pool: DmaPool, region: Region
) -> None:
    drv = DriverQueue(pool, 0, 8, 0)
    dev = device_for(drv, region)
    drv.add([b"q"], [4, 4], token=("req", 1))
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    chain.write(b"ABCDEFGH")
    dev.add_used(chain.head, 6)
    assert drv.get_used() == [(("req", 1), b"ABCDEF")]
    assert drv.get_used() == []
    assert drv.num_free == 8
    assert pool.stats().live_mappings == 0


def test_queue_full_when_descriptors_run_out(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 0, 4, 0)
    drv.add([b"a", b"b"], [], 1)
    drv.add([b"c"], [1], 2)
    before = pool.stats()
    with pytest.raises(QueueFull):
        drv.add([b"d"], [], 3)
    assert pool.stats() == before
    assert drv.num_free == 0


def test_indirect_chain_takes_one_descriptor(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 4, INDIRECT)
    dev = device_for(drv, region)
    drv.add([b"a", b"b", b"c"], [2], 1)
    assert drv.num_free == 3
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    assert chain.indirect
    assert chain.read() == b"abc"


def test_one_buffer_chain_stays_direct_with_indirect(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 4, INDIRECT)
    dev = device_for(drv, region)
    drv.add([b"a"], [], 1)
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    assert not chain.indirect


def test_indirect_falls_back_to_direct_when_the_pool_cannot_hold_the_table() -> None:
    with Region(64 * 1024) as region:
        pool = DmaPool(region)  # 32 slots
        drv = DriverQueue(pool, 0, 8, INDIRECT)
        fill = leave_free_slots(pool, 2)
        drv.add([b"a"], [1], 1)  # 2 buffers fit, the table would be a third slot
        assert drv.num_free == 6
        dev = device_for(drv, region)
        drv.kick_prepare()
        chain = dev.pop()
        assert chain is not None
        assert not chain.indirect
        assert fill


def test_chain_shape_is_validated(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 0, 4, INDIRECT)
    with pytest.raises(ValueError, match="at least one"):
        drv.add([], [], 0)
    with pytest.raises(ValueError, match="longer than the queue size"):
        drv.add([b"x"] * 5, [], 0)


def test_pool_exhaustion_during_add_leaves_nothing_behind() -> None:
    with Region(64 * 1024) as region:
        pool = DmaPool(region)
        drv = DriverQueue(pool, 0, 8, 0)
        fill = leave_free_slots(pool, 2)
        before = pool.stats()
        with pytest.raises(PoolExhausted):
            drv.add([b"a", b"b"], [1], 1)
        after = pool.stats()
        assert (after.slots_used, after.live_mappings) == (before.slots_used, before.live_mappings)
        assert drv.num_free == 8
        assert not drv.kick_prepare()
        pool.unmap(fill.pop())
        drv.add([b"a", b"b"], [], 1)


def test_buffer_over_the_segment_cap_is_refused(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 0, 4, 0)
    with pytest.raises(MappingTooLarge):
        drv.add([], [256 * 1024 + 1], 0)
    assert drv.num_free == 4


def test_start_index_initialises_both_rings(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, EVENT_IDX, start_index=0xFFF0)
    lay = drv.layout
    assert region.read_u16(lay.avail_idx) == 0xFFF0
    assert region.read_u16(lay.used_idx) == 0xFFF0
    assert region.read_u16(lay.avail_event) == 0xFFF0
    drv.add([b"x"], [], 0)
    assert drv.kick_prepare()  # the first notification is not swallowed


# --- notification decisions ----------------------------------------------------


def test_kick_prepare_follows_no_notify_without_event_idx(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, 0)
    assert not drv.kick_prepare()  # nothing added
    drv.add([b"x"], [], 0)
    assert drv.kick_prepare()
    region.write_u16(drv.layout.used_flags, VRING_USED_F_NO_NOTIFY)
    drv.add([b"x"], [], 0)
    assert not drv.kick_prepare()
    assert region.read_u16(drv.layout.avail_idx) == 2


@pytest.mark.parametrize("start", [0, 0xFFFD])
def test_kick_prepare_follows_avail_event(pool: DmaPool, region: Region, start: int) -> None:
    drv = DriverQueue(pool, 0, 8, EVENT_IDX, start_index=start)
    region.write_u16(drv.layout.avail_event, (start + 3) & 0xFFFF)
    answers = []
    for _ in range(5):
        drv.add([b"x"], [], 0)
        answers.append(drv.kick_prepare())
    assert answers == [False, False, False, True, False]


def test_kick_prepare_covers_a_batch(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, EVENT_IDX)
    region.write_u16(drv.layout.avail_event, 2)
    for _ in range(4):
        drv.add([b"x"], [], 0)
    assert drv.kick_prepare()  # entries 0..3 published at once; 2 is among them


def test_callbacks_without_event_idx_use_the_avail_flag(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, 0)
    drv.disable_callbacks()
    assert region.read_u16(drv.layout.avail_flags) == VRING_AVAIL_F_NO_INTERRUPT
    assert not drv.enable_callbacks()
    assert region.read_u16(drv.layout.avail_flags) == 0


def test_callbacks_with_event_idx_use_used_event(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, EVENT_IDX)
    dev = device_for(drv, region)
    drv.add([b"x"], [], "a")
    drv.kick_prepare()
    drv.disable_callbacks()
    chain = dev.pop()
    assert chain is not None
    dev.add_used(chain.head, 0)
    assert not dev.needs_notification()  # used_event parked far ahead
    assert drv.enable_callbacks()  # an entry is pending: reap it now
    assert region.read_u16(drv.layout.used_event) == 0
    assert drv.get_used() == [("a", b"")]
    assert region.read_u16(drv.layout.used_event) == 1


# --- a lying device ------------------------------------------------------------


def _busy(pool: DmaPool) -> DriverQueue:
    drv = DriverQueue(pool, 0, 8, 0)
    drv.add([b"r"], [4], "first")
    drv.add([b"r"], [4], "second")
    drv.kick_prepare()
    return drv


def _assert_broken(drv: DriverQueue, rule: type[DeviceLied]) -> None:
    assert drv.broken
    assert isinstance(drv.broken_reason, rule)
    with pytest.raises(QueueBroken):
        drv.get_used()
    with pytest.raises(QueueBroken):
        drv.add([b"x"], [], 0)
    with pytest.raises(QueueBroken):
        drv.kick_prepare()


def test_used_index_beyond_the_outstanding_chains_is_a_lie(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    region.write_u16(drv.layout.used_idx, 3)
    with pytest.raises(UsedIndexTooFar):
        drv.get_used()
    _assert_broken(drv, UsedIndexTooFar)


def test_used_id_out_of_range_is_a_lie(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(0xFFFF_FFFF, 0)])
    with pytest.raises(UsedIdOutOfRange):
        drv.get_used()
    _assert_broken(drv, UsedIdOutOfRange)


def test_used_id_never_made_available_is_a_lie(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(5, 0)])
    with pytest.raises(UsedIdNotOutstanding):
        drv.get_used()
    _assert_broken(drv, UsedIdNotOutstanding)


def test_used_id_returned_twice_is_a_lie(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(0, 1), (0, 1)])
    with pytest.raises(UsedIdNotOutstanding) as info:
        drv.get_used()
    assert info.value.completed == [("first", b"\x00")]
    _assert_broken(drv, UsedIdNotOutstanding)


def test_used_length_beyond_the_writable_space_is_a_lie(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(0, 5)])
    with pytest.raises(UsedLengthTooLarge):
        drv.get_used()
    _assert_broken(drv, UsedLengthTooLarge)


def test_broken_queue_can_be_detached_and_reset(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(7, 0)])
    with pytest.raises(DeviceLied):
        drv.pop_used()
    assert sorted(map(str, drv.reset())) == ["first", "second"]
    assert not drv.broken
    assert drv.num_free == 8
    assert pool.stats().live_mappings == 0
    assert region.read_u16(drv.layout.used_idx) == 0
    drv.add([b"x"], [], "again")


def test_used_ring_is_read_once_per_entry() -> None:
    with SpyRegion(256 * 1024) as region:
        pool = DmaPool(region)
        drv = DriverQueue(pool, 0, 8, 0)
        dev = device_for(drv, region)
        for i in range(3):
            drv.add([b"r"], [2], i)
        drv.kick_prepare()
        for _ in range(3):
            chain = dev.pop()
            assert chain is not None
            dev.add_used(chain.head, 2)
        lay = drv.layout
        region.reset_log()
        assert [token for token, _ in drv.get_used()] == [0, 1, 2]
        used_reads = [a for a, _ in region.accesses if lay.used <= a < lay.used + 6 + 8 * 8]
        assert used_reads.count(lay.used_idx) == 2  # once for the batch, once to see it is empty
        for slot in range(3):
            assert used_reads.count(lay.used_ring + 8 * slot) == 1


def test_a_validated_used_index_is_not_read_again(pool: DmaPool, region: Region) -> None:
    drv = _busy(pool)
    lie(drv, region, [(0, 0), (2, 0)])
    assert drv.pop_used() == ("first", b"")
    region.write_u16(drv.layout.used_idx, 0x8000)  # too late: the index was already checked
    assert drv.pop_used() == ("second", b"")
    with pytest.raises(UsedIndexTooFar):
        drv.pop_used()


# --- teardown ------------------------------------------------------------------


def test_detach_unused_returns_tokens_and_frees_everything(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 0, 8, INDIRECT)
    drv.add([b"a", b"b"], [3], "x")
    drv.add([b"c"], [], "y")
    assert sorted(map(str, drv.detach_unused())) == ["x", "y"]
    assert drv.num_free == 8
    s = pool.stats()
    assert (s.live_mappings, s.coherent_allocations) == (0, 1)


def test_close_frees_the_rings(pool: DmaPool) -> None:
    drv = DriverQueue(pool, 0, 8, 0)
    drv.add([b"a"], [], "x")
    assert drv.close() == ["x"]
    assert drv.close() == []
    s = pool.stats()
    assert (s.slots_used, s.live_mappings, s.coherent_allocations) == (0, 0, 0)
    with pytest.raises(QueueBroken, match="closed"):
        drv.add([b"a"], [], "x")


def test_driver_never_reads_the_descriptor_table_back(pool: DmaPool, region: Region) -> None:
    drv = DriverQueue(pool, 0, 8, INDIRECT)
    dev = device_for(drv, region)
    drv.add([b"a", b"b"], [2], "t")
    drv.kick_prepare()
    chain = dev.pop()
    assert chain is not None
    region.pack(DESC, drv.layout.descriptor(chain.head), 0, 0, VIRTQ_DESC_F_INDIRECT, 0)
    dev.add_used(chain.head, 2)
    assert drv.get_used() == [("t", b"\x00\x00")]  # shadow state, not the scribbled table
    assert pool.stats().live_mappings == 0
