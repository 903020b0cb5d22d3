"""virtio-blk driver (driver side): byte ranges and sectors, many requests in flight.

Strategy (after Linux ``virtio_blk.c``, with the DMA API always on):

* :meth:`BlkDriver.setup` reads ``struct virtio_blk_config`` once, treats it as
  untrusted (a zero or absurd limit is clamped, never trusted to size a
  buffer), and sets up one request queue, or ``num_queues`` of them with
  VIRTIO_BLK_F_MQ.
* Every request is a chain: a 16-byte header, data segments of at most
  ``size_max`` bytes (and never above the pool's 256 KiB mapping cap), the
  status byte.  At most ``seg_max`` data segments go in one request, and a
  request is also kept small next to the pool (:attr:`BlkDriver.max_request_bytes`),
  because every byte is bounced through it.
* :meth:`BlkDriver.execute` is the engine: it adds requests round-robin over
  the queues until a queue or the pool is full, notifies each queue once per
  batch, reaps completions (freeing descriptors and pool slots), and repeats
  until every request has completed -- many requests in flight, bounded by
  the ring and the pool rather than by the caller.
* The byte-range API (:meth:`read`, :meth:`write`) rounds to sectors;
  unaligned writes read the partial head and tail sectors first
  (read-modify-write, not atomic against other writers of the same sector).
* The device's answers are checked: the used length must cover the status
  byte, the status must be a known value.  DEVICE_NEEDS_RESET from the device
  ends a wait at once.

All public methods are serialised by one lock, so an NBD server thread and
the caller can share a driver.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable
from typing import ClassVar, Final

import virtio_msg.spec as C
from virtio_msg.devices.blk_protocol import (
    CONFIG,
    POOL_MAPPING_CAP,
    REQ_HEADER,
    SECTOR_SHIFT,
    SECTOR_SIZE,
    SEGMENT,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    BlkConfig,
)
from virtio_msg.drivers.base import Driver
from virtio_msg.drivers.blk_op import _STATUS_NAMES, BlkOp, Buffer
from virtio_msg.errors import DeviceBroken, TransportError, VirtioMsgError
from virtio_msg.memory import PoolExhausted
from virtio_msg.spec import DeviceId
from virtio_msg.transport.driver import DEFAULT_QUEUE_SIZE, DriverTransport
from virtio_msg.virtqueue import DriverRing, QueueFull

MAX_QUEUES: Final = 8
"""Request queues the driver uses at most, whatever ``num_queues`` says."""
REQUEST_CAP: Final = 1 << 20
"""Largest data length of one request (1 MiB); also at most 1/8 of the pool."""
SELFTEST_BYTES: Final = 64 << 10
"""The self-test writes, reads back and restores this much at the end of the disk."""
_NEEDS_RESET: Final = int(C.Status.DEVICE_NEEDS_RESET)


class BlkError(VirtioMsgError):
    """A virtio-blk request failed, or the device answered something impossible.

    ``status`` is the request's status byte (IOERR, UNSUPP), or None when the
    device misbehaved or the driver refused the request.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        """Record the message and the status byte."""
        super().__init__(message)
        self.status = status


class BlkReadOnly(BlkError):
    """A write was asked of a device that offers VIRTIO_BLK_F_RO."""


