"""The socket channel over a real socket, backends in this process or written by hand.

Covers the announcement and fd passing, ADD/REMOVE statuses, bus messages,
both profiles, and every per-connection limit: each misbehaving peer is
disconnected with a reason while a well-behaved backend keeps working.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator

import pytest
from sockbus_helpers import WAIT, BusHarness, bus_harness, rng

import virtio_msg.spec as C
from virtio_msg.bus.client import BackendClient, connect
from virtio_msg.bus.protocol import (
    MSG_ADD,
    ControlError,
    ControlRequest,
    Status,
    decode_announcement,
    parse_control_response,
)
from virtio_msg.bus.socket import SocketLimits
from virtio_msg.bus.socket_limits import receive_error, send_error
from virtio_msg.devices.rng import RngDevice
from virtio_msg.errors import BusError, TransportError
from virtio_msg.transport.device import DeviceModel
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import GenericMessage
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


@pytest.fixture
def harness() -> Iterator[BusHarness]:
    with bus_harness() as h:
        yield h


@pytest.fixture
def client(harness: BusHarness) -> Iterator[BackendClient]:
    c = connect(harness.path)
    try:
        yield c
    finally:
        c.close()


def _recv_reply(sock: socket.socket) -> bytes:
    return sock.recv(70000)


def _announce(sock: socket.socket) -> None:
    data, anc, _flags, _ = sock.recvmsg(70000, socket.CMSG_SPACE(16))
    decode_announcement(data)
    for _level, _kind, cdata in anc:
        fds = array.array("i")
        fds.frombytes(cdata)
        for fd in fds:
            os.close(fd)


# --- announcement, fd, parameters ------------------------------------------------------------


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_announcement_describes_the_bus_and_the_fd_maps_its_region(profile: str) -> None:
    params = BusParams(profile, transport_features=C.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION,
                       timeout_ms=1234)
    with bus_harness(params, SocketLimits(max_devices=7)) as h, connect(h.path) as c:
        ann = c.announcement
        region = h.bus.region
        assert (ann.profile.value, ann.max_msg_size, ann.timeout_ms, ann.max_devices) == (
            profile, params.max_size, 1234, 7)
        assert ann.transport_features == C.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION
        assert (ann.region_base, ann.region_size) == (region.base, region.size)
        assert c.params == params
        region.write(region.base + 10, b"from the bus")
        assert c.region.read(region.base + 10, 12) == b"from the bus"
        c.region.write(region.end - 3, b"end")
        assert region.read(region.end - 3, 3) == b"end"


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_rng_served_in_process_over_the_socket(profile: str) -> None:
    with bus_harness(BusParams(profile, timeout_ms=2000)) as h, connect(h.path) as c:
        c.serve(0, RngDevice(seed=3))
        c.serve(9, RngDevice(seed=4))
        for n in (0, 9):
            entry = h.bus.device(n)
            assert entry is not None and entry.error is None and entry.driver is not None
            assert len(rng(entry).read(500)) == 500
        assert c.ping() > 0
        assert h.server.channels()[0].ping() > 0
        c.withdraw(9)
        assert [e.dev_num for e in h.bus.devices()] == [0]


@pytest.mark.parametrize("lead_ms", [0.0, 10.0])
def test_requests_from_many_threads_complete(lead_ms: float) -> None:
    """Leaders and the reader thread share the socket; every request gets its own answer."""
    with bus_harness(BusParams(timeout_ms=3000), SocketLimits(lead_window_ms=lead_ms)) as h, \
            connect(h.path) as c:
        for n in range(4):
            c.serve(n, RngDevice())
        failures: list[BaseException] = []

        def work(n: int) -> None:
            entry = h.bus.device(n)
            assert entry is not None and entry.driver is not None
            try:
                for _ in range(50):
                    entry.transport.get_status()
                assert len(rng(entry).read(200)) == 200
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert failures == []
        assert h.bus.dropped == {}
        channel = h.server.channels()[0]  # no response was left unread behind a leader
        assert channel.responses_received == channel.requests_sent


@pytest.mark.parametrize("lead_ms", [0.0, 10.0])
def test_bus_ping_completes_by_the_leader_or_the_reader(lead_ms: float) -> None:
    """BUS-60: each PING gets its own echo, read by the pinging thread or the reader thread."""
    with bus_harness(BusParams(timeout_ms=3000), SocketLimits(lead_window_ms=lead_ms)) as h, \
            connect(h.path) as c:
        c.serve(0, RngDevice())
        channel = h.server.channels()[0]
        failures: list[BaseException] = []

        def work() -> None:
            try:
                for i in range(30):
                    assert channel.ping(data=i) > 0
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert failures == []
        assert channel.received["bus"] == 90
        assert channel.malformed == 0


def test_bus_ping_to_a_backend_that_never_answers_times_out(harness: BusHarness) -> None:
    """Every wait is bounded: a PING nobody answers raises TransportError("timeout")."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(harness.path))
        _announce(sock)
        channel = harness.server.channels()[0]
        with pytest.raises(TransportError) as info:
            channel.ping(timeout=0.2)
        assert info.value.kind == "timeout"
        assert channel.connected  # silence is not a violation; the next PING still works
        assert sock.recv(100)  # the PING really was sent


