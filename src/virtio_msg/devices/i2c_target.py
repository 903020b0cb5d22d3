"""The I2C target protocol: what a device on a virtio-i2c bus implements.

:class:`I2CTarget` is the interface between the virtio-i2c controller model
(:mod:`virtio_msg.devices.i2c`) and the target models on its bus, such as the
DS1338 clock (:mod:`virtio_msg.devices.ds1338`).  It lives on its own so that
both sides import it and neither imports the other's internals.
"""

from __future__ import annotations

__all__ = ["I2CTarget"]


class I2CTarget:
    """Base class of I2C target (slave) models on a virtio-i2c bus.

    The device calls :meth:`start` for every START or repeated START
    addressed to the target, then :meth:`write` or :meth:`read` with the
    message's bytes (nothing for a zero-length message), and :meth:`stop`
    once when the transaction ends.  Return False from :meth:`start` or
    :meth:`write` to NACK.  Calls are serialised by the device.
    """

    def start(self, read: bool) -> bool:
        """A START (or repeated START) for a read or a write; False NACKs the address."""
        return True

    def write(self, data: bytes) -> bool:
        """The controller writes ``data``; False NACKs."""
        return True

    def read(self, length: int) -> bytes:
        """The controller reads ``length`` bytes; return exactly that many."""
        return bytes(length)

    def stop(self) -> None:
        """STOP: the transaction is over."""
