"""Device-side throughput of the split virtqueue: pop + add_used.

Strategy: the shapes of rust-vmm virtio-queue's benches (``benches/queue``):
128 one-descriptor chains and one 128-descriptor chain, each direct and
through indirect tables.  The rings are written once by hand; every iteration
only advances ``avail.idx`` (one store), then the device pops every chain,
validating it fully, and returns it with ``add_used``.  Each figure is printed
next to a raw baseline measured interleaved in the same run: unpacking the same
number of 16-byte descriptors with a bare ``struct.unpack_from`` over the
mapping (no validation, no ring), so the ratio shows what validation and ring
bookkeeping cost.  Run as ``python benchmarks/bench_virtqueue.py``.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from figures import emit, figure
from virtio_msg.memory import Region
from virtio_msg.spec import VIRTIO_F_INDIRECT_DESC
from virtio_msg.virtqueue import (
    DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    DeviceQueue,
    SplitLayout,
    avail_ring_size,
    desc_table_size,
)

CHAIN = 128
FEATURES = 1 << VIRTIO_F_INDIRECT_DESC


class Bench:
    """One queue of ``size`` entries in a fresh region, rings written by hand."""

    def __init__(self, size: int) -> None:
        self.region = Region(1024 * 1024)
        base = self.region.base
        avail = base + desc_table_size(size)
        used = (avail + avail_ring_size(size) + 3) & ~3
        self.layout = SplitLayout(size, base, avail, used)
        self.data = base + 256 * 1024  # buffers and indirect tables live from here
        self.size = size
        self.avail_idx = 0

    def desc(self, table: int, index: int, addr: int, flags: int, nxt: int) -> None:
        """Write entry ``index`` of ``table`` (a 64-byte buffer at ``addr``)."""
        self.region.pack(DESC, table + 16 * index, addr, 64, flags, nxt)

    def queue(self) -> DeviceQueue:
        """Create the device side through its validating constructor."""
        lay = self.layout
        return DeviceQueue.create(self.region, self.size, lay.desc, lay.avail, lay.used, FEATURES)

    def heads(self, heads: list[int]) -> None:
        """Fill every available-ring slot, cycling through ``heads``."""
        for slot in range(self.size):
            self.region.write_u16(self.layout.avail_ring + 2 * slot, heads[slot % len(heads)])


def one_desc_chains(indirect: bool) -> tuple[Bench, int]:
    """128 chains of one descriptor each (queue of 256)."""
    b = Bench(256)
    for head in range(CHAIN):
        buf = b.data + 64 * head
        if indirect:
            table = b.data + 64 * 1024 + 16 * head
            b.desc(table, 0, buf, 0, 0)
            b.region.pack(DESC, b.layout.descriptor(head), table, 16, VIRTQ_DESC_F_INDIRECT, 0)
        else:
            b.desc(b.layout.desc, head, buf, 0, 0)
    b.heads(list(range(CHAIN)))
    return b, CHAIN


def one_long_chain(indirect: bool) -> tuple[Bench, int]:
    """One chain of 128 descriptors (queue of 128)."""
    b = Bench(CHAIN)
    table = b.data + 64 * 1024 if indirect else b.layout.desc
    for i in range(CHAIN):
        flags, nxt = (VIRTQ_DESC_F_NEXT, i + 1) if i + 1 < CHAIN else (0, 0)
        b.desc(table, i, b.data + 64 * i, flags, nxt)
    if indirect:
        b.region.pack(DESC, b.layout.descriptor(0), table, 16 * CHAIN, VIRTQ_DESC_F_INDIRECT, 0)
    b.heads([0])
    return b, 1


def device_round(b: Bench, chains: int) -> Callable[[int], None]:
    """Return a runner: publish ``chains`` entries, pop and return each, ``loops`` times."""
    q = b.queue()
    region = b.region
    avail_idx_addr = b.layout.avail_idx

    def run(loops: int) -> None:
        idx = b.avail_idx
        pop, add_used = q.pop, q.add_used
        for _ in range(loops):
            idx = (idx + chains) & 0xFFFF
            region.write_u16(avail_idx_addr, idx)
            while (chain := pop()) is not None:
                add_used(chain.head, 0)
        b.avail_idx = idx

    return run


def raw_round(b: Bench) -> Callable[[int], None]:
    """Baseline: unpack 128 descriptors straight from the mapping, nothing else."""
    view = b.region.view(b.region.base, desc_table_size(CHAIN))
    unpack_from = struct.Struct("<QIHH").unpack_from
    offsets = range(0, 16 * CHAIN, 16)

    def run(loops: int) -> None:
        for _ in range(loops):
            for off in offsets:
                unpack_from(view, off)

    return run


def calibrate(run: Callable[[int], None], budget_s: float) -> int:
    loops = 1
    while True:
        start = time.perf_counter()
        run(loops)
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s / 4:
            return max(1, int(loops * budget_s / elapsed))
        loops *= 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (best kept)")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per timed batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    shapes = {
        "128 x 1-desc chains, direct": one_desc_chains(False),
        "128 x 1-desc chains, indirect": one_desc_chains(True),
        "1 x 128-desc chain, direct": one_long_chain(False),
        "1 x 128-desc chain, indirect": one_long_chain(True),
    }
    cases = {name: device_round(b, chains) for name, (b, chains) in shapes.items()}
    cases["baseline"] = raw_round(shapes["1 x 128-desc chain, direct"][0])
    loops = {name: calibrate(run, args.budget) for name, run in cases.items()}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter_ns()
            run(loops[name])
            best[name] = min(best[name], (time.perf_counter_ns() - start) / loops[name])
    raw = best.pop("baseline")
    if not args.json:
        print(f"device pop + add_used, {CHAIN} descriptors per iteration, best of "
              f"{args.rounds} rounds; baseline: bare unpack of {CHAIN} descriptors")
    emit([figure(f"virtqueue {name}", ns / 1000, "us/iter", raw / 1000) for name, ns in
          best.items()], args.json)
    for b, _ in shapes.values():
        b.region.close()


if __name__ == "__main__":
    main()
