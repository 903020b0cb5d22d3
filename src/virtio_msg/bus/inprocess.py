"""The in-process channel: the backend object is attached to the bus directly.

No threads, no copies beyond the wire encoding: :meth:`deliver` calls the
backend, and the backend's port calls :meth:`LoopbackBus.receive`.  When the
bus has a capture (:attr:`LoopbackBus.capture`), both directions are
recorded before they are handed on.  A backend
that answers synchronously completes each request before ``deliver`` returns,
which makes every test deterministic; a backend may also answer later from
another thread (the bus waits, bounded by its timeout).

Without a capture, a connected channel checks nothing per message:
``deliver`` is the backend's bound ``deliver`` (no frame of the channel's
own) and ``send`` calls the bus's ``receive`` at once (a frame: a
``functools.partial`` would need ``channel`` as a keyword, which CPython
calls more slowly than a method).  :meth:`close` rebinds both to a method
that drops the message.
"""

from __future__ import annotations

from collections.abc import Callable

from virtio_msg.bus.backend import Backend
from virtio_msg.bus.capture import ChannelKind, ChannelTap
from virtio_msg.bus.loopback import LoopbackBus


class InProcessChannel:
    """Connects one :class:`Backend` to one :class:`LoopbackBus` in this process."""

    deliver: Callable[[bytes], None]
    """Channel (bus -> backend): hand a message to the backend (dropped once closed)."""
    send: Callable[[bytes], None]
    """BusPort (backend -> bus): hand a response or event to the bus (dropped once closed)."""

    def __init__(self, bus: LoopbackBus, backend: Backend) -> None:
        """Attach ``backend`` to ``bus`` (both directions)."""
        self.bus = bus
        self.backend = backend
        self.connected = True
        capture = bus.capture
        self.tap: ChannelTap | None = (
            capture.tap(ChannelKind.IN_PROCESS, bus.params.profile, bus.params.max_size)
            if capture is not None
            else None
        )
        """Where this channel records its messages (None: capture is off)."""
        if self.tap is None:  # the other side's entry points (see the module doc)
            self.deliver = backend.deliver
            self.send = self._send_direct
        else:
            self.deliver = self._deliver_recorded
            self.send = self._send_recorded
        bus.attach(self)
        backend.attach(self)

    def _deliver_recorded(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap.down(data)
        self.backend.deliver(data)

    def _send_direct(self, data: bytes) -> None:
        self.bus.receive(data, self)

    def _send_recorded(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap.up(data)
        self.bus.receive(data, self)

    @staticmethod
    def _drop(_data: bytes) -> None:
        """A closed channel: the message goes nowhere."""

    def close(self) -> None:
        """Disconnect: the bus forgets the backend's devices."""
        if self.connected:
            self.connected = False
            self.deliver = self.send = self._drop
            self.bus.detach(self)

    def add(self, dev_num: int) -> None:
        """ADD a device number on the bus."""
        self.bus.add_device(dev_num, self)

    def remove(self, dev_num: int) -> None:
        """REMOVE a device number from the bus."""
        self.bus.remove_device(dev_num)


def loopback_pair(
    bus: LoopbackBus | None = None, *, backend_view: str = "shared"
) -> tuple[LoopbackBus, Backend, InProcessChannel]:
    """Create (or use) a bus, a backend on it and the channel joining them.

    ``backend_view`` "shared" gives the backend the bus's Region object;
    "mapped" maps the region's memfd a second time, as another process would.
    """
    from virtio_msg.memory import Region

    bus = bus or LoopbackBus()
    region = bus.region
    if backend_view == "mapped":
        region = Region.from_fd(bus.region.fd, bus.region.base, bus.region.size)
    elif backend_view != "shared":
        raise ValueError(f"backend_view must be 'shared' or 'mapped', not {backend_view!r}")
    backend = Backend(region, bus.params)
    channel = InProcessChannel(bus, backend)
    return bus, backend, channel


__all__ = ["InProcessChannel", "loopback_pair"]
