"""virtio-net driver (driver side): send and receive Ethernet frames.

Strategy (after Linux ``virtio_net.c`` without offloads, the DMA API always on):

* Two queues: receive queue 0 and transmit queue 1 (one queue pair; MQ and the
  control queue are not negotiated).  Only VIRTIO_NET_F_MAC and
  VIRTIO_NET_F_STATUS are asked for: no checksum or segmentation offload, no
  mergeable receive buffers, so every frame fits one buffer.
* Every buffer starts with ``struct virtio_net_hdr`` -- 12 bytes, because
  VIRTIO_F_VERSION_1 always makes ``num_buffers`` part of it (§5.1.6).  On
  transmit the header is all zeros (no offload, ``num_buffers`` 0).
* Receive buffers are posted up front, each one device-writable buffer of
  :data:`RX_BUFFER_SIZE` bytes (header + the largest frame, §5.1.6.3.1), and
  each is posted again as soon as its frame is taken.
* The MAC address comes from the config space when VIRTIO_NET_F_MAC is
  negotiated (§5.1.5); otherwise the driver makes up a locally administered
  one.  The link state comes from ``status`` with VIRTIO_NET_F_STATUS, and is
  "up" without it.
* The device's answers are checked: a used length shorter than the header or
  longer than the buffer, or ``num_buffers`` other than 0/1 without
  MRG_RXBUF, drops the frame and counts it in :attr:`NetDriver.errors`.
  DEVICE_NEEDS_RESET from the device ends every wait with :class:`NetError`.

:meth:`NetDriver.send` returns once the device has taken the frame (bounded
wait); :meth:`NetDriver.receive` returns the next frame or None when none
arrived in time.  Public methods are serialised by one lock.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import Counter, deque
from typing import ClassVar, Final

import virtio_msg.spec as C
from virtio_msg.drivers.base import Driver
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.memory import PoolExhausted
from virtio_msg.spec import DeviceId
from virtio_msg.transport.driver import DriverTransport
from virtio_msg.virtqueue import DriverRing, QueueFull

VIRTIO_NET_F_MAC: Final = 5
VIRTIO_NET_F_MRG_RXBUF: Final = 15
VIRTIO_NET_F_STATUS: Final = 16
VIRTIO_NET_S_LINK_UP: Final = 1

NET_HDR: Final = struct.Struct("<BBHHHHH")
"""``virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
num_buffers -- 12 bytes with VIRTIO_F_VERSION_1."""
CONFIG: Final = struct.Struct("<6sH")
"""The start of ``virtio_net_config``: mac, status."""
ETH_HEADER: Final = 14
"""Destination, source, EtherType."""
MAX_FRAME: Final = 1518
"""Largest frame without segmentation offload: 1500-byte MTU, Ethernet and VLAN headers."""
RX_BUFFER_SIZE: Final = 2048
"""One receive buffer: the 12-byte header and the largest frame, one pool slot."""
RX_BUFFERS: Final = 64
"""Receive buffers kept posted at most (the pool is shared with every device)."""
TEST_ETHERTYPE: Final = 0x88B5
"""IEEE 802 local experimental EtherType, used by :meth:`NetDriver.selftest`."""
SELFTEST_WAIT: Final = 0.5
"""How long the self-test waits for its frame to come back, seconds."""
_NEEDS_RESET: Final = int(C.Status.DEVICE_NEEDS_RESET)


class NetError(VirtioMsgError):
    """A frame could not be sent or received (device gone, needs reset, bad frame)."""


def format_mac(mac: bytes) -> str:
    """6 bytes -> ``52:54:00:12:34:56``."""
    return ":".join(f"{b:02x}" for b in mac)


def _random_mac() -> bytes:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast, locally administered
    return bytes(raw)


class NetDriver(Driver):
    """Driver for the network device (device id 1); see the module docstring."""

    device_id: ClassVar[int] = DeviceId.NET
    name: ClassVar[str] = "net"
    device_features: ClassVar[int] = (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    rx_buffers: ClassVar[int] = RX_BUFFERS
    """Receive buffers to keep posted (capped by the ring size)."""

    def __init__(self, transport: DriverTransport, *, feature_mask: int = ~0) -> None:
        """Bind to ``transport``; nothing is read before :meth:`probe`."""
        super().__init__(transport, feature_mask=feature_mask)
        self._lock = threading.RLock()
        self.mac = b"\0" * 6
        self.rx: DriverRing | None = None
        self.tx: DriverRing | None = None
        self._frames: deque[bytes] = deque()
        self._tx_done: set[int] = set()
        self.sent = 0
        """Frames the device took."""
        self.received = 0
        """Frames received (including those still queued for :meth:`receive`)."""
        self.errors: Counter[str] = Counter()
        """Frames dropped, by reason."""

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Read MAC and status, set up RX (0) and TX (1), post receive buffers."""
        t = self.transport
        if self.has(VIRTIO_NET_F_MAC):
            size = t.get_device_info().config_size
            if size < 6:
                raise TransportError("protocol", f"net config of {size} bytes has no MAC")
            self.mac = bytes(t.get_config(0, 6))
        else:
            self.mac = _random_mac()
        self.rx, self.tx = t.find_vqs(2)
        self._post_rx()

    def has(self, bit: int) -> bool:
        """Whether device feature ``bit`` was negotiated."""
        return bool(self.features >> bit & 1)

    @property
    def link_up(self) -> bool:
        """The link state (VIRTIO_NET_F_STATUS), "up" if the device does not report it."""
        if not self.has(VIRTIO_NET_F_STATUS):
            return True
        status = int.from_bytes(self.transport.get_config(6, 2), "little")
        return bool(status & VIRTIO_NET_S_LINK_UP)

    def _post_rx(self) -> None:
        """Fill the receive queue up to ``rx_buffers`` buffers (as many as fit)."""
        rx = self.rx
        if rx is None:
            return
        want = min(self.rx_buffers, rx.size)
        added = False
        while rx.outstanding < want:
            try:
                rx.add((), (RX_BUFFER_SIZE,), "rx")
            except (QueueFull, PoolExhausted):
                break
            added = True
        if added:
            self.transport.notify(rx)

    def _queues(self) -> tuple[DriverRing, DriverRing]:
        """(rx, tx), after checking that the device can be used."""
        self.transport.check()
        if self.rx is None or self.tx is None:
            raise NetError("the net driver is not set up")
        if self.transport.engine.status & _NEEDS_RESET:
            raise NetError(f"device {self.transport.dev_num} needs a reset")
        return self.rx, self.tx

    # --- transmit ----------------------------------------------------------------------------

    def send(self, frame: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send one Ethernet frame (14..1518 bytes); return when the device took it."""
        data = bytes(frame)
        if not ETH_HEADER <= len(data) <= MAX_FRAME:
            raise ValueError(f"a frame has {ETH_HEADER}..{MAX_FRAME} bytes, not {len(data)}")
        with self._lock:
            _rx, tx = self._queues()
            self._reap_tx()
            token = object()
            try:
                tx.add((NET_HDR.pack(0, 0, 0, 0, 0, 0, 0) + data,), (), token)
            except (QueueFull, PoolExhausted) as exc:
                raise NetError(f"cannot queue the frame: {exc}") from exc
            self.transport.notify(tx)
            key = id(token)
            self.transport.wait_until(lambda: self._tx_taken(key, token), timeout)
            self._tx_done.discard(key)

    def _tx_taken(self, key: int, token: object) -> bool:
        if self.transport.engine.status & _NEEDS_RESET:
            raise NetError(f"device {self.transport.dev_num} needs a reset")
        self._reap_tx()
        return key in self._tx_done

    def _reap_tx(self) -> None:
        tx = self.tx
        if tx is None:
            return
        for token, _data in tx.get_used():
            self._tx_done.add(id(token))
            self.sent += 1

    # --- receive -----------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> bytes | None:
        """The next received frame (without the header), or None if none came in time."""
        with self._lock:
            if not self._frames:
                self._queues()
                try:
                    self.transport.wait_until(self._reap_rx, timeout)
                except TransportError as exc:
                    if exc.kind != "timeout":
                        raise
                self._post_rx()  # give the device its buffers back
            return self._frames.popleft() if self._frames else None

    def _reap_rx(self) -> bool:
        if self.transport.engine.status & _NEEDS_RESET:
            raise NetError(f"device {self.transport.dev_num} needs a reset")
        rx = self.rx
        if rx is None:
            return False
        for _token, data in rx.get_used():
            frame = self._parse_rx(data)
            if frame is not None:
                self._frames.append(frame)
                self.received += 1
        return bool(self._frames)

    def _parse_rx(self, data: bytes) -> bytes | None:
        """Check one used receive buffer; return its frame or None (counted)."""
        if len(data) < NET_HDR.size + ETH_HEADER:
            self.errors["short"] += 1
            return None
        num_buffers = NET_HDR.unpack_from(data)[6]
        if not self.has(VIRTIO_NET_F_MRG_RXBUF) and num_buffers > 1:
            self.errors["num_buffers"] += 1
            return None
        return data[NET_HDR.size :]

    # --- self-test ---------------------------------------------------------------------------

    def selftest(self) -> dict[str, object]:
        """Send one broadcast test frame; report whether anything came back."""
        payload = b"virtio-msg net selftest".ljust(46, b"\0")
        frame = b"\xff" * 6 + self.mac + TEST_ETHERTYPE.to_bytes(2, "big") + payload
        self.send(frame)
        back = self.receive(SELFTEST_WAIT)
        return {
            "mac": format_mac(self.mac),
            "link": "up" if self.link_up else "down",
            "sent": self.sent,
            "echo": back is not None and back[12:] == frame[12:],
        }


__all__ = [
    "MAX_FRAME",
    "NET_HDR",
    "RX_BUFFER_SIZE",
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_STATUS",
    "NetDriver",
    "NetError",
    "format_mac",
]
