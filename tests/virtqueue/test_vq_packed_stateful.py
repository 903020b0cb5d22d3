"""Stateful property for packed rings: driver and device against each other across wrap-around.

The split ring's state machine (``test_vq_stateful``) with packed queues:
ring sizes that are not powers of two and chains of up to 256 descriptors,
so both wrap counters toggle many times per example; INDIRECT_DESC,
EVENT_IDX and IN_ORDER on or off.  The same model checks every byte that
crosses, the order chains appear in (and, with IN_ORDER, that they come back
in that order), and that neither side waits for a notification that never
comes.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule
from test_vq_stateful import VirtqueuePair

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
)
from virtio_msg.virtqueue import PackedDeviceQueue, PackedDriverQueue


class PackedPair(VirtqueuePair):
    """The split pair's rules and model over packed queues."""

    @initialize(
        size=st.sampled_from([257, 300, 509]),
        indirect=st.booleans(),
        event_idx=st.booleans(),
        in_order=st.booleans(),
    )
    def setup(
        self, size: int, indirect: bool, event_idx: bool, in_order: bool
    ) -> None:
        self.features = (
            (indirect << VIRTIO_F_INDIRECT_DESC)
            | (event_idx << VIRTIO_F_EVENT_IDX)
            | (in_order << VIRTIO_F_IN_ORDER)
            | (1 << VIRTIO_F_RING_PACKED)
        )
        self.in_order = in_order
        self.signalled = 1 << 15  # the used position the driver has reaped up to
        self.driver_region = Region(4 * 1024 * 1024)
        self.device_region = Region.from_fd(
            self.driver_region.fd, self.driver_region.base, self.driver_region.size
        )
        self.pool = DmaPool(self.driver_region)
        self.drv = PackedDriverQueue(self.pool, 0, size, self.features)  # type: ignore[assignment]
        self.dev = PackedDeviceQueue.create(  # type: ignore[assignment]
            self.device_region,
            size,
            self.drv.desc_addr,
            self.drv.driver_addr,
            self.drv.device_addr,
            self.features,
        )
        self.indirect = indirect

    @rule()
    def driver_reaps(self) -> None:
        got = self.drv.get_used()
        tokens = [int(str(token)) for token, _data in got]
        if self.in_order:
            assert tokens == sorted(tokens), "IN_ORDER: used out of the order made available"
        for token, data in got:
            assert token in self.expect, f"token {token} came back without being used"
            assert data == self.expect.pop(token)
        if not self.in_order:
            assert not self.expect, "used chains were left behind"
        self.driver_idle = not self.drv.enable_callbacks()
        self.signalled = self.dev.next_used  # everything published so far was seen

    @rule()
    def device_signals(self) -> None:
        # With IN_ORDER a completion is published only once the earlier ones are.
        used_since = self.dev.next_used != self.signalled
        notify = self.dev.needs_notification()
        if self.driver_idle and used_since:
            assert notify, "the driver went idle waiting for a notification that never came"
        if notify:
            self.driver_idle = False

    @invariant()
    def nothing_is_broken_or_leaked(self) -> None:
        if not hasattr(self, "drv"):
            return
        assert not self.drv.broken
        assert not self.dev.broken
        self.pool.check_consistency()
        outstanding = len(self.unpublished) + len(self.published) + len(self.held)
        outstanding += len(self.expect)
        assert self.drv.outstanding == outstanding
        assert self.dev.in_flight == len(self.held)


TestPackedPair = PackedPair.TestCase
TestPackedPair.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