# --- ADD / REMOVE statuses -------------------------------------------------------------------


def test_add_of_a_number_in_use_is_refused_with_exists(harness: BusHarness) -> None:
    with connect(harness.path) as a, connect(harness.path) as b:
        a.serve(0, RngDevice())
        with pytest.raises(ControlError) as exc:
            b.serve(0, RngDevice())
        assert exc.value.status is Status.EXISTS
        assert "already present" in str(exc.value)
        assert 0 not in b.devices  # the backend does not serve what the bus refused


def test_remove_of_another_backends_device_is_refused_with_not_owner(
    harness: BusHarness,
) -> None:
    with connect(harness.path) as a, connect(harness.path) as b:
        a.serve(0, RngDevice())
        with pytest.raises(ControlError) as exc:
            b.remove(0)
        assert exc.value.status is Status.NOT_OWNER
        b.remove(42)  # NOT_FOUND: already gone is fine
        assert harness.bus.device(0) is not None


def test_device_limit_per_connection() -> None:
    with bus_harness(limits=SocketLimits(max_devices=1)) as h, connect(h.path) as c:
        c.serve(0, RngDevice())
        with pytest.raises(ControlError) as exc:
            c.serve(1, RngDevice())
        assert exc.value.status is Status.LIMIT


class _Unknown(DeviceModel):
    device_id = 0x7E  # no driver on the bus for this type


def test_probe_failure_leaves_the_device_present_with_its_error(
    client: BackendClient, harness: BusHarness
) -> None:
    client.serve(3, _Unknown())
    entry = harness.bus.device(3)
    assert entry is not None and entry.driver is None and "no driver" in (entry.error or "")
    client.withdraw(3)
    assert harness.bus.device(3) is None


def test_event_device_adds_and_removes(client: BackendClient, harness: BusHarness) -> None:
    adapter = WireAdapter()
    client.backend.serve(5, RngDevice(), add=False)
    client.send(adapter.encode(S.EventDevice(5, C.DeviceBusState.ADDED)))
    entry = harness.wait_device(5)
    assert len(rng(entry).read(32)) == 32
    client.send(adapter.encode(S.EventDevice(5, C.DeviceBusState.REMOVED)))
    harness.wait_removed(5)


def test_queued_control_requests_beyond_the_limit_get_busy() -> None:
    limits = SocketLimits(max_control_queue=1)
    with bus_harness(BusParams(timeout_ms=300), limits) as h:
        sock = h.raw()
        _announce(sock)
        adapter = WireAdapter()
        for token in range(1, 6):  # nobody answers the probes: each ADD takes a timeout
            sock.send(adapter.encode(ControlRequest(MSG_ADD, token, token).to_message()))
        statuses: dict[int, Status] = {}
        while len(statuses) < 5:
            msg = adapter.decode(_recv_reply(sock))
            if type(msg) is GenericMessage:
                resp = parse_control_response(msg)
                statuses[resp.dev_num] = resp.status
        assert list(statuses.values()).count(Status.BUSY) >= 2
        assert statuses[1] is Status.PROBE_FAILED
        sock.close()


# --- misbehaving backends: each is disconnected, the good one keeps working -------------------


def _good_backend(h: BusHarness) -> BackendClient:
    c = connect(h.path)
    c.serve(0, RngDevice())
    return c


def _still_works(h: BusHarness, c: BackendClient) -> None:
    entry = h.bus.device(0)
    assert entry is not None and entry.driver is not None and entry.channel.connected  # type: ignore[attr-defined]
    assert len(rng(entry).read(100)) == 100
    assert c.ping() > 0


