"""The vhost-user front end and device against a scriptable Python back end.

Deterministic: no daemon, a socketpair and the fake back end of vhost_fake.
Covers the message sequence, the memory table, per-queue EVENT_USED, clean
ring stops (with in-flight requests), and every way a back end can fail: no
answer, a malformed answer, a refusal, file descriptors in a reply, an
unsolicited message, the socket closing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time

import pytest
from vhost_fake import ENTROPY, WAIT, fake_device, fake_pair

import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.base import Driver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.transport.params import BusParams
from virtio_msg.vhost import (
    VhostUserDevice,
    VhostUserDisconnected,
    VhostUserFrontend,
    VhostUserProtocolError,
    VhostUserRefused,
    VhostUserTimeout,
)
from virtio_msg.vhost.profiles import profile
from virtio_msg.vhost.protocol import HEADER, Request
from virtio_msg.virtqueue import DriverQueue
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

RNG_DRIVERS: dict[int, type[Driver]] = {DeviceId.ENTROPY: RngDriver}


def _bus() -> LoopbackBus:
    return LoopbackBus(BusParams(timeout_ms=3000), size=1 << 20, drivers=RNG_DRIVERS)


def _rng(lb: LoopbackBus, dev_num: int = 0) -> RngDriver:
    entry = lb.device(dev_num)
    assert entry is not None and entry.error is None, entry and entry.error
    assert isinstance(entry.driver, RngDriver)
    return entry.driver


# --- the handshake ----------------------------------------------------------------------------


def test_handshake_follows_qemus_order_and_negotiates_only_what_is_implemented() -> None:
    offered = 0b1111_1111_1111_1111  # every protocol feature up to CONFIGURE_MEM_SLOTS
    with fake_pair(protocol_features=offered, queue_num=3) as (fe, be):
        fe.handshake()
        assert be.names() == [
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES",
            "GET_QUEUE_NUM",
            "SET_OWNER",
        ]
        assert be.acked_protocol == 0b1000001001  # MQ, REPLY_ACK, CONFIG; nothing else
        assert fe.queue_num == 3


def test_without_protocol_features_there_is_no_protocol_negotiation() -> None:
    with fake_pair(features=1 << 32) as (fe, be):
        fe.handshake()
        assert be.settle(2) == ["GET_FEATURES", "SET_OWNER"]  # no REPLY_ACK: nothing to wait on
        assert fe.protocol_features == 0 and fe.queue_num == 1


def test_get_config_of_any_size_the_message_allows() -> None:
    config = bytes(range(256))
    with fake_pair(config=config) as (fe, _be):
        fe.handshake()
        assert fe.get_config(256) == config  # one message, the protocol's maximum
        assert fe.get_config(5, offset=100) == config[100:105]
        with pytest.raises(ValueError):
            fe.get_config(257)


def test_a_refusal_is_an_answer_and_the_connection_survives() -> None:
    with fake_pair(config=bytes(8)) as (fe, be):
        fe.handshake()
        with pytest.raises(VhostUserRefused):
            fe.get_config(16)  # the back end answers with an empty payload
        be.nack.add(Request.SET_VRING_NUM)
        with pytest.raises(VhostUserRefused):
            fe.set_vring_num(0, 64)
        assert fe.connected
        assert fe.get_config(8) == bytes(8)


# --- strict reply checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, reason",
    [
        (HEADER.pack(Request.GET_FEATURES, 0x1, 8) + bytes(8), "REPLY flag"),
        (HEADER.pack(Request.GET_FEATURES, 0x6, 8) + bytes(8), "version"),
        (HEADER.pack(Request.GET_QUEUE_NUM, 0x5, 8) + bytes(8), "expected GET_FEATURES"),
        (HEADER.pack(Request.GET_FEATURES, 0x5, 4) + bytes(4), "not 8"),
        (HEADER.pack(Request.GET_FEATURES, 0x5, 1 << 20), "claims"),
    ],
)
def test_a_malformed_reply_kills_the_connection(raw: bytes, reason: str) -> None:
    with fake_pair() as (fe, be):
        be.raw_reply[Request.GET_FEATURES] = raw
        with pytest.raises(VhostUserProtocolError, match=reason):
            fe.handshake()
        assert not fe.connected and reason.split()[0] in (fe.reason or "")
        with pytest.raises(VhostUserDisconnected):  # sticky: nothing more is sent
            fe.set_vring_num(0, 8)


def test_file_descriptors_in_a_reply_are_closed_and_refused() -> None:
    with fake_pair() as (fe, be):
        be.fds_in_reply.add(Request.GET_FEATURES)
        with pytest.raises(VhostUserProtocolError, match="file descriptor"):
            fe.handshake()
        assert be.settle(1) == ["GET_FEATURES"]  # the fake closed its own ends of the pipe
        assert be.stray_inodes
        held = []
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/self/fd/{name}")
                if stat.S_ISFIFO(st.st_mode) and st.st_ino in be.stray_inodes:
                    held.append(name)
        assert not held, f"the stray pipe is still open as fd {held}"


def test_no_reply_times_out_within_the_bound_and_stays_dead() -> None:
    with fake_pair(timeout=0.2) as (fe, be):
        be.silent.add(Request.GET_FEATURES)
        with pytest.raises(VhostUserTimeout):  # raised, not waited for forever
            fe.handshake()
        assert not fe.connected


def test_a_backend_that_hangs_up_during_a_request_is_reported() -> None:
    with fake_pair() as (fe, be):
        be.close_on.add(Request.GET_PROTOCOL_FEATURES)
        with pytest.raises(VhostUserDisconnected, match="closed"):
            fe.handshake()


def test_connect_to_nothing_fails_fast(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(VhostUserDisconnected, match="cannot connect"):
        VhostUserFrontend.connect(os.path.join(tmp_path, "absent.sock"), connect_timeout=1.0)


def test_a_backend_without_version_1_is_refused() -> None:
    with fake_pair(features=1 << 30) as (fe, _be), pytest.raises(VirtioMsgError, match="VERSION_1"):
        VhostUserDevice(fe, ENTROPY)


# --- the device: message sequence, memory, queues ---------------------------------------------


def test_driver_ok_sends_features_memory_and_rings_in_order() -> None:
    with fake_device() as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        backend.serve(0, device)
        drv = _rng(lb)
        assert drv.read(100) == b"\x5a" * 100  # served by the fake through the shared rings
        names = be.names()
        start = names.index("SET_FEATURES")
        assert names[start:start + 8] == [
            "SET_FEATURES",
            "SET_MEM_TABLE",
            "SET_VRING_NUM",
            "SET_VRING_BASE",
            "SET_VRING_ADDR",
            "SET_VRING_CALL",  # before KICK: the first completion must have somewhere to go
            "SET_VRING_KICK",
            "SET_VRING_ENABLE",
        ]
        region = lb.region
        # guest address = user address = the region's bus base: nothing to translate
        assert be.mem == [(region.base, region.size, region.base, 0)]
        assert be.mem_fd_inode == os.fstat(region.fd).st_ino  # the region's own memfd
        vq = drv.vq
        assert ("SET_VRING_ADDR", (0, vq.desc_addr, vq.device_addr, vq.driver_addr)) in be.log
        negotiated = lb.device(0).transport.negotiated_features  # type: ignore[union-attr]
        assert negotiated >> C.VIRTIO_F_ACCESS_PLATFORM & 1
        assert be.acked_features is not None
        assert not be.acked_features >> C.VIRTIO_F_ACCESS_PLATFORM & 1  # transport's, not theirs
        assert not be.acked_features >> C.VIRTIO_F_RING_RESET & 1  # emulated by the front end
        assert be.acked_features >> 30 & 1  # PROTOCOL_FEATURES stays on


def test_one_event_used_per_call_and_only_for_that_queue() -> None:
    blk = profile("blk")
    config = bytes(60)
    with fake_device(blk, queue_num=2, config=config) as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        assert device.num_queues == 2
        seen: list[int] = []
        backend.serve(0, device)  # no blk driver bound: the rings are set up by hand below
        transport = device.transport
        assert transport is not None
        emit = transport.emit

        def spy(msg: Message) -> None:
            if type(msg) is S.EventUsed:
                seen.append(msg.vq_index)
            emit(msg)

        transport.emit = spy
        entry = lb.device(0)
        assert entry is not None
        t = entry.transport
        t.initialize()
        t.finalize_features(device.offered_features & ~(1 << C.VIRTIO_F_EVENT_IDX))
        t.find_vqs(2)
        t.driver_ok()
        assert device.started_rings == [0, 1]
        be.signal_call(1)
        deadline = time.monotonic() + WAIT
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert seen == [1]
        be.signal_call(0)
        be.signal_call(0)  # two writes may merge into one wakeup: one or two events, queue 0
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[0] == 1 and set(seen[1:]) == {0}


def test_reset_stops_each_ring_and_waits_for_requests_in_flight() -> None:
    with fake_device() as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        backend.serve(0, device)
        drv = _rng(lb)
        assert drv.read(16) == b"\x5a" * 16
        be.hold_completions = True  # the back end takes the next request but answers late
        be.release_after_stop = 0.2
        drv.vq.add((), (8,), "late")
        entry = lb.device(0)
        assert entry is not None
        entry.transport.notify(drv.vq)
        deadline = time.monotonic() + WAIT
        while not be.rings[0].held and time.monotonic() < deadline:
            time.sleep(0.005)
        assert isinstance(drv.vq, DriverQueue)  # vhost-user rings are split rings
        used_idx = drv.vq.layout.used_idx
        region = lb.region
        device.reset()  # what status 0 does: ENABLE 0, GET_VRING_BASE, then the drain
        # GET_VRING_BASE said 2 requests were taken; reset returned only once both were used
        assert ("GET_VRING_BASE", (0, 2)) in be.log
        assert region.read_u16(used_idx) == 2
        assert be.names()[-2:] == ["SET_VRING_ENABLE", "GET_VRING_BASE"]
        assert device.started_rings == []


def test_device_reset_then_reprobe_restarts_the_rings_at_zero() -> None:
    with fake_device() as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        backend.serve(0, device)
        drv = _rng(lb)
        drv.read(8)
        drv.transport.reset()
        assert device.started_rings == []
        drv.probe()
        assert drv.read(8) == b"\x5a" * 8
        bases = [v for name, v in be.log if name == "SET_VRING_BASE"]
        assert bases == [(0, 0), (0, 0)]


# --- the back end going away ------------------------------------------------------------------


def test_backend_closing_its_socket_fails_the_device_visibly_and_the_bus_goes_on() -> None:
    with fake_device() as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        gone: list[str] = []
        device.on_disconnect.append(gone.append)
        backend.serve(0, device)
        drv = _rng(lb)
        assert drv.read(8)
        be.close()
        deadline = time.monotonic() + WAIT
        while not gone and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone and "closed its socket" in gone[0]
        entry = lb.device(0)
        assert entry is not None
        assert entry.transport.engine.status & C.Status.DEVICE_NEEDS_RESET  # via EVENT_CONFIG
        assert entry.transport.get_status() & C.Status.DEVICE_NEEDS_RESET
        entry.transport.reset()  # the reset itself completes ...
        assert isinstance(entry.driver, RngDriver)
        with pytest.raises(VirtioMsgError):
            entry.driver.probe()  # ... but FEATURES_OK is refused: the device cannot work
        backend.serve(1, RngDevice(seed=1))  # the bus and other devices carry on
        assert len(_rng(lb, 1).read(16)) == 16


def test_unsolicited_bytes_from_the_backend_fail_the_device() -> None:
    with fake_device() as (device, be), _bus() as lb:
        _lb, backend, _ch = loopback_pair(lb)
        gone: list[str] = []
        device.on_disconnect.append(gone.append)
        be.unsolicited_after = Request.SET_VRING_ENABLE
        backend.serve(0, device)
        deadline = time.monotonic() + WAIT
        while not gone and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone and "nobody asked for" in gone[0]


def test_a_failure_at_driver_ok_is_reported_at_once_not_as_a_timeout() -> None:
    with fake_device() as (device, be), _bus() as lb:
        be.nack.add(Request.SET_MEM_TABLE)
        _lb, backend, _ch = loopback_pair(lb)
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None
        assert entry.error is None  # DRIVER_OK was answered: the probe did not time out
        assert entry.transport.get_status() & C.Status.DEVICE_NEEDS_RESET
        assert device.transport is not None and "SET_MEM_TABLE" in (
            device.transport.last_error or ""
        )
        assert device.connected  # a refusal, not a broken connection


def test_peer_pid_is_the_other_end() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert VhostUserFrontend(a).peer_pid() == os.getpid()
    finally:
        a.close()
        b.close()
