"""virtio-i2c driver (device id 34) and a DS1338 RTC client on top of it.

Strategy.  :meth:`I2CDriver.transfer_messages` is ``i2c_transfer``: a list of
messages becomes one group of requests on the request queue, every one but
the last with ``VIRTIO_I2C_FLAGS_FAIL_NEXT`` (one transaction with repeated
STARTs), added together, published with one notification and waited for
(bounded) as a whole.  Each request is three buffers bounced through the
restricted pool: the 8-byte out_hdr, the data (readable for a write, writable
for a read, absent for a zero-length message) and the 1-byte in_hdr.  A
message whose status is not OK raises :class:`I2CError` naming it; the
messages after it in the group failed with it (the device's FAIL_NEXT rule).

Linux's ``virtio-i2c.c`` refuses a device without
VIRTIO_I2C_F_ZERO_LENGTH_REQUEST; this driver negotiates it when offered and
needs it only for zero-length messages (the SMBus quick probe), which raise
``ValueError`` before anything is sent when it is missing.

:class:`DS1338Client` is the register-level RTC driver (the counterpart of
Linux ``rtc-ds1307`` for the DS1338): BCD time with 12/24-hour decoding, OSF
as "time not valid", 56 bytes of RAM.  It only uses :meth:`I2CDriver.transfer`,
so it works on any I2C bus object with that method.

The protocol constants are repeated here rather than imported from the device
model (a driver never needs the device side); a test checks they agree.
"""

from __future__ import annotations

import datetime as _dt
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from virtio_msg.drivers.base import Driver
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.memory import PoolError
from virtio_msg.spec import DeviceId
from virtio_msg.virtqueue import DriverRing, QueueFull

__all__ = [
    "MAX_GROUP_MESSAGES",
    "MAX_TRANSFER",
    "RTC_ADDRESSES",
    "DS1338Client",
    "I2CDriver",
    "I2CError",
    "I2CMessage",
    "RtcError",
]

VIRTIO_I2C_F_ZERO_LENGTH_REQUEST: Final = 0
VIRTIO_I2C_FLAGS_FAIL_NEXT: Final = 1 << 0
VIRTIO_I2C_FLAGS_M_RD: Final = 1 << 1
VIRTIO_I2C_MSG_OK: Final = 0
_OUT_HDR: Final = struct.Struct("<HHI")

MAX_TRANSFER: Final = 0xFFFF
"""Largest message (Linux ``i2c_msg.len`` is 16 bits; 32 pool slots at most)."""
MAX_GROUP_MESSAGES: Final = 32
"""Messages in one transfer: each is a chain, and the group must fit the queue at once."""
QUEUE_SIZE: Final = 64
"""Request queue size asked for (the pool is shared with every device)."""
RTC_ADDRESSES: Final = (0x20, 0x68)
"""Where the self-test looks for a DS1338: the seed demo's address, then the chip's own."""


class I2CError(VirtioMsgError):
    """An I2C message failed (NACK or device error); ``index`` is its place in the transfer."""

    def __init__(self, message: str, *, addr: int | None = None, index: int | None = None) -> None:
        """Record the failing message's address and index."""
        super().__init__(message)
        self.addr = addr
        self.index = index


class RtcError(VirtioMsgError):
    """The RTC's contents are not a valid time (oscillator stopped, illogical registers)."""


@dataclass(frozen=True, slots=True)
class I2CMessage:
    """One message of a transfer: write ``data`` to, or read ``read_len`` bytes from, ``addr``."""

    addr: int
    data: bytes = b""
    read_len: int = 0
    is_read: bool = False

    @classmethod
    def write(cls, addr: int, data: bytes = b"") -> I2CMessage:
        """A write message (``data`` may be empty: a zero-length write)."""
        return cls(addr, bytes(data))

    @classmethod
    def read(cls, addr: int, length: int) -> I2CMessage:
        """A read message of ``length`` bytes (0: a zero-length read)."""
        return cls(addr, b"", length, True)

    @property
    def length(self) -> int:
        """Bytes moved by the message."""
        return self.read_len if self.is_read else len(self.data)


