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
import os
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


def cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of process ``pid`` so far, in ns (None if unknown).

    From ``/proc/PID/task/*/schedstat`` (Linux): time on a CPU, user and system,
    which is what a side adds to the round trip's critical path; time spent
    asleep waiting for the peer is not counted.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def timed(
    fn: Callable[[], object], n: int, peer: int | None = None
) -> tuple[list[float], float, tuple[float, float] | None]:
    """Per-call seconds of ``n`` calls, the wall time of all of them, and CPU per call.

    The CPU figure is (this process, the ``peer`` process) in seconds per call,
    None where ``/proc`` does not tell.
    """
    samples = []
    me = os.getpid()
    c0 = cpu_ns(me), cpu_ns(peer) if peer else None
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    c1 = cpu_ns(me), cpu_ns(peer) if peer else None
    cpu = None
    if None not in (c0[0], c1[0]):
        mine = (c1[0] - c0[0]) / n / 1e9  # type: ignore[operator]
        theirs = (c1[1] - c0[1]) / n / 1e9 if c0[1] is not None and c1[1] is not None else 0.0
        cpu = (mine, theirs)
    return samples, wall, cpu


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
        peers = {"bare": echo.pid, "ping": backend.pid, "request": backend.pid,
                 "in-process": None}
        for fn in cases.values():  # warm up
            timed(fn, 500)
        samples: dict[str, list[float]] = {k: [] for k in cases}
        walls: dict[str, float] = dict.fromkeys(cases, 0.0)
        cpus: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        ratios: dict[str, list[float]] = {"ping": [], "request": []}
        for _ in range(args.rounds):
            p50: dict[str, float] = {}
            for name, fn in cases.items():
                got, wall, cpu = timed(fn, args.requests, peers[name])
                samples[name] += got
                walls[name] += wall
                if cpu is not None:
                    cpus[name].append(cpu)
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
        if cpus[name]:
            rows[name]["cpu_us"] = [
                round(statistics.median(c[i] for c in cpus[name]) * 1e6, 1) for i in (0, 1)
            ]
    floor = cpu_floor(rows)
    ratio = {k: round(statistics.median(v), 2) for k, v in ratios.items()}
    hop = rows["request"]["p50_us"] - rows["in-process"]["p50_us"]
    result = {
        "profile": args.profile, "lead_window_ms": args.lead_ms, "round_trips": n,
        "rounds": args.rounds, "cases": rows,
        "ratio_to_bare_p50": ratio, "socket_hop_us": round(hop, 1),
        "socket_hop_ratio_to_bare": round(hop / rows["bare"]["p50_us"], 2),
        "target": TARGET, "met": ratio["request"] <= TARGET,
        "cpu_floor": floor,
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
            *([figure(f"socket {args.profile}: mean request predicted from CPU beyond bare",
                      floor["predicted_us"], "us", floor["bare_mean_us"])] if floor else []),
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
    if floor:
        print(f"CPU per round trip (bus process / backend process): request "
              f"{floor['request_cpu_us'][0]:.1f} / {floor['request_cpu_us'][1]:.1f} us, bare "
              f"{floor['bare_cpu_us'][0]:.1f} / {floor['bare_cpu_us'][1]:.1f} us")
        print(f"mean round trip: bare {floor['bare_mean_us']:.1f} us + {floor['extra_us']:.1f} us "
              f"of CPU beyond bare = {floor['predicted_us']:.1f} us predicted "
              f"({floor['predicted_ratio']:.2f}x), {floor['request_mean_us']:.1f} us measured "
              f"({floor['measured_ratio']:.2f}x); {TARGET}x needs the CPU beyond bare "
              f"<= {floor['allowed_extra_us']:.1f} us")


def cpu_floor(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the request's CPU time beyond the bare pair's predicts for its mean round trip.

    With one request in flight, a round trip is both sides' CPU time plus the
    two wake-ups, which bare and request pay alike; so the request's mean round
    trip is the bare mean plus the CPU both sides spend beyond bare, and the
    target needs that extra CPU under ``(TARGET - 1) x`` the bare mean.
    """
    bare, req = rows["bare"].get("cpu_us"), rows["request"].get("cpu_us")
    if not bare or not req:
        return None
    extra = max(req[0] - bare[0], 0.0) + max(req[1] - bare[1], 0.0)
    bare_mean = 1e6 / rows["bare"]["per_s"]
    req_mean = 1e6 / rows["request"]["per_s"]
    return {"request_cpu_us": req, "bare_cpu_us": bare, "extra_us": round(extra, 1),
            "bare_mean_us": round(bare_mean, 1), "request_mean_us": round(req_mean, 1),
            "predicted_us": round(bare_mean + extra, 1),
            "predicted_ratio": round((bare_mean + extra) / bare_mean, 2),
            "measured_ratio": round(req_mean / bare_mean, 2),
            "allowed_extra_us": round((TARGET - 1) * bare_mean, 1)}


if __name__ == "__main__":
    main()
