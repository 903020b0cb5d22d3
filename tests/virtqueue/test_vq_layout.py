"""Split-ring layout arithmetic and the vring_need_event helper."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_msg.spec import VQ_MAX_SIZE
from virtio_msg.virtqueue import (
    DESC,
    USED_ELEM,
    SplitLayout,
    avail_ring_size,
    desc_table_size,
    is_valid_queue_size,
    ring_bytes,
    used_ring_size,
    vring_need_event,
)


def test_area_sizes_follow_the_queue_part_table() -> None:
    # virtio 1.x §2.7: descriptor table 16*N, available ring 6+2*N, used ring 6+8*N.
    assert (desc_table_size(256), avail_ring_size(256), used_ring_size(256)) == (4096, 518, 2054)
    assert DESC.size == 16
    assert USED_ELEM.size == 8


def test_driver_allocation_holds_all_three_areas() -> None:
    assert ring_bytes(256) == 4096 + 520 + 2054


@pytest.mark.parametrize(
    ("size", "ok"),
    [(1, True), (2, True), (3, False), (0, False), (VQ_MAX_SIZE, True), (2 * VQ_MAX_SIZE, False)],
)
def test_queue_size_rule(size: int, ok: bool) -> None:
    assert is_valid_queue_size(size) is ok


def test_queue_size_rule_honours_the_device_maximum() -> None:
    assert is_valid_queue_size(64, 64)
    assert not is_valid_queue_size(128, 64)
    assert not is_valid_queue_size(1, 0)


def test_layout_field_addresses() -> None:
    lay = SplitLayout(8, 0x1000, 0x2000, 0x3000)
    assert (lay.avail_flags, lay.avail_idx, lay.avail_ring, lay.used_event) == (
        0x2000,
        0x2002,
        0x2004,
        0x2014,
    )
    assert (lay.used_flags, lay.used_idx, lay.used_ring, lay.avail_event) == (
        0x3000,
        0x3002,
        0x3004,
        0x3044,
    )
    assert lay.descriptor(3) == 0x1030


@pytest.mark.parametrize(
    ("event", "new", "old", "notify"),
    [
        (0, 1, 0, True),
        (0, 2, 1, False),
        (5, 6, 0, True),
        (6, 6, 0, False),
        (0xFFFF, 0, 0xFFFE, True),  # the window [0xFFFE, 0) wraps and contains 0xFFFF
        (0, 1, 0xFFFF, True),
        (1, 1, 0xFFFF, False),
        (0x8000, 0x8001, 0x7FFF, True),
        (3, 3, 3, False),  # nothing new: never notify
    ],
)
def test_vring_need_event_table(event: int, new: int, old: int, notify: bool) -> None:
    assert vring_need_event(event, new, old) is notify


@given(old=st.integers(0, 0xFFFF), count=st.integers(0, 0x7FFF), event=st.integers(0, 0xFFFF))
@settings(max_examples=200, deadline=None)
def test_vring_need_event_is_membership_in_the_wrapped_window(
    old: int, count: int, event: int
) -> None:
    new = (old + count) & 0xFFFF
    window = {(old + i) & 0xFFFF for i in range(count)}
    assert vring_need_event(event, new, old) is (event in window)
