"""Per-request cost with 1, 10, 100 and 1,000 devices on one bus, and the time of ADD.

Run: ``python benchmarks/bench_scale.py [--devices 1,10,100,1000] [--requests N] [--json]``

For each count a fresh in-process bus gets that many rng devices from one
backend; the time to ADD (and probe) them all is measured.  Then GET_DEVICE_STATUS
round trips go to the devices in turn (round-robin over all of them, so lookups,
token tables and statistics see every device), in ``--rounds`` interleaved rounds;
the per-request p50 with N devices is reported next to the p50 with one device
from the same round (target: at most 1.2x at 1,000 devices).
"""

from __future__ import annotations

import argparse
import statistics
import time

from figures import emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices import RngDevice
from virtio_msg.transport import BusParams, DriverTransport


def build(count: int) -> tuple[LoopbackBus, list[DriverTransport], float]:
    """A bus with ``count`` rng devices, their transports and the seconds ADD took."""
    bus, backend, _ = loopback_pair(LoopbackBus(BusParams("spec"), size=16 << 20))
    t0 = time.perf_counter()
    for dev_num in range(count):
        backend.serve(dev_num, RngDevice())
    added = time.perf_counter() - t0
    transports = []
    for dev_num in range(count):
        entry = bus.device(dev_num)
        if entry is None or entry.error is not None:
            raise SystemExit(f"device {dev_num} did not probe: {entry and entry.error}")
        transports.append(entry.transport)
    return bus, transports, added


def per_request(transports: list[DriverTransport], n: int) -> float:
    """Median seconds per GET_DEVICE_STATUS, round-robin over ``transports``."""
    calls = [t.get_status for t in transports]
    samples = []
    k = len(calls)
    for i in range(n):
        call = calls[i % k]
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", default="1,10,100,1000", help="comma-separated counts")
    parser.add_argument("--requests", type=int, default=20_000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    counts = [int(c) for c in args.devices.split(",")]
    buses = {c: build(c) for c in counts}
    try:
        for _, transports, _ in buses.values():
            per_request(transports, 1000)  # warm up
        ratios: dict[int, list[float]] = {c: [] for c in counts}
        p50s: dict[int, list[float]] = {c: [] for c in counts}
        for _ in range(args.rounds):
            got = {c: per_request(buses[c][1], args.requests) for c in counts}
            for c in counts:
                p50s[c].append(got[c])
                ratios[c].append(got[c] / got[counts[0]])
    finally:
        for bus, _, _ in buses.values():
            bus.close()
    base = statistics.median(p50s[counts[0]]) * 1e6
    figures = []
    for c in counts:
        target = "<= 1.2" if c == 1000 else None
        figures.append(figure(
            f"scale: GET_DEVICE_STATUS p50 with {c} devices", statistics.median(p50s[c]) * 1e6,
            "us", base, statistics.median(ratios[c]), target,
        ))
    for c in counts:
        added = buses[c][2]
        figures.append(figure(f"scale: ADD + probe of {c} devices", added * 1e3, "ms",
                              ratio=added / c * 1e6))
    if not args.json:
        print(f"{args.rounds} rounds of {args.requests} round trips, round-robin over the "
              f"devices; ratio = p50 / p50 with {counts[0]} device(s) in the same round; "
              "for ADD the ratio column is us per device")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
