"""Packed versus split virtqueues, measured in one run and compared as ratios.

Two parts, each alternating the two ring kinds round by round and keeping
the best round (the machine is shared and noisy):

* device side, ``pop`` + ``add_used`` of 128 chains (one descriptor each, and
  one chain of 128 descriptors), the chains made available by the real
  driver of the same kind outside the timed part;
* virtio-blk random 4 KiB reads through the whole stack at queue depth 1
  and 32 (in-process loopback bus, ``BusParams(ring=...)``).

The split figure is the baseline: ``split/packed`` above 1 means packed is
faster.  Run as ``python benchmarks/bench_packed.py [--rounds 7] [--json]``;
with ``--json`` each figure is one JSON object (``benchmarks/figures.py``) whose
value is the packed time, baseline the split time and ratio packed/split (below
1: packed is faster).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from figures import Figure, emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.virtqueue import create_device_queue, create_driver_queue

CHAINS = 128


def device_seconds(packed: bool, shape: str, loops: int) -> float:
    """Seconds spent in the device's pop + add_used for ``loops`` batches."""
    features = (1 << VIRTIO_F_INDIRECT_DESC) * (shape == "long-indirect")
    features |= (1 << VIRTIO_F_RING_PACKED) * packed
    with Region(4 << 20) as region:
        pool = DmaPool(region)
        drv = create_driver_queue(pool, 0, 256, features)
        dev = create_device_queue(
            region, 256, drv.desc_addr, drv.driver_addr, drv.device_addr, features
        )
        spent = 0.0
        for _ in range(loops):
            if shape == "one-desc":
                for i in range(CHAINS):
                    drv.add([b"x" * 64], [], i)
            else:
                drv.add([b"x" * 64] * CHAINS, [], 0)
            drv.kick_prepare()
            pop, add_used = dev.pop, dev.add_used
            t0 = time.perf_counter()
            while (chain := pop()) is not None:
                add_used(chain.head, 0)
            spent += time.perf_counter() - t0
            drv.get_used()
        drv.close()
        pool.close()
    return spent


def blk_seconds(ring: str, qd: int, path: str, ops: int) -> float:
    """Seconds for ``ops`` random 4 KiB reads at queue depth ``qd``."""
    dev = BlkDevice(path)
    bus = LoopbackBus(
        BusParams(ring=ring, timeout_ms=10000),
        size=4 << 20,
        drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver},
    )
    try:
        _, backend, _ = loopback_pair(bus)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and isinstance(entry.driver, BlkDriver), entry
        drv = entry.driver
        rnd = random.Random(1)
        sectors = [rnd.randrange(0, (8 << 20) // 4096) * 8 for _ in range(ops)]
        t0 = time.perf_counter()
        if qd == 1:
            for s in sectors:
                drv.read_sectors(s, 8)
        else:
            for i in range(0, ops, qd):
                drv.execute([BlkOp.read_sectors(s, 8) for s in sectors[i : i + qd]])
        return time.perf_counter() - t0
    finally:
        bus.close()
        dev.close()


def main() -> None:
    """Print both parts as split/packed ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loops", type=int, default=40, help="device batches per round")
    parser.add_argument("--ops", type=int, default=1024, help="blk reads per round")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    figures: list[Figure] = []
    if not args.json:
        print(f"packed vs split, best of {args.rounds} interleaved rounds (baseline: split)")
    for shape in ("one-desc", "long-direct", "long-indirect"):
        best = {False: float("inf"), True: float("inf")}
        for _ in range(args.rounds):
            for packed in (False, True):
                best[packed] = min(best[packed], device_seconds(packed, shape, args.loops))
        n = args.loops * (CHAINS if shape == "one-desc" else 1)
        split_us = best[False] / n * 1e6
        packed_us = best[True] / n * 1e6
        figures.append(figure(f"packed: device pop+add_used {shape}", packed_us, "us/chain",
                              split_us))
        if args.json:
            continue
        print(
            f"  device pop+add_used {shape:13}  split {split_us:8.2f} us/chain  "
            f"packed {packed_us:8.2f} us/chain  split/packed {best[False] / best[True]:.2f}"
        )
    fd, path = tempfile.mkstemp(prefix="vmbench-packed-")
    os.ftruncate(fd, 8 << 20)
    os.close(fd)
    try:
        for qd in (1, 32):
            best_ring = {"split": float("inf"), "packed": float("inf")}
            for _ in range(args.rounds):
                for ring in ("split", "packed"):
                    best_ring[ring] = min(best_ring[ring], blk_seconds(ring, qd, path, args.ops))
            split_k = args.ops / best_ring["split"] / 1000
            packed_k = args.ops / best_ring["packed"] / 1000
            figures.append(figure(f"packed: blk rand-read-4k QD{qd} time per read",
                                  best_ring["packed"] / args.ops * 1e6, "us",
                                  best_ring["split"] / args.ops * 1e6))
            if args.json:
                continue
            print(
                f"  blk rand-read-4k QD{qd:<2}            split {split_k:8.2f} kIOPS     "
                f"packed {packed_k:8.2f} kIOPS     "
                f"split/packed {best_ring['split'] / best_ring['packed']:.2f}"
            )
    finally:
        os.unlink(path)
    if args.json:
        emit(figures, True)


if __name__ == "__main__":
    main()
