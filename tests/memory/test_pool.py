"""DmaPool: swiotlb-style streaming mappings, coherent allocations, statistics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from virtio_msg.errors import MemoryAccessError
from virtio_msg.memory import (
    DmaDirection,
    DmaPool,
    EmptyMapping,
    Mapping,
    MappingTooLarge,
    PoolError,
    PoolExhausted,
    Region,
    UnknownMapping,
)

TO = DmaDirection.TO_DEVICE
FROM = DmaDirection.FROM_DEVICE
BIDI = DmaDirection.BIDIRECTIONAL
KIB = 1024


@pytest.fixture
def region() -> Iterator[Region]:
    with Region(1024 * KIB) as r:  # 512 slots of 2 KiB
        yield r


@pytest.fixture
def pool(region: Region) -> DmaPool:
    return DmaPool(region)


def test_pool_errors_are_memory_access_errors() -> None:
    for cls in (PoolExhausted, MappingTooLarge, UnknownMapping, EmptyMapping):
        assert issubclass(cls, PoolError)
        assert issubclass(cls, MemoryAccessError)


def test_defaults_are_swiotlb_geometry(pool: DmaPool) -> None:
    assert pool.slot_size == 2048
    assert pool.max_segment_slots == 128
    assert pool.max_mapping_size == 256 * KIB
    assert pool.stats().slots_total == 512


# --- streaming mappings --------------------------------------------------------


def test_map_bounces_the_data_into_the_pool(pool: DmaPool, region: Region) -> None:
    data = bytearray(b"payload")
    m = pool.map(data, TO)
    assert region.contains(m.addr, m.length)
    assert region.read(m.addr, m.length) == b"payload"
    data[:] = b"changed"  # the device sees the bounce copy, not the original
    assert region.read(m.addr, m.length) == b"payload"


def test_map_returns_slot_aligned_addresses(pool: DmaPool) -> None:
    addrs = [pool.map(b"x" * n, TO).addr for n in (1, 2048, 2049, 5000)]
    assert all((a - pool.base) % 2048 == 0 for a in addrs)
    assert addrs[1] - addrs[0] == 2048  # 1 byte takes one slot
    assert addrs[3] - addrs[2] == 4096  # 2049 bytes take two


def test_to_device_unmap_copies_nothing_back(pool: DmaPool, region: Region) -> None:
    m = pool.map(b"abc", TO)
    region.write(m.addr, b"xyz")
    assert pool.unmap(m) is None
    assert pool.stats().bytes_bounced_from_device == 0


def test_from_device_unmap_copies_device_writes_back(pool: DmaPool, region: Region) -> None:
    m = pool.map(8, FROM)
    region.write(m.addr, b"response")
    assert pool.unmap(m) == b"response"


def test_bidirectional_unmap_copies_back_into_a_writable_original(
    pool: DmaPool, region: Region
) -> None:
    original = bytearray(b"request!")
    m = pool.map(original, BIDI)
    assert region.read(m.addr, 8) == b"request!"
    region.write(m.addr, b"answered")
    assert pool.unmap(m) == b"answered"
    assert original == b"answered"


def test_from_device_copies_back_into_a_writable_memoryview(pool: DmaPool, region: Region) -> None:
    backing = bytearray(6)
    m = pool.map(memoryview(backing)[1:5], FROM)
    region.write(m.addr, b"WXYZ")
    pool.unmap(m)
    assert backing == b"\x00WXYZ\x00"


def test_from_device_size_mapping_is_zero_filled_never_stale(region: Region) -> None:
    pool = DmaPool(region, pool_size=2048)  # one slot: every mapping reuses it
    m = pool.map(b"\xff" * 100, TO)
    pool.unmap(m)
    again = pool.map(100, FROM)
    assert again.addr == m.addr
    assert region.read(again.addr, 100) == bytes(100)


def test_mapping_is_capped_at_128_slots(pool: DmaPool) -> None:
    m = pool.map(256 * KIB, FROM)
    assert m.nslots == 128
    with pytest.raises(MappingTooLarge, match="129 slots"):
        pool.map(256 * KIB + 1, TO)
    assert pool.stats().live_mappings == 1


def test_segment_cap_and_slot_size_are_parameters(region: Region) -> None:
    pool = DmaPool(region, slot_size=4096, max_segment_slots=4)
    assert pool.map(16 * KIB, TO).nslots == 4
    with pytest.raises(MappingTooLarge):
        pool.map(16 * KIB + 1, TO)


@pytest.mark.parametrize(
    "kwargs",
    [{"slot_size": 3000}, {"slot_size": 0}, {"max_segment_slots": 0}, {"coherent_align": 3}],
)
def test_pool_parameters_are_validated(region: Region, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DmaPool(region, **kwargs)


def test_pool_base_must_be_slot_aligned() -> None:
    with Region(64 * KIB, 0x1000_0400) as r, pytest.raises(ValueError, match="aligned"):
        DmaPool(r)


def test_empty_mapping_is_rejected(pool: DmaPool) -> None:
    with pytest.raises(EmptyMapping):
        pool.map(b"", TO)
    with pytest.raises(EmptyMapping):
        pool.map(0, FROM)


def test_exhaustion_raises_at_once_and_changes_nothing(region: Region) -> None:
    pool = DmaPool(region, max_segment_slots=512)
    big = pool.map(500 * 2048, TO)
    before = pool.stats()
    with pytest.raises(PoolExhausted, match="swiotlb full"):
        pool.map(13 * 2048, TO)
    after = pool.stats()
    assert after.slots_used == before.slots_used
    assert after.live_mappings == before.live_mappings
    assert after.map_failures == before.map_failures + 1
    pool.unmap(big)
    pool.map(13 * 2048, TO)


def test_exhaustion_never_corrupts_other_mappings(pool: DmaPool, region: Region) -> None:
    live = [pool.map(bytes([i]) * 2048 * 100, BIDI) for i in range(5)]
    with pytest.raises(PoolExhausted):
        pool.map(2048 * 100, BIDI)
    for i, m in enumerate(live):
        assert region.read(m.addr, m.length) == bytes([i]) * m.length
    pool.check_consistency()


def test_exhaustion_needs_a_contiguous_run(pool: DmaPool) -> None:
    maps = [pool.map(2048, TO) for _ in range(512)]
    for m in maps[::2]:  # free every other slot: 256 free, none adjacent
        pool.unmap(m)
    assert pool.stats().slots_used == 256
    pool.map(2048, TO)
    with pytest.raises(PoolExhausted):
        pool.map(4096, TO)


def test_allocation_is_first_fit(pool: DmaPool) -> None:
    first = pool.map(2048 * 100, TO)
    rest = [pool.map(2048 * 128, TO) for _ in range(2)]
    pool.unmap(first)
    small = pool.map(2048 * 28, TO)  # the lowest free run is the freed start of the pool
    assert small.addr == first.addr
    big = pool.map(2048 * 100, TO)  # 72 slots left below `rest`: too few, goes above
    assert big.addr > rest[-1].addr
    below = pool.map(2048 * 72, TO)  # exactly fills the hole
    assert below.addr == small.addr + 28 * 2048
    pool.check_consistency()


def test_double_unmap_is_an_error(pool: DmaPool) -> None:
    m = pool.map(b"a", TO)
    pool.unmap(m)
    with pytest.raises(UnknownMapping, match="not live"):
        pool.unmap(m)
    with pytest.raises(UnknownMapping, match="double unmap"):
        pool.unmap(m.addr)


def test_unmap_of_an_unknown_address_is_an_error(pool: DmaPool) -> None:
    m = pool.map(b"a", TO)
    with pytest.raises(UnknownMapping):
        pool.unmap(m.addr + 1)
    with pytest.raises(UnknownMapping):
        pool.unmap(0)
    assert pool.stats().live_mappings == 1


def test_stale_mapping_object_cannot_unmap_a_reused_address(pool: DmaPool) -> None:
    old = pool.map(b"a", TO)
    pool.unmap(old)
    new = pool.map(b"a", TO)
    assert new.addr == old.addr
    assert new == old  # equal fields, yet a different mapping
    with pytest.raises(UnknownMapping):
        pool.unmap(old)
    assert pool.is_mapped(new.addr)
    pool.unmap(new)


def test_unmap_by_address_works(pool: DmaPool, region: Region) -> None:
    m = pool.map(4, FROM)
    region.write(m.addr, b"okay")
    assert pool.unmap(m.addr) == b"okay"


def test_sync_for_cpu_and_for_device(pool: DmaPool, region: Region) -> None:
    m = pool.map(b"one", BIDI)
    region.write(m.addr, b"two")
    assert pool.sync_for_cpu(m) == b"two"
    pool.sync_for_device(m, b"666")
    assert region.read(m.addr, 3) == b"666"
    with pytest.raises(ValueError):
        pool.sync_for_device(m, b"four")
    pool.unmap(m)
    with pytest.raises(UnknownMapping):
        pool.sync_for_cpu(m)


# --- coherent allocations ------------------------------------------------------


def test_coherent_allocations_are_page_aligned_and_zeroed(pool: DmaPool, region: Region) -> None:
    m = pool.map(b"\xee" * 2048, TO)  # dirty slot 0, shift later runs off page boundaries
    pool.unmap(m)
    pool.map(2048, TO)
    addr = pool.alloc_coherent(100)
    assert addr % 4096 == 0
    assert region.read(addr, 4096) == bytes(4096)


def test_coherent_alignment_follows_the_bus_address(region: Region) -> None:
    with Region(64 * KIB, 0x1_0000_0800) as odd:
        pool = DmaPool(odd)
        addr = pool.alloc_coherent(10)
        assert addr % 4096 == 0
        assert pool.alloc_coherent(10, align=16 * KIB) % (16 * KIB) == 0


def test_coherent_alignment_must_be_a_power_of_two(pool: DmaPool) -> None:
    with pytest.raises(ValueError):
        pool.alloc_coherent(10, align=3000)


def test_coherent_allocations_may_exceed_the_segment_cap(pool: DmaPool) -> None:
    addr = pool.alloc_coherent(512 * KIB)
    assert pool.stats().coherent_bytes == 512 * KIB
    pool.free_coherent(addr)


def test_coherent_and_streaming_share_the_slots(pool: DmaPool) -> None:
    pool.alloc_coherent(1000 * KIB)  # 500 of 512 slots
    with pytest.raises(PoolExhausted):
        pool.map(26 * KIB, TO)
    with pytest.raises(PoolExhausted):
        pool.alloc_coherent(28 * KIB)
    pool.map(24 * KIB, TO)
    pool.check_consistency()


def test_double_free_of_coherent_memory_is_an_error(pool: DmaPool) -> None:
    addr = pool.alloc_coherent(10)
    pool.free_coherent(addr)
    with pytest.raises(UnknownMapping, match="not a live allocation"):
        pool.free_coherent(addr)


def test_coherent_and_streaming_addresses_are_not_interchangeable(pool: DmaPool) -> None:
    ring = pool.alloc_coherent(10)
    m = pool.map(b"x", TO)
    with pytest.raises(UnknownMapping, match="coherent allocation"):
        pool.unmap(ring)
    with pytest.raises(UnknownMapping, match="streaming mapping"):
        pool.free_coherent(m.addr)


def test_empty_coherent_allocation_is_rejected(pool: DmaPool) -> None:
    with pytest.raises(EmptyMapping):
        pool.alloc_coherent(0)


# --- statistics ----------------------------------------------------------------


def test_stats_count_slots_mappings_and_bounced_bytes(pool: DmaPool, region: Region) -> None:
    ring = pool.alloc_coherent(5000)  # 3 slots
    a = pool.map(b"x" * 3000, TO)  # 2 slots
    b = pool.map(100, FROM)  # 1 slot
    region.write(b.addr, b"y" * 100)
    s = pool.stats()
    assert (s.slots_used, s.live_mappings, s.coherent_allocations) == (6, 2, 1)
    assert s.coherent_bytes == 5000
    assert s.bytes_bounced_to_device == 3000
    pool.unmap(a)
    pool.unmap(b)
    pool.free_coherent(ring)
    s = pool.stats()
    assert (s.slots_used, s.high_water, s.live_mappings) == (0, 6, 0)
    assert s.bytes_bounced_from_device == 100


def test_pool_may_cover_part_of_the_region(region: Region) -> None:
    pool = DmaPool(region, pool_base=region.base + 64 * KIB, pool_size=64 * KIB)
    assert pool.stats().slots_total == 32
    m = pool.map(b"q", TO)
    assert region.base + 64 * KIB <= m.addr < region.base + 128 * KIB


# --- model-based: random map/unmap/alloc sequences never corrupt anything --------


class PoolMachine(RuleBasedStateMachine):
    """Random operations against a small pool, checking contents and bookkeeping."""

    live = Bundle("live")
    coherent = Bundle("coherent")

    def __init__(self) -> None:
        super().__init__()
        self.region = Region(64 * KIB)
        self.pool = DmaPool(self.region, slot_size=1024, max_segment_slots=16)
        self.contents: dict[int, bytes] = {}
        self.serial = 0

    @rule(target=live, length=st.integers(1, 16 * 1024), direction=st.sampled_from(DmaDirection))
    def map(self, length: int, direction: DmaDirection) -> Mapping | None:
        self.serial += 1
        data = bytes([self.serial & 0xFF]) * length
        try:
            m = self.pool.map(data, direction)
        except PoolExhausted:
            return None
        self.contents[m.addr] = data
        return m

    @rule(target=coherent, size=st.integers(1, 8 * 1024))
    def alloc(self, size: int) -> int | None:
        try:
            addr = self.pool.alloc_coherent(size)
        except PoolExhausted:
            return None
        assert addr % 4096 == 0
        self.contents[addr] = bytes(size)
        return addr

    @rule(m=consumes(live), scribble=st.booleans())
    def unmap(self, m: Mapping | None, scribble: bool) -> None:
        if m is None:
            return
        expected = self.contents.pop(m.addr)
        if scribble:
            expected = b"\x5a" * m.length
            self.region.write(m.addr, expected)
        result = self.pool.unmap(m)
        assert result == (None if m.direction is DmaDirection.TO_DEVICE else expected)

    @rule(addr=consumes(coherent))
    def free(self, addr: int | None) -> None:
        if addr is not None:
            del self.contents[addr]
            self.pool.free_coherent(addr)

    @precondition(lambda self: self.contents)
    @rule(data=st.data())
    def unknown_address_is_rejected(self, data: st.DataObject) -> None:
        addr = data.draw(st.sampled_from(sorted(self.contents))) + 1
        with pytest.raises(UnknownMapping):
            self.pool.unmap(addr)

    @invariant()
    def nothing_is_corrupted(self) -> None:
        self.pool.check_consistency()
        for addr, data in self.contents.items():
            assert self.region.read(addr, len(data)) == data
        s = self.pool.stats()
        assert s.slots_used <= s.high_water <= s.slots_total

    def teardown(self) -> None:
        self.pool.close()
        self.region.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