def _disconnect_reason(h: BusHarness, count: int = 1) -> str:
    return h.wait_disconnects(count)[-1][1]


def test_garbage_datagrams_disconnect_after_the_limit() -> None:
    with bus_harness(limits=SocketLimits(max_malformed=3)) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        for junk in (b"\x00", b"\xff" * 9, b"\x01\x02\x00\x00\x00\x00\x63\x00", b"abc" * 30):
            bad.send(junk)
        assert "malformed" in _disconnect_reason(h)
        assert bad.recv(100) == b""  # the bus hung up
        _still_works(h, good)


@pytest.mark.parametrize(
    ("what", "data", "reason"),
    [
        ("oversize", bytes(8) + bytes(300), "malformed"),
        ("size mismatch", WireAdapter().encode(S.Ping(1)) + b"x", "malformed"),
        ("transport request", WireAdapter().encode(S.GetDeviceStatus(dev_num=0)), "malformed"),
        ("unknown impl-defined id", WireAdapter().encode(
            GenericMessage(0x9A, False, True, b"")), "malformed"),
        ("bad ADD payload", WireAdapter().encode(
            GenericMessage(MSG_ADD, False, True, b"\x00")), "malformed"),
    ],
)
def test_each_kind_of_bad_datagram_counts(what: str, data: bytes, reason: str) -> None:
    with bus_harness(limits=SocketLimits(max_malformed=0)) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        bad.send(data)
        assert reason in _disconnect_reason(h), what
        _still_works(h, good)


