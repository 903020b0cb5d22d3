"""virtio-i2c device model (device id 34) with pluggable I2C target models.

Strategy.  The device is an I2C controller ("adapter") whose bus holds
:class:`I2CTarget` models keyed by 7-bit address.  One request queue carries
requests of the form (virtio 1.2, I2C Adapter Device)::

    out_hdr {le16 addr (7-bit address << 1), le16 padding, le32 flags}   device-readable
    buf[]   write data (device-readable) or read buffer (device-writable)
    in_hdr  {u8 status: OK 0 / ERR 1}                                    device-writable

Requests are handled in two steps: :func:`parse_request` turns a chain's
lengths and header into an :class:`I2CRequest` or a rejection reason (pure, no
I/O), then the device executes it against the target.  The split between the
buffer and the headers is by byte counts, so a driver may merge descriptors
any way it likes.  ``VIRTIO_I2C_FLAGS_M_RD`` says read or write; a zero-length
buffer (SMBus quick) is allowed only with ``VIRTIO_I2C_F_ZERO_LENGTH_REQUEST``
negotiated.

Requests whose ``VIRTIO_I2C_FLAGS_FAIL_NEXT`` is set belong to one group with
the requests after them, up to and including the first one without it: that is
one I2C transaction with repeated STARTs and one STOP (the Linux driver sets
the flag on every message of an ``i2c_transfer`` but the last).  Once a
request of a group fails, the rest of the group fails without touching the
bus; the group stays open across notifications until its last request comes.

Nothing a driver sends raises out of the device: an unknown address is a NACK
and answers ``VIRTIO_I2C_MSG_ERR``; a malformed request answers ERR too (or,
when it has no writable byte for the status, is returned with length 0); a
target model that raises is logged and answers ERR.  Ring-level violations
(descriptor rules) are the virtqueue's business and put the device into
DEVICE_NEEDS_RESET through the transport.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from virtio_msg.devices.ds1338 import DS1338
from virtio_msg.devices.i2c_target import I2CTarget
from virtio_msg.spec import DeviceId
from virtio_msg.transport.model import RING_FEATURES, DeviceModel
from virtio_msg.virtqueue import DescriptorChain, DeviceRing

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_RTC_ADDRESS",
    "MAX_TRANSFER",
    "OUT_HDR",
    "VIRTIO_I2C_FLAGS_FAIL_NEXT",
    "VIRTIO_I2C_FLAGS_M_RD",
    "VIRTIO_I2C_F_ZERO_LENGTH_REQUEST",
    "VIRTIO_I2C_MSG_ERR",
    "VIRTIO_I2C_MSG_OK",
    "I2CDevice",
    "I2CRequest",
    "I2CTarget",
    "parse_request",
]

VIRTIO_I2C_F_ZERO_LENGTH_REQUEST: Final = 0
"""Feature bit: zero-length requests (SMBus quick) are supported; the spec makes it mandatory."""
VIRTIO_I2C_FLAGS_FAIL_NEXT: Final = 1 << 0
"""Request flag: fail the rest of the group if this request fails."""
VIRTIO_I2C_FLAGS_M_RD: Final = 1 << 1
"""Request flag: a read (device-writable buffer)."""
VIRTIO_I2C_MSG_OK: Final = 0
VIRTIO_I2C_MSG_ERR: Final = 1

OUT_HDR: Final = struct.Struct("<HHI")
"""virtio_i2c_out_hdr: addr, padding, flags."""
MAX_TRANSFER: Final = 0xFFFF
"""Largest buffer of one request: Linux's ``i2c_msg.len`` is 16 bits."""
MAX_ADDRESS: Final = 0x7F
"""7-bit addressing only (Linux's virtio-i2c adapter does not offer 10-bit)."""
DEMO_RTC_ADDRESS: Final = 0x20
"""Where the seed's published demo put the DS1338 (QEMU ``-device ds1338,address=0x20``)."""


