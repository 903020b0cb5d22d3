"""virtio-msg devices served by real vhost-user back ends (Debian's daemons).

qemu-storage-daemon (vhost-user-blk) is driven by our virtio-blk driver through
the loopback: what we write is in the image file, what the image holds we
read.  virtiofsd goes through the handshake, queue setup and real FUSE
requests.  DPDK testpmd (net_vhost, macswap) echoes frames to the virtio-net
driver.  Each test starts its daemon in a tmp dir and always stops it.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import threading
from pathlib import Path

import pytest
from vhost_daemons import (
    FsProbeDriver,
    MiB,
    bus,
    dpdk_testpmd,
    make_image,
    storage_daemon,
    virtiofsd,
)

import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus
from virtio_msg.devices.rng import RngDevice
from virtio_msg.drivers.blk import BlkDriver, BlkOp
from virtio_msg.drivers.net import NetDriver
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import VirtioMsgError
from virtio_msg.transport.device import DeviceModel
from virtio_msg.vhost import VhostUserDevice
from virtio_msg.vhost.profiles import VIRTIO_NET_F_MAC
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

PATTERN = bytes(range(256)) * 16  # 4 KiB, each sector different within the block
WAIT = 15.0


def _used_events(device: DeviceModel) -> list[int]:
    """Record the queue index of every EVENT_USED the device emits from now on."""
    transport = device.transport
    assert transport is not None
    seen: list[int] = []
    emit = transport.emit

    def spy(msg: Message) -> None:
        if type(msg) is S.EventUsed:
            seen.append(msg.vq_index)
        emit(msg)

    transport.emit = spy
    return seen


def _blk(entry_driver: object) -> BlkDriver:
    assert isinstance(entry_driver, BlkDriver), entry_driver
    return entry_driver


# --- qemu-storage-daemon ----------------------------------------------------------------------


def test_blk_reads_what_the_image_holds_and_writes_reach_the_image(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 8 * MiB, PATTERN)
    with storage_daemon(tmp_path, image) as qsd, bus() as (lb, backend):
        device = VhostUserDevice.connect(qsd.socket)  # type inferred: qemu-storage-daemon
        try:
            assert device.profile.name == "blk"
            backend.serve(0, device)
            entry = lb.device(0)
            assert entry is not None and entry.error is None, entry and entry.error
            drv = _blk(entry.driver)
            assert drv.size == 8 * MiB
            assert drv.get_id() == "vhost_user_blk"
            features = entry.transport.negotiated_features
            assert features >> C.VIRTIO_F_ACCESS_PLATFORM & 1  # the transport's, never sent on
            assert device.started_rings == [0]

            rng = random.Random(7)
            for _ in range(20):  # any alignment, straight from the file
                offset = rng.randrange(0, drv.size - 10000)
                length = rng.randrange(1, 10000)
                assert drv.read(offset, length) == image.read_bytes()[offset : offset + length]

            data = os.urandom(3 * 4096 + 123)
            drv.write(5 * 4096 + 7, data)  # unaligned: read-modify-write through the device
            drv.write_sectors(100, b"\xa5" * 4096)
            drv.flush()
            on_disk = image.read_bytes()
            assert on_disk[5 * 4096 + 7 : 5 * 4096 + 7 + len(data)] == data
            assert on_disk[100 * 512 : 100 * 512 + 4096] == b"\xa5" * 4096

            # 32 requests in flight at once; every one reads what the file holds.
            offsets = [rng.randrange(0, drv.size // 4096) * 4096 for _ in range(32)]
            ops = drv.execute([BlkOp.read_sectors(off // 512, 8) for off in offsets])
            assert [op.result for op in ops] == [on_disk[o : o + 4096] for o in offsets]
        finally:
            device.close()


def test_blk_each_queue_gets_its_own_event_used(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2 * MiB, PATTERN)
    with (
        storage_daemon(tmp_path, image, queues=2) as qsd,
        bus() as (lb, backend),
        VhostUserDevice.connect(qsd.socket, "blk") as device,
    ):
        assert device.num_queues == 2
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None
        drv = _blk(entry.driver)
        assert drv.num_queues == 2 and device.started_rings == [0, 1]
        seen = _used_events(device)
        # Settle queue 0 first: a completion of the probe's requests may still be on
        # its way (the back end's call eventfd is read by the watcher thread).
        q0 = drv.vqs[0]
        q0.add([struct.pack("<IIQ", 0, 0, 0)], [512, 1], object())  # READ sector 0
        entry.transport.notify(q0)
        assert entry.transport.wait_until(q0.get_used, WAIT)
        entry.transport.wait_until(lambda: 0 in seen, WAIT)
        seen.clear()
        vq = drv.vqs[1]
        token = object()
        vq.add([struct.pack("<IIQ", 0, 0, 3)], [512, 1], token)  # READ sector 3
        entry.transport.notify(vq)
        done = entry.transport.wait_until(vq.get_used, WAIT)
        assert [t for t, _ in done] == [token]
        assert done[0][1][:512] == image.read_bytes()[3 * 512 : 4 * 512]
        assert done[0][1][512] == 0  # VIRTIO_BLK_S_OK
        # The used ring is written before the event is sent: wait for the event.
        entry.transport.wait_until(lambda: bool(seen), WAIT)
        assert seen and set(seen) == {1}  # queue 1 only: no fan-out to every queue


def test_blk_reset_stops_the_rings_and_the_device_starts_again(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2 * MiB, PATTERN)
    with (
        storage_daemon(tmp_path, image) as qsd,
        bus() as (lb, backend),
        VhostUserDevice.connect(qsd.socket, "blk") as device,
    ):
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None
        drv = _blk(entry.driver)
        assert drv.read(0, 4096) == PATTERN
        entry.transport.reset()  # status 0: GET_VRING_BASE on every ring
        assert device.started_rings == []
        assert device.connected
        drv.probe()  # the whole init sequence again: rings start at index 0
        assert device.started_rings == [0]
        assert drv.read(4096, 4096) == PATTERN
        drv.write(0, b"again")
        drv.flush()
        assert image.read_bytes()[:5] == b"again"


def test_blk_ring_reset_restarts_one_ring(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2 * MiB, PATTERN)
    with (
        storage_daemon(tmp_path, image) as qsd,
        bus() as (lb, backend),
        VhostUserDevice.connect(qsd.socket, "blk") as device,
    ):
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None
        drv = _blk(entry.driver)
        assert entry.transport.has_feature(C.VIRTIO_F_RING_RESET)  # emulated here
        assert drv.read(0, 512) == PATTERN[:512]
        entry.transport.reset_vq(drv.vqs[0])  # RESET_VQUEUE: GET_VRING_BASE on ring 0
        assert device.started_rings == []
        drv.vqs = entry.transport.find_vqs(1)  # SET_VQUEUE again after DRIVER_OK
        assert drv.read(512, 512) == PATTERN[512:1024]  # first kick restarts the ring
        assert device.started_rings == [0]


def test_blk_config_writes_reach_the_backend_only_where_writable(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2 * MiB)
    with (
        storage_daemon(tmp_path, image) as qsd,
        bus() as (lb, backend),
        VhostUserDevice.connect(qsd.socket, "blk") as device,
    ):
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None
        t = entry.transport
        config = t.get_config(0, 60)  # the whole config in one GET_CONFIG
        assert int.from_bytes(config[:8], "little") == 2 * MiB // 512
        wce = config[32]
        assert t.set_config(32, bytes([wce ^ 1]))  # writeback: SET_CONFIG to the back end
        assert t.get_config(32, 1) == bytes([wce ^ 1])
        assert not t.set_config(0, bytes(8))  # capacity is read-only: refused here,
        assert device.connected  # never sent (libvhost-user would drop the connection)
        assert _blk(entry.driver).read(0, 512) == bytes(512)


def test_backend_killed_mid_io_fails_the_device_and_the_bus_carries_on(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 8 * MiB, PATTERN)
    with (
        storage_daemon(tmp_path, image) as qsd,
        bus() as (lb, backend),
        VhostUserDevice.connect(qsd.socket, "blk") as device,
    ):
        gone: list[str] = []
        device.on_disconnect.append(gone.append)
        backend.serve(0, device)
        backend.serve(1, RngDevice())
        entry = lb.device(0)
        assert entry is not None
        drv = _blk(entry.driver)
        errors: list[BaseException] = []
        started = threading.Event()

        def reader() -> None:
            rng = random.Random(1)
            try:
                while True:
                    ops = [BlkOp.read_sectors(rng.randrange(0, 2000) * 8, 8) for _ in range(16)]
                    drv.execute(ops)
                    started.set()
            except VirtioMsgError as exc:
                errors.append(exc)
                started.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        assert started.wait(WAIT)
        qsd.kill(signal.SIGKILL)
        thread.join(WAIT)
        assert not thread.is_alive(), "the driver hung after its back end died"
        assert errors, "the driver never saw an error"
        assert gone and "back end" in gone[0]
        assert not device.connected
        assert entry.transport.get_status() & C.Status.DEVICE_NEEDS_RESET
        with pytest.raises(VirtioMsgError):
            drv.read(0, 512)
        other = lb.device(1)  # the bus and the other device carry on
        assert other is not None and isinstance(other.driver, RngDriver)
        assert len(other.driver.read(32)) == 32


# --- virtiofsd --------------------------------------------------------------------------------


def test_virtiofsd_handshake_queues_and_fuse_requests(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_bytes(b"hello from virtiofsd")
    with (
        virtiofsd(tmp_path, share) as daemon,
        bus() as (lb, backend),
        VhostUserDevice.connect(daemon.socket, tag="vmsgfs") as device,
    ):
        assert device.profile.name == "fs"  # inferred from the daemon's name
        assert device.num_queues == 2  # high priority + one request queue
        backend.serve(0, device)
        entry = lb.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        drv = entry.driver
        assert isinstance(drv, FsProbeDriver)
        assert drv.config[:6] == b"vmsgfs" and drv.config[36:40] == (1).to_bytes(4, "little")
        assert device.started_rings == [0, 1]
        init = drv.fuse(26, 0, struct.pack("<IIII", 7, 31, 0, 0) + bytes(48))  # FUSE_INIT
        length, error, unique = struct.unpack_from("<IiQ", init)
        major = struct.unpack_from("<I", init, 16)[0]
        assert (length, error, unique, major) == (len(init), 0, 1, 7)
        entry_out = drv.fuse(1, 1, b"hello.txt\0", unique=2)  # FUSE_LOOKUP in the root
        assert struct.unpack_from("<IiQ", entry_out)[1:] == (0, 2)
        assert struct.unpack_from("<Q", entry_out, 16 + 48)[0] == 20  # attr.size


# --- DPDK testpmd ---------------------------------------------------------------------------

DPDK_ECHO = os.environ.get("VIRTIO_MSG_TEST_DPDK_ECHO", "1") == "1"
DPDK_ECHO_REASON = "disabled with VIRTIO_MSG_TEST_DPDK_ECHO=0"


def _net(lb: LoopbackBus) -> NetDriver:
    entry = lb.device(0)
    assert entry is not None and entry.error is None, entry and entry.error
    assert isinstance(entry.driver, NetDriver)
    return entry.driver


def test_testpmd_handshake_mac_and_queue_setup(tmp_path: Path) -> None:
    # No frames: after DRIVER_OK the driver writes nothing testpmd polls (see the echo test).
    with (
        dpdk_testpmd(tmp_path) as daemon,
        bus() as (lb, backend),
        VhostUserDevice.connect(daemon.socket, mac="52:54:00:12:34:56") as device,
    ):
        assert device.profile.name == "net"  # inferred: testpmd with a net_vhost port
        assert device.num_queues == 2
        backend.serve(0, device)
        drv = _net(lb)
        assert drv.transport.has_feature(VIRTIO_NET_F_MAC)
        assert drv.mac == bytes.fromhex("525400123456")  # from the config space we built
        assert drv.link_up
        assert device.started_rings == [0, 1]
        drv.transport.reset()  # GET_VRING_BASE on both rings; testpmd logs "vring base"
        assert device.started_rings == [] and device.connected
    log = daemon.log.read_text(errors="replace")
    assert "virtio is now ready for processing" in log  # testpmd accepted the rings
    assert "vring base idx:1" in log  # and our GET_VRING_BASE stopped them


@pytest.mark.skipif(not DPDK_ECHO, reason=DPDK_ECHO_REASON)
def test_testpmd_echoes_frames_to_the_net_driver(tmp_path: Path) -> None:
    with (
        dpdk_testpmd(tmp_path) as daemon,
        bus() as (lb, backend),
        VhostUserDevice.connect(daemon.socket, mac="52:54:00:12:34:56") as device,
    ):
        backend.serve(0, device)
        drv = _net(lb)
        peer = bytes.fromhex("020000000001")
        for i in range(200):
            payload = f"frame {i}".encode().ljust(46, b".")
            drv.send(peer + drv.mac + b"\x88\xb5" + payload)
            back = drv.receive(WAIT)
            assert back == drv.mac + peer + b"\x88\xb5" + payload  # MACs swapped by DPDK
        assert drv.errors == {}
