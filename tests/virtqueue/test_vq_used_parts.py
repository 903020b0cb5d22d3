"""``get_used_parts`` (the written bytes per writable buffer) agrees with ``get_used``.

Both ring kinds, several writable layouts and every used length a chain
allows: the parts joined are exactly what ``get_used`` returns (the first
``len`` bytes the device wrote, spec 2.7.8 / 2.8.22), one entry per
writable buffer, and the pool ends with nothing mapped either way.
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import VIRTIO_F_RING_PACKED
from virtio_msg.virtqueue import create_device_queue, create_driver_queue
from virtio_msg.virtqueue.driver import written_parts

LAYOUTS = [[4, 4], [1], [3, 5, 2], [2048, 2048, 1]]


def _round(packed: bool, writable: list[int], used: int, *, parts: bool) -> list[Any]:
    features = (1 << VIRTIO_F_RING_PACKED) if packed else 0
    with Region(1 << 20) as region:
        pool = DmaPool(region)
        drv = create_driver_queue(pool, 0, 8, features)
        dev = create_device_queue(
            region, 8, drv.desc_addr, drv.driver_addr, drv.device_addr, features
        )
        drv.add([b"request"], writable, token="t")
        drv.kick_prepare()
        chain = dev.pop()
        assert chain is not None
        chain.write(bytes(i % 251 for i in range(sum(writable))))
        dev.add_used(chain.head, used)
        got: list[Any] = list(drv.get_used_parts() if parts else drv.get_used())
        assert pool.stats().live_mappings == 0
        drv.close()
        pool.close()
    return got


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("writable", LAYOUTS, ids=str)
def test_used_parts_join_to_the_used_bytes(packed: bool, writable: list[int]) -> None:
    """Every used length: one part per writable buffer, joined equal to get_used's data."""
    total = sum(writable)
    for used in sorted({0, 1, writable[0], total - 1, total}):
        [(token, data)] = _round(packed, writable, used, parts=False)
        [(token2, parts)] = _round(packed, writable, used, parts=True)
        assert token == token2 == "t"
        assert len(parts) == len(writable)
        assert all(len(p) <= n for p, n in zip(parts, writable, strict=True))
        assert b"".join(parts) == data
        assert len(data) == used


def test_written_parts_cuts_where_the_length_ends() -> None:
    """The part the length ends in is cut there; later parts are empty."""
    parts = [b"abcd", b"ef", b"ghi"]
    for n in range(10):
        got = written_parts(parts, n)
        assert len(got) == 3
        assert b"".join(got) == b"abcdefghi"[:n]
    assert written_parts(parts, 5) == [b"abcd", b"e", b""]
    assert written_parts(parts, 9)[0] is parts[0]  # whole parts are not copied