def test_passing_file_descriptors_to_the_bus_disconnects() -> None:
    with bus_harness() as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        r, w = os.pipe()
        try:
            bad.sendmsg([WireAdapter().encode(S.Ping(7))],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
        finally:
            os.close(r)
            os.close(w)
        assert "file descriptors" in _disconnect_reason(h)
        _still_works(h, good)


def test_bus_message_flood_disconnects() -> None:
    limits = SocketLimits(bus_message_rate=50, bus_message_burst=20)
    with bus_harness(limits=limits) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        ping = WireAdapter().encode(S.Ping(1))

        def drain() -> None:  # it reads its answers: the flood itself is the offence
            with contextlib.suppress(OSError):
                while bad.recv(100):
                    pass

        reader = threading.Thread(target=drain)
        reader.start()
        try:
            for _ in range(500):
                bad.send(ping)
        except OSError:
            pass
        assert "flooding" in _disconnect_reason(h)
        reader.join(WAIT)
        _still_works(h, good)


def test_event_flood_disconnects() -> None:
    limits = SocketLimits(event_rate=50, event_burst=20)
    with bus_harness(limits=limits) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        event = WireAdapter().encode(S.EventUsed(0, dev_num=0))  # not even its device
        try:
            for _ in range(500):
                bad.send(event)
        except OSError:
            pass
        assert "flooding" in _disconnect_reason(h)
        _still_works(h, good)


def test_backend_that_stops_reading_is_disconnected_when_the_backlog_fills() -> None:
    limits = SocketLimits(bus_message_rate=1e6, bus_message_burst=100_000, max_backlog=8)
    with bus_harness(limits=limits) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        ping = WireAdapter().encode(S.Ping(1))
        try:  # never reads the answers
            for _ in range(5000):
                bad.send(ping)
        except OSError:
            pass
        assert "not reading" in _disconnect_reason(h)
        _still_works(h, good)


def test_backend_whose_backlog_makes_no_progress_is_disconnected() -> None:
    limits = SocketLimits(bus_message_rate=1e6, bus_message_burst=100_000, max_backlog=100_000,
                          stall_ms=200)
    with bus_harness(limits=limits) as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        ping = WireAdapter().encode(S.Ping(1))
        try:
            for _ in range(2000):
                bad.send(ping)
        except OSError:
            pass
        assert "no progress" in _disconnect_reason(h)
        _still_works(h, good)


def test_responses_nobody_asked_for_disconnect() -> None:
    with bus_harness() as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        resp = WireAdapter().encode(S.GetDeviceStatusResp(0, dev_num=0, token=77))
        try:
            for _ in range(100):
                bad.send(resp)
        except OSError:
            pass
        assert "more responses than it was asked for" in _disconnect_reason(h)
        _still_works(h, good)


def test_connections_beyond_the_limit_are_refused() -> None:
    with bus_harness(limits=SocketLimits(max_connections=1)) as h, _good_backend(h) as good:
        extra = h.raw()
        assert extra.recv(100) == b""  # closed without ANNOUNCE
        h.wait_for(lambda: h.server.refused == 1, "the refusal")
        _still_works(h, good)


# --- the backend library validates the bus too ------------------------------------------------


def test_bus_closing_disconnects_the_backend(harness: BusHarness) -> None:
    c = connect(harness.path)
    c.serve(0, RngDevice())
    harness.server.close()
    assert c.wait(WAIT)
    assert c.reason == "the bus closed the connection"
    with pytest.raises(BusError):
        c.serve(1, RngDevice())
    c.close()


def test_connect_to_a_missing_socket_names_the_path(tmp_path: object) -> None:
    with pytest.raises(BusError, match=r"cannot connect to /nonexistent/bus\.sock"):
        connect("/nonexistent/bus.sock", timeout=1)


def test_backend_drops_malformed_bus_data_and_hangs_up_after_too_much() -> None:
    with bus_harness() as h, connect(h.path) as c:
        channel = h.server.channels()[0]
        channel._send(b"\x00\x01")  # below the header: dropped, counted
        h.wait_for(lambda: c.malformed == 1, "the backend to count it")
        assert c.connected
        with contextlib.suppress(BusError):  # the backend may hang up before the last one
            for _ in range(70):
                channel._send(b"\x07" * 12)
        assert c.wait(WAIT) and "malformed" in (c.reason or "")


def test_control_request_without_answer_is_bounded(harness: BusHarness) -> None:
    c = connect(harness.path, control_timeout=0.3)
    try:
        channel = harness.server.channels()[0]
        channel._control._loop = lambda: None  # type: ignore[method-assign]  # the bus goes deaf
        with pytest.raises(ControlError, match="did not answer"):
            c.serve(0, RngDevice())
        assert not c.connected
    finally:
        c.close()


def test_request_to_a_disconnected_backend_fails_at_once(
    client: BackendClient, harness: BusHarness
) -> None:
    client.serve(0, RngDevice())
    entry = harness.bus.device(0)
    assert entry is not None
    client.close()
    harness.wait_removed(0)
    with pytest.raises(TransportError) as exc:
        entry.transport.get_status()
    assert exc.value.kind == "removed"


@pytest.mark.parametrize("code", [errno.ECONNRESET, errno.EPIPE])
def test_a_send_or_a_receive_that_finds_the_backend_gone_gives_one_reason(code: int) -> None:
    gone = OSError(code, os.strerror(code))
    assert send_error(gone) == receive_error(OSError(errno.ECONNRESET, "reset"))
    assert send_error(gone) == "connection closed by the backend"
    other = OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
    assert send_error(other) == f"send failed: {os.strerror(errno.ENOBUFS)}"


def test_a_backend_that_exits_with_unread_messages_closed_the_connection() -> None:
    """Whichever of the bus's send and receive notices first, the reason is the same."""
    with bus_harness() as h, _good_backend(h) as good:
        bad = h.raw()
        _announce(bad)
        channel = next(ch for ch in h.server.channels() if ch.devices() == [])
        event = WireAdapter().encode(S.EventAvail(0, 0, dev_num=5))
        channel.deliver(event)  # left unread: closing now resets the connection
        bad.close()
        with contextlib.suppress(BusError):
            for _ in range(1000):
                channel.deliver(event)
        assert "connection closed by the backend" in _disconnect_reason(h)
        _still_works(h, good)


def test_closing_the_bus_first_disconnects_backends_and_refuses_new_ones() -> None:
    with bus_harness() as h:
        c = connect(h.path)
        c.serve(0, RngDevice())
        h.bus.close()  # the bus closes its channels: the backend is told
        assert c.wait(WAIT)
        c.close()
        with pytest.raises(BusError, match="before ANNOUNCE"):
            connect(h.path, timeout=2)
        h.server.close()
        h.server.close()  # idempotent


def test_settle_waits_for_events_already_sent(client: BackendClient, harness: BusHarness) -> None:
    client.serve(0, RngDevice())
    adapter = WireAdapter()
    before = harness.bus.received["EVENT_USED"]
    for _ in range(20):
        client.send(adapter.encode(S.EventUsed(0, dev_num=0)))
    assert harness.server.settle()
    assert harness.bus.received["EVENT_USED"] == before + 20
