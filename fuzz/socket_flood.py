"""Hostile backend at scale: floods a socket bus with bad frames while a good backend works.

A bus is served on a private socket with limits raised so the hostile
connection is never disconnected (a flood is the point).  A well-behaved
backend serves an rng device on the same bus; a raw connection then sends
``--frames`` datagrams, seeded, of these kinds: random bytes, truncated and
oversize frames, byte-mutated valid frames, responses with wrong tokens,
events for device numbers it does not own, transport requests, PING and
GET_DEVICES, ADD/REMOVE of numbers in use or not its own, EVENT_DEVICE at
wrong times.  Every ``--check-every`` frames the good device is read through
the bus.  The summary (JSON on stdout) counts frames by kind, what the bus
and the channel counted, and the good device's reads; the run fails (exit 1)
if the bus did not account for every frame, a read failed, or the bus hung.
Usage: ``python3 fuzz/socket_flood.py --profile spec --frames 100000``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.client import connect
from virtio_msg.bus.protocol import MSG_ADD, MSG_REMOVE, decode_announcement
from virtio_msg.bus.socket import SocketLimits, SocketServer
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Codec, GenericMessage, with_header
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

GOOD = 3
"""The good backend's device number."""
KINDS = (
    "random", "truncated", "oversize", "mutated", "wrong-token", "foreign-event",
    "transport-request", "bus-request", "control", "event-device",
)
WAIT = 30.0


def _valid(rnd: random.Random, adapter: WireAdapter) -> bytes:
    msgs = [
        S.Ping(rnd.getrandbits(32)),
        S.GetDevices(0, 8),
        S.EventUsed(rnd.randrange(4), dev_num=rnd.choice((GOOD, 0, 7, 0xFFFF))),
        S.GetDeviceStatusResp(rnd.getrandbits(32), dev_num=GOOD),
        S.EventDevice(rnd.randrange(16), rnd.randrange(4)),
    ]
    return adapter.encode(rnd.choice(msgs))


def frame(kind: str, rnd: random.Random, adapter: WireAdapter, codec: Codec) -> bytes:
    """One hostile datagram of ``kind``."""
    if kind == "random":
        return rnd.randbytes(rnd.randrange(1, 300))  # 0 bytes reads as EOF
    if kind == "truncated":
        return _valid(rnd, adapter)[: rnd.randrange(1, adapter.header_size + 1)]
    if kind == "oversize":
        return _valid(rnd, adapter) + rnd.randbytes(adapter.max_size + rnd.randrange(1, 2000))
    if kind == "mutated":
        data = bytearray(_valid(rnd, adapter))
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(len(data))] = rnd.getrandbits(8)
        return bytes(data)
    if kind == "wrong-token":
        msg = S.GetDeviceStatusResp(rnd.getrandbits(32), dev_num=rnd.choice((GOOD, 1, 9)))
        if codec.has_token:
            return codec.encode(with_header(msg, msg.dev_num, rnd.randrange(1, 65536)))
        return adapter.encode(msg)
    if kind == "foreign-event":
        return adapter.encode(S.EventUsed(rnd.randrange(2), dev_num=rnd.choice((GOOD, 0, 42))))
    if kind == "transport-request":
        return adapter.encode(S.GetDeviceStatus(dev_num=rnd.choice((GOOD, 0, 5))))
    if kind == "bus-request":
        return adapter.encode(rnd.choice((S.Ping(rnd.getrandbits(32)), S.GetDevices(0, 4))))
    if kind == "control":
        op = rnd.choice((MSG_ADD, MSG_REMOVE))
        payload = rnd.choice((GOOD, rnd.randrange(0x10000))).to_bytes(2, "little") + bytes(2)
        if rnd.random() < 0.3:
            payload = rnd.randbytes(rnd.randrange(0, 8))
        return adapter.encode(GenericMessage(op, False, True, payload))
    return adapter.encode(S.EventDevice(rnd.choice((GOOD, 99)), rnd.randrange(4)))


def _drain(sock: socket.socket, stop: threading.Event, got: list[int]) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = sock.recv(70000)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        got[0] += 1


def run(
    profile: str, frames: int, seed: int, check_every: int, progress: bool = False
) -> dict[str, Any]:
    """Flood one bus of ``profile`` with ``frames`` hostile datagrams; return the summary."""
    rnd = random.Random(seed)
    adapter = WireAdapter(profile)
    codec = adapter.codec
    limits = SocketLimits(
        max_malformed=10**9, max_unsolicited_responses=10**9, bus_message_rate=1e9,
        bus_message_burst=10**9, event_rate=1e9, event_burst=10**9, max_control_queue=10**6,
        max_backlog=10**6,
    )
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-fz-"))
    bus = LoopbackBus(BusParams(profile, timeout_ms=300), size=1 << 20)
    server = SocketServer(bus, tmp / "bus.sock", limits=limits).start()
    sent: Counter[str] = Counter()
    reads = 0
    start = time.monotonic()
    log = logging.getLogger("virtio_msg")
    level = log.level
    try:
        good = connect(tmp / "bus.sock")
        good.serve(GOOD, RngDevice(seed=1))
        entry = bus.device(GOOD)
        if entry is None or not isinstance(entry.driver, RngDriver):
            raise RuntimeError("the good backend's rng device did not probe")
        log.setLevel(logging.ERROR)  # hostile probes fail by design (restored at the end)
        driver = entry.driver
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bad.settimeout(WAIT)
        bad.connect(str(tmp / "bus.sock"))
        data, _anc, _fl, _ = bad.recvmsg(70000, socket.CMSG_SPACE(16))
        decode_announcement(data)
        stop = threading.Event()
        answers = [0]
        reader = threading.Thread(target=_drain, args=(bad, stop, answers), daemon=True)
        reader.start()
        hostile = next(ch for ch in server.channels() if ch is not entry.channel)
        for i in range(frames):
            kind = KINDS[rnd.randrange(len(KINDS))]
            bad.send(frame(kind, rnd, adapter, codec))
            sent[kind] += 1
            if (i + 1) % check_every == 0:
                if len(driver.read(16)) != 16:
                    raise RuntimeError("the good device returned a short read")
                reads += 1
                if progress:
                    print(f"\r{profile}: {i + 1}/{frames} frames", end="", file=sys.stderr)
        deadline = time.monotonic() + WAIT
        while hostile.received.total() < frames and time.monotonic() < deadline:
            time.sleep(0.05)

        if len(driver.read(16)) != 16:
            raise RuntimeError("the good device returned a short read after the flood")
        reads += 1
        connected = hostile.reason is None
        stop.set()
        reader.join(WAIT)
        bad.close()
        good.close()
        return {
            "profile": profile, "frames": frames, "seed": seed, "sent": dict(sent),
            "channel_received": dict(hostile.received), "channel_malformed": hostile.malformed,
            "accounted": hostile.received.total(), "bus_dropped": dict(bus.dropped),
            "answers_read": answers[0], "good_reads": reads, "connected": connected,
            "seconds": round(time.monotonic() - start, 1),
        }
    finally:
        log.setLevel(level)
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the flood for each profile, print a JSON summary, exit 1 on failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("spec", "linux-rfc1", "both"), default="both")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check-every", type=int, default=500)
    args = ap.parse_args(argv)
    profiles = ("spec", "linux-rfc1") if args.profile == "both" else (args.profile,)
    ok = True
    for profile in profiles:
        tty = sys.stderr.isatty()
        summary = run(profile, args.frames, args.seed, args.check_every, progress=tty)
        ok = ok and summary["accounted"] == args.frames and summary["connected"]
        print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