class I2CDriver(Driver):
    """Driver for the I2C adapter device: one request queue, blocking transfers."""

    device_id: ClassVar[int] = DeviceId.I2C
    name: ClassVar[str] = "i2c"
    device_features: ClassVar[int] = 1 << VIRTIO_I2C_F_ZERO_LENGTH_REQUEST

    def setup(self) -> None:
        """One request queue, no config space."""
        (self.vq,) = self.transport.find_vqs(1, size=QUEUE_SIZE)
        self._lock = threading.Lock()
        self._broken: str | None = None
        self.now: Callable[[], _dt.datetime] = _utc_now
        """Where the self-test gets the time it writes to the RTC (replace it in tests)."""

    @property
    def zero_length(self) -> bool:
        """True if zero-length messages (SMBus quick) may be sent."""
        return self.transport.has_feature(VIRTIO_I2C_F_ZERO_LENGTH_REQUEST)

    # --- transfers ----------------------------------------------------------------------

    def transfer(self, addr: int, write: bytes = b"", read_len: int = 0) -> bytes:
        """Write ``write`` then (repeated START) read ``read_len`` bytes from ``addr``.

        Either part may be empty; both empty is a zero-length write.  Returns
        the bytes read; raises :class:`I2CError` on NACK or device error.
        """
        msgs: list[I2CMessage] = []
        if write or not read_len:
            msgs.append(I2CMessage.write(addr, write))
        if read_len:
            msgs.append(I2CMessage.read(addr, read_len))
        return self.transfer_messages(msgs)[-1]

    def read_register(self, addr: int, reg: int, n: int) -> bytes:
        """Set the register pointer to ``reg`` and read ``n`` bytes."""
        if n <= 0:
            raise ValueError("read at least one byte")
        return self.transfer(addr, bytes([reg & 0xFF]), n)

    def write_registers(self, addr: int, reg: int, data: bytes) -> None:
        """Write ``data`` to consecutive registers from ``reg``."""
        self.transfer(addr, bytes([reg & 0xFF]) + bytes(data))

    def probe_address(self, addr: int) -> bool:
        """True if a target ACKs ``addr`` (zero-length write, else a one-byte read)."""
        try:
            if self.zero_length:
                self.transfer_messages([I2CMessage.write(addr)])
            else:
                self.transfer_messages([I2CMessage.read(addr, 1)])
        except I2CError:
            return False
        return True

    def scan(self, addresses: Sequence[int] = range(0x08, 0x78)) -> list[int]:
        """The addresses among ``addresses`` where a target answers."""
        return [a for a in addresses if self.probe_address(a)]

    def transfer_messages(self, msgs: Sequence[I2CMessage]) -> list[bytes]:
        """Run ``msgs`` as one transaction; return what each message read (b"" for writes)."""
        self._validate(msgs)
        with self._lock:
            if self._broken:
                raise TransportError("broken", f"i2c driver: {self._broken}")
            tokens = self._submit(msgs)
            results = self._wait(tokens, msgs)
        out: list[bytes] = []
        for i, (msg, (ok, data)) in enumerate(zip(msgs, results, strict=True)):
            if not ok:
                kind = "read" if msg.is_read else "write"
                raise I2CError(
                    f"i2c {kind} of {msg.length} bytes at {msg.addr:#04x} failed "
                    f"(message {i} of {len(msgs)})",
                    addr=msg.addr,
                    index=i,
                )
            out.append(data)
        return out

    def _validate(self, msgs: Sequence[I2CMessage]) -> None:
        if not msgs:
            raise ValueError("a transfer needs at least one message")
        if len(msgs) > min(MAX_GROUP_MESSAGES, self.vq.size):
            raise ValueError(f"at most {min(MAX_GROUP_MESSAGES, self.vq.size)} messages")
        for msg in msgs:
            if not 0 <= msg.addr <= 0x7F:
                raise ValueError(f"I2C address {msg.addr:#x} is not a 7-bit address")
            if not 0 <= msg.length <= MAX_TRANSFER:
                raise ValueError(f"message of {msg.length} bytes exceeds {MAX_TRANSFER}")
            if msg.length == 0 and not self.zero_length:
                raise ValueError(
                    "zero-length messages need VIRTIO_I2C_F_ZERO_LENGTH_REQUEST, not negotiated"
                )

    def _submit(self, msgs: Sequence[I2CMessage]) -> list[object]:
        vq: DriverRing = self.vq
        tokens: list[object] = []
        last = len(msgs) - 1
        try:
            for i, msg in enumerate(msgs):
                flags = (VIRTIO_I2C_FLAGS_FAIL_NEXT if i < last else 0) | (
                    VIRTIO_I2C_FLAGS_M_RD if msg.is_read else 0
                )
                readable: list[bytes] = [_OUT_HDR.pack(msg.addr << 1, 0, flags)]
                writable: list[int] = []
                if msg.is_read:
                    if msg.read_len:
                        writable.append(msg.read_len)
                elif msg.data:
                    readable.append(msg.data)
                writable.append(1)  # in_hdr.status
                token = object()
                vq.add(readable, writable, token)
                tokens.append(token)
        except (QueueFull, PoolError) as exc:
            if tokens:
                # Part of a group sits in the ring unpublished with FAIL_NEXT set; it can
                # only be taken back by a reset, so the driver refuses further work.
                self._broken = f"request queue left inconsistent: {exc}"
            raise TransportError("oversize", f"i2c: no room for the transfer: {exc}") from exc
        self.transport.notify(vq)
        return tokens

    def _wait(self, tokens: list[object], msgs: Sequence[I2CMessage]) -> list[tuple[bool, bytes]]:
        vq: DriverRing = self.vq
        pending = {id(t): t for t in tokens}
        done: dict[int, bytes] = {}

        def reap() -> bool:
            for token, data in vq.get_used():
                key = id(token)
                if key in pending:
                    done[key] = data
            return len(done) == len(pending)

        self.transport.wait_until(reap)
        results: list[tuple[bool, bytes]] = []
        for token, msg in zip(tokens, msgs, strict=True):
            data = done[id(token)]
            # The status is the last byte of a completion covering the whole writable part;
            # anything shorter means the device did not answer the request properly.
            want = (msg.read_len if msg.is_read else 0) + 1
            ok = len(data) == want and data[-1] == VIRTIO_I2C_MSG_OK
            results.append((ok, data[:-1] if ok else b""))
        return results

    # --- the run self-test ----------------------------------------------------------------

    def selftest(self) -> dict[str, object]:
        """Find a DS1338, set it to the current time, read it back: hwclock, as the demo does."""
        for addr in RTC_ADDRESSES:
            if self.probe_address(addr):
                break
        else:
            return {"rtc": "none", "probed": " ".join(f"{a:#04x}" for a in RTC_ADDRESSES)}
        rtc = DS1338Client(self, addr)
        wanted = self.now()
        rtc.set_time(wanted)
        got = rtc.get_time()
        lag = (got - wanted).total_seconds()
        if not 0 <= lag <= 2:
            raise RtcError(f"RTC at {addr:#04x} read back {got}, {lag:+.0f} s from {wanted}")
        return {"rtc": f"ds1338@{addr:#04x}", "set": wanted.isoformat(), "read": got.isoformat()}


