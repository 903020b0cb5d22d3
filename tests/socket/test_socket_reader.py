"""The bus side's reader thread and the leaders that read the socket in its place.

A driver thread that sends a request reads its own response (the *leader*); the
connection's reader thread watches the socket with a one-shot epoll registration
that only the reader re-arms, so a leader makes no epoll system call.  These tests
check that, and that whatever arrives after the last leader stopped reading (bus
messages, events, responses for other threads) is still read by the reader.
"""

from __future__ import annotations

import select
import threading
from typing import Any

import pytest
from sockbus_helpers import WAIT, bus_harness

from virtio_msg.bus.client import connect
from virtio_msg.bus.socket import SocketLimits
from virtio_msg.devices.rng import RngDevice
from virtio_msg.transport.params import BusParams


class _CountingEpoll:
    """Wraps the channel's epoll object and records which thread modified it."""

    def __init__(self, inner: select.epoll) -> None:
        self.inner = inner
        self.modified_by: list[int] = []

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        return self.inner.poll(timeout)

    def modify(self, fd: int, mask: int) -> None:
        self.modified_by.append(threading.get_ident())
        self.inner.modify(fd, mask)

    def register(self, fd: int, mask: int) -> None:
        self.inner.register(fd, mask)

    def close(self) -> None:
        self.inner.close()


def test_a_leader_reads_its_response_without_an_epoll_call() -> None:
    with bus_harness(BusParams(timeout_ms=3000), SocketLimits(lead_window_ms=10.0)) as h, \
            connect(h.path) as c:
        c.serve(0, RngDevice())
        channel = h.server.channels()[0]
        entry = h.bus.device(0)
        assert entry is not None and entry.driver is not None
        spy = _CountingEpoll(channel._epoll)
        channel._epoll = spy  # type: ignore[assignment]
        responses = channel.responses_received
        for _ in range(200):
            assert entry.transport.get_status() != 0
        for _ in range(20):
            assert channel.ping() > 0
        me = threading.get_ident()
        assert me not in spy.modified_by
        assert channel.responses_received == responses + 220  # 200 responses, 20 PING echoes
        assert channel.received["bus"] >= 20


def test_what_arrives_after_the_last_leader_is_read_by_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BUS-60: the backend's PINGs and an event sent while no one leads are still handled."""
    with bus_harness(BusParams(timeout_ms=3000), SocketLimits(lead_window_ms=10.0)) as h, \
            connect(h.path) as c:
        device = c.serve(0, RngDevice())
        channel = h.server.channels()[0]
        entry = h.bus.device(0)
        assert entry is not None and entry.driver is not None
        for _ in range(30):
            for _ in range(100):  # a burst of leaders: the reader parks behind them
                entry.transport.get_status()
            assert c.ping() > 0  # answered by the bus's reader, nobody leads now
        events = channel.received["event"]
        seen = threading.Event()
        original = h.bus.note_event

        def note(msg: Any, source: Any) -> None:
            original(msg, source)
            seen.set()

        monkeypatch.setattr(h.bus, "note_event", note)
        for _ in range(100):
            entry.transport.get_status()
        device.needs_reset("test: an event after the last response")
        assert seen.wait(WAIT)
        assert channel.received["event"] == events + 1


def test_drv37_config_event_is_known_before_the_response_after_it_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DRV-37: an EVENT_CONFIG read before a response marks the config stale by then.

    The event pump is held, so the event's dispatch has not happened when the
    response completes the request: the channel's reader (or the leader) must
    tell the driver transport as it validates the event.
    """
    with bus_harness(BusParams(timeout_ms=3000), SocketLimits(lead_window_ms=10.0)) as h, \
            connect(h.path) as c:
        device = c.serve(0, RngDevice())
        entry = h.bus.device(0)
        assert entry is not None and entry.driver is not None
        entry.transport.get_status()
        engine = entry.transport.engine
        assert not engine.config_stale
        held: list[tuple[Any, bytes]] = []
        dispatch = h.server.queue_event
        monkeypatch.setattr(h.server, "queue_event", lambda ch, data: held.append((ch, data)))
        device.needs_reset("test: config changed")  # EVENT_CONFIG, sent before the request
        entry.transport.get_status()  # its response follows the event on the socket
        assert len(held) == 1
        assert engine.config_stale
        monkeypatch.undo()
        for ch, data in held:
            dispatch(ch, data)
