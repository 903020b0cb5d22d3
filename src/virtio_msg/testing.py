"""In-memory pieces for testing devices and drivers (STYLE 9: ship the fakes).

:class:`EnginePair` runs a driver engine against a device transport back to
back, through the real wire encoding of either profile, and records a trace
of every message both ways.  :func:`make_bus` builds a loopback bus with an
in-process backend.  Users test their own device models the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from virtio_msg.bus import Backend, InProcessChannel, LoopbackBus, loopback_pair
from virtio_msg.memory import DmaPool, Region
from virtio_msg.transport.device import DeviceModel, DeviceTransport
from virtio_msg.transport.engine import DriverEngine, Proc, run_sync
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message
from virtio_msg.wire.translate import WireAdapter

T = TypeVar("T")


@dataclass
class EnginePair:
    """A driver engine and a device transport joined through the wire codec.

    Every request is encoded and decoded in the bus profile on the way in and
    the way out, so linux-rfc1 runs go through the seed's real layouts.
    ``trace`` holds (direction, message) pairs: "req", "resp", "event".
    """

    model: DeviceModel
    params: BusParams = field(default_factory=BusParams)
    dev_num: int = 0
    region_size: int = 1 << 20
    async_reset_polls: int = 0

    def __post_init__(self) -> None:
        """Create the region, pool, engines and the wire adapter."""
        self.region = Region(self.region_size)
        self.pool = DmaPool(self.region)
        self.adapter = WireAdapter(self.params.profile, self.params.max_size)
        self.events: list[Message] = []
        self.trace: list[tuple[str, Message]] = []
        self.device = DeviceTransport(
            self.model, self.region, dev_num=self.dev_num, params=self.params,
            emit=self._emit, async_reset_polls=self.async_reset_polls,
        )
        self.driver = DriverEngine(self.dev_num, self.params)

    def _wire(self, msg: Message) -> Message:
        return self.adapter.decode(self.adapter.encode(msg))

    def _emit(self, msg: Message) -> None:
        msg = self._wire(msg)
        self.events.append(msg)
        self.trace.append(("event", msg))

    def send(self, msg: Message) -> Message | None:
        """Deliver one message to the device (through the wire); return its response."""
        msg = self._wire(msg)
        self.trace.append(("req", msg))
        resp = self.device.handle(msg)
        if resp is None:
            return None
        resp = self._wire(resp)
        self.trace.append(("resp", resp))
        return resp

    def answer(self, msg: Message) -> Message:
        """Like :meth:`send`, but a missing response is an error (for run_sync)."""
        resp = self.send(msg)
        if resp is None:
            raise AssertionError(f"device sent no response to {msg!r}")
        return resp

    def run(self, proc: Proc[T]) -> T:
        """Run a driver procedure to completion against the device."""
        return run_sync(proc, self.answer)

    def requests(self) -> list[Message]:
        """The requests sent so far, in order."""
        return [m for d, m in self.trace if d == "req"]

    def close(self) -> None:
        """Release the region."""
        self.pool.close()
        self.region.close()


def make_bus(
    params: BusParams | None = None, *, size: int = 1 << 20, backend_view: str = "shared"
) -> tuple[LoopbackBus, Backend, InProcessChannel]:
    """A loopback bus with an in-process backend attached (close the bus when done)."""
    return loopback_pair(LoopbackBus(params, size=size), backend_view=backend_view)


__all__ = ["EnginePair", "make_bus"]
