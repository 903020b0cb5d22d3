"""The device side of the loopback bus: a backend serving device models.

A :class:`Backend` owns one :class:`~virtio_msg.transport.device.DeviceTransport`
per device number it serves, all on one view of the bus's shared region.  It
takes encoded messages from its channel (:meth:`Backend.deliver`), validates
them like any other peer data, and sends back responses and device events
through a :class:`BusPort`.  The same object serves the in-process channel and
the socket channel; only the port differs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from virtio_msg.errors import MalformedMessage, VirtioMsgError
from virtio_msg.memory import Region
from virtio_msg.transport.device import DeviceModel, DeviceTransport
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

log = logging.getLogger(__name__)


class BusPort(Protocol):
    """What a backend can ask of the bus it serves."""

    def send(self, data: bytes) -> None:
        """Send one encoded response or event to the bus."""

    def add(self, dev_num: int) -> None:
        """ADD a device number (the bus probes it; keep serving meanwhile)."""

    def remove(self, dev_num: int) -> None:
        """REMOVE a device number."""


class Backend:
    """Serves device models on one bus (device side of the loopback)."""

    def __init__(
        self,
        region: Region,
        params: BusParams | None = None,
        *,
        kernel_compat: bool = False,
        answer_kicks_first: bool = True,
    ) -> None:
        """Use ``region`` (this process's view of the bus region) and the bus parameters.

        ``kernel_compat`` (linux-rfc1 only) accepts the seed kernel's wrong
        ``msg_size`` values (:mod:`virtio_msg.wire.compat`).
        ``answer_kicks_first`` (linux-rfc1): answer a kick before processing the
        queue (the project's own buses, where the processing's events reach the
        driver at once), or after it (a real kernel, whose drivers may poll the
        used ring the moment the kick returns, without letting this process run).
        """
        self.region = region
        self.answer_kicks_first = answer_kicks_first
        self.params = params or BusParams()
        self.adapter = WireAdapter(
            self.params.profile, self.params.max_size, kernel_compat=kernel_compat
        )
        self._rfc1 = self.adapter.rfc1
        self._encode = self.adapter.encode
        self._decode = self.adapter.decode
        self.port: BusPort | None = None
        self.devices: dict[int, DeviceTransport] = {}
        self.dropped: Counter[str] = Counter()

    def attach(self, port: BusPort) -> None:
        """Connect to the bus through ``port``."""
        self.port = port

    def serve(
        self, dev_num: int, model: DeviceModel, *, add: bool = True, async_reset_polls: int = 0
    ) -> DeviceTransport:
        """Serve ``model`` as device ``dev_num``; ADD it to the bus unless ``add`` is False."""
        if dev_num in self.devices:
            raise ValueError(f"device {dev_num} is already served by this backend")
        transport = DeviceTransport(
            model,
            self.region,
            dev_num=dev_num,
            params=self.params,
            emit=self._emitter(),
            async_reset_polls=async_reset_polls,
        )
        self.devices[dev_num] = transport
        if add:
            if self.port is None:
                del self.devices[dev_num]
                raise VirtioMsgError("backend is not attached to a bus")
            try:
                self.port.add(dev_num)
            except BaseException:
                del self.devices[dev_num]
                raise
        return transport

    def withdraw(self, dev_num: int) -> None:
        """REMOVE ``dev_num`` from the bus and stop serving it."""
        transport = self.devices.get(dev_num)
        if transport is None:
            raise ValueError(f"device {dev_num} is not served by this backend")
        try:
            if self.port is not None:
                self.port.remove(dev_num)
        finally:
            self.devices.pop(dev_num, None)
            transport.model.reset()

    def _emitter(self) -> Callable[[Message], None]:
        def emit(msg: Message) -> None:
            port = self.port
            if port is None:
                self.dropped["event-without-bus"] += 1
                return
            port.send(self._encode(msg))

        return emit

    def deliver(self, data: bytes | bytearray | memoryview) -> None:
        """Take one message from the bus; answer it if it is a valid request."""
        try:
            msg = self._decode(data)
        except MalformedMessage as exc:
            self.dropped["malformed"] += 1  # DEV-21: discarded without any traffic
            log.debug("backend: dropped malformed message: %s", exc)
            return
        transport = self.devices.get(msg[-2])
        if transport is None:
            self.dropped["unknown-device"] += 1
            return
        if self._rfc1 and type(msg) is S.EventAvail:
            self._kick(transport, msg)
            return
        resp = transport.handle(msg)
        if resp is not None:
            port = self.port
            if port is not None:
                port.send(self._encode(resp))

    def _kick(self, transport: DeviceTransport, msg: S.EventAvail) -> None:
        """A linux-rfc1 kick: processed, and answered (the seed answers every message).

        The seed's bus waits for an answer to every message, kicks included
        (linux-rfc1.md 4.1).  On the project's own buses the answer goes
        first: a kick the processing causes (a driver re-posting buffers from
        its used-buffer callback) must not overtake it.  A real kernel
        (``answer_kicks_first`` False) gets it after the processing: the used
        ring is written before the kick returns; virtio_console polls it right
        after the kick with a spinlock held, and on one CPU this process would
        never run again (docs/kernel.md).
        """
        ack = R.EventAvailResp(dev_num=msg.dev_num)
        if self.answer_kicks_first and self.port is not None:
            self.port.send(self._encode(ack))
        resp = transport.handle(msg)
        if resp is not None and self.port is not None:
            self.port.send(self._encode(resp))
        if not self.answer_kicks_first and self.port is not None:
            self.port.send(self._encode(ack))


__all__ = ["Backend", "BusPort"]
