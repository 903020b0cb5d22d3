"""Cost of capture on the bus path: round trips with and without ``--capture``.

Run: ``python benchmarks/bench_capture.py [--channel in-process|socket|kernel]
[--requests N] [--rounds R] [--json]``

Two buses with an rng device each, one recording to a pcapng file in a
temporary folder, one not (``--channel socket``: each bus serves a Unix socket
and the rng is served by a backend client of this process, so the capture is
the bus's ``bus --capture`` tap on the socket channel; ``--channel kernel``:
``backend --kernel`` against the emulated seed loopback, recording the raw
44-byte buffers as ``backend --kernel --capture`` does); GET_DEVICE_STATUS
round trips alternate between them in R rounds of N requests, so both see the
same machine load. The figure is the median time per round trip with capture,
next to the same without capture (the baseline) as a ratio. Each round trip
records two frames (request and response); the writer thread's work is
included, since it runs while the requests do. ``--json`` prints one object
per figure: ``{"name", "value", "unit", "baseline", "ratio", "target",
"met"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.capture import BusCapture, CaptureWriter
from virtio_msg.bus.client import connect
from virtio_msg.bus.kernel import KernelChannel
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices import RngDevice
from virtio_msg.transport import BusParams
from virtio_msg.transport.driver import DriverTransport


def make(capture: CaptureWriter | None) -> tuple[LoopbackBus, DriverTransport]:
    bus = LoopbackBus(BusParams(), size=1 << 20)
    if capture is not None:
        bus.capture = BusCapture(capture)
    bus, backend, _channel = loopback_pair(bus)
    backend.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None and entry.error is None
    return bus, entry.transport


def make_socket(
    capture: CaptureWriter | None, sock: Path
) -> tuple[Callable[[], None], DriverTransport]:
    """A bus on a socket and an in-process backend client serving rng; (close, transport)."""
    bus = LoopbackBus(BusParams(), size=1 << 20)
    if capture is not None:
        bus.capture = BusCapture(capture)
    server = SocketServer(bus, sock).start()
    client = connect(sock)
    client.serve(0, RngDevice())
    entry = bus.device(0)
    assert entry is not None and entry.error is None

    def close() -> None:
        client.close()
        server.close()
        bus.close()

    return close, entry.transport


def make_kernel(capture: CaptureWriter | None) -> tuple[Callable[[], None], DriverTransport]:
    """``backend --kernel`` against the emulated seed loopback, serving rng; (close, transport).

    The requests come from the emulation's driver side (standing in for the
    kernel's virtio drivers) and cross the kernel channel as 44-byte buffers;
    with ``capture`` the channel records each raw buffer, as ``--capture`` does.
    """
    kernel = SeedLoopback(size=1 << 20, timeout_s=2.0)
    channel = KernelChannel(kernel, kernel.bus.region.base, 1 << 20, capture=capture)
    channel.serve(0, RngDevice())
    entry = kernel.bus.device(0)
    assert entry is not None and entry.error is None

    def close() -> None:
        channel.close()
        kernel.close()

    return close, entry.transport


def per_request(transport: DriverTransport, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        transport.get_status()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--channel", choices=["in-process", "socket", "kernel"], default="in-process"
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        writer = CaptureWriter(Path(tmp) / "bench.pcapng")
        if args.channel == "socket":
            close_plain, plain = make_socket(None, Path(tmp) / "plain.sock")
            close_cap, captured = make_socket(writer, Path(tmp) / "cap.sock")
        elif args.channel == "kernel":
            close_plain, plain = make_kernel(None)
            close_cap, captured = make_kernel(writer)
        else:
            plain_bus, plain = make(None)
            cap_bus, captured = make(writer)
            close_plain, close_cap = plain_bus.close, cap_bus.close
        per_request(plain, 1000)
        per_request(captured, 1000)
        base, with_cap = [], []
        for _ in range(args.rounds):
            base.append(per_request(plain, args.requests))
            with_cap.append(per_request(captured, args.requests))
        close_plain()
        close_cap()
        writer.close()
    b, c = statistics.median(base), statistics.median(with_cap)
    figure = {
        "name": f"bus round trip with capture ({args.channel} channel)",
        "value": round(c * 1e6, 2),
        "unit": "us/request",
        "baseline": round(b * 1e6, 2),
        "ratio": round(c / b, 3),
        "target": None,
        "met": None,
        "frames": writer.frames,
        "dropped": writer.dropped,
    }
    if args.json:
        print(json.dumps(figure))
    else:
        where = {"in-process": "in process", "socket": "over a socket (same process)",
                 "kernel": "through the kernel channel (emulated seed loopback)"}[args.channel]
        print(f"{args.rounds} rounds x {args.requests} GET_DEVICE_STATUS round trips {where}")
        print(f"without capture: {b * 1e6:.2f} us per request (baseline)")
        print(f"with capture:    {c * 1e6:.2f} us per request, ratio {c / b:.3f}")
        print(f"frames written {writer.frames}, dropped {writer.dropped}")


if __name__ == "__main__":
    main()
