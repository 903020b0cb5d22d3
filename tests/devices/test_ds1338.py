"""DS1338 RTC model at register level: BCD time, 12/24 h, CH, OSF, RAM, pointer, latching."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from virtio_msg.devices.ds1338 import (
    CONTROL_OSF,
    DS1338,
    POWER_ON_CONTROL,
    RAM_SIZE,
    RAM_START,
    REG_CONTROL,
    REG_HOURS,
    REG_SECONDS,
    SECONDS_CH,
    ManualClock,
    bcd,
    from_bcd,
)


def write(rtc: DS1338, reg: int, data: bytes = b"") -> None:
    """One write transaction: START, pointer, data, STOP."""
    assert rtc.start(read=False)
    assert rtc.write(bytes([reg]) + data)
    rtc.stop()


def read(rtc: DS1338, reg: int, n: int) -> bytes:
    """Pointer write, repeated START, read, STOP (what rtc-ds1307 does)."""
    assert rtc.start(read=False)
    assert rtc.write(bytes([reg]))
    assert rtc.start(read=True)
    data = rtc.read(n)
    rtc.stop()
    return data


def set_time(rtc: DS1338, when: dt.datetime, twelve: bool = False) -> None:
    rtc.set_datetime(when, twelve_hour=twelve)


def get_time(rtc: DS1338) -> dt.datetime:
    r = read(rtc, 0, 7)
    twelve = from_bcd(r[2] & 0x1F) % 12 + (12 if r[2] & 0x20 else 0)
    hour = twelve if r[2] & 0x40 else from_bcd(r[2] & 0x3F)
    return dt.datetime(
        2000 + from_bcd(r[6]), from_bcd(r[5]), from_bcd(r[4]), hour,
        from_bcd(r[1]), from_bcd(r[0] & 0x7F),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def rtc(clock: ManualClock) -> DS1338:
    return DS1338(clock=clock)


# --- power-on, registers, pointer ------------------------------------------------------------


def test_power_on_state_is_01_01_00_running_with_osf_set(rtc: DS1338) -> None:
    regs = read(rtc, 0, 64)
    assert regs[:7] == bytes([0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00])
    assert regs[REG_CONTROL] == POWER_ON_CONTROL
    assert regs[REG_CONTROL] & CONTROL_OSF
    assert regs[RAM_START:] == bytes(RAM_SIZE)
    assert not rtc.halted


def test_bcd_helpers_round_trip_and_reject_three_digits() -> None:
    assert [bcd(v) for v in (0, 9, 10, 59, 99)] == [0x00, 0x09, 0x10, 0x59, 0x99]
    assert all(from_bcd(bcd(v)) == v for v in range(100))
    with pytest.raises(ValueError):
        bcd(100)


def test_write_sets_pointer_then_data_auto_increments(rtc: DS1338) -> None:
    write(rtc, 0x10, b"\x01\x02\x03")
    assert rtc.pointer == 0x13
    assert read(rtc, 0x10, 3) == b"\x01\x02\x03"
    assert rtc.pointer == 0x13


def test_read_continues_from_the_pointer_without_a_new_pointer_write(rtc: DS1338) -> None:
    write(rtc, 0x08, bytes(range(1, 9)))
    read(rtc, 0x08, 2)
    rtc.start(read=True)  # current-address read
    assert rtc.read(2) == b"\x03\x04"
    rtc.stop()


def test_pointer_wraps_from_0x3f_to_0x00_on_read(rtc: DS1338) -> None:
    write(rtc, 0x3F, b"\xaa")
    data = read(rtc, 0x3E, 4)
    assert data[1] == 0xAA
    assert data[2:] == read(rtc, 0x00, 2)  # seconds, minutes after the wrap
    assert rtc.pointer == 0x02


def test_pointer_wraps_from_0x3f_to_0x00_on_write(rtc: DS1338) -> None:
    write(rtc, 0x3F, b"\x55\x30\x45")  # RAM[55], then seconds=30, minutes=45
    assert read(rtc, 0x3F, 1) == b"\x55"
    assert read(rtc, 0x00, 2) == b"\x30\x45"


def test_pointer_byte_beyond_0x3f_wraps_modulo_64(rtc: DS1338) -> None:
    write(rtc, 0x48, b"\x77")  # 0x48 % 64 == 0x08: the first RAM byte
    assert read(rtc, RAM_START, 1) == b"\x77"


def test_zero_length_write_leaves_registers_and_pointer(rtc: DS1338) -> None:
    write(rtc, 0x20, b"\x01")
    before = rtc.registers()
    rtc.start(read=False)
    rtc.stop()
    assert rtc.registers() == before
    assert rtc.pointer == 0x21


def test_all_56_ram_bytes_are_kept(rtc: DS1338, clock: ManualClock) -> None:
    data = bytes(range(0x80, 0x80 + RAM_SIZE))
    write(rtc, RAM_START, data)
    clock.advance(3600)
    assert read(rtc, RAM_START, RAM_SIZE) == data


@pytest.mark.parametrize(
    ("reg", "written", "reads"),
    [
        (0x01, 0xFF, 0x7F),  # minutes: bit 7 reads 0
        (0x02, 0xFF, 0x7F),  # hours: bit 7 reads 0
        (0x03, 0xFF, 0x07),  # day: bits 7-3 read 0
        (0x04, 0xFF, 0x3F),  # date
        (0x05, 0xFF, 0x1F),  # month
        (0x06, 0xFF, 0xFF),  # year: all bits exist
    ],
)
def test_bits_listed_as_zero_always_read_zero(
    rtc: DS1338, reg: int, written: int, reads: int
) -> None:
    write(rtc, reg, bytes([written]))
    assert read(rtc, reg, 1)[0] == reads


def test_control_register_keeps_out_sqwe_rs_and_reads_zero_elsewhere(rtc: DS1338) -> None:
    write(rtc, REG_CONTROL, b"\x00")  # clears OSF too
    write(rtc, REG_CONTROL, b"\xff")
    assert read(rtc, REG_CONTROL, 1)[0] == 0x93  # OUT, SQWE, RS1, RS0; OSF stays 0


def test_osf_is_cleared_only_by_writing_zero(rtc: DS1338) -> None:
    write(rtc, REG_CONTROL, bytes([POWER_ON_CONTROL]))  # writing 1 keeps it set
    assert read(rtc, REG_CONTROL, 1)[0] & CONTROL_OSF
    write(rtc, REG_CONTROL, bytes([POWER_ON_CONTROL & ~CONTROL_OSF]))
    assert not read(rtc, REG_CONTROL, 1)[0] & CONTROL_OSF


# --- timekeeping -------------------------------------------------------------------------------


def test_time_advances_with_the_clock_source(rtc: DS1338, clock: ManualClock) -> None:
    set_time(rtc, dt.datetime(2026, 5, 17, 10, 20, 30))
    clock.advance(95)
    assert get_time(rtc) == dt.datetime(2026, 5, 17, 10, 22, 5)


def test_time_does_not_advance_without_the_clock(rtc: DS1338) -> None:
    set_time(rtc, dt.datetime(2026, 5, 17, 10, 20, 30))
    assert get_time(rtc) == get_time(rtc) == dt.datetime(2026, 5, 17, 10, 20, 30)


@pytest.mark.parametrize(
    ("start", "seconds", "expected"),
    [
        (dt.datetime(2026, 1, 31, 23, 59, 59), 1, dt.datetime(2026, 2, 1, 0, 0, 0)),
        (dt.datetime(2024, 2, 28, 23, 59, 59), 1, dt.datetime(2024, 2, 29, 0, 0, 0)),
        (dt.datetime(2023, 2, 28, 23, 59, 59), 1, dt.datetime(2023, 3, 1, 0, 0, 0)),
        (dt.datetime(2026, 4, 30, 23, 59, 59), 1, dt.datetime(2026, 5, 1, 0, 0, 0)),
        (dt.datetime(2026, 12, 31, 23, 59, 59), 1, dt.datetime(2027, 1, 1, 0, 0, 0)),
        (dt.datetime(2099, 12, 31, 23, 59, 59), 2, dt.datetime(2000, 1, 1, 0, 0, 1)),
        (dt.datetime(2026, 1, 1, 0, 0, 0), 10 * 365 * 86400, dt.datetime(2035, 12, 30)),
    ],
)
def test_calendar_rollover(
    rtc: DS1338, clock: ManualClock, start: dt.datetime, seconds: int, expected: dt.datetime
) -> None:
    set_time(rtc, start)
    clock.advance(seconds)
    assert get_time(rtc) == expected


def test_day_of_week_increments_at_midnight_and_wraps_7_to_1(
    rtc: DS1338, clock: ManualClock
) -> None:
    write(rtc, 0x00, bytes([0x58, 0x59, 0x23, 0x07]))  # 23:59:58, day 7
    clock.advance(2)
    assert read(rtc, 0x03, 1) == b"\x01"
    clock.advance(86400 * 3)
    assert read(rtc, 0x03, 1) == b"\x04"


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (0x71, 0x52),  # 11 PM -> 12 AM next day (bit 5 clear), 12h mode kept
        (0x51, 0x72),  # 11 AM -> 12 PM
        (0x72, 0x61),  # 12 PM -> 1 PM
        (0x52, 0x41),  # 12 AM -> 1 AM
    ],
)
def test_twelve_hour_mode_counts_am_pm(
    rtc: DS1338, clock: ManualClock, hours: int, expected: int
) -> None:
    write(rtc, 0x00, bytes([0x59, 0x59, hours]))
    clock.advance(1)
    assert read(rtc, REG_HOURS, 1)[0] == expected


def test_twelve_hour_midnight_rollover_changes_the_date(rtc: DS1338, clock: ManualClock) -> None:
    set_time(rtc, dt.datetime(2026, 3, 9, 23, 59, 59), twelve=True)
    assert read(rtc, REG_HOURS, 1)[0] == 0x40 | 0x20 | 0x11  # 11 PM
    clock.advance(1)
    assert get_time(rtc) == dt.datetime(2026, 3, 10, 0, 0, 0)


def test_twenty_four_hour_mode_uses_bit_5_as_twenty_hours(
    rtc: DS1338, clock: ManualClock
) -> None:
    write(rtc, 0x00, bytes([0x59, 0x59, 0x19]))
    clock.advance(1)
    assert read(rtc, REG_HOURS, 1)[0] == 0x20


def test_clock_halt_stops_time_and_sets_osf(rtc: DS1338, clock: ManualClock) -> None:
    set_time(rtc, dt.datetime(2026, 1, 1, 12, 0, 0))
    write(rtc, REG_CONTROL, b"\x00")
    write(rtc, REG_SECONDS, bytes([SECONDS_CH | 0x10]))
    assert rtc.halted
    assert read(rtc, REG_CONTROL, 1)[0] & CONTROL_OSF
    clock.advance(500)
    assert read(rtc, REG_SECONDS, 1)[0] == SECONDS_CH | 0x10
    write(rtc, REG_SECONDS, b"\x10")  # CH cleared: runs again from here
    clock.advance(5)
    assert read(rtc, REG_SECONDS, 1)[0] == 0x15


def test_writing_seconds_resets_the_countdown_chain(rtc: DS1338, clock: ManualClock) -> None:
    set_time(rtc, dt.datetime(2026, 1, 1, 12, 0, 0))
    clock.advance(0.75)
    write(rtc, REG_SECONDS, b"\x00")
    clock.advance(0.5)  # 1.25 s since set, but only 0.5 s since the chain reset
    assert read(rtc, REG_SECONDS, 1)[0] == 0x00
    clock.advance(0.5)
    assert read(rtc, REG_SECONDS, 1)[0] == 0x01


def test_subsecond_fraction_carries_between_reads(rtc: DS1338, clock: ManualClock) -> None:
    set_time(rtc, dt.datetime(2026, 1, 1, 12, 0, 0))
    for _ in range(4):
        clock.advance(0.5)
        read(rtc, 0, 1)
    assert read(rtc, REG_SECONDS, 1)[0] == 0x02


def test_a_read_is_latched_at_start_while_the_clock_runs(
    rtc: DS1338, clock: ManualClock
) -> None:
    set_time(rtc, dt.datetime(2026, 1, 1, 12, 59, 59))
    rtc.start(read=False)
    rtc.write(b"\x00")
    rtc.start(read=True)
    first = rtc.read(1)
    clock.advance(1)  # the minute rolls over mid-read
    rest = rtc.read(2)
    rtc.stop()
    assert first + rest == b"\x59\x59\x12"  # consistent: no 12:59:00 or 13:00:59
    assert read(rtc, 0, 3) == b"\x00\x00\x13"


def test_pointer_rollover_to_zero_resynchronises_the_user_buffer(
    rtc: DS1338, clock: ManualClock
) -> None:
    set_time(rtc, dt.datetime(2026, 1, 1, 0, 0, 0))
    rtc.start(read=False)
    rtc.write(b"\x3f")
    rtc.start(read=True)
    clock.advance(7)
    data = rtc.read(2)  # 0x3F, then wrap: seconds re-latched
    rtc.stop()
    assert data[1] == 0x07


def test_start_presets_time_with_osf_clear(clock: ManualClock) -> None:
    rtc = DS1338(clock=clock, start=dt.datetime(2031, 7, 4, 9, 8, 7))
    assert get_time(rtc) == dt.datetime(2031, 7, 4, 9, 8, 7)
    assert not read(rtc, REG_CONTROL, 1)[0] & CONTROL_OSF


def test_set_datetime_rejects_years_the_chip_cannot_hold(rtc: DS1338) -> None:
    with pytest.raises(ValueError):
        rtc.set_datetime(dt.datetime(1999, 12, 31))


# --- illogical entries: undefined on the chip, never a crash here --------------------------------


@pytest.mark.parametrize(
    "regs",
    [
        bytes([0x7F, 0x7F, 0x3F, 0x00, 0x3F, 0x1F, 0xFF]),  # every field out of range
        bytes([0x5A, 0x00, 0x00, 0x01, 0x31, 0x02, 0x25]),  # seconds digit A, Feb 31
        bytes([0x00, 0x00, 0x5F, 0x09, 0x00, 0x00, 0x99]),  # 12h hour 0x1F, day 9, date 0
    ],
)
def test_illogical_entries_roll_over_into_a_real_time(
    rtc: DS1338, clock: ManualClock, regs: bytes
) -> None:
    write(rtc, 0x00, regs)
    clock.advance(400 * 86400)
    r = read(rtc, 0, 7)
    assert 1 <= r[3] <= 7
    assert get_time(rtc).year >= 2000  # decodes: the counters became a real date


@settings(max_examples=200, deadline=None)
@given(
    regs=st.binary(min_size=7, max_size=7),
    steps=st.lists(st.floats(min_value=0, max_value=5e7), max_size=4),
)
def test_garbage_registers_and_any_time_never_raise(regs: bytes, steps: list[float]) -> None:
    clock = ManualClock(0.0)
    rtc = DS1338(clock=clock)
    write(rtc, 0x00, regs)
    for s in steps:
        clock.advance(s)
        r = read(rtc, 0, 8)
        masks = (0xFF, 0x7F, 0x7F, 0x07, 0x3F, 0x1F, 0xFF, 0xB3)
        assert all(v & ~m == 0 for v, m in zip(r, masks, strict=True))


@settings(max_examples=200, deadline=None)
@given(
    start=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
    seconds=st.integers(min_value=0, max_value=3 * 365 * 86400),
    twelve=st.booleans(),
)
def test_counting_matches_the_calendar(start: dt.datetime, seconds: int, twelve: bool) -> None:
    start = start.replace(microsecond=0)
    clock = ManualClock(0.0)
    rtc = DS1338(clock=clock, start=start)
    if twelve:
        rtc.set_datetime(start, twelve_hour=True)
    clock.advance(seconds)
    real = start + dt.timedelta(seconds=seconds)
    assume(real < dt.datetime(2100, 2, 28))  # the chip's year 00 is a leap year; 2100 is not
    expected = real
    if real.year > 2099:  # the chip has no century: 2099 -> 2000
        expected = real.replace(year=real.year - 100)
    assert get_time(rtc) == expected
    weekday = read(rtc, 0x03, 1)[0]
    assert weekday == (real.weekday() + 1) % 7 + 1  # sequential, across the wrap too