@dataclass(frozen=True, slots=True)
class I2CRequest:
    """One parsed request: a message to ``addr`` (7-bit)."""

    addr: int
    flags: int
    read_len: int
    """Bytes to read (reads only)."""
    write_len: int
    """Bytes to write (writes only); the data follows the header in the readable part."""

    @property
    def is_read(self) -> bool:
        """True for a read (VIRTIO_I2C_FLAGS_M_RD)."""
        return bool(self.flags & VIRTIO_I2C_FLAGS_M_RD)

    @property
    def fail_next(self) -> bool:
        """True if the request continues a group (VIRTIO_I2C_FLAGS_FAIL_NEXT)."""
        return bool(self.flags & VIRTIO_I2C_FLAGS_FAIL_NEXT)


def parse_request(
    header: bytes, readable_len: int, writable_len: int, *, zero_length: bool
) -> I2CRequest | str:
    """Validate a request's shape; return it, or the reason it must fail.

    ``header`` is the first (up to) 8 readable bytes; the lengths are the
    chain's totals.  ``zero_length`` says whether
    VIRTIO_I2C_F_ZERO_LENGTH_REQUEST was negotiated.  Pure: no I/O.
    """
    if readable_len < OUT_HDR.size or len(header) < OUT_HDR.size:
        return "short-header"
    if writable_len < 1:
        return "no-status-byte"
    addr, _padding, flags = OUT_HDR.unpack_from(header)  # padding is ignored
    if addr & 1 or addr >> 1 > MAX_ADDRESS:
        return "bad-address"  # 10-bit addressing is not offered
    if flags & VIRTIO_I2C_FLAGS_M_RD:
        if readable_len != OUT_HDR.size:
            return "read-with-write-data"
        read_len, write_len = writable_len - 1, 0
    else:
        if writable_len != 1:
            return "write-with-read-buffer"
        read_len, write_len = 0, readable_len - OUT_HDR.size
    if read_len + write_len == 0 and not zero_length:
        return "zero-length-not-negotiated"
    if read_len > MAX_TRANSFER or write_len > MAX_TRANSFER:
        return "too-long"
    return I2CRequest(addr >> 1, flags, read_len, write_len)


def _default_targets() -> dict[int, I2CTarget]:
    return {DEMO_RTC_ADDRESS: DS1338()}


