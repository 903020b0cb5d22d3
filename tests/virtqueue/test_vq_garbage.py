"""Garbage in: random ring memory and parameters only ever produce typed errors.

The region is filled with random bytes, then Hypothesis pokes "interesting"
values (addresses at and around the region's edges, 2**64 - 1, lengths 0 and
2**32 - 1, every flag combination, indices near the queue size) into the
descriptor table and the available ring.  The device side is then driven as a
device model would drive it (pop, read, write, add_used, notifications).  The
property: the only exceptions are the queue's own typed errors, and every
access the device makes -- recorded by a spy region underneath -- lies inside
the region.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED
from virtio_msg.testing import SpyRegion
from virtio_msg.virtqueue import (
    DESC,
    DeviceQueue,
    DriverViolation,
    InvalidQueueConfig,
    QueueBroken,
    avail_ring_size,
    desc_table_size,
    used_ring_size,
)

REGION_SIZE = 16 * 1024
BASE = 0x1_0000_0000


def interesting_addr(draw: st.DrawFn) -> int:
    addr: int = draw(
        st.one_of(
            st.integers(BASE, BASE + REGION_SIZE),
            st.integers(BASE, BASE + REGION_SIZE),
            st.integers(BASE - 64, BASE + 64),
            st.integers(BASE + REGION_SIZE - 64, BASE + REGION_SIZE + 64),
            st.integers(2**64 - 64, 2**64 - 1),
            st.integers(0, 2**64 - 1),
        ).filter(lambda a: 0 <= a < 2**64)
    )
    return addr


@st.composite
def descriptor(draw: st.DrawFn, size: int) -> tuple[int, int, int, int, int]:
    index = draw(st.integers(0, size - 1))
    addr = interesting_addr(draw)
    length = draw(st.sampled_from([0, 1, 15, 16, 32, 48, 256, 4096, 2**31, 2**32 - 1]))
    flags = draw(st.integers(0, 7) | st.integers(0, 7) | st.integers(0, 0xFFFF))
    nxt = draw(st.integers(0, size - 1) | st.integers(0, size + 1) | st.integers(0, 0xFFFF))
    return index, addr, length, flags, nxt


@dataclass(frozen=True)
class Scenario:
    """Queue parameters and ring pokes for one example."""

    size: int
    features: int
    addrs: tuple[int, int, int]
    start: int
    avail_idx: int
    clean_table: bool
    descs: list[tuple[int, int, int, int, int]]
    heads: list[int]
    seed: int
    steps: int


@st.composite
def scenario(draw: st.DrawFn) -> Scenario:
    size = draw(st.sampled_from([1, 2, 4, 8, 16, 64, 256]))
    features = draw(st.sets(st.sampled_from([VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX])))
    mask = sum(1 << bit for bit in features)
    if draw(st.sampled_from([False] * 19 + [True])):
        mask |= 1 << VIRTIO_F_RING_PACKED
    valid = draw(st.sampled_from([True] * 9 + [False]))
    if valid:
        # Three aligned areas somewhere inside the region, possibly overlapping.
        def area(length: int, align: int) -> int:
            slots = (REGION_SIZE - length) // align
            return BASE + align * draw(st.integers(0, max(slots, 0)))

        addrs = (
            area(desc_table_size(size), 16),
            area(avail_ring_size(size), 2),
            area(used_ring_size(size), 4),
        )
    else:
        addrs = (interesting_addr(draw), interesting_addr(draw), interesting_addr(draw))
    start = draw(st.integers(0, 0xFFFF))
    head = st.tuples(st.sampled_from([True] * 9 + [False]), st.integers(0, 0xFFFF)).map(
        lambda t: t[1] % size if t[0] else t[1]
    )
    heads: list[int] = draw(st.lists(head, min_size=1, max_size=min(size, 8)))
    mode = draw(st.sampled_from(["heads", "heads", "heads", "near", "any"]))
    if mode == "heads":
        avail_idx = (start + len(heads)) & 0xFFFF
    elif mode == "near":
        avail_idx = (start + draw(st.integers(0, size + 2))) & 0xFFFF
    else:
        avail_idx = draw(st.integers(0, 0xFFFF))
    return Scenario(
        size=draw(st.sampled_from([size] * 17 + [0, 3, 65536])),
        features=mask,
        addrs=addrs,
        start=start,
        avail_idx=avail_idx,
        clean_table=draw(st.booleans()),
        descs=draw(st.lists(descriptor(size), max_size=6)),
        heads=heads,
        seed=draw(st.integers(0, 2**64 - 1)),
        steps=draw(st.integers(1, 24)),
    )


def plausible_descriptor(rnd: random.Random, limit: int) -> tuple[int, int, int, int]:
    """A descriptor that is almost right: small buffer inside, mostly sane flags and next."""
    addr = BASE + rnd.randrange(REGION_SIZE - 64)
    flags = rnd.choice((0, 0, 1, 1, 2, 3, 3, 4, 5, 6))
    return addr, rnd.randrange(64), flags, rnd.randrange(limit + (rnd.random() < 0.05))


def plausible_table(region: SpyRegion, desc: int, size: int, rnd: random.Random) -> None:
    """Overwrite the random table with near-valid chains and indirect tables.

    Valid-looking structure lets the walk get past the first check, so the
    deeper rules (loops, nesting, ordering, lengths) see garbage too.
    """
    for index in range(size):
        addr, length, flags, nxt = plausible_descriptor(rnd, size)
        if flags & 4:
            entries = rnd.randint(1, 8)
            addr = BASE + 16 * rnd.randrange((REGION_SIZE - 16 * entries) // 16)
            length = 16 * entries if rnd.random() < 0.9 else rnd.randrange(200)
            for i in range(entries):
                region.pack(DESC, addr + 16 * i, *plausible_descriptor(rnd, entries))
        region.pack(DESC, desc + 16 * index, addr, length, flags, nxt)


@given(sc=scenario())
@settings(max_examples=300, deadline=None)
def test_random_ring_memory_only_raises_typed_errors_and_stays_in_region(sc: Scenario) -> None:
    size, features, start = sc.size, sc.features, sc.start
    desc_addr, driver_addr, device_addr = sc.addrs
    rnd = random.Random(sc.seed)
    with SpyRegion(REGION_SIZE, BASE) as region:
        region.write(BASE, rnd.randbytes(REGION_SIZE))
        try:
            dev = DeviceQueue.create(
                region, size, desc_addr, driver_addr, device_addr, features, start_index=start
            )
        except InvalidQueueConfig as exc:
            event(f"create: {type(exc).__name__}")
            return
        lay = dev.layout
        if sc.clean_table:
            plausible_table(region, lay.desc, size, rnd)
        for index, addr, length, flags, nxt in sc.descs:
            region.pack(DESC, lay.descriptor(index % size), addr, length, flags & 0xFFFF, nxt)
        for i, head in enumerate(sc.heads):
            region.write_u16(lay.avail_ring + 2 * ((start + i) % size), head & 0xFFFF)
        region.write_u16(lay.avail_idx, sc.avail_idx)
        region.reset_log()

        popped = 0
        try:
            for _ in range(sc.steps):
                chain = dev.pop()
                if chain is None:
                    dev.enable_notification()
                    break
                data = chain.read()
                assert len(data) == chain.readable_len
                written = rnd.randint(0, min(chain.writable_len, 4096))
                chain.write(rnd.randbytes(written))
                dev.add_used(chain.head, written)
                popped += 1
                dev.needs_notification()
                if rnd.random() < 0.3:
                    dev.disable_notification()
        except DriverViolation as exc:
            event(f"pop: {type(exc).__name__}")
            assert dev.broken
            try:
                dev.pop()
            except QueueBroken:
                pass
            else:
                raise AssertionError("a broken queue popped again") from None
        event(f"chains served: {min(popped, 3)}{'+' if popped >= 3 else ''}")
        for addr, length in region.accesses:
            assert region.contains(addr, length), f"access at {addr:#x}+{length} outside"
