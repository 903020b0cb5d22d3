"""The virtio-net driver against a Python echo device (no DPDK needed).

The device model here echoes every transmitted frame back with source and
destination MAC swapped, like testpmd's macswap, and can misbehave on demand.
"""

from __future__ import annotations

import struct

import pytest

import virtio_msg.spec as C
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.drivers.net import (
    MAX_FRAME,
    NET_HDR,
    RX_BUFFER_SIZE,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    NetDriver,
    NetError,
    format_mac,
)
from virtio_msg.spec import DeviceId
from virtio_msg.transport.device import DeviceModel
from virtio_msg.transport.params import BusParams
from virtio_msg.virtqueue import DeviceRing

MAC = bytes.fromhex("52540000aa01")
PEER = bytes.fromhex("020000000002")


class EchoNet(DeviceModel):
    """virtio-net device: TX frames come back on RX with the MACs swapped."""

    device_id = DeviceId.NET
    name = "echo-net"

    def __init__(self, *, mac: bool = True, status: bool = True, link_up: bool = True) -> None:
        features = (1 << VIRTIO_NET_F_MAC) * mac | (1 << VIRTIO_NET_F_STATUS) * status
        super().__init__(
            features=features,
            config=MAC + struct.pack("<HH", int(link_up), 1),
            num_queues=2,
            queue_max_size=256,
        )
        self.tx_headers: list[bytes] = []
        self.backlog: list[bytes] = []
        self.rx_len_override: int | None = None
        self.rx_num_buffers = 1

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """TX: take frames and echo them; RX: new buffers, deliver the backlog."""
        if index == 1:
            while (chain := queue.pop()) is not None:
                data = chain.read()
                self.tx_headers.append(data[: NET_HDR.size])
                frame = data[NET_HDR.size :]
                self.backlog.append(frame[6:12] + frame[0:6] + frame[12:])
                queue.add_used(chain.head, 0)
            self.notify_used(1)
        self._deliver()

    def _deliver(self) -> None:
        rx = self.queue(0)
        if rx is None:
            return
        delivered = False
        while self.backlog and (chain := rx.pop()) is not None:
            frame = self.backlog.pop(0)
            header = NET_HDR.pack(0, 0, 0, 0, 0, 0, self.rx_num_buffers)
            written = chain.write(header + frame)
            override = self.rx_len_override
            rx.add_used(chain.head, written if override is None else override)
            delivered = True
        if delivered:
            self.notify_used(0)


def _driver(device: EchoNet) -> tuple[LoopbackBus, NetDriver]:
    bus = LoopbackBus(BusParams(timeout_ms=3000), size=2 << 20, drivers={DeviceId.NET: NetDriver})
    bus, backend, _ch = loopback_pair(bus)
    backend.serve(0, device)
    entry = bus.device(0)
    assert entry is not None and entry.error is None, entry and entry.error
    assert isinstance(entry.driver, NetDriver)
    return bus, entry.driver


def _frame(drv: NetDriver, payload: bytes) -> bytes:
    return PEER + drv.mac + b"\x88\xb5" + payload


def test_mac_and_link_come_from_the_config_space() -> None:
    bus, drv = _driver(EchoNet(link_up=False))
    try:
        assert drv.mac == MAC and format_mac(drv.mac) == "52:54:00:00:aa:01"
        assert not drv.link_up
        assert drv.has(VIRTIO_NET_F_MAC) and drv.has(VIRTIO_NET_F_STATUS)
    finally:
        bus.close()


def test_without_the_mac_feature_the_driver_makes_up_a_local_unicast_mac() -> None:
    bus, drv = _driver(EchoNet(mac=False, status=False))
    try:
        assert drv.mac != MAC
        assert drv.mac[0] & 0x02 and not drv.mac[0] & 0x01  # locally administered, unicast
        assert drv.link_up  # no STATUS: the link counts as up
    finally:
        bus.close()


def test_frames_go_out_with_a_zero_12_byte_header_and_come_back() -> None:
    device = EchoNet()
    bus, drv = _driver(device)
    try:
        for i in range(300):  # more than the posted receive buffers: they are reposted
            payload = i.to_bytes(2, "big") * 30
            drv.send(_frame(drv, payload))
            assert drv.receive(2.0) == drv.mac + PEER + b"\x88\xb5" + payload
        assert set(device.tx_headers) == {bytes(12)}
        assert drv.sent == 300 and drv.received == 300 and not drv.errors
        assert drv.receive(0.05) is None  # nothing more came
    finally:
        bus.close()


def test_largest_frame_fits_one_receive_buffer() -> None:
    bus, drv = _driver(EchoNet())
    try:
        frame = _frame(drv, bytes(MAX_FRAME - 14))
        assert NET_HDR.size + len(frame) <= RX_BUFFER_SIZE
        drv.send(frame)
        assert drv.receive(2.0) == drv.mac + PEER + frame[12:]
        for bad in (b"", bytes(13), bytes(MAX_FRAME + 1)):
            with pytest.raises(ValueError):
                drv.send(bad)
    finally:
        bus.close()


@pytest.mark.parametrize(
    "override, num_buffers, reason", [(11, 1, "short"), (None, 2, "num_buffers")]
)
def test_impossible_receive_buffers_are_dropped_and_counted(
    override: int | None, num_buffers: int, reason: str
) -> None:
    device = EchoNet()
    bus, drv = _driver(device)
    try:
        device.rx_len_override = override
        device.rx_num_buffers = num_buffers
        drv.send(_frame(drv, bytes(46)))
        assert drv.receive(0.2) is None
        assert drv.errors[reason] == 1
        device.rx_len_override, device.rx_num_buffers = None, 1
        drv.send(_frame(drv, b"ok".ljust(46, b"\0")))
        assert drv.receive(2.0) is not None  # the driver carries on
    finally:
        bus.close()


def test_a_device_that_needs_reset_ends_the_wait_with_an_error() -> None:
    device = EchoNet()
    bus, drv = _driver(device)
    try:
        device.fail("test")
        with pytest.raises(NetError, match="needs a reset"):
            drv.receive(2.0)
        assert drv.transport.engine.status & C.Status.DEVICE_NEEDS_RESET
    finally:
        bus.close()


def test_selftest_reports_the_echo() -> None:
    bus, drv = _driver(EchoNet())
    try:
        report = drv.selftest()
        assert report == {"mac": "52:54:00:00:aa:01", "link": "up", "sent": 1, "echo": True}
    finally:
        bus.close()
