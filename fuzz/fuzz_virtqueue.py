"""Coverage-guided fuzz target: the device side of a split virtqueue vs a hostile driver.

The input is the driver's whole world: the first bytes choose the queue size,
the features (INDIRECT_DESC, EVENT_IDX, sometimes the unsupported PACKED),
the ring addresses (aligned inside the region, or anywhere in 64 bits), the
start index, the avail index and how many chains the device tries to serve;
the rest fills the region, so descriptor tables, indirect tables, loops,
length overflows and addresses outside the region all come from the fuzzer.
The device is driven as a model drives it (pop, read, write, add_used,
notification decisions).  The property: the only exceptions are the queue's
typed errors, a violation leaves the queue broken (it never pops again), and
every access -- recorded by a spy region -- lies inside the region.  Run with
``python3 fuzz/fuzz_virtqueue.py -runs=N`` (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import struct
import sys


def _coverage() -> contextlib.AbstractContextManager[object]:
    """Under atheris, instrument only the code under test (instrument_all takes minutes)."""
    if __name__ != "__main__":
        return contextlib.nullcontext()
    import atheris

    packages = ["virtio_msg.virtqueue", "virtio_msg.memory"]
    hook: contextlib.AbstractContextManager[object] = atheris.instrument_imports(packages)
    return hook


with _coverage():
    from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED
    from virtio_msg.testing import SpyRegion
    from virtio_msg.virtqueue import (
        DeviceQueue,
        DriverViolation,
        InvalidQueueConfig,
        QueueBroken,
        avail_ring_size,
        desc_table_size,
        used_ring_size,
    )

REGION_SIZE = 16 * 1024
BASE = 0x1_0000_0000
SIZES = (1, 2, 4, 8, 16, 64, 256, 0, 3, 65536)
HEADER = struct.Struct("<BBBHHBHHHQQQ")
"""size index, feature bits, address mode, start, avail_idx, steps, 3 area slots, 3 raw addrs."""




def _fill(data: bytes) -> bytes:
    if not data:
        return bytes(REGION_SIZE)
    return (data * (REGION_SIZE // len(data) + 1))[:REGION_SIZE]


def _addresses(
    mode: int, size: int, slots: tuple[int, int, int], raw: tuple[int, ...]
) -> tuple[int, int, int]:
    if mode & 1 or size not in SIZES[:7]:
        return raw[0], raw[1], raw[2]

    def area(slot: int, length: int, align: int) -> int:
        return BASE + align * (slot % max((REGION_SIZE - length) // align, 1))

    return (
        area(slots[0], desc_table_size(size), 16),
        area(slots[1], avail_ring_size(size), 2),
        area(slots[2], used_ring_size(size), 4),
    )


def one_input(data: bytes) -> None:
    """Serve the rings ``data`` describes; fail on an untyped error or an access outside."""
    head = data[: HEADER.size].ljust(HEADER.size, b"\0")
    sz, feat, mode, start, avail_idx, steps, s0, s1, s2, r0, r1, r2 = HEADER.unpack(head)
    size = SIZES[sz % len(SIZES)]
    features = (feat & 1) << VIRTIO_F_INDIRECT_DESC | (feat >> 1 & 1) << VIRTIO_F_EVENT_IDX
    if feat & 0xF0 == 0xF0:
        features |= 1 << VIRTIO_F_RING_PACKED
    desc, driver, device = _addresses(mode, size, (s0, s1, s2), (r0, r1, r2))
    with SpyRegion(REGION_SIZE, BASE) as region:
        region.write(BASE, _fill(data[HEADER.size :]))
        try:
            dev = DeviceQueue.create(
                region, size, desc, driver, device, features, start_index=start
            )
        except InvalidQueueConfig:
            return
        region.write_u16(dev.layout.avail_idx, avail_idx)
        region.accesses = []
        try:
            for step in range(steps % 32 + 1):
                chain = dev.pop()
                if chain is None:
                    dev.enable_notification()
                    break
                got = chain.read()
                if len(got) != chain.readable_len:
                    raise AssertionError("read returned a different length than the chain holds")
                written = min(chain.writable_len, 4096, step * 37)
                chain.write(bytes(written))
                dev.add_used(chain.head, written)
                dev.needs_notification()
                if step & 2:
                    dev.disable_notification()
        except DriverViolation:
            if not dev.broken:
                raise AssertionError("a driver violation left the queue usable") from None
            try:
                dev.pop()
            except QueueBroken:
                pass
            else:
                raise AssertionError("a broken queue popped again") from None
        for addr, length in region.accesses:
            if not region.contains(addr, length):
                raise AssertionError(f"access at {addr:#x}+{length} outside the region")


def main() -> None:
    """Run the atheris fuzzer on :func:`one_input` (libFuzzer command-line flags)."""
    import atheris

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
