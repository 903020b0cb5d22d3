"""Hostile bus at scale: the backend library keeps serving while its bus attacks it.

The side under test is the backend library (:func:`virtio_msg.bus.client.connect`,
what ``virtio-msg backend --socket`` runs).  A real socket bus is served on a
private socket; the backend connects and serves three rng devices: GOOD (read
through the bus's driver during the run, never a target), VICTIM (the target of
every hostile transport request) and CYCLED (the backend ADDs and REMOVEs it over
and over while the flood runs, and PINGs the bus between cycles).  The bus side
then sends ``--frames`` hostile datagrams to the backend through the same
connection, seeded, of these kinds: random bytes, truncated and oversize frames,
byte-mutated valid frames, valid requests to VICTIM with hostile field values
(status, feature, config and queue values, queue addresses outside or across the
end of the region, kicks), requests to device numbers the backend does not
serve, transport responses, ADD/REMOVE and PING responses with wrong tokens (or,
without tokens, for another number or with other data), an ANNOUNCE, ADD/REMOVE
requests, EVENT_DEVICE and PING at wrong times; no pacing between checks (a
flood).  Every ``--check-every`` frames the harness waits (bounded) until the
backend has taken every datagram, then reads GOOD and asks VICTIM for its device
information.  The run fails (exit 1) on a crash (the backend's connection
closed, an ERROR logged), a hang (a bounded wait ran out), a datagram the backend
did not count exactly once, fewer drops than frames that must be dropped, a
failed read, PING or ADD/REMOVE cycle, or VICTIM not working after a reset and a
new probe at the end.  Usage: ``python3 fuzz/hostile_bus.py --profile both
--frames 100000`` (JSON summary per profile on stdout).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.client import BackendClient, connect
from virtio_msg.bus.protocol import MSG_ADD, MSG_REMOVE, Announcement, ControlResponse, Status
from virtio_msg.bus.socket import SocketLimits, SocketServer
from virtio_msg.bus.socket_channel import SocketChannel
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import EncodeError, VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.testing import fd_count, rss_kib
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import GenericMessage, Message, with_header
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

GOOD, VICTIM, CYCLED = 3, 4, 5
"""Device numbers: read during the run, attacked, ADDed and REMOVEd during the run."""
PROTECTED = (GOOD, CYCLED)
KINDS = (
    "random", "truncated", "oversize", "mutated", "victim-request", "wrong-dev",
    "transport-response", "wrong-token", "announce", "control-request", "event-device", "ping",
)
MUST_DROP = frozenset(KINDS) - {"random", "mutated", "victim-request", "ping"}
"""Kinds the backend must drop and count (the others it may also answer)."""
HOSTILE_TOKENS = range(0xC000, 0x10000)
"""Tokens of forged responses: far above any token the backend or the bus uses here."""
PING_DATA = 0x12345678
"""What :meth:`BackendClient.ping` sends; forged PING responses carry anything else."""
BUS_PING_DATA = 0x5A5A5A5A
"""What :meth:`SocketChannel.ping` sends; hostile PINGs carry anything else."""
WAIT = 30.0
"""Bound on every wait of the harness, seconds."""


class Forge:
    """Hostile datagrams of one profile, seeded."""

    def __init__(self, rnd: random.Random, adapter: WireAdapter, announce: bytes, end: int):
        """Use ``adapter``'s profile; ``announce`` is the bus's ANNOUNCE, ``end`` the region end."""
        self.rnd = rnd
        self.adapter = adapter
        self.tokens = adapter.codec.has_token
        self.announce = announce
        self.end = end

    def _encode(self, msg: Message, token: int | None = None) -> bytes:
        rnd = self.rnd
        if self.tokens:
            tok = rnd.choice(HOSTILE_TOKENS) if token is None else token
            msg = with_header(msg, msg[-2], tok)
        try:
            return self.adapter.encode(msg)
        except EncodeError:  # a value the seed layout cannot carry: ask for the status instead
            return self.adapter.encode(S.GetDeviceStatus(dev_num=msg[-2]))

    def _addr(self) -> int:
        rnd = self.rnd
        return rnd.choice((0, rnd.getrandbits(64), self.end - rnd.randrange(1, 64), 0x10))

    def request(self, dev: int) -> Message:
        """A valid transport request (or kick) to ``dev`` with hostile field values."""
        rnd = self.rnd
        r8, r16, r32 = rnd.getrandbits(8), rnd.getrandbits(16), rnd.getrandbits(32)
        makers: tuple[Callable[[], Message], ...] = (
            lambda: S.GetDeviceInfo(dev_num=dev),
            lambda: S.GetDeviceFeatures(r8 % 4, 1 + r8 % 3, dev_num=dev),
            lambda: S.SetDriverFeatures(r8 % 3, 2, (r32, rnd.getrandbits(32)), dev_num=dev),
            lambda: S.GetConfig(r16 % 300, 1 + r8 % 16, dev_num=dev),
            lambda: S.SetConfig(r32, r8, 4, rnd.randbytes(4), dev_num=dev),
            lambda: S.GetDeviceStatus(dev_num=dev),
            lambda: S.SetDeviceStatus(rnd.choice((0, 1, 3, 0xB, 0xF, 0x40, r8)), dev_num=dev),
            lambda: S.GetVqueue(r8 % 3, dev_num=dev),
            lambda: S.SetVqueue(
                r8 % 3, 1, rnd.choice((0, 1, 3, 64, r16)), 0, self._addr(), self._addr(),
                self._addr(), dev_num=dev,
            ),
            lambda: S.ResetVqueue(r8 % 3, dev_num=dev),
            lambda: S.GetShm(r8 % 3, dev_num=dev),
            lambda: S.EventAvail(r8 % 3, r16, dev_num=dev),
        )
        return rnd.choice(makers)()

    def valid(self) -> bytes:
        """A valid frame of any kind the bus could send (the base of truncation and mutation)."""
        rnd = self.rnd
        if rnd.random() < 0.7:
            return self._encode(self.request(VICTIM))
        return self._encode(rnd.choice((S.Ping(rnd.getrandbits(32)), S.GetDevices(0, 4))))

    def frame(self, kind: str) -> bytes:
        """One hostile datagram of ``kind``; it never addresses a protected device."""
        data = self._frame(kind)
        if len(data) >= 4 and data[2] | data[3] << 8 in PROTECTED:
            fixed = bytearray(data)
            fixed[2:4] = VICTIM.to_bytes(2, "little")
            data = bytes(fixed)
        return data

    def _frame(self, kind: str) -> bytes:
        rnd, adapter = self.rnd, self.adapter
        if kind == "random":
            return rnd.randbytes(rnd.randrange(1, 300))  # 0 bytes would read as a hang-up
        if kind == "truncated":
            data = self.valid()
            return data[: rnd.randrange(1, len(data))]
        if kind == "oversize":
            return self.valid() + rnd.randbytes(adapter.max_size + rnd.randrange(1, 2000))
        if kind == "mutated":
            buf = bytearray(self.valid())
            for _ in range(rnd.randint(1, 3)):
                buf[rnd.randrange(len(buf))] = rnd.getrandbits(8)
            return bytes(buf)
        if kind == "victim-request":
            return self._encode(self.request(VICTIM))
        if kind == "wrong-dev":
            dev = rnd.choice((0, 1, 7, 0xFFFF, rnd.getrandbits(16)))
            return self._encode(self.request(dev if dev not in (*PROTECTED, VICTIM) else 9))
        if kind == "transport-response":
            dev = rnd.choice((VICTIM, 9))
            return self._encode(S.GetDeviceStatusResp(rnd.getrandbits(8), dev_num=dev))
        if kind == "wrong-token":
            return self._wrong_token()
        if kind == "announce":
            return self.announce
        if kind == "control-request":
            op = rnd.choice((MSG_ADD, MSG_REMOVE))
            payload = rnd.getrandbits(16).to_bytes(2, "little") + bytes(2)
            return self._encode(GenericMessage(op, False, True, payload))
        if kind == "event-device":
            return self.adapter.encode(S.EventDevice(rnd.getrandbits(16), rnd.randrange(4)))
        value = rnd.getrandbits(32)  # never the bus's own PING data (no token tells them apart)
        return self._encode(S.Ping(value ^ 1 if value == BUS_PING_DATA else value))

    def _wrong_token(self) -> bytes:
        rnd = self.rnd
        if rnd.random() < 0.5:
            data = rnd.getrandbits(32)
            if not self.tokens and data == PING_DATA:
                data ^= 1
            return self._encode(S.PingResp(data))
        dev = CYCLED if self.tokens else rnd.choice((0, GOOD, VICTIM, 0xFFFF))
        op = rnd.choice((MSG_ADD, MSG_REMOVE))
        return self._encode(ControlResponse(op, dev, rnd.choice(list(Status))).to_message())


def _genuine(
    client: BackendClient, stop: threading.Event, counts: Counter[str], errors: list[str]
) -> None:
    """The backend's own traffic during the flood: PING, then ADD and REMOVE of CYCLED."""
    while not stop.is_set():
        try:
            client.ping()
            counts["pings"] += 1
            client.serve(CYCLED, RngDevice(seed=2))
            client.withdraw(CYCLED)
            counts["cycles"] += 1
        except VirtioMsgError as exc:
            errors.append(f"backend's own traffic failed: {exc}")
            return


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"hang: no {what} within {WAIT:.0f} s")
        time.sleep(0.002)


