"""In-process loopback bus: request/response round trip, next to the codec's own cost.

Run: ``python benchmarks/bench_bus.py [--profile spec|linux-rfc1] [--requests N]``

A driver-side transport sends GET_DEVICE_STATUS to an rng device through the
whole stack (driver engine, bus token correlation, wire encoding, backend,
device engine, response path) N times with each round trip timed (p50, p99),
and N times in an untimed loop (requests/s: the loop's time only, no timer
calls and no sample list per request).  In the same run the codec alone does
the same four steps (encode request, decode request, encode response, decode
response): the ratio shows what the bus and the engines add beyond the codec.
GET_DEVICE_STATUS has a path of its own in the driver transport; GET_VQUEUE,
timed the same way, shows what a request through the general procedure runner
costs.
"""

from __future__ import annotations

import argparse
import time

from figures import emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.compose import percentile
from virtio_msg.devices import RngDevice
from virtio_msg.transport import BusParams
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


def codec_round_trip(adapter: WireAdapter, n: int) -> float:
    """Seconds per round trip of encode/decode work alone."""
    req = S.GetDeviceStatus(dev_num=0, token=1)
    resp = S.GetDeviceStatusResp(15, dev_num=0, token=1)
    t0 = time.perf_counter()
    for _ in range(n):
        adapter.decode(adapter.encode(req))
        adapter.decode(adapter.encode(resp))
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=["spec", "linux-rfc1"], default="spec")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    params = BusParams(args.profile)
    bus, backend, _channel = loopback_pair(LoopbackBus(params, size=1 << 20))
    with bus:
        backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        transport = entry.transport
        for _ in range(1000):  # warm up
            transport.get_status()
        samples = []
        t_start = time.perf_counter()
        for _ in range(args.requests):
            t0 = time.perf_counter()
            transport.get_status()
            samples.append(time.perf_counter() - t0)
        timed_total = time.perf_counter() - t_start
        get_status = transport.get_status
        t_start = time.perf_counter()
        for _ in range(args.requests):
            get_status()
        total = time.perf_counter() - t_start
        # GET_VQUEUE goes through the driver's general procedure runner (the status
        # poll has a path of its own): what any other request costs.
        for _ in range(1000):
            transport.get_vqueue(0)
        t_start = time.perf_counter()
        for _ in range(args.requests):
            transport.get_vqueue(0)
        general = args.requests / (time.perf_counter() - t_start)
        codec_t = codec_round_trip(bus.adapter, args.requests)
    rate = args.requests / total
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    if not args.json:
        print(f"profile {args.profile}, {args.requests} GET_DEVICE_STATUS round trips in "
              f"process: p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us; codec alone (2 "
              f"encodes + 2 decodes) {codec_t * 1e6:.1f} us per round trip; "
              f"{rate:,.0f} requests/s untimed, {args.requests / timed_total:,.0f} with a "
              f"timer around each; GET_VQUEUE (the general procedure runner) "
              f"{general:,.0f} requests/s")
    emit([
        figure(f"bus {args.profile}: round trip p50 / codec work", p50 * 1e6, "us",
               codec_t * 1e6, None, "<= 3.0"),
        figure(f"bus {args.profile}: requests/s / 200k target", rate, "1/s",
               None, rate / 200_000, ">= 1.0"),
        figure(f"bus {args.profile}: GET_VQUEUE requests/s (general runner) / 200k", general,
               "1/s", None, general / 200_000),
    ], args.json)


if __name__ == "__main__":
    main()
