"""Packed rings through the transports: negotiation, forcing a kind, broken rings.

Conformance IDs: DEV-12/DEV-14/DEV-55 (a ring error sets DEVICE_NEEDS_RESET,
reported by a status-only EVENT_CONFIG, never an exception out of the
device), DRV-73 (notification data), BUS-51 (linux-rfc1 cannot carry
notification data, so it is never negotiated there).
"""

from __future__ import annotations

import pytest

import virtio_msg.spec as C
from virtio_msg.devices import RngDevice
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.testing import make_bus
from virtio_msg.transport.params import BusParams
from virtio_msg.virtqueue import (
    PACKED_DESC,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_NEXT,
    DriverQueue,
    PackedDriverQueue,
)


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
@pytest.mark.parametrize("ring", ["auto", "split", "packed"])
def test_ring_kind_is_negotiated_or_forced(profile: str, ring: str) -> None:
    bus, backend, _ = make_bus(BusParams(profile, timeout_ms=3000, ring=ring))
    try:
        backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        drv = entry.driver
        assert isinstance(drv, RngDriver)
        kind = PackedDriverQueue if ring != "split" else DriverQueue
        assert type(drv.vq) is kind
        assert len(drv.read(64)) == 64
        nd = drv.features >> C.VIRTIO_F_NOTIFICATION_DATA & 1
        assert nd == (profile == "spec")  # BUS-51
    finally:
        bus.close()


def test_forced_packed_refuses_a_device_without_packed_rings() -> None:
    bus, backend, _ = make_bus(BusParams(timeout_ms=3000, ring="packed"))
    try:
        backend.serve(0, RngDevice(ring_features=0))
        entry = bus.device(0)
        assert entry is not None
        assert entry.driver is None
        assert "RING_PACKED" in str(entry.error)
    finally:
        bus.close()


def test_ring_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="ring kind"):
        BusParams(ring="twisted")


def test_dev_55_broken_packed_ring_sets_needs_reset_without_raising() -> None:
    bus, backend, _ = make_bus(BusParams(timeout_ms=2000, ring="packed"))
    try:
        transport = backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        drv = entry.driver
        assert isinstance(drv, RngDriver)
        vq = drv.vq
        assert isinstance(vq, PackedDriverQueue)
        region = bus.region
        # The next descriptor chains into one the driver never made available.
        pos = vq.notification_data & 0x7FFF
        wrap = vq.notification_data >> 31
        flags = (VIRTQ_DESC_F_AVAIL if wrap else 1 << 15) | VIRTQ_DESC_F_NEXT
        region.pack(PACKED_DESC, vq.layout.descriptor(pos), region.base, 16, 0, flags)
        nxt = (pos + 1) % vq.size
        region.pack(PACKED_DESC, vq.layout.descriptor(nxt), region.base, 16, 0, 0)
        drv.transport._send_event(drv.transport.engine.event_avail(0, vq.notification_data))
        assert transport.status & C.Status.DEVICE_NEEDS_RESET
        assert "not available" in (transport.last_error or "")
        assert drv.transport.needs_reset  # the status-only EVENT_CONFIG reached the driver
    finally:
        bus.close()


def test_drv_73_lying_notification_data_sets_needs_reset() -> None:
    bus, backend, _ = make_bus(BusParams(timeout_ms=2000, ring="split"))
    try:
        transport = backend.serve(0, RngDevice())
        entry = bus.device(0)
        assert entry is not None and entry.error is None
        drv = entry.driver
        assert isinstance(drv, RngDriver)
        assert drv.features >> C.VIRTIO_F_NOTIFICATION_DATA & 1
        # EVENT_AVAIL claims 5 more chains than avail.idx shows.
        bogus = (drv.vq.notification_data + 5) & 0xFFFF
        drv.transport._send_event(drv.transport.engine.event_avail(0, bogus))
        assert transport.status & C.Status.DEVICE_NEEDS_RESET
        assert "notification" in (transport.last_error or "")
    finally:
        bus.close()
