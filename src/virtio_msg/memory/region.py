"""One shared memory region, addressed by bus address, every access bounds-checked.

Strategy: a :class:`Region` is a memfd of ``size`` bytes mapped into this
process and announced to the other side as ``[base, base + size)``.  The
backend maps the *same* pages from the fd (:meth:`Region.from_fd`), so the two
sides share memory without copying, exactly like the loopback bus's mmap of
its restricted DMA pool.

Every access names a bus address and a length.  All of them go through one
private method, :meth:`Region._offset`, which turns the pair into an offset
into the mapping or raises :class:`RegionAccessError` naming the address, the
length and the reason (negative length, below the base, past the end, wraps
past 2**64).  Python integers never wrap, so the check is plain arithmetic; the
error message still says "wraps" for a pair that would have wrapped in C.

Zero-length accesses are allowed anywhere in ``[base, end]`` (inclusive), the
usual rule for empty slices; every access of one byte or more must lie inside
``[base, end)``.

Little-endian loads and stores use precompiled :class:`struct.Struct` objects;
:meth:`Region.unpack` and :meth:`Region.pack` let ring code read or write a
whole fixed layout (a descriptor, a used element) with one bounds check.
:func:`wrap16` is the single place ring indices wrap.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
from types import TracebackType
from typing import Any, Final, Self

from virtio_msg.errors import MemoryAccessError

__all__ = [
    "ADDRESS_LIMIT",
    "DEFAULT_BASE",
    "DEFAULT_SIZE",
    "Region",
    "RegionAccessError",
    "RegionClosed",
    "wrap16",
]

DEFAULT_BASE: Final = 0x1_0000_0000
"""The seed's example bus address of the loopback pool (``vmsglb@100000000``)."""
DEFAULT_SIZE: Final = 4 * 1024 * 1024
"""The seed's example pool size (``reg = <... 0x400000>``): 4 MiB."""
ADDRESS_LIMIT: Final = 1 << 64
"""Bus addresses are 64-bit: no access may reach past 2**64."""

_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


def wrap16(value: int) -> int:
    """Return ``value`` reduced modulo 2**16: the one place ring indices wrap.

    Split-ring ``idx`` fields are free-running 16-bit counters (virtio 1.x
    §2.7.6, §2.7.8), so index arithmetic (differences, increments) is done in
    Python integers and wrapped here.
    """
    return value & 0xFFFF


class RegionAccessError(MemoryAccessError):
    """An access by bus address fell outside the region.

    ``addr`` and ``length`` are the access as requested; ``reason`` says what
    was wrong ("below the base", "past the end", "wraps past 2**64",
    "negative length").
    """

    def __init__(self, addr: int, length: int, reason: str, base: int, end: int) -> None:
        """Describe the bad access and the region it missed."""
        super().__init__(
            f"bus access at {addr:#x} length {length}: {reason} (region is [{base:#x}, {end:#x}))"
        )
        self.addr = addr
        self.length = length
        self.reason = reason


class RegionClosed(MemoryAccessError):
    """The region was closed; its memory can no longer be accessed."""


