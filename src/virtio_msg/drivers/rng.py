"""virtio-rng driver: read N random bytes from the device."""

from __future__ import annotations

from typing import ClassVar

from virtio_msg.drivers.base import Driver
from virtio_msg.errors import TransportError
from virtio_msg.spec import DeviceId
from virtio_msg.virtqueue import DriverRing

MAX_REQUEST = 64 * 1024
"""Largest single buffer posted (well under the pool's 256 KiB mapping cap)."""


class RngDriver(Driver):
    """Driver for the entropy device (device id 4): one request queue."""

    device_id: ClassVar[int] = DeviceId.ENTROPY
    name: ClassVar[str] = "rng"

    def setup(self) -> None:
        """One queue, no config."""
        (self.vq,) = self.transport.find_vqs(1)

    def read(self, n: int) -> bytes:
        """Return exactly ``n`` bytes from the device (several requests if needed)."""
        if n < 0:
            raise ValueError("cannot read a negative number of bytes")
        out = bytearray()
        while len(out) < n:
            want = min(n - len(out), MAX_REQUEST)
            out += self._request(want)
        return bytes(out)

    def _request(self, size: int) -> bytes:
        self.transport.check()
        vq: DriverRing = self.vq
        token = object()
        vq.add((), (size,), token)
        self.transport.notify(vq)
        done: list[tuple[object, bytes]] = self.transport.wait_until(vq.get_used)
        for tok, data in done:
            if tok is token:
                if not data:
                    raise TransportError("protocol", "rng device returned no bytes")
                return data
        raise TransportError("protocol", "rng device completed an unknown buffer")

    def selftest(self) -> dict[str, object]:
        """Read 64 bytes and report them (hex) with a crude entropy check."""
        data = self.read(64)
        return {"bytes": len(data), "sample": data[:16].hex(), "distinct": len(set(data))}


__all__ = ["RngDriver"]
