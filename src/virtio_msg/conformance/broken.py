"""Deliberately broken device sides, one defect each, for the tool's self-test.

Each :data:`DEFECTS` entry names one defect and the scenarios that must catch
it.  :class:`BrokenBackend` is an ordinary
:class:`~virtio_msg.bus.backend.Backend` with that one defect: it answers
frames it should drop, loses the token, accepts FEATURES_OK for features it
never offered, writes a byte outside the rings whenever it processes a queue,
or sends no response to a SET_VQUEUE whose rings it refuses.  The project's
test suite runs the conformance tool against each and requires exactly the
listed scenarios to fail.
"""

from __future__ import annotations

from typing import Final

import virtio_msg.spec as C
from virtio_msg.bus.backend import Backend, BusPort
from virtio_msg.errors import MalformedMessage
from virtio_msg.transport.device import DeviceModel, DeviceTransport
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

_QUEUE_HOSTILE: Final = frozenset({
    "io-after-driver-ok", "hostile-descriptor-loop", "hostile-buffer-outside-region",
    "hostile-avail-index-jump",
})

DEFECTS: Final[dict[str, tuple[str, frozenset[str] | None]]] = {
    "no-token-echo": ("responses carry token 0 instead of the request's", None),
    "answers-malformed": ("answers truncated or oversize frames of a known id",
                          frozenset({"malformed-dropped", "oversize-dropped"})),
    "features-ok-unoffered": ("keeps FEATURES_OK although unoffered bits were selected",
                              frozenset({"features-ok-refusal"})),
    "writes-outside-rings": ("writes a byte at the region's end whenever it processes a queue",
                             _QUEUE_HOSTILE),
    "silent-bad-rings": ("sends no response to a SET_VQUEUE whose rings it refuses",
                         frozenset({"hostile-bad-rings"})),
}
"""defect name -> (what is wrong, scenarios that must fail; None: every scenario that
sends a request, i.e. all of them in the spec profile)."""


class _BrokenTransport(DeviceTransport):
    defect = ""

    def _accept_features(self) -> bool:
        ok = super()._accept_features()
        if not ok and self.defect == "features-ok-unoffered":
            self.negotiated_features = self._driver_selected() & self.model.offered_features
            return True
        return ok

    def _process(self, index: int, q: object) -> None:
        if self.defect == "writes-outside-rings":
            end = self.region.base + self.region.size - 1
            self.region.write(end, bytes([(self.region.read(end, 1)[0] + 1) & 0xFF or 1]))
        super()._process(index, q)  # type: ignore[arg-type]

    def handle(self, msg: Message) -> Message | None:
        if self.defect == "silent-bad-rings" and type(msg) is S.SetVqueue:
            before = self.last_error
            resp = super().handle(msg)
            if self.last_error != before and "refused" in (self.last_error or ""):
                return None
            return resp
        return super().handle(msg)


class _TokenLosingPort:
    def __init__(self, port: BusPort, header_size: int) -> None:
        self.port = port
        self.token_at = header_size == 8

    def send(self, data: bytes) -> None:
        if self.token_at and data[0] & C.TYPE_RESPONSE:
            data = data[:4] + b"\0\0" + data[6:]
        self.port.send(data)

    def add(self, dev_num: int) -> None:
        self.port.add(dev_num)

    def remove(self, dev_num: int) -> None:
        self.port.remove(dev_num)


class BrokenBackend(Backend):
    """A backend with exactly one defect from :data:`DEFECTS`."""

    def __init__(self, defect: str, *args: object, **kwargs: object) -> None:
        """Create the backend (arguments as :class:`Backend`) with ``defect``."""
        if defect not in DEFECTS:
            raise ValueError(f"unknown defect {defect!r} (known: {', '.join(DEFECTS)})")
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.defect = defect

    def attach(self, port: BusPort) -> None:
        """Attach; the token-losing defect rewrites what goes out."""
        if self.defect == "no-token-echo":
            port = _TokenLosingPort(port, self.params.header_size)
        super().attach(port)

    def serve(self, dev_num: int, model: DeviceModel, *, add: bool = True,
              async_reset_polls: int = 0) -> DeviceTransport:
        """Serve ``model`` through the broken transport."""
        cls = type("BrokenTransport", (_BrokenTransport,), {"defect": self.defect})
        transport: DeviceTransport = cls(model, self.region, dev_num=dev_num, params=self.params,
                        emit=self._emitter(), async_reset_polls=async_reset_polls)
        self.devices[dev_num] = transport
        if add and self.port is not None:
            self.port.add(dev_num)
        return transport

    def deliver(self, data: bytes | bytearray | memoryview) -> None:
        """Deliver; the malformed-answering defect replies to bad frames of a known id."""
        if self.defect == "answers-malformed":
            try:
                self.adapter.decode(data)
            except MalformedMessage:
                hs = self.params.header_size
                if len(data) >= 4 and data[1] in (C.TransportMsg.GET_CONFIG,
                                                  C.TransportMsg.GET_DEVICE_STATUS) \
                        and not data[0] & C.TYPE_RESPONSE and self.port is not None:
                    dev = data[2] | data[3] << 8
                    token = data[4] | data[5] << 8 if hs == 8 and len(data) >= 6 else 0
                    self.port.send(self.adapter.encode(S.GetDeviceStatusResp(
                        0, dev_num=dev, token=token)))
                return
        super().deliver(data)


__all__ = ["DEFECTS", "BrokenBackend"]
