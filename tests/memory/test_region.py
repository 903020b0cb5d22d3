"""Region: bounds checks by bus address, little-endian access, memfd sharing."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_msg.errors import MemoryAccessError
from virtio_msg.memory import (
    ADDRESS_LIMIT,
    DEFAULT_BASE,
    Region,
    RegionAccessError,
    RegionClosed,
    wrap16,
)

SIZE = 0x4000
BASE = 0x8000_0000


@pytest.fixture
def region() -> Iterator[Region]:
    with Region(SIZE, BASE) as r:
        yield r


_U16 = struct.Struct("<H")

# Every accessor, as (name, call(region, addr, length)); each must be checked.
ACCESSORS: list[tuple[str, int, Callable[[Region, int], Any]]] = [
    ("read", 8, lambda r, a: r.read(a, 8)),
    ("write", 8, lambda r, a: r.write(a, b"\xaa" * 8)),
    ("view", 8, lambda r, a: r.view(a, 8)),
    ("fill", 8, lambda r, a: r.fill(a, 8)),
    ("read_u16", 2, lambda r, a: r.read_u16(a)),
    ("read_u32", 4, lambda r, a: r.read_u32(a)),
    ("read_u64", 8, lambda r, a: r.read_u64(a)),
    ("write_u16", 2, lambda r, a: r.write_u16(a, 1)),
    ("write_u32", 4, lambda r, a: r.write_u32(a, 1)),
    ("write_u64", 8, lambda r, a: r.write_u64(a, 1)),
    ("unpack", 2, lambda r, a: r.unpack(_U16, a)),
    ("pack", 2, lambda r, a: r.pack(_U16, a, 1)),
    ("offset", 1, lambda r, a: r.offset(a)),
]
ACCESSOR_IDS = [name for name, _, _ in ACCESSORS]


def test_new_region_is_zero_filled_with_given_geometry(region: Region) -> None:
    assert (region.base, region.size, region.end) == (BASE, SIZE, BASE + SIZE)
    assert region.read(BASE, SIZE) == bytes(SIZE)
    assert os.fstat(region.fd).st_size == SIZE


def test_default_geometry_is_the_seeds_pool() -> None:
    with Region() as r:
        assert (r.base, r.size) == (DEFAULT_BASE, 4 * 1024 * 1024)


def test_memfd_is_close_on_exec(region: Region) -> None:
    assert not os.get_inheritable(region.fd)


@pytest.mark.parametrize("size", [0, -1])
def test_region_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        Region(size)


@pytest.mark.parametrize("base", [-4096, ADDRESS_LIMIT - 4096 + 1])
def test_region_must_fit_in_64_bit_bus_addresses(base: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        Region(4096, base)


def test_region_may_end_exactly_at_2_64() -> None:
    with Region(4096, ADDRESS_LIMIT - 4096) as r:
        r.write_u64(ADDRESS_LIMIT - 8, 7)
        assert r.read_u64(ADDRESS_LIMIT - 8) == 7
        with pytest.raises(RegionAccessError, match="wraps past 2\\*\\*64"):
            r.read(ADDRESS_LIMIT - 8, 9)


@pytest.mark.parametrize(("name", "width", "call"), ACCESSORS, ids=ACCESSOR_IDS)
def test_access_below_base_is_rejected(region: Region, name: str, width: int, call: Any) -> None:
    with pytest.raises(RegionAccessError, match="below the base") as info:
        call(region, BASE - 1)
    assert info.value.addr == BASE - 1
    assert info.value.length == width
    assert f"{BASE - 1:#x}" in str(info.value)
    assert f"length {width}" in str(info.value)


@pytest.mark.parametrize(("name", "width", "call"), ACCESSORS, ids=ACCESSOR_IDS)
def test_access_past_the_end_is_rejected(region: Region, name: str, width: int, call: Any) -> None:
    with pytest.raises(RegionAccessError, match="past the end") as info:
        call(region, BASE + SIZE)
    assert info.value.addr == BASE + SIZE


@pytest.mark.parametrize(
    ("name", "width", "call"),
    [a for a in ACCESSORS if a[1] > 1],
    ids=[a[0] for a in ACCESSORS if a[1] > 1],
)
def test_access_crossing_the_end_is_rejected(
    region: Region, name: str, width: int, call: Any
) -> None:
    with pytest.raises(RegionAccessError, match="crosses the end"):
        call(region, BASE + SIZE - width + 1)


@pytest.mark.parametrize(("name", "width", "call"), ACCESSORS, ids=ACCESSOR_IDS)
def test_access_wrapping_past_2_64_is_rejected(
    region: Region, name: str, width: int, call: Any
) -> None:
    with pytest.raises(RegionAccessError, match=r"wraps past|past the end"):
        call(region, ADDRESS_LIMIT - 1)


@pytest.mark.parametrize(("name", "width", "call"), ACCESSORS, ids=ACCESSOR_IDS)
def test_negative_address_is_rejected(region: Region, name: str, width: int, call: Any) -> None:
    with pytest.raises(RegionAccessError, match="negative address"):
        call(region, -1)


@pytest.mark.parametrize(("name", "width", "call"), ACCESSORS, ids=ACCESSOR_IDS)
def test_access_at_the_last_bytes_is_allowed(
    region: Region, name: str, width: int, call: Any
) -> None:
    call(region, BASE + SIZE - width)


def test_negative_length_is_rejected(region: Region) -> None:
    with pytest.raises(RegionAccessError, match="negative length"):
        region.read(BASE, -1)


def test_huge_length_wrapping_past_2_64_is_rejected(region: Region) -> None:
    with pytest.raises(RegionAccessError, match="wraps past 2\\*\\*64") as info:
        region.read(BASE + 16, ADDRESS_LIMIT - 8)
    assert info.value.length == ADDRESS_LIMIT - 8


def test_zero_length_access_is_allowed_up_to_the_end_inclusive(region: Region) -> None:
    assert region.read(BASE + SIZE, 0) == b""
    assert region.contains(BASE + SIZE, 0)
    with pytest.raises(RegionAccessError):
        region.read(BASE + SIZE + 1, 0)
    with pytest.raises(RegionAccessError):
        region.read(BASE - 1, 0)


def test_region_errors_are_memory_access_errors() -> None:
    assert issubclass(RegionAccessError, MemoryAccessError)
    assert issubclass(RegionClosed, MemoryAccessError)


@given(addr=st.integers(-(2**65), 2**65), length=st.integers(-4, 2 * SIZE))
@settings(max_examples=200, deadline=None)
def test_read_succeeds_exactly_when_contains_says_so(addr: int, length: int) -> None:
    with Region(SIZE, BASE) as r:
        inside = addr >= BASE and length >= 0 and addr + length <= BASE + SIZE
        assert r.contains(addr, length) is inside
        if inside:
            assert len(r.read(addr, length)) == length
            assert r.offset(addr, length) == addr - BASE
        else:
            with pytest.raises(RegionAccessError):
                r.read(addr, length)


def test_scalars_are_little_endian(region: Region) -> None:
    region.write_u16(BASE, 0x0102)
    region.write_u32(BASE + 2, 0x03040506)
    region.write_u64(BASE + 6, 0x0708090A0B0C0D0E)
    assert region.read(BASE, 14) == bytes.fromhex("0201 06050403 0e0d0c0b0a090807")
    assert region.read_u16(BASE) == 0x0102
    assert region.read_u32(BASE + 2) == 0x03040506
    assert region.read_u64(BASE + 6) == 0x0708090A0B0C0D0E


@pytest.mark.parametrize(
    ("method", "value"),
    [("write_u16", 0x1_0000), ("write_u32", 1 << 32), ("write_u64", 1 << 64), ("write_u16", -1)],
)
def test_store_of_a_value_too_wide_is_rejected(region: Region, method: str, value: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        getattr(region, method)(BASE, value)
    assert region.read(BASE, 8) == bytes(8)


def test_pack_and_unpack_whole_layouts(region: Region) -> None:
    layout = struct.Struct("<QIHH")
    region.pack(layout, BASE + 32, 0x1122, 33, 2, 7)
    assert region.unpack(layout, BASE + 32) == (0x1122, 33, 2, 7)


def test_view_is_zero_copy_and_writable(region: Region) -> None:
    view = region.view(BASE + 100, 4)
    view[:] = b"abcd"
    assert region.read(BASE + 100, 4) == b"abcd"
    region.write(BASE + 100, b"wxyz")
    assert bytes(view) == b"wxyz"
    view.release()


def test_write_accepts_any_contiguous_buffer(region: Region) -> None:
    region.write(BASE, memoryview(bytearray(b"\x01\x00\x02\x00")).cast("H"))
    assert region.read_u32(BASE) == 0x0002_0001


def test_fill_sets_bytes(region: Region) -> None:
    region.fill(BASE + 1, 3, 0x5A)
    assert region.read(BASE, 5) == b"\x00ZZZ\x00"


def test_from_fd_maps_the_same_pages_at_its_own_base(region: Region) -> None:
    with Region.from_fd(region.fd, 0x5000_0000, SIZE) as other:
        region.write(BASE + 10, b"driver")
        assert other.read(0x5000_0000 + 10, 6) == b"driver"
        other.write_u32(0x5000_0000 + 64, 0xCAFE)
        assert region.read_u32(BASE + 64) == 0xCAFE


def test_from_fd_takes_its_own_copy_of_the_fd() -> None:
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    other = Region.from_fd(fd, BASE, 4096)
    os.close(fd)
    other.write_u16(BASE, 9)
    assert other.read_u16(BASE) == 9
    assert other.fd != fd
    other.close()


def test_from_fd_may_map_a_prefix_of_the_file(region: Region) -> None:
    with Region.from_fd(region.fd, BASE, 4096) as prefix:
        assert prefix.size == 4096
        with pytest.raises(RegionAccessError):
            prefix.read(BASE + 4096, 1)


def test_from_fd_rejects_a_file_shorter_than_the_region(region: Region) -> None:
    with pytest.raises(ValueError, match="fewer than the region size"):
        Region.from_fd(region.fd, BASE, SIZE + 1)


def test_closed_region_rejects_access_and_close_is_idempotent() -> None:
    r = Region(4096, BASE)
    fd = r.fd
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(RegionClosed):
        r.read(BASE, 1)
    with pytest.raises(RegionClosed):
        _ = r.fd
    with pytest.raises(OSError):
        os.fstat(fd)


def test_close_with_a_live_view_keeps_the_view_usable() -> None:
    r = Region(4096, BASE)
    view = r.view(BASE, 4)
    r.close()
    view[:] = b"1234"
    assert bytes(view) == b"1234"
    view.release()


@pytest.mark.parametrize(
    ("value", "wrapped"), [(0, 0), (0xFFFF, 0xFFFF), (0x10000, 0), (0x10001, 1), (-1, 0xFFFF)]
)
def test_wrap16_reduces_modulo_2_16(value: int, wrapped: int) -> None:
    assert wrap16(value) == wrapped


def test_repr_names_the_range(region: Region) -> None:
    assert f"{BASE:#x}" in repr(region)
