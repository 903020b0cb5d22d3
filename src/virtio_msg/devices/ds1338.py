"""DS1338 real-time clock: an I2C target model with an injectable clock source.

Strategy.  The chip is modelled at register level, the way a driver such as
Linux ``rtc-ds1307`` sees it over the bus (Maxim DS1338 datasheet, "Clock and
Calendar" and the RTC/RAM address map):

* 0x00-0x06 are BCD time registers (seconds with the clock-halt bit CH in
  bit 7, minutes, hours with the 12/24 select in bit 6 and AM/PM in bit 5,
  day 1-7, date, month, year 00-99), 0x07 is the control register (OUT,
  OSF, SQWE, RS1-0) and 0x08-0x3F are 56 bytes of battery-backed RAM.  Bits
  the datasheet lists as 0 always read as 0.
* An I2C write transfer's first byte sets the register pointer; every data
  byte written or read advances it, wrapping from 0x3F to 0x00.
* Time is *not* a wall clock: the internal counters advance by whole seconds
  of the injected ``clock`` (default :func:`time.monotonic`; tests pass a
  :class:`ManualClock`).  Writing the seconds register resets the countdown
  chain (the sub-second fraction); setting CH stops the oscillator, which
  also sets OSF; OSF can only be cleared by writing 0.
* Reads of the time registers come from a user buffer that is synchronised
  with the counters on every START and STOP and when the pointer wraps to
  0, so a multi-byte read is consistent while the clock runs.
* Illogical entries ("undefined operation" in the datasheet) never crash:
  each counter rolls over the way the hardware counter chain does, and the
  calendar falls back to day-by-day stepping until it is a real date.

The model is pure computation with no locking; the virtio-i2c device
serialises calls to its targets.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from typing import Final

from virtio_msg.devices.i2c_target import I2CTarget

__all__ = [
    "CONTROL_OSF",
    "CONTROL_OUT",
    "CONTROL_SQWE",
    "DS1338",
    "DS1338_ADDRESS",
    "HOURS_12H",
    "HOURS_PM",
    "POWER_ON_CONTROL",
    "RAM_SIZE",
    "RAM_START",
    "REG_CONTROL",
    "REG_DATE",
    "REG_DAY",
    "REG_HOURS",
    "REG_MINUTES",
    "REG_MONTH",
    "REG_SECONDS",
    "REG_YEAR",
    "SECONDS_CH",
    "ManualClock",
    "bcd",
    "from_bcd",
]

DS1338_ADDRESS: Final = 0x68
"""The chip's fixed 7-bit I2C address (the seed's demo placed QEMU's model at 0x20)."""

REG_SECONDS: Final = 0x00
REG_MINUTES: Final = 0x01
REG_HOURS: Final = 0x02
REG_DAY: Final = 0x03
REG_DATE: Final = 0x04
REG_MONTH: Final = 0x05
REG_YEAR: Final = 0x06
REG_CONTROL: Final = 0x07
RAM_START: Final = 0x08
RAM_SIZE: Final = 56
"""Battery-backed RAM: registers 0x08-0x3F."""
REGISTER_COUNT: Final = RAM_START + RAM_SIZE
"""The pointer wraps from 0x3F to 0x00."""

SECONDS_CH: Final = 0x80
"""Clock halt: 1 stops the oscillator."""
HOURS_12H: Final = 0x40
"""Hours bit 6: 12-hour mode when set."""
HOURS_PM: Final = 0x20
"""Hours bit 5 in 12-hour mode: PM."""
CONTROL_OUT: Final = 0x80
CONTROL_OSF: Final = 0x20
"""Oscillator stop flag: set when the oscillator stops, cleared only by writing 0."""
CONTROL_SQWE: Final = 0x10
CONTROL_RS_MASK: Final = 0x03
CONTROL_WRITABLE: Final = CONTROL_OUT | CONTROL_SQWE | CONTROL_RS_MASK

POWER_ON_CONTROL: Final = CONTROL_OUT | CONTROL_OSF | CONTROL_RS_MASK
"""Control register at first power-up: OUT=1, OSF=1 (first power), SQWE=0, RS=11."""
POWER_ON_TIME: Final = bytes([0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00])
"""01/01/00, day 1, 00:00:00 with the oscillator running (CH=0)."""

_WRITE_MASKS: Final = (0xFF, 0x7F, 0x7F, 0x07, 0x3F, 0x1F, 0xFF)
"""Bits that exist in each time register; the others read as 0."""
_CENTURY_DAYS: Final = 36525
"""Days in 2000..2099: the chip's leap-year rule (year % 4) holds in that range."""
_EPOCH: Final = _dt.date(2000, 1, 1)


