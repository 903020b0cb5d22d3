"""Socket channel round trip across processes, next to a bare SEQPACKET ping-pong.

Run: ``python benchmarks/bench_socket.py [--profile spec|linux-rfc1] [--requests N]
[--rounds R] [--json]``

Four measurements, interleaved round by round in one run (machines are noisy:
compare the ratios, which are taken per round and then the median):

* **bare** - two Python processes on ``socketpair(AF_UNIX, SOCK_SEQPACKET)``,
  blocking ``send``/``recv``, the exact sizes of the GET_DEVICE_STATUS request
  and response of the profile (spec: 8 and 12 bytes);
* **ping** - a bus PING from the bus through the socket channel to the
  backend library in another process and back (validation and correlation
  on both sides, no device: the channel alone);
* **request** - GET_DEVICE_STATUS through the whole stack: driver transport,
  bus token correlation, the socket channel, the backend library, the device
  transport of an rng model, and back;
* **in-process** - the same request over the in-process channel (the stack
  without a socket), to show what the socket hop itself adds.

Target: request p50 <= 1.3 x bare p50.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from figures import emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.socket import SocketLimits, SocketServer
from virtio_msg.compose import percentile
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

TARGET = 1.3


def echo_child(fd: int, resp_size: int) -> None:
    """The bare ping-pong's other process: answer each datagram with ``resp_size`` bytes."""
    sock = socket.socket(fileno=fd)
    reply = bytes(resp_size)
    while sock.recv(65536):
        sock.send(reply)


def timed(fn: Callable[[], object], n: int) -> tuple[list[float], float]:
    """Per-call seconds of ``n`` calls, and the wall time of all of them."""
    samples = []
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples, time.perf_counter() - t_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=["spec", "linux-rfc1"], default="spec")
    parser.add_argument("--requests", type=int, default=5000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--lead-ms", type=float, default=SocketLimits.lead_window_ms,
        help="the channel's lead window (0: every response is handed over by the reader thread)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--echo", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo_child(*args.echo)
        return

    params = BusParams(args.profile)
    adapter = WireAdapter(params.profile, params.max_size)
    req_size = len(adapter.encode(S.GetDeviceStatus(dev_num=0, token=1)))
    resp_size = len(adapter.encode(S.GetDeviceStatusResp(15, dev_num=0, token=1)))
    ping_size = len(adapter.encode(S.Ping(1)))

    # bare ping-pong partner
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    echo = subprocess.Popen(
        [sys.executable, __file__, "--echo", str(theirs.fileno()), str(resp_size)],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    request_bytes = bytes(req_size)

    def bare() -> None:
        ours.send(request_bytes)
        ours.recv(65536)

    # the socket channel with a backend process
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-bench-"))
    bus = LoopbackBus(params, size=1 << 20)
    limits = SocketLimits(lead_window_ms=args.lead_ms)
    server = SocketServer(bus, tmp / "bus.sock", limits=limits).start()
    backend = subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", "backend", "--socket",
         str(server.path), "--quiet", "0:rng"],
    )
    # the in-process reference
    ibus, ibackend, _ = loopback_pair(LoopbackBus(params, size=1 << 20))
    ibackend.serve(0, RngDevice())
    try:
        deadline = time.monotonic() + 20
        while bus.device(0) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        entry, ientry = bus.device(0), ibus.device(0)
        if entry is None or ientry is None:
            raise SystemExit("the backend did not add its device")
        channel = server.channels()[0]
        cases: dict[str, Callable[[], object]] = {
            "bare": bare,
            "ping": channel.ping,
            "request": entry.transport.get_status,
            "in-process": ientry.transport.get_status,
        }
        for fn in cases.values():  # warm up
            timed(fn, 500)
        samples: dict[str, list[float]] = {k: [] for k in cases}
        walls: dict[str, float] = dict.fromkeys(cases, 0.0)
        ratios: dict[str, list[float]] = {"ping": [], "request": []}
        for _ in range(args.rounds):
            p50: dict[str, float] = {}
            for name, fn in cases.items():
                got, wall = timed(fn, args.requests)
                samples[name] += got
                walls[name] += wall
                p50[name] = percentile(got, 0.5)
            for name in ratios:
                ratios[name].append(p50[name] / p50["bare"])
    finally:
        ours.close()
        server.close()
        bus.close()
        ibus.close()
        for proc in (echo, backend):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.requests * args.rounds
    sizes = {"bare": (req_size, resp_size), "ping": (ping_size, ping_size),
             "request": (req_size, resp_size), "in-process": (req_size, resp_size)}
    rows: dict[str, dict[str, Any]] = {}
    for name, got in samples.items():
        rows[name] = {
            "bytes": list(sizes[name]),
            "p50_us": round(percentile(got, 0.5) * 1e6, 1),
            "p99_us": round(percentile(got, 0.99) * 1e6, 1),
            "per_s": round(n / walls[name]),
        }
    ratio = {k: round(statistics.median(v), 2) for k, v in ratios.items()}
    hop = rows["request"]["p50_us"] - rows["in-process"]["p50_us"]
    result = {
        "profile": args.profile, "lead_window_ms": args.lead_ms, "round_trips": n,
        "rounds": args.rounds, "cases": rows,
        "ratio_to_bare_p50": ratio, "socket_hop_us": round(hop, 1),
        "socket_hop_ratio_to_bare": round(hop / rows["bare"]["p50_us"], 2),
        "target": TARGET, "met": ratio["request"] <= TARGET,
    }
    if args.json:
        bare_p50 = rows["bare"]["p50_us"]
        emit([
            figure(f"socket {args.profile}: ping p50", rows["ping"]["p50_us"], "us", bare_p50,
                   ratio["ping"]),
            figure(f"socket {args.profile}: request p50", rows["request"]["p50_us"], "us",
                   bare_p50, ratio["request"], f"<= {TARGET}"),
            figure(f"socket {args.profile}: in-process request p50",
                   rows["in-process"]["p50_us"], "us", bare_p50),
        ], True)
        return
    print(f"profile {args.profile}, lead window {args.lead_ms} ms: {n} round trips per case "
          f"({args.rounds} interleaved rounds)")
    print(f"{'case':12} {'req/resp B':>10} {'p50 us':>8} {'p99 us':>8} {'req/s':>8}")
    for name, row in rows.items():
        size = "/".join(str(b) for b in row["bytes"])
        print(f"{name:12} {size:>10} {row['p50_us']:8.1f} {row['p99_us']:8.1f} "
              f"{row['per_s']:8,}")
    print(f"ratio to bare (median of per-round p50 ratios): ping {ratio['ping']:.2f}x, "
          f"request {ratio['request']:.2f}x (target <= {TARGET}x: "
          f"{'met' if result['met'] else 'NOT met'})")
    print(f"socket hop = request - in-process = {hop:.1f} us "
          f"({result['socket_hop_ratio_to_bare']:.2f}x bare)")


if __name__ == "__main__":
    main()