class BlkDriver(Driver):
    """Driver for the block device (device id 2); see the module docstring."""

    device_id: ClassVar[int] = DeviceId.BLOCK
    name: ClassVar[str] = "blk"
    device_features: ClassVar[int] = sum(
        1 << bit
        for bit in (
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_RO,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        )
    )
    max_queues: ClassVar[int] = MAX_QUEUES
    """Request queues used at most (subclass to change)."""
    queue_size: ClassVar[int] = DEFAULT_QUEUE_SIZE
    """Ring size asked for each queue (the device may allow less)."""

    def __init__(self, transport: DriverTransport, *, feature_mask: int = ~0) -> None:
        """Bind to ``transport``; nothing is read before :meth:`probe`."""
        super().__init__(transport, feature_mask=feature_mask)
        self._lock = threading.RLock()
        self.vqs: list[DriverRing] = []
        self.config = BlkConfig(capacity=0)
        self._rr = 0
        self.segment_bytes = SECTOR_SIZE
        self.max_segments = 1
        self.max_request_bytes = SECTOR_SIZE
        self.requests_done = 0
        """Requests completed since setup (any status)."""

    # --- setup ---------------------------------------------------------------------

    def setup(self) -> None:
        """Read the config space, derive safe limits, set up the request queues."""
        t = self.transport
        info = t.get_device_info()
        size = min(info.config_size, CONFIG.size)
        if size < 8:
            raise TransportError("protocol", f"blk config space of {size} bytes has no capacity")
        self.config = cfg = BlkConfig.unpack(t.get_config(0, size))
        pool = t.pool
        seg = min(POOL_MAPPING_CAP, pool.max_mapping_size)
        if self.has(VIRTIO_BLK_F_SIZE_MAX) and cfg.size_max:
            seg = min(seg, cfg.size_max)
        if seg >= SECTOR_SIZE:
            seg -= seg % SECTOR_SIZE
        self.segment_bytes = seg
        count = 1
        if self.has(VIRTIO_BLK_F_MQ):
            count = max(1, min(cfg.num_queues, self.max_queues, info.max_virtqueues))
        self.vqs = t.find_vqs(count, size=self.queue_size)
        ring = min(vq.size for vq in self.vqs)
        segs = ring - 2  # header and status take a descriptor each
        if self.has(VIRTIO_BLK_F_SEG_MAX) and cfg.seg_max:
            segs = min(segs, cfg.seg_max)
        self.max_segments = max(1, segs)
        pool_bytes = pool.stats().slots_total * pool.slot_size
        limit = min(self.max_segments * seg, REQUEST_CAP, pool_bytes // 8)
        self.max_request_bytes = max(SECTOR_SIZE, limit - limit % SECTOR_SIZE)

    def refresh_config(self) -> None:
        """Read the config space again (capacity and limits may have changed)."""
        size = min(self.transport.get_device_info().config_size, CONFIG.size)
        self.config = BlkConfig.unpack(self.transport.get_config(0, size))

    def has(self, bit: int) -> bool:
        """Whether device feature ``bit`` was negotiated."""
        return bool(self.features >> bit & 1)

    # --- geometry ------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Size in 512-byte sectors."""
        return self.config.capacity

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.config.capacity << SECTOR_SHIFT

    @property
    def read_only(self) -> bool:
        """Whether the device is read-only (VIRTIO_BLK_F_RO)."""
        return self.has(VIRTIO_BLK_F_RO)

    @property
    def block_size(self) -> int:
        """The device's preferred block size (blk_size, 512 if absent or not sane)."""
        bs = self.config.blk_size
        ok = self.has(VIRTIO_BLK_F_BLK_SIZE) and SECTOR_SIZE <= bs <= 1 << 16 and not bs & (bs - 1)
        return bs if ok else SECTOR_SIZE

    @property
    def num_queues(self) -> int:
        """Request queues in use."""
        return len(self.vqs)

    @property
    def supports_flush(self) -> bool:
        """Whether VIRTIO_BLK_F_FLUSH was negotiated (otherwise writes are write-through)."""
        return self.has(VIRTIO_BLK_F_FLUSH)

    @property
    def supports_discard(self) -> bool:
        """Whether VIRTIO_BLK_F_DISCARD was negotiated."""
        return self.has(VIRTIO_BLK_F_DISCARD)

    @property
    def supports_write_zeroes(self) -> bool:
        """Whether VIRTIO_BLK_F_WRITE_ZEROES was negotiated."""
        return self.has(VIRTIO_BLK_F_WRITE_ZEROES)

    # --- the request engine -------------------------------------------------------------

    def execute(self, ops: Iterable[BlkOp], *, check: bool = True) -> list[BlkOp]:
        """Run requests with as many in flight as the queues and the pool allow.

        Returns the requests, each with ``status`` (and ``result``) set.  With
        ``check`` a request that did not complete with OK raises
        :class:`BlkError` -- after all of them completed.  Requests are not
        validated against the device limits here: that is the device's job
        (and what the error-path tests rely on).
        """
        ops = list(ops)
        if len({id(op) for op in ops}) != len(ops):
            raise ValueError("the same BlkOp appears twice in one execute()")
        with self._lock:
            self.ready_for_io()
            if not self.vqs:
                raise BlkError("the blk driver is not set up")
            t = self.transport
            if t.removed:
                raise TransportError("removed", f"device {t.dev_num} was removed")
            if t.broken:
                raise DeviceBroken(f"device {t.dev_num} is broken: {t.broken}")
            pending = deque(ops)
            mine: set[int] = set()
            while pending or mine:
                self._submit(pending, mine)
                if not mine:
                    raise BlkError(
                        f"{pending[0]!r} does not fit the queues or the pool even with nothing "
                        "in flight"
                    )
                self.transport.wait_until(lambda: self._reap(mine))
        if check:
            for op in ops:
                if op.status != VIRTIO_BLK_S_OK:
                    name = _STATUS_NAMES.get(op.status or 0, str(op.status))
                    raise BlkError(f"{op!r} failed with status {name}", op.status)
        return ops

    def _submit(self, pending: deque[BlkOp], mine: set[int]) -> None:
        added: dict[int, DriverRing] = {}
        nq = len(self.vqs)
        while pending:
            op = pending[0]
            readable, writable = self._buffers(op)
            for _ in range(nq):
                vq = self.vqs[self._rr]
                self._rr = (self._rr + 1) % nq
                try:
                    vq.add(readable, writable, op)
                except (QueueFull, PoolExhausted):
                    continue
                added[vq.index] = vq
                pending.popleft()
                mine.add(id(op))
                break
            else:
                break  # nothing fits now: wait for completions
        for vq in added.values():
            self.transport.notify(vq)

    def _buffers(self, op: BlkOp) -> tuple[list[Buffer], list[int]]:
        seg = self.segment_bytes
        header = REQ_HEADER.pack(op.type, 0, op.sector)
        readable: list[Buffer] = [header]
        data = op.data
        readable += [data[i : i + seg] for i in range(0, data.nbytes, seg)]
        if op.payload:
            readable.append(op.payload)
        writable = [min(seg, op.in_len - i) for i in range(0, op.in_len, seg)]
        writable.append(1)
        return readable, writable

    def _reap(self, mine: set[int]) -> int:
        # Runs under the transport's condition: collect every completion now visible.
        if self.transport.engine.status & _NEEDS_RESET:
            raise BlkError(f"device {self.transport.dev_num} needs a reset")
        reaped = 0
        for vq in self.vqs:
            for token, parts in vq.get_used_parts():
                if not isinstance(token, BlkOp):
                    continue
                self._complete(token, parts)
                mine.discard(id(token))
                reaped += 1
        return reaped

    def _complete(self, op: BlkOp, parts: list[bytes]) -> None:
        # ``parts``: what the device wrote into each writable buffer (_buffers: the
        # data segments, then the one status byte), each copied out of the pool
        # once; the data is never joined with the status and cut off again.
        self.requests_done += 1
        if sum(map(len, parts)) < op.in_len + 1:
            # The status is the last writable byte; a shorter used length never wrote it.
            op.status = VIRTIO_BLK_S_IOERR
            op.result = b""
            return
        status = parts[-1][0]  # every buffer was written whole: the last is the status
        op.status = status if status in _STATUS_NAMES else VIRTIO_BLK_S_IOERR
        if op.status != VIRTIO_BLK_S_OK:
            op.result = b""
        elif len(parts) == 2:
            op.result = parts[0]
        else:
            op.result = b"".join(parts[:-1])

    # --- sectors -------------------------------------------------------------------------

    def _check_sectors(self, sector: int, count: int) -> None:
        if sector < 0 or count < 0 or sector + count > self.capacity:
            raise ValueError(
                f"sectors [{sector}, +{count}) outside the disk's {self.capacity} sectors"
            )

    def _check_writable(self) -> None:
        if self.read_only:
            raise BlkReadOnly(f"device {self.transport.dev_num} is read-only", VIRTIO_BLK_S_IOERR)

    def read_sectors(self, sector: int, count: int) -> bytes:
        """Read ``count`` sectors from ``sector`` (split into requests, all in flight)."""
        self._check_sectors(sector, count)
        step = self.max_request_bytes >> SECTOR_SHIFT
        ops = [
            BlkOp.read_sectors(s, min(step, sector + count - s))
            for s in range(sector, sector + count, step)
        ]
        return b"".join(op.result for op in self.execute(ops))

    def write_sectors(self, sector: int, data: Buffer) -> None:
        """Write whole sectors of ``data`` at ``sector`` (split, all in flight)."""
        view = memoryview(data).cast("B")
        if view.nbytes % SECTOR_SIZE:
            raise ValueError(f"{view.nbytes} bytes are not a whole number of sectors")
        count = view.nbytes >> SECTOR_SHIFT
        self._check_sectors(sector, count)
        self._check_writable()
        step = self.max_request_bytes
        ops = [
            BlkOp.write(sector + (i >> SECTOR_SHIFT), view[i : i + step])
            for i in range(0, view.nbytes, step)
        ]
        self.execute(ops)

    def flush(self) -> None:
        """Make completed writes stable (VIRTIO_BLK_T_FLUSH; nothing to do without FLUSH)."""
        if self.supports_flush:
            self.execute([BlkOp.flush()])

    def get_id(self) -> str:
        """The device id string (GET_ID), NUL padding removed."""
        (op,) = self.execute([BlkOp.get_id()])
        return op.result.split(b"\0", 1)[0].decode("ascii", "replace")

    def _ranges(
        self, sector: int, count: int, max_sectors: int, max_seg: int
    ) -> list[list[tuple[int, int]]]:
        max_sectors = max(1, max_sectors)
        max_seg = max(1, min(max_seg, self.segment_bytes // SEGMENT.size))
        segs = [
            (s, min(max_sectors, sector + count - s))
            for s in range(sector, sector + count, max_sectors)
        ]
        return [segs[i : i + max_seg] for i in range(0, len(segs), max_seg)]

    def discard(self, sector: int, count: int) -> None:
        """Discard ``count`` sectors (VIRTIO_BLK_T_DISCARD); their contents become undefined."""
        self._check_sectors(sector, count)
        self._check_writable()
        if not self.supports_discard:
            raise BlkError("the device does not support discard", VIRTIO_BLK_S_UNSUPP)
        if count:
            cfg = self.config
            groups = self._ranges(sector, count, cfg.max_discard_sectors, cfg.max_discard_seg)
            self.execute([BlkOp.discard(g) for g in groups])

    def write_zeroes(self, sector: int, count: int, *, unmap: bool = False) -> None:
        """Zero ``count`` sectors (VIRTIO_BLK_T_WRITE_ZEROES, or plain writes without it)."""
        self._check_sectors(sector, count)
        self._check_writable()
        if not count:
            return
        if not self.supports_write_zeroes:
            step = self.max_request_bytes
            zeros = bytes(step)
            end = (sector + count) << SECTOR_SHIFT
            ops = [
                BlkOp.write(pos >> SECTOR_SHIFT, memoryview(zeros)[: min(step, end - pos)])
                for pos in range(sector << SECTOR_SHIFT, end, step)
            ]
            self.execute(ops)
            return
        cfg = self.config
        groups = self._ranges(sector, count, cfg.max_write_zeroes_sectors, cfg.max_write_zeroes_seg)
        self.execute([BlkOp.write_zeroes(g, unmap=unmap) for g in groups])

    # --- byte ranges ----------------------------------------------------------------------

    def _check_bytes(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"bytes [{offset}, +{length}) outside the disk's {self.size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at byte ``offset`` (any alignment)."""
        self._check_bytes(offset, length)
        if not length:
            return b""
        first = offset >> SECTOR_SHIFT
        last = (offset + length + SECTOR_SIZE - 1) >> SECTOR_SHIFT
        data = self.read_sectors(first, last - first)
        skip = offset - (first << SECTOR_SHIFT)
        return data[skip : skip + length]

    def write(self, offset: int, data: Buffer) -> None:
        """Write ``data`` at byte ``offset``; partial sectors are read, patched and rewritten."""
        view = memoryview(data).cast("B")
        length = view.nbytes
        self._check_bytes(offset, length)
        self._check_writable()
        if not length:
            return
        first = offset >> SECTOR_SHIFT
        last = (offset + length + SECTOR_SIZE - 1) >> SECTOR_SHIFT
        head = offset - (first << SECTOR_SHIFT)
        if not head and not length % SECTOR_SIZE:
            self.write_sectors(first, view)
            return
        with self._lock:  # read-modify-write: no other request of ours in between
            edges = [first] if last - first == 1 else [first, last - 1]
            ops = self.execute([BlkOp.read_sectors(s, 1) for s in edges])
            buf = bytearray((last - first) << SECTOR_SHIFT)
            buf[:SECTOR_SIZE] = ops[0].result
            buf[-SECTOR_SIZE:] = ops[-1].result
            buf[head : head + length] = view
            self.write_sectors(first, buf)

    def zero_range(self, offset: int, length: int, *, unmap: bool = False) -> None:
        """Zero a byte range: whole sectors with WRITE_ZEROES, partial ones by writing."""
        self._check_bytes(offset, length)
        self._check_writable()
        first = (offset + SECTOR_SIZE - 1) >> SECTOR_SHIFT
        last = (offset + length) >> SECTOR_SHIFT
        with self._lock:
            if last <= first:
                self.write(offset, bytes(length))
                return
            if offset < first << SECTOR_SHIFT:
                self.write(offset, bytes((first << SECTOR_SHIFT) - offset))
            self.write_zeroes(first, last - first, unmap=unmap)
            if offset + length > last << SECTOR_SHIFT:
                self.write(last << SECTOR_SHIFT, bytes(offset + length - (last << SECTOR_SHIFT)))

    def discard_range(self, offset: int, length: int) -> None:
        """Discard the whole sectors inside a byte range (advisory: nothing if unsupported)."""
        self._check_bytes(offset, length)
        self._check_writable()
        first = (offset + SECTOR_SIZE - 1) >> SECTOR_SHIFT
        last = (offset + length) >> SECTOR_SHIFT
        if last > first and self.supports_discard:
            self.discard(first, last - first)

    # --- self-test --------------------------------------------------------------------------

    def selftest(self) -> dict[str, object]:
        """Write a pattern to a scratch area at the end of the disk, read it back, restore it."""
        report: dict[str, object] = {
            "capacity": f"{self.size >> 20} MiB" if self.size >= 1 << 20 else f"{self.size} B",
            "queues": self.num_queues,
            "id": self.get_id(),
        }
        nbytes = min(SELFTEST_BYTES, self.size)
        nbytes -= nbytes % SECTOR_SIZE
        sector = (self.size - nbytes) >> SECTOR_SHIFT
        original = self.read_sectors(sector, nbytes >> SECTOR_SHIFT)
        if self.read_only:
            report["read"] = f"{nbytes >> 10} KiB (read-only)"
            return report
        pattern = random.Random(sector).randbytes(nbytes)
        self.write_sectors(sector, pattern)
        self.flush()
        back = self.read_sectors(sector, nbytes >> SECTOR_SHIFT)
        self.write_sectors(sector, original)
        self.flush()
        if back != pattern:
            raise BlkError(f"self-test: {nbytes} bytes read back differ from those written")
        report["verified"] = f"{nbytes >> 10} KiB"
        return report


__all__ = ["MAX_QUEUES", "REQUEST_CAP", "BlkDriver", "BlkError", "BlkOp", "BlkReadOnly"]