def bcd(value: int) -> int:
    """Encode 0..99 as packed BCD."""
    if not 0 <= value <= 99:
        raise ValueError(f"{value} does not fit two BCD digits")
    return (value // 10) << 4 | value % 10


def from_bcd(value: int) -> int:
    """Decode packed BCD; digits above 9 decode as their binary value (no error)."""
    return (value >> 4) * 10 + (value & 0x0F)


class ManualClock:
    """A clock source that moves only when told to (for tests and examples)."""

    def __init__(self, start: float = 0.0) -> None:
        """Start at ``start`` seconds."""
        self.now = float(start)

    def __call__(self) -> float:
        """Return the current time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds


def _days_in_month(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 else 28
    if month in (4, 6, 9, 11):
        return 30
    return 31  # also for illogical months: the counter just runs on


def _roll(value: int, n: int, modulo: int) -> tuple[int, int]:
    """Advance a counter by ``n`` ticks; return (new value, carries out).

    An out-of-range value wraps to 0 (with a carry) on its first tick, as a
    hardware counter that compares ``>= modulo`` does.
    """
    if n <= 0:
        return value, 0
    carry = 0
    if value >= modulo:
        value, carry, n = 0, 1, n - 1
    total = value + n
    return total % modulo, carry + total // modulo


class DS1338(I2CTarget):
    """The DS1338 RTC with 56 bytes of RAM (see the module docstring).

    ``clock`` returns seconds (monotonic); ``start`` presets the time (as if
    the battery had kept the clock running, so OSF is clear) instead of the
    power-on state.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        start: _dt.datetime | None = None,
    ) -> None:
        """Power up: 01/01/00 00:00:00, oscillator running, OSF set, RAM zero."""
        self.clock = clock
        self._time = bytearray(POWER_ON_TIME)
        self._user = bytearray(POWER_ON_TIME)
        self._control = POWER_ON_CONTROL
        self._ram = bytearray(RAM_SIZE)
        self._pointer = 0
        self._expect_pointer = False
        self._anchor = clock()
        if start is not None:
            self.set_datetime(start)
            self._control &= ~CONTROL_OSF

    # --- I2C target -------------------------------------------------------------------

    def start(self, read: bool) -> bool:
        """START (or repeated START): latch the time; a write starts with the pointer."""
        self._sync_user()
        self._expect_pointer = not read
        return True

    def write(self, data: bytes) -> bool:
        """Bytes from the controller: the register pointer first, then register data."""
        for byte in data:
            if self._expect_pointer:
                self._pointer = byte % REGISTER_COUNT
                self._expect_pointer = False
                continue
            self._write_register(self._pointer, byte)
            self._step_pointer()
        return True

    def read(self, length: int) -> bytes:
        """Bytes to the controller from the pointer on, auto-incrementing."""
        out = bytearray()
        for _ in range(length):
            out.append(self._read_register(self._pointer))
            self._step_pointer()
        return bytes(out)

    def stop(self) -> None:
        """STOP: the user buffer is synchronised again."""
        self._expect_pointer = False
        self._sync_user()

    # --- register access ---------------------------------------------------------------

    @property
    def pointer(self) -> int:
        """The register pointer (0x00-0x3F)."""
        return self._pointer

    @property
    def halted(self) -> bool:
        """True while CH is set (the oscillator is stopped)."""
        return bool(self._time[REG_SECONDS] & SECONDS_CH)

    def registers(self) -> bytes:
        """All 64 registers as a read would see them now (time brought up to date)."""
        self._advance()
        return bytes(self._time) + bytes([self._control]) + bytes(self._ram)

    def _step_pointer(self) -> None:
        self._pointer = (self._pointer + 1) % REGISTER_COUNT
        if self._pointer == 0:
            self._sync_user()  # the datasheet: also when the pointer rolls over to zero

    def _read_register(self, reg: int) -> int:
        if reg < REG_CONTROL:
            return self._user[reg]
        if reg == REG_CONTROL:
            return self._control
        return self._ram[reg - RAM_START]

    def _write_register(self, reg: int, value: int) -> None:
        if reg >= RAM_START:
            self._ram[reg - RAM_START] = value
            return
        if reg == REG_CONTROL:
            # OSF can only be written to 0; writing 1 leaves it unchanged.
            keep_osf = self._control & value & CONTROL_OSF
            self._control = (value & CONTROL_WRITABLE) | keep_osf
            return
        self._advance()  # account for the time before the write first
        value &= _WRITE_MASKS[reg]
        if reg == REG_SECONDS:
            was_halted = self.halted
            if value & SECONDS_CH and not was_halted:
                self._control |= CONTROL_OSF  # the oscillator stops
            self._anchor = self.clock()  # the countdown chain is reset
        self._time[reg] = value
        self._user[reg] = value

    def _sync_user(self) -> None:
        self._advance()
        self._user[:] = self._time

    # --- timekeeping -------------------------------------------------------------------

    def _advance(self) -> None:
        now = self.clock()
        if self.halted:
            self._anchor = now  # no time passes while the oscillator is stopped
            return
        whole = int(now - self._anchor)
        if whole <= 0:
            return
        self._anchor += whole
        self._add_seconds(whole)

    def _add_seconds(self, n: int) -> None:
        t = self._time
        ch = t[REG_SECONDS] & SECONDS_CH
        twelve = t[REG_HOURS] & HOURS_12H
        sec = from_bcd(t[REG_SECONDS] & 0x7F)
        minute = from_bcd(t[REG_MINUTES] & 0x7F)
        if twelve:
            hour = from_bcd(t[REG_HOURS] & 0x1F) % 12 + (12 if t[REG_HOURS] & HOURS_PM else 0)
        else:
            hour = from_bcd(t[REG_HOURS] & 0x3F)
        sec, carry = _roll(sec, n, 60)
        t[REG_SECONDS] = ch | bcd(sec)
        if not carry:
            return
        # A field is rewritten only when it changed, and a changed field is always a
        # valid value; an illogical value that did not tick keeps its raw bits.
        minute, carry = _roll(minute, carry, 60)
        t[REG_MINUTES] = bcd(minute)
        if not carry:
            return
        hour, days = _roll(hour, carry, 24)
        if twelve:
            h12 = hour % 12 or 12
            t[REG_HOURS] = HOURS_12H | (HOURS_PM if hour >= 12 else 0) | bcd(h12)
        else:
            t[REG_HOURS] = bcd(hour)
        if not days:
            return
        # Day of week: 1..7, sequential; an illogical value becomes 1 on its first tick.
        day = t[REG_DAY]
        start = day - 1 if 1 <= day <= 7 else -1
        t[REG_DAY] = (start + days) % 7 + 1
        old = (from_bcd(t[REG_DATE]), from_bcd(t[REG_MONTH]), from_bcd(t[REG_YEAR]))
        new = self._add_days(*old, days)
        for reg, before, after in zip((REG_DATE, REG_MONTH, REG_YEAR), old, new, strict=True):
            if after != before:
                t[reg] = bcd(after)

    @staticmethod
    def _add_days(date: int, month: int, year: int, days: int) -> tuple[int, int, int]:
        def valid() -> bool:
            return 1 <= month <= 12 and 0 <= year <= 99 and 1 <= date <= _days_in_month(
                month, year
            )

        # Step day by day (as the counter chain does) until the calendar is a real date;
        # bounded: every counter reaches a valid value within about a year of days.
        while days > 0 and not valid():
            days -= 1
            date += 1
            if date > _days_in_month(month, year):
                date = 1
                month += 1
                if month > 12:
                    month = 1
                    year = (year + 1) % 100
        if days > 0:
            offset = (_dt.date(2000 + year, month, date) - _EPOCH).days
            d = _EPOCH + _dt.timedelta(days=(offset + days) % _CENTURY_DAYS)
            date, month, year = d.day, d.month, d.year - 2000
        return date, month, year

    # --- conveniences for tests and configuration ---------------------------------------------

    def set_datetime(self, when: _dt.datetime, *, twelve_hour: bool = False) -> None:
        """Load the time registers from ``when`` (year 2000-2099), oscillator running."""
        if not 2000 <= when.year <= 2099:
            raise ValueError(f"the DS1338 holds years 2000-2099, not {when.year}")
        if twelve_hour:
            hours = HOURS_12H | (HOURS_PM if when.hour >= 12 else 0) | bcd(when.hour % 12 or 12)
        else:
            hours = bcd(when.hour)
        regs = (
            bcd(when.second), bcd(when.minute), hours, (when.weekday() + 1) % 7 + 1,
            bcd(when.day), bcd(when.month), bcd(when.year - 2000),
        )
        for reg, value in enumerate(regs):
            self._write_register(reg, value)

    def __repr__(self) -> str:
        """Show the time registers, control and pointer."""
        return (
            f"<DS1338 time={bytes(self._time).hex()} control={self._control:#04x} "
            f"pointer={self._pointer:#04x}>"
        )