class DS1338Client:
    """Register-level DS1338 RTC access over an I2C bus (a driver's ``transfer``)."""

    REG_SECONDS: ClassVar[int] = 0x00
    REG_HOURS: ClassVar[int] = 0x02
    REG_CONTROL: ClassVar[int] = 0x07
    RAM_START: ClassVar[int] = 0x08
    RAM_SIZE: ClassVar[int] = 56
    CH: ClassVar[int] = 0x80
    OSF: ClassVar[int] = 0x20

    def __init__(self, bus: I2CDriver, addr: int = 0x68) -> None:
        """Talk to the chip at ``addr`` on ``bus``."""
        self.bus = bus
        self.addr = addr

    def read_registers(self, reg: int, n: int) -> bytes:
        """Read ``n`` registers from ``reg`` (the chip's pointer wraps at 0x3F)."""
        return self.bus.read_register(self.addr, reg, n)

    def write_registers(self, reg: int, data: bytes) -> None:
        """Write registers from ``reg``."""
        self.bus.write_registers(self.addr, reg, data)

    def get_time(self) -> _dt.datetime:
        """Read the time (one 8-register read, so it is consistent); RtcError if not valid."""
        regs = self.read_registers(self.REG_SECONDS, 8)
        if regs[7] & self.OSF:
            raise RtcError("oscillator stopped at some point (OSF): the time is not valid")
        if regs[0] & self.CH:
            raise RtcError("oscillator halted (CH): the clock is not running")
        try:
            sec = _from_bcd(regs[0] & 0x7F, 0, 59)
            minute = _from_bcd(regs[1] & 0x7F, 0, 59)
            h = regs[2]
            if h & 0x40:  # 12-hour mode, bit 5 PM
                hour = _from_bcd(h & 0x1F, 1, 12) % 12 + (12 if h & 0x20 else 0)
            else:
                hour = _from_bcd(h & 0x3F, 0, 23)
            date = _from_bcd(regs[4] & 0x3F, 1, 31)
            month = _from_bcd(regs[5] & 0x1F, 1, 12)
            year = 2000 + _from_bcd(regs[6], 0, 99)
            return _dt.datetime(year, month, date, hour, minute, sec)
        except ValueError as exc:
            raise RtcError(f"RTC registers {regs[:7].hex()} are not a time: {exc}") from None

    def set_time(self, when: _dt.datetime, *, twelve_hour: bool = False) -> None:
        """Write the time (24-hour unless ``twelve_hour``), start the clock, clear OSF."""
        if not 2000 <= when.year <= 2099:
            raise ValueError(f"the DS1338 holds years 2000-2099, not {when.year}")
        if twelve_hour:
            h12 = when.hour % 12 or 12
            hours = 0x40 | (0x20 if when.hour >= 12 else 0) | _bcd(h12)
        else:
            hours = _bcd(when.hour)
        regs = bytes(
            [
                _bcd(when.second),  # CH = 0: the oscillator runs
                _bcd(when.minute),
                hours,
                (when.weekday() + 1) % 7 + 1,  # 1 = Sunday, as Linux writes tm_wday + 1
                _bcd(when.day),
                _bcd(when.month),
                _bcd(when.year - 2000),
            ]
        )
        self.write_registers(self.REG_SECONDS, regs)
        control = self.read_registers(self.REG_CONTROL, 1)[0]
        if control & self.OSF:
            self.write_registers(self.REG_CONTROL, bytes([control & ~self.OSF & 0xFF]))

    def read_ram(self, offset: int, n: int) -> bytes:
        """Read ``n`` bytes of the 56-byte battery-backed RAM from ``offset``."""
        if offset < 0 or n <= 0 or offset + n > self.RAM_SIZE:
            raise ValueError(f"RAM range {offset}+{n} outside {self.RAM_SIZE} bytes")
        return self.read_registers(self.RAM_START + offset, n)

    def write_ram(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the RAM at ``offset``."""
        if offset < 0 or not data or offset + len(data) > self.RAM_SIZE:
            raise ValueError(f"RAM range {offset}+{len(data)} outside {self.RAM_SIZE} bytes")
        self.write_registers(self.RAM_START + offset, data)


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None, microsecond=0)


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int, lo: int, hi: int) -> int:
    if value >> 4 > 9 or value & 0x0F > 9:
        raise ValueError(f"{value:#04x} is not BCD")
    n = (value >> 4) * 10 + (value & 0x0F)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is outside {lo}..{hi}")
    return n