def _took(client: BackendClient, mark: int) -> Callable[[], bool]:
    """True once the backend has counted ``mark`` datagrams (both sides count since ANNOUNCE)."""
    return lambda: client.received.total() >= mark


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def _drops(client: BackendClient) -> int:
    devices = client.backend.devices
    return client.malformed + client.backend.dropped.total() + sum(
        d.discarded.total() for d in devices.values()
    )


def _check(bus: LoopbackBus, channel: SocketChannel, good: RngDriver) -> None:
    channel.ping(timeout=WAIT)  # barrier: every earlier answer of the backend was taken
    if len(good.read(16)) != 16:
        raise RuntimeError("GOOD returned a short read")
    victim = bus.device(VICTIM)
    if victim is None or victim.transport.get_device_info().device_id != DeviceId.ENTROPY:
        raise RuntimeError("VICTIM did not answer GET_DEVICE_INFO")


def run(
    profile: str, frames: int, seed: int, check_every: int, progress: bool = False
) -> dict[str, Any]:
    """Attack one backend on a bus of ``profile`` with ``frames`` datagrams; return the summary."""
    rnd = random.Random(seed)
    limits = SocketLimits(
        max_malformed=10**9, max_unsolicited_responses=10**9, bus_message_rate=1e9,
        bus_message_burst=10**9, event_rate=1e9, event_burst=10**9, max_control_queue=10**6,
        max_backlog=10**6, lead_window_ms=0,
    )
    gc.collect()
    start, fds_start, rss_start = time.monotonic(), fd_count(), rss_kib()
    tmp = Path(tempfile.mkdtemp(prefix="vmsg-hb-"))
    params = BusParams(profile, timeout_ms=5000)
    bus = LoopbackBus(params, size=1 << 20)
    server = SocketServer(bus, tmp / "bus.sock", limits=limits).start()
    log = logging.getLogger("virtio_msg")
    level, handler = log.level, _Errors()
    log.addHandler(handler)
    sent: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()
    side: threading.Thread | None = None
    client = connect(tmp / "bus.sock", max_malformed=10**9)
    try:
        client.serve(GOOD, RngDevice(seed=1))
        client.serve(VICTIM, RngDevice(seed=3))
        entry = bus.device(GOOD)
        if entry is None or not isinstance(entry.driver, RngDriver):
            raise RuntimeError("GOOD did not probe")
        good, channel = entry.driver, entry.channel
        if not isinstance(channel, SocketChannel):
            raise RuntimeError("GOOD is not served over the socket")
        announce = Announcement.for_bus(params, bus.region.base, bus.region.size, 64).encode()
        forge = Forge(rnd, WireAdapter(profile), announce, bus.region.end)
        log.setLevel(logging.ERROR)  # hostile traffic draws warnings by design (restored)
        base_drops = _drops(client)
        side = threading.Thread(target=_genuine, args=(client, stop, counts, errors), daemon=True)
        side.start()
        for i in range(frames):
            kind = KINDS[rnd.randrange(len(KINDS))]
            channel.deliver(forge.frame(kind))
            sent[kind] += 1
            if (i + 1) % check_every == 0 or i + 1 == frames:
                _wait(_took(client, channel.submitted), "backend taking every datagram")
                _check(bus, channel, good)
                counts["checks"] += 1
                if progress:
                    print(f"\r{profile}: {i + 1}/{frames} frames", end="", file=sys.stderr)
        stop.set()
        side.join(WAIT)
        if side.is_alive():
            raise TimeoutError("hang: the backend's own ADD/REMOVE/PING did not finish")
        _wait(lambda: channel.submitted == channel.sent, "flush of the bus's backlog")
        _wait(_took(client, channel.sent), "backend taking every datagram")
        received, bus_sent = client.received.total(), channel.sent  # both since ANNOUNCE
        drops = _drops(client) - base_drops
        victim = bus.device(VICTIM)
        if victim is None:
            raise RuntimeError("VICTIM is gone")
        victim.transport.reset()
        fresh = RngDriver(victim.transport)
        fresh.probe()
        victim_ok = len(fresh.read(32)) == 32
        must_drop = sum(n for k, n in sent.items() if k in MUST_DROP)
        summary = {
            "profile": profile, "frames": frames, "seed": seed, "sent": dict(sent),
            "backend_received": dict(client.received), "counted_once": received == bus_sent,
            "bus_sent": bus_sent, "genuine_datagrams": bus_sent - frames,
            "must_drop": must_drop, "dropped": drops,
            "backend_malformed": client.malformed, "backend_dropped": dict(client.backend.dropped),
            "victim_discarded": dict(client.backend.devices[VICTIM].discarded),
            "good_discarded": client.backend.devices[GOOD].discarded.total(),
            "checks": counts["checks"], "pings": counts["pings"], "cycles": counts["cycles"],
            "victim_after": victim_ok, "connected": client.connected, "reason": client.reason,
            "errors": errors + handler.records,
        }
    finally:
        stop.set()
        log.setLevel(level)
        log.removeHandler(handler)
        client.close()
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)
    gc.collect()
    summary.update(
        fds_start=fds_start, fds_end=fd_count(), rss_kib_start=rss_start,
        rss_kib_end=rss_kib(), seconds=round(time.monotonic() - start, 1),
    )
    summary["ok"] = ok(summary)
    return summary


def ok(summary: dict[str, Any]) -> bool:
    """True if the summary shows no crash, hang, uncounted datagram or failed check."""
    return bool(
        summary["counted_once"] and summary["connected"] and not summary["errors"]
        and summary["must_drop"] <= summary["dropped"] <= summary["frames"]
        and summary["good_discarded"] == 0 and summary["victim_after"]
        and summary["cycles"] > 0 and summary["fds_end"] <= summary["fds_start"]
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: attack a backend for each profile, print JSON summaries, exit 1 on failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("spec", "linux-rfc1", "both"), default="both")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check-every", type=int, default=500)
    args = ap.parse_args(argv)
    profiles = ("spec", "linux-rfc1") if args.profile == "both" else (args.profile,)
    good = True
    for profile in profiles:
        summary = run(profile, args.frames, args.seed, args.check_every, sys.stderr.isatty())
        good = good and summary["ok"]
        print(json.dumps(summary))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