class Region:
    """A memfd-backed memory region with a bus base address.

    ``Region(size, base)`` creates and maps a new memfd; ``Region.from_fd``
    maps an existing one (the backend's view of the same pages).  The region
    owns its fd (a duplicate in the ``from_fd`` case) and closes it in
    :meth:`close`.
    """

    __slots__ = ("_base", "_closed", "_end", "_fd", "_limit", "_mm", "_mv", "_mv16", "_size")

    def __init__(
        self, size: int = DEFAULT_SIZE, base: int = DEFAULT_BASE, *, name: str = "virtio-msg"
    ) -> None:
        """Create a memfd of ``size`` bytes, zero-filled, mapped at bus address ``base``."""
        _check_geometry(base, size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)  # the bus seals its size
        try:
            os.ftruncate(fd, size)
            self._setup(fd, base, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, base: int, size: int) -> Self:
        """Map an existing memfd (e.g. received over a socket) as ``[base, base + size)``.

        The fd is duplicated: the caller keeps ownership of ``fd`` and may
        close it at once; the region closes its own copy.  The file must be at
        least ``size`` bytes long.
        """
        _check_geometry(base, size)
        file_size = os.fstat(fd).st_size
        if file_size < size:
            raise ValueError(f"fd {fd} holds {file_size} bytes, fewer than the region size {size}")
        own = os.dup(fd)
        os.set_inheritable(own, False)
        self = cls.__new__(cls)
        try:
            self._setup(own, base, size)
        except BaseException:
            os.close(own)
            raise
        return self

    @classmethod
    def from_mapping(cls, mm: mmap.mmap, base: int) -> Self:
        """Adopt an existing shared mapping (e.g. of a kernel's region device) as a region.

        The region spans exactly ``len(mm)`` bytes from bus address ``base`` and
        owns the mapping (it closes it); it has no fd of its own (:attr:`fd`
        raises).  Use it when the mapping comes from a device file whose size
        ``fstat`` does not report, after checking the size some other way.
        """
        size = len(mm)
        _check_geometry(base, size)
        self = cls.__new__(cls)
        self._setup(-1, base, size, mm)
        return self

    def _setup(self, fd: int, base: int, size: int, mm: mmap.mmap | None = None) -> None:
        self._fd = fd
        self._base = base
        self._size = size
        self._end = base + size
        if mm is None:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mm = mm
        self._mv = memoryview(self._mm)
        # Ring indices (avail.idx, used.idx) are published with one aligned
        # 16-bit store: struct.pack_into zero-fills its target before writing,
        # so a peer polling the ring could read a torn 0 in between.
        self._mv16: memoryview | None = self._mv[: size & ~1].cast("H") if _LITTLE_ENDIAN else None
        self._limit = size
        self._closed = False

    # --- geometry -----------------------------------------------------------

    @property
    def base(self) -> int:
        """Bus address of the first byte."""
        return self._base

    @property
    def size(self) -> int:
        """Number of bytes in the region."""
        return self._size

    @property
    def end(self) -> int:
        """Bus address one past the last byte (``base + size``)."""
        return self._end

    @property
    def fd(self) -> int:
        """The memfd backing the region (owned by the region; pass it, do not close it)."""
        if self._closed:
            raise RegionClosed("region is closed")
        if self._fd < 0:
            raise RegionClosed("region was adopted from a mapping and has no fd")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def contains(self, addr: int, length: int) -> bool:
        """Return whether an access of ``length`` bytes at ``addr`` lies inside the region."""
        if length < 0 or addr < self._base:
            return False
        if length == 0:
            return addr <= self._end
        return addr + length <= self._end

    def offset(self, addr: int, length: int = 1) -> int:
        """Return the offset of ``addr`` into the region (and its mapping).

        Raises :class:`RegionAccessError` unless ``length`` bytes at ``addr``
        lie inside the region.
        """
        return self._offset(addr, length)

    def _offset(self, addr: int, length: int) -> int:
        # The one bounds check every access goes through.  ``_limit`` is the
        # size while open and -1 once closed, so a closed region fails here too.
        off = addr - self._base
        if off < 0 or length < 0 or off + length > self._limit:
            raise self._access_error(addr, length)
        return off

    def _access_error(self, addr: int, length: int) -> MemoryAccessError:
        if self._closed:
            return RegionClosed("region is closed")
        if length < 0:
            reason = "negative length"
        elif addr < 0:
            reason = "negative address"
        elif addr < self._base:
            reason = "below the base"
        elif addr + length > ADDRESS_LIMIT:
            reason = "wraps past 2**64"
        elif addr >= self._end:
            reason = "past the end"
        else:
            reason = "crosses the end"
        return RegionAccessError(addr, length, reason, self._base, self._end)

    # --- byte access --------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        """Return a copy of ``length`` bytes at ``addr``."""
        off = self._offset(addr, length)
        return self._mm[off : off + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the region at ``addr``."""
        view = data if isinstance(data, bytes | bytearray) else memoryview(data).cast("B")
        length = len(view)
        off = self._offset(addr, length)
        self._mv[off : off + length] = view

    def view(self, addr: int, length: int) -> memoryview:
        """Return a zero-copy, writable view of ``length`` bytes at ``addr``.

        The view keeps the mapping alive: :meth:`close` cannot unmap the pages
        while a view exists (they are unmapped when the last view is released).
        """
        off = self._offset(addr, length)
        return self._mv[off : off + length]

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes at ``addr`` to ``byte``."""
        off = self._offset(addr, length)
        self._mv[off : off + length] = bytes([byte]) * length

    # --- little-endian scalars and layouts ----------------------------------

    def read_u16(self, addr: int) -> int:
        """Load a little-endian u16."""
        value: int = _U16.unpack_from(self._mm, self._offset(addr, 2))[0]
        return value

    def read_u32(self, addr: int) -> int:
        """Load a little-endian u32."""
        value: int = _U32.unpack_from(self._mm, self._offset(addr, 4))[0]
        return value

    def read_u64(self, addr: int) -> int:
        """Load a little-endian u64."""
        value: int = _U64.unpack_from(self._mm, self._offset(addr, 8))[0]
        return value

    def write_u16(self, addr: int, value: int) -> None:
        """Store ``value`` (0..0xFFFF) as a little-endian u16 (one store when aligned)."""
        off = self._offset(addr, 2)
        mv16 = self._mv16
        if mv16 is not None and not off & 1 and 0 <= value <= 0xFFFF:
            mv16[off >> 1] = value
            return
        try:
            _U16.pack_into(self._mm, off, value)
        except struct.error as exc:
            raise _unfit(_U16, (value,), exc) from None

    def write_u32(self, addr: int, value: int) -> None:
        """Store ``value`` (0..0xFFFFFFFF) as a little-endian u32."""
        off = self._offset(addr, 4)
        try:
            _U32.pack_into(self._mm, off, value)
        except struct.error as exc:
            raise _unfit(_U32, (value,), exc) from None

    def write_u64(self, addr: int, value: int) -> None:
        """Store ``value`` (0..2**64-1) as a little-endian u64."""
        off = self._offset(addr, 8)
        try:
            _U64.pack_into(self._mm, off, value)
        except struct.error as exc:
            raise _unfit(_U64, (value,), exc) from None

    def unpack(self, layout: struct.Struct, addr: int) -> tuple[Any, ...]:
        """Read one ``layout`` (e.g. a descriptor) at ``addr`` with a single bounds check."""
        return layout.unpack_from(self._mm, self._offset(addr, layout.size))

    def pack(self, layout: struct.Struct, addr: int, *values: Any) -> None:
        """Write ``values`` as one ``layout`` at ``addr`` with a single bounds check."""
        off = self._offset(addr, layout.size)
        try:
            layout.pack_into(self._mm, off, *values)
        except struct.error as exc:
            raise _unfit(layout, values, exc) from None

    # --- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Unmap the region and close its fd; later accesses raise :class:`RegionClosed`.

        Views handed out by :meth:`view` that are still alive keep the pages
        mapped until they are released; the fd is closed regardless.
        """
        if self._closed:
            return
        self._closed = True
        self._limit = -1
        if self._mv16 is not None:
            self._mv16.release()
        self._mv.release()
        # A live view still exporting the buffer keeps the mapping until it goes.
        with contextlib.suppress(BufferError):
            self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)

    def __enter__(self) -> Self:
        """Return the region itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the region."""
        self.close()

    def __repr__(self) -> str:
        """Show the bus range."""
        state = " closed" if self._closed else ""
        return f"<Region [{self._base:#x}, {self._end:#x}) {self._size} bytes{state}>"


def _check_geometry(base: int, size: int) -> None:
    if size <= 0:
        raise ValueError(f"region size must be positive, not {size}")
    if base < 0 or base + size > ADDRESS_LIMIT:
        raise ValueError(f"region [{base:#x}, +{size:#x}) does not fit in 64-bit bus addresses")


def _unfit(layout: struct.Struct, values: tuple[Any, ...], exc: struct.error) -> ValueError:
    return ValueError(f"{values!r} does not fit the layout {layout.format!r}: {exc}")
