"""Python bytecodes and frames per hot-path operation: a cost figure that load cannot move.

Run: ``python benchmarks/opcount.py [--json] [--by-function [--only NAME]]``

The timing benchmarks compare ratios because a shared 2-core machine moves
absolute times by 3x; even their ratios move by 30 % under load.  This script
counts, with ``sys.settrace`` opcode events, how many bytecodes the
interpreter executes (and how many Python frames it enters) for one
operation of each hot path, in every thread it touches.  The count is the
same on every run of the same code, so it shows what a change removed; at
5-10 ns per bytecode on the machines here it is also most of the time the
timing benchmarks see beyond their baselines (C work such as copies and
system calls is not counted).  Operations:

* codec: encode + decode of each sample of ``bench_codec.py``;
* bus: one in-process GET_DEVICE_STATUS round trip (``bench_bus.py``);
* socket: the same request over the socket channel to a backend in this
  process, per thread (the bus side and the backend's receive loop);
* pool: ``map`` + ``unmap`` of 4 KiB to the device (``bench_pool.py``);
* blk: one 64 KiB read in process (``bench_blk.py``, split ring).

``--by-function`` also prints, for every operation, the bytecodes and calls
per operation of each Python function it ran (``file:line function``), most
expensive first; ``--only`` keeps the operations whose name contains NAME.

``--instructions`` adds the machine instructions of one in-process
GET_DEVICE_STATUS round trip, counted by valgrind's callgrind (the
difference between runs of N and 0 requests in a child process, hash seed
fixed; skipped if valgrind is not installed).  Bytecodes are not all alike:
a call through a keyword ``functools.partial`` or a ``with`` block on a lock
costs more than the Python frame or the two calls it replaces, and only this
figure shows it.  It varies by about 0.3 % between runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from bench_codec import SPEC_SAMPLES
from figures import Figure, emit, figure
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.bus.client import connect
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices.blk import BlkDevice
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.memory import DmaDirection, DmaPool, Region
from virtio_msg.spec import DeviceId
from virtio_msg.transport import BusParams
from virtio_msg.wire import Codec, Message


class Tracer:
    """Counts opcode events and frame entries per thread while ``on``.

    Installed for every thread (``threading.settrace``) before any thread
    this script measures is started, and for the main thread.
    """

    def __init__(self) -> None:
        """Start with nothing counted."""
        self.ops: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()
        self.by_code: Counter[CodeType] = Counter()
        self.calls_by_code: Counter[CodeType] = Counter()
        self.repeat = 1
        self.on = False

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> Any:
        """The trace function: count, and ask for opcode events in every frame."""
        if event == "call":
            frame.f_trace_opcodes = True
            if self.on:
                self.frames[threading.current_thread().name] += 1
                self.calls_by_code[frame.f_code] += 1
        elif event == "opcode" and self.on:
            self.ops[threading.current_thread().name] += 1
            self.by_code[frame.f_code] += 1
        return self

    def count(self, fn: Callable[[], object], repeat: int = 10) -> dict[str, tuple[float, float]]:
        """Bytecodes and frames per call of ``fn``, by thread (mean of ``repeat`` calls)."""
        self.ops.clear()
        self.frames.clear()
        self.by_code.clear()
        self.calls_by_code.clear()
        self.on = True
        for _ in range(repeat):
            fn()
        self.on = False
        self.repeat = repeat
        return {k: (self.ops[k] / repeat, self.frames[k] / repeat) for k in self.ops}

    def breakdown(self) -> list[tuple[str, float, float]]:
        """The last :meth:`count`, per function: (where, bytecodes, calls) per operation."""
        rows = []
        for code in self.by_code.keys() | self.calls_by_code.keys():
            where = f"{_short(code.co_filename)}:{code.co_firstlineno} {code.co_qualname}"
            rows.append((where, self.by_code[code] / self.repeat,
                         self.calls_by_code[code] / self.repeat))
        return sorted(rows, key=lambda r: (-r[1], r[0]))


def _short(filename: str) -> str:
    """A source file's path from the package (or benchmarks/) down."""
    parts = Path(filename).parts
    for anchor in ("virtio_msg", "benchmarks"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor):])
    return Path(filename).name


def _round_trips(n: int) -> None:
    """The ``--loop`` child: set up the in-process bus, warm up, make ``n`` round trips."""
    bus, backend, _ = loopback_pair(LoopbackBus(BusParams(), size=1 << 20))
    with bus:
        backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None
        get_status = entry.transport.get_status
        for _ in range(200 + n):
            get_status()


