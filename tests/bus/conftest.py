"""Fixtures for loopback bus tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtio_msg.bus import Backend, LoopbackBus
from virtio_msg.testing import GatedChannel
from virtio_msg.transport import BusParams


@pytest.fixture(params=["spec", "linux-rfc1"])
def profile(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def gated(profile: str) -> Iterator[tuple[LoopbackBus, Backend, GatedChannel]]:
    bus = LoopbackBus(BusParams(profile, timeout_ms=200), size=1 << 20)
    backend = Backend(bus.region, bus.params)
    channel = GatedChannel(bus, backend)
    try:
        yield bus, backend, channel
    finally:
        bus.close()
