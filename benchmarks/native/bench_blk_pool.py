"""virtio-blk reads in process (64 KiB sequential, 4 KiB random), DmaPool against the compiled pool.

Strategy: two in-process blk stacks over the same image, identical but for the
bus's streaming mappings: one uses DmaPool as shipped, the other routes
``pool.map``/``pool.unmap`` to the compiled prototype (``_bounce.c``) over a
span the DmaPool hands out as one coherent allocation before the device binds
(so coherent allocations, i.e. the rings, still come from DmaPool and never
overlap the compiled pool's slots).  Rounds interleave the baseline (os.pread
plus one copy, as in ``bench_blk.py``), the Python-pool stack and the
compiled-pool stack; the best of each is kept.  ratio = baseline time / virtio
time (the issue's target is >= 0.3).  What the compiled pool gains here is all
the helper would buy blk; the rest of a read (rings, region checks, messages)
stays Python.

Run from ``benchmarks/``:
    python -m native.bench_blk_pool [--size-mib 16] [--ops 1000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench_blk import attach, baseline, through_virtio, workloads
from figures import emit, figure
from native.loader import NativePool, NativeUnavailable, load, native_pool
from virtio_msg.bus import LoopbackBus
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile

COMPILED_SPAN = 1 << 20
"""Bytes of the 4 MiB region the compiled pool takes (a 64 KiB read maps ~66 KiB)."""


@contextmanager
def stack(path: str, compiled: bool) -> Iterator[tuple[BlkDriver, NativePool | None]]:
    """An in-process blk driver on ``path``; with ``compiled``, its mappings go through C."""
    bus = LoopbackBus(BusParams(Profile.SPEC), size=4 << 20,
                      drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    native = None
    if compiled:
        span_addr = bus.pool.alloc_coherent(COMPILED_SPAN, align=bus.pool.slot_size)
        native = native_pool(load(), bus.region, bus.pool.slot_size,
                             bus.pool.max_segment_slots, pool_base=span_addr,
                             pool_size=COMPILED_SPAN)
        # Instance attributes shadow the methods: every caller of pool.map/unmap gets C.
        vars(bus.pool).update(map=native.map, unmap=native.unmap)
    try:
        with attach("inprocess", bus, path) as drv:
            yield drv, native
    finally:
        if native is not None:
            native.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=16, help="image size (default 16)")
    parser.add_argument("--ops", type=int, default=1000, help="random 4 KiB reads per round")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds, best kept")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    try:
        load()
    except NativeUnavailable as exc:
        print(f"bench_blk_pool: cannot build the compiled prototype: {exc}", file=sys.stderr)
        raise SystemExit(0) from None
    size = args.size_mib << 20
    work = {name: w for name, w in workloads(size, args.ops, seed=1).items()
            if name in ("seq-read-64k", "rand-read-4k-qd1")}
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.img")
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        with ExitStack() as stacks:
            py_drv, _ = stacks.enter_context(stack(path, compiled=False))
            c_drv, native = stacks.enter_context(stack(path, compiled=True))
            with open(path, "rb") as f:  # both stacks read the image's bytes
                assert c_drv.read_sectors(0, 128) == f.read(128 << 9) == \
                    py_drv.read_sectors(0, 128)
            for name, (nbytes, qd, offsets) in work.items():
                for drv in (py_drv, c_drv):  # warm up
                    through_virtio(drv, name, nbytes, qd, offsets[: max(1, len(offsets) // 10)])
                base = py = c = float("inf")
                for _ in range(args.repeat):
                    base = min(base, baseline(path, name, nbytes, offsets))
                    py = min(py, through_virtio(py_drv, name, nbytes, qd, offsets))
                    c = min(c, through_virtio(c_drv, name, nbytes, qd, offsets))
                n = len(offsets)
                base_us, py_us, c_us = base / n * 1e6, py / n * 1e6, c / n * 1e6
                target = ">= 0.3" if name == "seq-read-64k" else None
                figures += [
                    figure(f"blk {name} inprocess (DmaPool)", py_us, "us/op", base_us,
                           base_us / py_us, target),
                    figure(f"blk {name} inprocess (compiled pool prototype)", c_us, "us/op",
                           base_us, base_us / c_us, target),
                ]
            assert native is not None and native.stats()["bytes_bounced_from_device"] > 0
    if not args.json:
        print(f"virtio-blk reads in process, {args.size_mib} MiB image, "
              f"best of {args.repeat} interleaved rounds; baseline os.pread + one copy; "
              "ratio = baseline time / virtio time")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
