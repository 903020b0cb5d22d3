"""Bounce-buffer throughput of the DmaPool, as a ratio to a bare memoryview copy.

Strategy: every figure is measured next to its raw baseline in the same run,
interleaved round by round, and the best (minimum) time of each is kept, so a
noisy machine moves both numbers together and the ratio stays meaningful.

* ``to-device``: ``pool.unmap(pool.map(data, TO_DEVICE))`` -- one copy into the
  pool -- against ``view[:] = data`` into the same shared mapping.
* ``bidirectional``: map + unmap of a ``BIDIRECTIONAL`` mapping -- a copy in and
  a copy out -- against ``view[:] = data; bytes(view)``.

* ``floor``: the same copy through :class:`Skeleton`, the least a thread-safe
  bounce pool can do in Python (a lock, a slot from a free list, the copy, a
  record of the live mapping; on unmap the lookup, the removal and the slot
  given back), with none of the pool's checks: no pool written in Python
  gets above this ratio, whatever its design.
* ``compiled prototype`` (``--native``): the same map + unmap through
  ``benchmarks/native/_bounce.c``, DmaPool's work and checks in one C call
  each (built on the spot with the system C compiler; skipped, with the reason,
  when it cannot be built).

``ratio`` is baseline time / bounce time (throughput of the bounce path as a
fraction of the bare copy's); the targets are >= 0.5 at 4 KiB and >= 0.8 from 64 KiB.  Run as
``python benchmarks/bench_pool.py`` (``--rounds`` and ``--budget`` trade time
for stability; ``--native`` adds the compiled prototype, ``--json`` prints JSON lines).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

from figures import Figure, emit, figure
from native.loader import NativePool, NativeUnavailable, load, native_pool
from virtio_msg.memory import DmaDirection, DmaPool, Region

SIZES = (4 * 1024, 64 * 1024, 256 * 1024)
TARGETS = {4 * 1024: 0.5, 64 * 1024: 0.8, 256 * 1024: 0.8}


class Skeleton:
    """The least work of a thread-safe bounce pool in Python (no checks, no statistics)."""

    def __init__(self, view: memoryview, slot_size: int) -> None:
        """Slots of ``slot_size`` bytes over ``view``."""
        self.view = view
        self.slot_size = slot_size
        self.free = list(range(view.nbytes // slot_size))
        self.live: dict[int, int] = {}
        self.lock = threading.Lock()

    def map(self, data: bytes) -> int:
        """Copy ``data`` into a free slot run; return its offset."""
        with self.lock:
            off = self.free.pop() * self.slot_size
            self.view[off : off + len(data)] = data
            self.live[off] = len(data)
        return off

    def unmap(self, off: int) -> None:
        """Forget the mapping at ``off`` and give its slot back."""
        with self.lock:
            del self.live[off]
            self.free.append(off // self.slot_size)


def calibrate(run: Callable[[int], None], budget_s: float) -> int:
    """Return a loop count that makes one timed batch take about ``budget_s``."""
    loops = 8
    while True:
        start = time.perf_counter()
        run(loops)
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s / 4 or loops >= 1 << 22:
            return max(1, int(loops * budget_s / max(elapsed, 1e-9)))
        loops *= 4


def best_ns(
    cases: dict[str, Callable[[int], None]], rounds: int, budget_s: float
) -> dict[str, float]:
    """Best per-iteration time of each case, measured interleaved over ``rounds``."""
    loops = {name: calibrate(run, budget_s) for name, run in cases.items()}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter_ns()
            run(loops[name])
            best[name] = min(best[name], (time.perf_counter_ns() - start) / loops[name])
    return best


def bench_size(
    pool: DmaPool, region: Region, size: int, rounds: int, budget_s: float,
    compiled: NativePool | None = None,
) -> list[Figure]:
    """The bounce figures for one size (ratio = bare copy time / bounce time)."""
    data = bytes(range(256)) * (size // 256)
    view = region.view(region.base + region.size - size, size)
    to_device = DmaDirection.TO_DEVICE
    bidi = DmaDirection.BIDIRECTIONAL
    pool_map, pool_unmap = pool.map, pool.unmap

    def bare_in(loops: int) -> None:
        for _ in range(loops):
            view[:] = data

    def bare_in_out(loops: int) -> None:
        for _ in range(loops):
            view[:] = data
            bytes(view)

    def bounce_to_device(loops: int) -> None:
        for _ in range(loops):
            pool_unmap(pool_map(data, to_device))

    def bounce_bidirectional(loops: int) -> None:
        for _ in range(loops):
            pool_unmap(pool_map(data, bidi))

    skeleton = Skeleton(region.view(region.base + region.size - 2 * max(SIZES), size), size)
    sk_map, sk_unmap = skeleton.map, skeleton.unmap

    def floor(loops: int) -> None:
        for _ in range(loops):
            sk_unmap(sk_map(data))

    cases: dict[str, Callable[[int], None]] = {
        "bare_in": bare_in,
        "to_device": bounce_to_device,
        "bare_in_out": bare_in_out,
        "bidirectional": bounce_bidirectional,
        "floor": floor,
    }
    if compiled is not None:
        c_map, c_unmap = compiled.map, compiled.unmap

        def compiled_to_device(loops: int) -> None:
            for _ in range(loops):
                c_unmap(c_map(data, to_device))

        def compiled_bidirectional(loops: int) -> None:
            for _ in range(loops):
                c_unmap(c_map(data, bidi))

        cases["c_to_device"] = compiled_to_device
        cases["c_bidirectional"] = compiled_bidirectional
    t = best_ns(cases, rounds, budget_s)
    figures = []
    rows = [("to-device", "bare_in", "to_device"),
            ("bidirectional", "bare_in_out", "bidirectional")]
    if compiled is not None:
        rows += [("to-device (compiled prototype)", "bare_in", "c_to_device"),
                 ("bidirectional (compiled prototype)", "bare_in_out", "c_bidirectional")]
    for label, bare, bounce in rows:
        figures.append(figure(f"pool bounce {size // 1024} KiB {label}", t[bounce], "ns",
                              t[bare], t[bare] / t[bounce], f">= {TARGETS[size]}"))
    figures.append(figure(f"pool bounce {size // 1024} KiB floor (skeleton pool)", t["floor"],
                          "ns", t["bare_in"], t["bare_in"] / t["floor"]))
    skeleton.view.release()
    view.release()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (best kept)")
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per timed batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--native", action="store_true",
                        help="also time the compiled prototype (benchmarks/native/_bounce.c)")
    args = parser.parse_args()
    module = None
    if args.native:
        try:
            module = load()
        except NativeUnavailable as exc:
            print(f"bench_pool: skipping the compiled prototype: {exc}", file=sys.stderr)
    # The region: DmaPool's span, then the compiled pool's span of the same size, then
    # the bare copy's and the skeleton's buffers at the end.
    with Region(8 * 1024 * 1024) as region:
        span = (region.size - 2 * max(SIZES)) // 2
        pool = DmaPool(region, pool_size=span)
        compiled = None if module is None else native_pool(
            module, region, pool_base=region.base + span, pool_size=span)
        figures = []
        for size in SIZES:
            figures += bench_size(pool, region, size, args.rounds, args.budget, compiled)
        if not args.json:
            print(f"DmaPool bounce vs bare memoryview copy: {pool.stats().slots_total} slots "
                  f"of {pool.slot_size} B, best of {args.rounds} interleaved rounds; ratio = "
                  "bare time / bounce time")
        emit(figures, args.json)
        if compiled is not None:
            compiled.close()
        pool.close()


if __name__ == "__main__":
    main()
