"""Stateful property: the driver side and the device side against each other.

One memfd, two mappings (as two processes would have): the driver allocates
and bounces through a DmaPool on one, the device validates and serves chains
on the other.  Hypothesis picks queue size, features (INDIRECT_DESC and
EVENT_IDX on or off) and a start index close to 65536 so the free-running
indices wrap, then interleaves random chain shapes (1..256 descriptors, mixed
directions), kicks, pops, out-of-order completions and reaps.  A model checks
every byte that crosses, the order chains appear in, and that no notification
is ever lost on either side.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from virtio_msg.memory import DmaPool, PoolExhausted, Region
from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from virtio_msg.virtqueue import DescriptorChain, DeviceQueue, DriverQueue, QueueFull


@dataclass(frozen=True)
class Shape:
    """A chain to add: readable buffer lengths then writable buffer lengths."""

    readable: tuple[int, ...]
    writable: tuple[int, ...]


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    count = draw(st.one_of(st.integers(1, 4), st.integers(1, 256)))
    n_readable = draw(st.integers(0, count))
    seed = draw(st.integers(0, 2**32))
    big = draw(st.booleans())
    rnd = random.Random(seed)
    lengths = [rnd.choice((1, 7, 64, 700, 2048, 3000 if big else 9)) for _ in range(count)]
    return Shape(tuple(lengths[:n_readable]), tuple(lengths[n_readable:]))


@dataclass
class Sent:
    token: int
    readable: bytes
    writable: tuple[int, ...]


class VirtqueuePair(RuleBasedStateMachine):
    """Driver and device over one shared memfd, checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0
        self.unpublished: list[Sent] = []
        self.published: deque[Sent] = deque()
        self.held: list[tuple[DescriptorChain, Sent]] = []
        self.expect: dict[int, bytes] = {}  # token -> bytes the device wrote, once used
        self.device_idle = False
        self.driver_idle = False

    @initialize(
        size=st.sampled_from([256, 512]),
        indirect=st.booleans(),
        event_idx=st.booleans(),
        start=st.one_of(st.integers(0xFFFF - 40, 0xFFFF), st.just(0)),
    )
    def setup(self, size: int, indirect: bool, event_idx: bool, start: int) -> None:
        self.features = (indirect << VIRTIO_F_INDIRECT_DESC) | (event_idx << VIRTIO_F_EVENT_IDX)
        self.driver_region = Region(4 * 1024 * 1024)
        self.device_region = Region.from_fd(
            self.driver_region.fd, self.driver_region.base, self.driver_region.size
        )
        self.pool = DmaPool(self.driver_region)
        self.drv = DriverQueue(self.pool, 0, size, self.features, start_index=start)
        self.dev = DeviceQueue.create(
            self.device_region,
            size,
            self.drv.desc_addr,
            self.drv.driver_addr,
            self.drv.device_addr,
            self.features,
            start_index=start,
        )
        self.indirect = indirect

    # --- driver rules ---------------------------------------------------------

    @rule(shape=shapes())
    def driver_adds(self, shape: Shape) -> None:
        self.serial += 1
        token = self.serial
        readable = [bytes([(token + i) & 0xFF]) * n for i, n in enumerate(shape.readable)]
        free_before = self.drv.num_free
        try:
            self.drv.add(readable, list(shape.writable), token)
        except QueueFull:
            count = len(shape.readable) + len(shape.writable)
            assert free_before < (1 if self.indirect and count > 1 else count)
            return
        except PoolExhausted:
            assert self.drv.num_free == free_before
            return
        self.unpublished.append(Sent(token, b"".join(readable), shape.writable))

    @rule()
    def driver_kicks(self) -> None:
        added = bool(self.unpublished)
        notify = self.drv.kick_prepare()
        self.published.extend(self.unpublished)
        self.unpublished.clear()
        if added and self.device_idle:
            assert notify, "the device went idle waiting for a kick that never came"
        if notify:
            self.device_idle = False
        if not added:
            assert not notify

    @rule()
    def driver_reaps(self) -> None:
        for token, data in self.drv.get_used():
            assert token in self.expect, f"token {token} came back without being used"
            assert data == self.expect.pop(token)
        assert not self.expect, "used chains were left behind"
        self.driver_idle = not self.drv.enable_callbacks()

    # --- device rules ---------------------------------------------------------

    @rule(limit=st.integers(1, 8))
    def device_pops(self, limit: int) -> None:
        self.dev.disable_notification()
        for _ in range(limit):
            chain = self.dev.pop()
            if chain is None:
                assert not self.published
                if not self.dev.enable_notification():
                    self.device_idle = True
                return
            sent = self.published.popleft()
            assert chain.read() == sent.readable
            assert tuple(length for _, length in chain.writable) == sent.writable
            if not self.indirect or len(chain) == 1:
                assert not chain.indirect
            self.held.append((chain, sent))
            self.device_idle = False

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def device_completes(self, data: st.DataObject) -> None:
        pick = data.draw(st.integers(0, len(self.held) - 1))
        chain, sent = self.held.pop(pick)
        written = data.draw(st.integers(0, chain.writable_len))
        payload = bytes((sent.token * 7 + i) & 0xFF for i in range(written))
        chain.write(payload)
        self.dev.add_used(chain.head, written)
        self.expect[sent.token] = payload

    @rule()
    def device_signals(self) -> None:
        used_since = bool(self.expect)
        notify = self.dev.needs_notification()
        if self.driver_idle and used_since:
            assert notify, "the driver went idle waiting for a notification that never came"
        if notify:
            self.driver_idle = False

    # --- invariants -----------------------------------------------------------

    @invariant()
    def nothing_is_broken_or_leaked(self) -> None:
        assert not self.drv.broken
        assert not self.dev.broken
        self.pool.check_consistency()
        outstanding = len(self.unpublished) + len(self.published) + len(self.held)
        outstanding += len(self.expect)
        assert self.drv.outstanding == outstanding
        assert self.dev.in_flight == len(self.held)

    def teardown(self) -> None:
        if hasattr(self, "drv"):
            self.drv.close()
            stats = self.pool.stats()
            assert (stats.slots_used, stats.live_mappings) == (0, 0)
            self.pool.close()
            self.device_region.close()
            self.driver_region.close()


TestVirtqueuePair = VirtqueuePair.TestCase
TestVirtqueuePair.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