class I2CDevice(DeviceModel):
    """virtio-i2c adapter: one request queue, targets by 7-bit address.

    ``targets`` None gives the seed demo's bus: a :class:`~.ds1338.DS1338`
    at 0x20.  Pass ``{}`` for an empty bus.
    """

    device_id = DeviceId.I2C
    name = "i2c"

    def __init__(
        self,
        targets: Mapping[int, I2CTarget] | None = None,
        *,
        queue_max_size: int = 256,
        ring_features: int = RING_FEATURES,
    ) -> None:
        """Create the adapter with its targets."""
        super().__init__(
            features=1 << VIRTIO_I2C_F_ZERO_LENGTH_REQUEST,
            num_queues=1,
            queue_max_size=queue_max_size,
            ring_features=ring_features,
        )
        self._lock = threading.RLock()
        self._targets: dict[int, I2CTarget] = {}
        for addr, target in (_default_targets() if targets is None else targets).items():
            self.attach(addr, target)
        self._group_failed = False
        self._in_transaction: list[I2CTarget] = []
        self.stats: Counter[str] = Counter()
        """Requests by outcome: ok, nack, rejected:<reason>, group-failed, target-error."""

    # --- the bus ------------------------------------------------------------------------

    def attach(self, addr: int, target: I2CTarget) -> None:
        """Put ``target`` on the bus at 7-bit address ``addr``."""
        if not 0 <= addr <= MAX_ADDRESS:
            raise ValueError(f"I2C address {addr:#x} is not a 7-bit address")
        with self._lock:
            if addr in self._targets:
                raise ValueError(f"I2C address {addr:#04x} is already in use")
            self._targets[addr] = target

    def detach(self, addr: int) -> I2CTarget:
        """Take the target at ``addr`` off the bus; later requests to it are NACKed."""
        with self._lock:
            return self._targets.pop(addr)

    @property
    def targets(self) -> dict[int, I2CTarget]:
        """A copy of the address -> target table."""
        with self._lock:
            return dict(self._targets)

    # --- DeviceModel hooks ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget an open group (its targets see a STOP)."""
        with self._lock:
            self._end_transaction()
            self._group_failed = False

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Execute every available request, in order, and complete it."""
        served = False
        with self._lock:
            while (chain := queue.pop()) is not None:
                used = self._serve(chain)
                queue.add_used(chain.head, used)
                served = True
        if served:
            self.notify_used(index)

    # --- requests ------------------------------------------------------------------------

    def _serve(self, chain: DescriptorChain) -> int:
        header = b""
        if chain.readable_len >= OUT_HDR.size:
            header = self._read_prefix(chain, OUT_HDR.size)
        req = parse_request(
            header, chain.readable_len, chain.writable_len,
            zero_length=self.has_feature(VIRTIO_I2C_F_ZERO_LENGTH_REQUEST),
        )
        if isinstance(req, str):
            self.stats[f"rejected:{req}"] += 1
            log.debug("i2c: request rejected: %s", req)
            fail_next = False
            if len(header) == OUT_HDR.size:
                fail_next = bool(OUT_HDR.unpack(header)[2] & VIRTIO_I2C_FLAGS_FAIL_NEXT)
            status, data = VIRTIO_I2C_MSG_ERR, b""
            self._finish(fail_next, failed=True)
        elif self._group_failed:
            self.stats["group-failed"] += 1
            status, data = VIRTIO_I2C_MSG_ERR, b""
            self._finish(req.fail_next, failed=True)
        else:
            status, data = self._execute(req, chain)
            self._finish(req.fail_next, failed=status != VIRTIO_I2C_MSG_OK)
        if chain.writable_len == 0:
            return 0  # nowhere to put a status: the driver sees an empty completion
        # The read buffer (zeros on failure) then the status byte, at the very end.
        out = data if status == VIRTIO_I2C_MSG_OK else bytes(chain.writable_len - 1)
        chain.write(out + bytes([status]))
        return chain.writable_len

    @staticmethod
    def _read_prefix(chain: DescriptorChain, n: int) -> bytes:
        out = bytearray()
        for view in chain.readable_views():
            out += view[: n - len(out)]
            if len(out) == n:
                break
        return bytes(out)

    @staticmethod
    def _write_data(chain: DescriptorChain, skip: int) -> bytes:
        out = bytearray()
        for view in chain.readable_views():
            if skip >= len(view):
                skip -= len(view)
                continue
            out += view[skip:]
            skip = 0
        return bytes(out)

    def _execute(self, req: I2CRequest, chain: DescriptorChain) -> tuple[int, bytes]:
        target = self._targets.get(req.addr)
        if target is None:
            self.stats["nack"] += 1
            return VIRTIO_I2C_MSG_ERR, b""
        try:
            if target not in self._in_transaction:
                self._in_transaction.append(target)
            if not target.start(req.is_read):
                self.stats["nack"] += 1
                return VIRTIO_I2C_MSG_ERR, b""
            if req.is_read:
                data = target.read(req.read_len) if req.read_len else b""
                if not isinstance(data, bytes | bytearray) or len(data) != req.read_len:
                    self.stats["target-error"] += 1
                    log.warning("i2c: target at %#04x returned a bad read", req.addr)
                    return VIRTIO_I2C_MSG_ERR, b""
                self.stats["ok"] += 1
                return VIRTIO_I2C_MSG_OK, bytes(data)
            if req.write_len and not target.write(self._write_data(chain, OUT_HDR.size)):
                self.stats["nack"] += 1
                return VIRTIO_I2C_MSG_ERR, b""
            self.stats["ok"] += 1
            return VIRTIO_I2C_MSG_OK, b""
        except Exception:  # a target model bug must not take the device down
            self.stats["target-error"] += 1
            log.exception("i2c: target at %#04x raised", req.addr)
            return VIRTIO_I2C_MSG_ERR, b""

    def _finish(self, fail_next: bool, *, failed: bool) -> None:
        if fail_next:
            self._group_failed = self._group_failed or failed
            return
        self._end_transaction()
        self._group_failed = False

    def _end_transaction(self) -> None:
        targets, self._in_transaction = self._in_transaction, []
        for target in targets:
            try:
                target.stop()
            except Exception:
                self.stats["target-error"] += 1
                log.exception("i2c: target raised on STOP")
