"""A validated descriptor chain, as the device side of either ring kind returns it.

:class:`DescriptorChain` holds only ``(bus address, length)`` pairs that the
popping queue (split :class:`~virtio_msg.virtqueue.DeviceQueue` or packed
:class:`~virtio_msg.virtqueue.PackedDeviceQueue`) has already checked to lie
inside the region, and reads and writes them through the Region API.
"""

from __future__ import annotations

from typing import Final

from virtio_msg.memory import Region

__all__ = ["MAX_CHAIN_BYTES", "DescriptorChain"]

MAX_CHAIN_BYTES: Final = 1 << 32
"""A chain's total length must stay below 2**32 (§2.7.5.2)."""


class DescriptorChain:
    """One validated chain popped from the available ring.

    ``readable`` and ``writable`` are ``(bus address, length)`` pairs, each
    already checked to lie inside the region; ``indirect`` says whether the
    chain came through an indirect table.  Give ``head`` back to
    :meth:`DeviceQueue.add_used`.
    """

    __slots__ = (
        "_region",
        "head",
        "indirect",
        "readable",
        "readable_len",
        "writable",
        "writable_len",
    )

    def __init__(
        self,
        region: Region,
        head: int,
        readable: list[tuple[int, int]],
        writable: list[tuple[int, int]],
        readable_len: int,
        writable_len: int,
        indirect: bool,
    ) -> None:
        """Record a validated chain (built by :meth:`DeviceQueue.pop`)."""
        self._region = region
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_len = readable_len
        self.writable_len = writable_len
        self.indirect = indirect

    def __len__(self) -> int:
        """Return the number of data descriptors (the indirect pointer not counted)."""
        return len(self.readable) + len(self.writable)

    def read(self) -> bytes:
        """Return all device-readable bytes, concatenated in chain order."""
        region = self._region
        return b"".join([region.read(addr, length) for addr, length in self.readable])

    def readable_views(self) -> list[memoryview]:
        """Return zero-copy views of the device-readable buffers."""
        return [self._region.view(addr, length) for addr, length in self.readable]

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Write ``data`` into the device-writable buffers, starting ``offset`` bytes in.

        Returns the number of bytes written (``len(data)``); raises
        ``ValueError`` if the data does not fit the writable space.
        """
        src = memoryview(data).cast("B")
        if offset < 0 or offset + src.nbytes > self.writable_len:
            raise ValueError(
                f"{src.nbytes} bytes at offset {offset} do not fit "
                f"{self.writable_len} writable bytes"
            )
        pos = 0
        skip = offset
        for addr, length in self.writable:
            if pos == src.nbytes:
                break
            if skip >= length:
                skip -= length
                continue
            take = min(length - skip, src.nbytes - pos)
            self._region.write(addr + skip, src[pos : pos + take])
            pos += take
            skip = 0
        return pos

    def __repr__(self) -> str:
        """Show head, shape and lengths."""
        kind = " indirect" if self.indirect else ""
        return (
            f"<DescriptorChain head={self.head}{kind} r={len(self.readable)}/{self.readable_len}B "
            f"w={len(self.writable)}/{self.writable_len}B>"
        )
