"""The backend library against a misbehaving bus: accounting, limits and closing.

Regression tests for what ``fuzz/hostile_bus.py`` found: an unexpected bus
message was counted twice in ``BackendClient.received``; a request whose
answer could not go out because the connection was closing escaped the
receive loop as an error with a traceback; the bus side's ``deliver`` failed
on a datagram shorter than two bytes.  Also: the malformed-datagram limit
is the backend's to choose (DEV-21: a malformed message is discarded).
"""

from __future__ import annotations

import logging

import pytest
from sockbus_helpers import WAIT, bus_harness

from virtio_msg.bus.client import connect
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_dev_21_unexpected_bus_message_is_counted_once_as_malformed(profile: str) -> None:
    with bus_harness(BusParams(profile, timeout_ms=1000)) as h, connect(h.path) as c:
        channel = h.server.channels()[0]
        channel.deliver(WireAdapter(profile).encode(S.EventDevice(7, 1)))
        h.wait_for(lambda: c.malformed == 1, "the backend to drop it")
        assert c.received == {"malformed": 1}
        assert c.received.total() == channel.sent == 1  # every datagram once, none lost
        assert c.connected


def test_malformed_limit_is_the_backends_choice() -> None:
    with bus_harness() as h, connect(h.path, max_malformed=3) as c:
        channel = h.server.channels()[0]
        for _ in range(3):
            channel.deliver(b"\x07" * 12)  # msg_size does not match: malformed
        h.wait_for(lambda: c.malformed == 3, "the backend to count them")
        assert c.connected  # at the limit, not past it
        channel.deliver(b"\x07" * 12)
        assert c.wait(WAIT) and "4 malformed messages" in (c.reason or "")


def test_one_byte_datagram_from_the_bus_is_dropped_and_counted() -> None:
    with bus_harness() as h, connect(h.path) as c:
        channel = h.server.channels()[0]
        channel.deliver(b"\x00")  # once an IndexError in the bus side's deliver
        h.wait_for(lambda: c.malformed == 1, "the backend to count it")
        assert c.connected


def test_request_whose_answer_cannot_go_out_while_closing_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with bus_harness() as h:
        c = connect(h.path)
        c.serve(0, RngDevice())
        c.close()
        request = c.backend.adapter.encode(S.GetDeviceStatus(dev_num=0, token=1))
        before = c.received["transport"]
        with caplog.at_level(logging.ERROR, logger="virtio_msg"):
            # what the receive loop does with a request that was already read when the
            # connection began closing (the answer's send raises BusError)
            c._dispatch(request, 0)
        assert not caplog.records
        assert c.received["transport"] == before + 1  # taken and counted, answer not sent