def machine_instructions(requests: int = 5000) -> float | None:
    """Machine instructions per in-process round trip (callgrind), or None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None

    def collected(n: int) -> int:
        proc = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--loop", str(n)],
            capture_output=True, text=True, timeout=900,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind failed: {proc.stderr.strip()[-300:]}")
        return int(found.group(1))

    return (collected(requests) - collected(0)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--by-function", action="store_true",
                        help="also print each operation's bytecodes and calls per function")
    parser.add_argument("--only", default="", metavar="NAME",
                        help="only the operations whose name contains NAME")
    parser.add_argument("--instructions", action="store_true",
                        help="also count machine instructions of a round trip (valgrind)")
    parser.add_argument("--loop", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop is not None:
        _round_trips(args.loop)
        return
    figures: list[Figure] = []
    tracer = Tracer()
    threading.settrace(tracer)
    sys.settrace(tracer)
    count = tracer.count

    def add(name: str, counts: dict[str, tuple[float, float]]) -> None:
        if args.only not in name:
            return
        if args.by_function and not args.json:
            print(f"{name}: bytecodes, calls per operation, by function")
            for where, ops, calls in tracer.breakdown():
                print(f"  {ops:8.1f} {calls:5.1f}  {where}")
        for thread, (ops, frames) in sorted(counts.items()):
            where = "" if thread == "MainThread" else f" [{thread}]"
            figures.append(figure(f"{name}{where}: bytecodes", ops, "ops"))
            figures.append(figure(f"{name}{where}: frames", frames, "frames"))

    codec = Codec("spec")
    for msg in SPEC_SAMPLES:
        raw = codec.encode(msg)
        lay = codec.layout_for(msg)
        name = lay.name + (" resp" if lay.response else "")

        def pair(m: Message = msg, r: bytes = raw) -> object:
            return codec.encode(m), codec.decode(r)

        add(f"codec {name} encode+decode", count(pair))

    bus, backend, _ = loopback_pair(LoopbackBus(BusParams(), size=1 << 20))
    with bus:
        backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None
        add("bus GET_DEVICE_STATUS in process", count(entry.transport.get_status))

    tmp = Path(tempfile.mkdtemp(prefix="vmsg-opcount-"))
    sbus = LoopbackBus(BusParams(), size=1 << 20)
    server = SocketServer(sbus, tmp / "bus.sock").start()
    client = connect(server.path)
    try:
        client.serve(0, RngDevice())
        sentry = sbus.device(0)
        assert sentry is not None
        for _ in range(200):
            sentry.transport.get_status()
        time.sleep(0.1)
        counts = count(sentry.transport.get_status, 50)
        # threads that ran a few bytecodes only (a poll timing out) are not the request
        add("socket GET_DEVICE_STATUS", {k: v for k, v in counts.items() if v[0] >= 20})
    finally:
        client.close()
        server.close()
        sbus.close()
        shutil.rmtree(tmp, ignore_errors=True)

    with Region(1 << 20) as region:
        pool = DmaPool(region)
        data = bytes(4096)
        to_device = DmaDirection.TO_DEVICE
        add("pool map+unmap 4 KiB", count(lambda: pool.unmap(pool.map(data, to_device))))
        pool.close()

    fd, path = tempfile.mkstemp(prefix="vmsg-opcount-")
    os.ftruncate(fd, 1 << 20)
    os.close(fd)
    dev = BlkDevice(path)
    blk_bus = LoopbackBus(BusParams(ring="split"), size=4 << 20,
                          drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    try:
        _, blk_backend, _ = loopback_pair(blk_bus)
        blk_backend.serve(0, dev)
        blk = blk_bus.device(0)
        assert blk is not None and isinstance(blk.driver, BlkDriver)
        drv = blk.driver
        add("blk 64 KiB read in process", count(lambda: drv.read_sectors(0, 128)))
    finally:
        blk_bus.close()
        dev.close()
        os.unlink(path)
    sys.settrace(None)
    threading.settrace(None)
    if args.instructions:
        instructions = machine_instructions()
        if instructions is None:
            print("valgrind not found: no machine instruction count", file=sys.stderr)
        else:
            figures.append(figure("bus GET_DEVICE_STATUS in process: machine instructions",
                                  instructions, "instr"))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
