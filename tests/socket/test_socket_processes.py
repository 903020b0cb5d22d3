"""The socket channel across real processes: I/O, shared memory, faults and recovery.

The bus runs in the test process; backends are separate processes
(``sockbus_backend_proc.py``) that use the backend library.  Tests assert on
outcomes (an error of the right kind, a device gone or back), never on time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading

import pytest
from sockbus_helpers import WAIT, backend_procs, bus_harness, rng

from virtio_msg.errors import TransportError
from virtio_msg.transport.params import BusParams


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_rng_end_to_end_across_processes(profile: str) -> None:
    with bus_harness(BusParams(profile, timeout_ms=2000)) as h, backend_procs() as start:
        be = start(h.path)
        assert be.announcement["profile"] == profile
        assert be.cmd("serve", 0, "rng") == {"ok": True}
        entry = h.wait_device(0)
        assert entry.error is None and entry.driver is not None
        data = rng(entry).read(3000)
        assert len(data) == 3000 and len(set(data)) > 200
        assert entry.driver.selftest()["bytes"] == 64
        channel = h.server.channels()[0]
        assert channel.pid == be.pid


def test_backend_memfd_view_is_byte_identical_to_the_drivers() -> None:
    with bus_harness(size=1 << 20) as h, backend_procs() as start:
        region = h.bus.region
        region.write(region.base, os.urandom(region.size))
        be = start(h.path)
        assert (be.announcement["base"], be.announcement["size"]) == (region.base, region.size)
        ours = hashlib.sha256(region.read(region.base, region.size)).hexdigest()
        assert be.cmd("hash")["sha256"] == ours
        # Writes go both ways through the same pages.
        assert be.cmd("write", region.size - 4, "c0ffee11") == {"ok": True}
        assert region.read(region.end - 4, 4) == bytes.fromhex("c0ffee11")
        region.write(region.base + 123, b"driver side")
        assert be.cmd("read", 123, 11)["hex"] == b"driver side".hex()
        # The backend mapped exactly the region: one byte past the end is refused.
        assert be.cmd("read", region.size, 1)["ok"] is False
        # After real device I/O (rings and bounce buffers in the region) still identical.
        assert be.cmd("serve", 0, "rng")["ok"]
        rng(h.wait_device(0)).read(5000)
        ours = hashlib.sha256(region.read(region.base, region.size)).hexdigest()
        assert be.cmd("hash")["sha256"] == ours


def test_killed_backend_times_out_then_goes_away_and_reconnects() -> None:
    params = BusParams(timeout_ms=1000)
    with bus_harness(params) as h, backend_procs() as start:
        a = start(h.path)
        assert a.cmd("serve", 0, "rng")["ok"] and a.cmd("serve", 2, "rng")["ok"]
        b = start(h.path)
        assert b.cmd("serve", 1, "rng")["ok"]
        dev0, dev2, dev1 = h.wait_device(0), h.wait_device(2), h.wait_device(1)
        chan_a = dev0.channel

        a.stop()  # A hangs: requests to it time out
        with pytest.raises(TransportError) as hung:
            dev0.transport.get_status()
        assert hung.value.kind == "timeout"
        assert len(rng(dev1).read(256)) == 256  # B unaffected

        # A request in flight when A dies fails; it does not wait forever.
        errors: list[BaseException] = []

        def in_flight() -> None:
            try:
                dev2.transport.get_status()
            except BaseException as exc:
                errors.append(exc)

        sent = chan_a.requests_sent  # type: ignore[attr-defined]
        t = threading.Thread(target=in_flight)
        t.start()
        h.wait_for(lambda: chan_a.requests_sent > sent, "the request to be sent")  # type: ignore[attr-defined]
        a.kill()
        t.join(WAIT)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], TransportError)
        assert errors[0].kind in ("removed", "timeout", "disconnected")
        h.wait_removed(0)
        h.wait_removed(2)
        assert dev0.transport.removed and dev2.transport.removed
        assert "closed by the backend" in h.wait_disconnects(1)[0][1]

        # The bus keeps serving B ...
        assert len(rng(dev1).read(512)) == 512
        # ... and A, restarted, adds its device again: probed afresh, works.
        a2 = start(h.path)
        assert a2.cmd("serve", 0, "rng")["ok"]
        fresh = h.bus.device(0)
        assert fresh is not None and fresh is not dev0 and fresh.error is None
        assert len(rng(fresh).read(100)) == 100


def test_remove_while_io_is_in_flight() -> None:
    with bus_harness(BusParams(timeout_ms=5000)) as h, backend_procs() as start:
        be = start(h.path)
        assert be.cmd("serve", 0, "stall")["ok"]
        entry = h.wait_device(0)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                rng(entry).read(64)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        h.wait_for(lambda: be.cmd("notified", 0)["kicks"] >= 1, "the device to see the kick")
        assert be.cmd("withdraw", 0) == {"ok": True}  # REMOVE with the buffer still pending
        t.join(WAIT)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], TransportError)
        assert errors[0].kind == "removed"
        h.wait_removed(0)
        assert h.bus.device(0) is None
        # The same backend can serve the number again; the new device works.
        assert be.cmd("serve", 0, "rng")["ok"]
        assert len(rng(h.wait_device(0)).read(64)) == 64


GARBAGE = r"""
import os, random, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.recvmsg(70000, 64)  # ANNOUNCE (+ fd, closed with the process)
rnd = random.Random(7)
try:
    for i in range(100000):
        s.send(rnd.randbytes(rnd.randrange(1, 200)))
except OSError:
    pass
time.sleep(60)
"""


def test_garbage_sending_backend_is_disconnected_without_harming_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="virtio_msg.bus.socket")
    with bus_harness() as h, backend_procs() as start:
        good = start(h.path)
        assert good.cmd("serve", 0, "rng")["ok"]
        dev = h.wait_device(0)
        bad = subprocess.Popen([sys.executable, "-c", GARBAGE, str(h.path)])
        try:
            (channel, reason), = h.wait_disconnects(1)
            assert channel.pid == bad.pid and channel.violation
            assert "malformed" in reason
            assert any("malformed" in r.getMessage() for r in caplog.records)
        finally:
            bad.kill()
            bad.wait(WAIT)
        assert len(rng(dev).read(1000)) == 1000
        assert good.cmd("ping")["ok"]
        assert [e.dev_num for e in h.bus.devices()] == [0]
