"""The pool is shared by every driver of a bus, on whatever threads they run."""

from __future__ import annotations

import sys
import threading

from virtio_msg.memory import DmaDirection, DmaPool, Region


def test_concurrent_map_unmap_keeps_pool_consistent() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so races show up
    try:
        run_workers()
    finally:
        sys.setswitchinterval(old)


def run_workers() -> None:
    with Region(1 << 20) as region:
        pool = DmaPool(region)
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                for i in range(2000):
                    size = 1 + (seed * 7919 + i * 104729) % 9000
                    payload = bytes([seed]) * size
                    m = pool.map(payload, DmaDirection.BIDIRECTIONAL)
                    back = pool.unmap(m)
                    assert back == payload  # nobody else wrote into our slots
                    addr = pool.alloc_coherent(4096)
                    pool.free_coherent(addr)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        stats = pool.stats()
        assert (stats.slots_used, stats.live_mappings, stats.coherent_allocations) == (0, 0, 0)
        pool.check_consistency()
