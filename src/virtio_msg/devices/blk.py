"""virtio-blk device model (device id 2): a raw image file behind request queues.

Strategy.  Each request is one descriptor chain.  With VIRTIO_F_VERSION_1 the
framing is free (ANY_LAYOUT), so the device treats the readable buffers as one
byte stream -- a 16-byte header (``type``, ``reserved``, ``sector``) followed
by data or discard/write-zeroes segments -- and the writable buffers as
another, whose *last* byte is the status (virtio 1.x §5.2.6).

Processing is split in two, as STYLE 8 asks:

* :func:`parse_request` is pure: from the header bytes, the chain's lengths
  and the device's limits it returns a :class:`BlkRequest` or a
  :class:`Rejection` (status + reason).  It never touches memory or the file.
* :meth:`BlkDevice._execute` does the I/O.  Data moves with ``os.preadv`` /
  ``os.pwritev`` straight between the image file and zero-copy views of the
  shared region, so a read is one copy, like a real device's DMA.

Untrusted ring contents never crash the device: the queue validates every
chain (every buffer is inside the region), every length is checked before
anything is read, and any request the device cannot honour is completed with
``VIRTIO_BLK_S_IOERR`` or ``VIRTIO_BLK_S_UNSUPP``; the reason is counted in
:attr:`BlkDevice.errors`.  The only request that cannot be answered is one
without a single writable byte (nowhere to put the status): it is completed
with used length 0 and counted.  A chain that breaks the *ring* rules is
the transport's business (DEVICE_NEEDS_RESET).

The used length is the whole writable length for every completed request:
the status byte is the last writable byte, so the written span reaches the
end (QEMU reports the same).

Processing is synchronous by default (completed inside the EVENT_AVAIL that
announced it).  Given an ``executor`` -- a callable that runs a function
later on another thread, such as ``ThreadPoolExecutor(max_workers=1).submit``
-- the model hands each notification to it instead, so completions arrive
later through EVENT_USED, as from a real device.  The model itself creates no
thread (ARCHITECTURE 2: nothing below ``bus/`` does); whoever owns the
executor owns the thread.  A reset waits for the chain in progress and makes
deferred work queued before it a no-op.

Limits: ``size_max`` never exceeds the restricted pool's mapping cap (256 KiB,
128 slots of 2 KiB: a driver could not map a larger segment), and
``seg_max`` + 2 (header, status) fits the queue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Final

from virtio_msg.devices.blk_protocol import (
    CONFIG,
    DEFAULT_MAX_DISCARD_SECTORS,
    DEFAULT_MAX_DISCARD_SEG,
    DEFAULT_SERIAL,
    DEFAULT_TEMP_SIZE,
    ID_BYTES,
    IOV_BATCH,
    POOL_MAPPING_CAP,
    REQ_HEADER,
    REQUEST_TYPE_NAMES,
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
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    ZERO_CHUNK,
    BlkConfig,
    BlkRequest,
    Executor,
    Limits,
    Rejection,
    parse_request,
    parse_segments,
)
from virtio_msg.errors import MemoryAccessError, VirtioMsgError
from virtio_msg.memory import Region
from virtio_msg.spec import DeviceId
from virtio_msg.transport.model import RING_FEATURES, DeviceModel
from virtio_msg.virtqueue import DescriptorChain, DeviceRing

log = logging.getLogger(__name__)

# --- file helpers ------------------------------------------------------------------------

_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02
_FALLOC_FL_ZERO_RANGE: Final = 0x10


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    # os has posix_fallocate only; hole punching needs fallocate(2) with flags.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.fallocate64
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    func.restype = ctypes.c_int
    fallocate: Callable[[int, int, int, int], int] = func
    return fallocate


_FALLOCATE = _load_fallocate()


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Return True if fallocate(2) did it; False if the file system cannot; raise on I/O error."""
    if _FALLOCATE is None:
        return False
    if _FALLOCATE(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
        return False
    raise OSError(err, os.strerror(err))


def _io_full(
    func: str, fd: int, views: list[memoryview], offset: int
) -> None:
    """preadv/pwritev every byte of ``views`` at ``offset`` (short transfers continue)."""
    pending = [v for v in views if v.nbytes]
    while pending:
        batch = pending[:IOV_BATCH]
        want = sum(v.nbytes for v in batch)
        done = os.preadv(fd, batch, offset) if func == "read" else os.pwritev(fd, batch, offset)
        if done <= 0:
            raise OSError(errno.EIO, f"{func} at {offset}: image file ended early")
        offset += done
        if done == want:
            pending = pending[len(batch):]
            continue
        while done:  # skip fully transferred buffers, cut the partial one
            head = pending[0]
            if done >= head.nbytes:
                done -= head.nbytes
                pending.pop(0)
            else:
                pending[0] = head[done:]
                done = 0


def _views(
    region: Region, buffers: Sequence[tuple[int, int]], start: int, length: int
) -> list[memoryview]:
    """Zero-copy views of ``length`` bytes starting ``start`` bytes into a buffer list."""
    out: list[memoryview] = []
    for addr, blen in buffers:
        if length <= 0:
            break
        if start >= blen:
            start -= blen
            continue
        take = min(blen - start, length)
        out.append(region.view(addr + start, take))
        length -= take
        start = 0
    return out


def _gather(region: Region, buffers: Sequence[tuple[int, int]], start: int, length: int) -> bytes:
    return b"".join(bytes(v) for v in _views(region, buffers, start, length))


# --- the device model --------------------------------------------------------------------


class BlkDevice(DeviceModel):
    """virtio-blk over a raw image file (or a temporary one).

    ``path`` None: a temporary sparse image of ``size`` bytes (default 16 MiB),
    removed when the device is closed.  ``path`` given: the raw image there;
    if ``size`` is given too, the file is created at that size when missing
    (and must have that size when present).  ``read_only`` opens the image
    read-only and offers VIRTIO_BLK_F_RO.  ``num_queues`` > 1 offers
    VIRTIO_BLK_F_MQ.  ``ring_features`` limits the ring features offered
    (indirect descriptors, EVENT_IDX, ring reset).  ``executor`` (e.g.
    ``ThreadPoolExecutor(max_workers=1).submit``) serves requests later, on
    the executor's thread, instead of inside the notification; use a single
    worker, so that one queue is never drained by two threads at once.
    """

    device_id = DeviceId.BLOCK
    name = "blk"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        size: int | None = None,
        read_only: bool = False,
        num_queues: int = 1,
        queue_max_size: int = 256,
        size_max: int = POOL_MAPPING_CAP,
        seg_max: int | None = None,
        blk_size: int = SECTOR_SIZE,
        serial: str = DEFAULT_SERIAL,
        flush: bool = True,
        discard: bool = True,
        write_zeroes: bool = True,
        max_discard_sectors: int = DEFAULT_MAX_DISCARD_SECTORS,
        max_discard_seg: int = DEFAULT_MAX_DISCARD_SEG,
        executor: Executor | None = None,
        ring_features: int = RING_FEATURES,
    ) -> None:
        """Open (or create) the image and describe the device; ValueError on bad options."""
        if not 1 <= num_queues <= 0xFFFF:
            raise ValueError(f"num_queues {num_queues} outside 1..65535")
        if not 4 <= queue_max_size <= 32768 or queue_max_size & (queue_max_size - 1):
            raise ValueError(f"queue_max_size {queue_max_size} is not a power of two in 4..32768")
        if not SECTOR_SIZE <= size_max <= POOL_MAPPING_CAP:
            raise ValueError(
                f"size_max {size_max} outside {SECTOR_SIZE}..{POOL_MAPPING_CAP} "
                "(the pool's mapping cap)"
            )
        if seg_max is None:
            seg_max = queue_max_size - 2
        if not 1 <= seg_max <= queue_max_size - 2:
            raise ValueError(f"seg_max {seg_max} outside 1..{queue_max_size - 2} (queue size - 2)")
        if blk_size < SECTOR_SIZE or blk_size & (blk_size - 1) or blk_size > 1 << 16:
            raise ValueError(f"blk_size {blk_size} is not a power of two in 512..65536")
        ident = serial.encode("ascii")
        if len(ident) > ID_BYTES:
            raise ValueError(f"serial {serial!r} is longer than {ID_BYTES} bytes")
        if not 1 <= max_discard_seg <= 4096 or not 1 <= max_discard_sectors <= 0xFFFFFFFF:
            raise ValueError("max_discard_seg must be 1..4096 and max_discard_sectors 1..2**32-1")
        self._tmp: IO[bytes] | None = None
        self.path = None if path is None else os.fspath(path)
        self.fd, nbytes = self._open(self.path, size, read_only)
        self.read_only = read_only
        self.capacity = nbytes >> SECTOR_SHIFT
        self.serial = ident.ljust(ID_BYTES, b"\0")
        self.size_max = size_max
        self.seg_max = seg_max
        features = (1 << VIRTIO_BLK_F_SIZE_MAX) | (1 << VIRTIO_BLK_F_SEG_MAX)
        features |= 1 << VIRTIO_BLK_F_BLK_SIZE
        if read_only:
            features |= 1 << VIRTIO_BLK_F_RO
        if flush:
            features |= 1 << VIRTIO_BLK_F_FLUSH
        if num_queues > 1:
            features |= 1 << VIRTIO_BLK_F_MQ
        if discard:
            features |= 1 << VIRTIO_BLK_F_DISCARD
        if write_zeroes:
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
        self.blk_config = BlkConfig(
            capacity=self.capacity, size_max=size_max, seg_max=seg_max, blk_size=blk_size,
            num_queues=num_queues,
            max_discard_sectors=max_discard_sectors if discard else 0,
            max_discard_seg=max_discard_seg if discard else 0,
            discard_sector_alignment=blk_size >> SECTOR_SHIFT if discard else 0,
            max_write_zeroes_sectors=max_discard_sectors if write_zeroes else 0,
            max_write_zeroes_seg=max_discard_seg if write_zeroes else 0,
            write_zeroes_may_unmap=1 if write_zeroes and _FALLOCATE is not None else 0,
        )
        super().__init__(
            features=features, config=self.blk_config.pack(), num_queues=num_queues,
            queue_max_size=queue_max_size, ring_features=ring_features & RING_FEATURES,
        )
        self.requests: Counter[str] = Counter()
        """Requests completed, by type name ("IN", "OUT", ..., "other")."""
        self.errors: Counter[str] = Counter()
        """Requests refused or failed, by reason ("sector-out-of-range", "io-error", ...)."""
        self.per_queue: Counter[int] = Counter()
        """Chains served, by queue index."""
        self.max_batch = 0
        """Most chains served for one notification (how many were in flight at once)."""
        self.bytes_read = 0
        self.bytes_written = 0
        self._can_punch = True
        self._can_zero_range = True
        self._limits = self._make_limits(0)
        self.executor = executor
        self._work_lock = threading.Lock()
        self._epoch = 0
        self.closed = False

    # --- image ---------------------------------------------------------------------

    def _open(self, path: str | None, size: int | None, read_only: bool) -> tuple[int, int]:
        if size is not None and (size <= 0 or size % SECTOR_SIZE):
            raise ValueError(f"image size {size} is not a positive multiple of {SECTOR_SIZE}")
        if path is None:
            # Lives as long as the device; closed (and so removed) by close().
            self._tmp = tempfile.TemporaryFile(prefix="virtio-msg-blk-")  # noqa: SIM115
            fd = self._tmp.fileno()
            os.ftruncate(fd, DEFAULT_TEMP_SIZE if size is None else size)
            return fd, os.fstat(fd).st_size
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if size is None:
                raise ValueError(
                    f"image {path!r} does not exist (give a size to create it)"
                ) from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
            if read_only:
                os.close(fd)
                fd = os.open(path, flags)
        except IsADirectoryError:
            raise ValueError(f"image {path!r} is a directory") from None
        nbytes = os.fstat(fd).st_size
        if size is not None and nbytes != size:
            os.close(fd)
            raise ValueError(f"image {path!r} exists with {nbytes} bytes, not the {size} asked")
        if nbytes < SECTOR_SIZE:
            os.close(fd)
            raise ValueError(f"image {path!r} holds {nbytes} bytes, less than one sector")
        return fd, nbytes

    def close(self) -> None:
        """Close the image (a temporary one disappears); deferred work left becomes a no-op."""
        with self._work_lock:  # never under a chain in progress
            if self.closed:
                return
            self.closed = True
        if self._tmp is not None:
            self._tmp.close()
        else:
            os.close(self.fd)

    def __enter__(self) -> BlkDevice:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the device."""
        self.close()

    # --- transport hooks ---------------------------------------------------------

    def _make_limits(self, features: int) -> Limits:
        cfg = self.blk_config

        def has(bit: int) -> bool:
            return bool(features >> bit & 1)

        return Limits(
            capacity=self.capacity,
            read_only=self.read_only,
            flush=has(VIRTIO_BLK_F_FLUSH),
            discard=has(VIRTIO_BLK_F_DISCARD),
            write_zeroes=has(VIRTIO_BLK_F_WRITE_ZEROES),
            max_transfer=self.seg_max * self.size_max,
            max_discard_sectors=cfg.max_discard_sectors,
            max_discard_seg=cfg.max_discard_seg,
            max_write_zeroes_sectors=cfg.max_write_zeroes_sectors,
            max_write_zeroes_seg=cfg.max_write_zeroes_seg,
        )

    def activate(self) -> None:
        """DRIVER_OK: fix the limits for the negotiated features."""
        self._limits = self._make_limits(self.negotiated_features)

    def reset(self) -> None:
        """Device reset: work queued before it is dropped (waits for a chain in progress)."""
        with self._work_lock:
            self._epoch += 1

    def queue_reset(self, index: int) -> None:
        """RESET_VQUEUE: like a reset for the queued work."""
        self.reset()

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Serve every available request now, or hand the queue to the executor."""
        if self.executor is None:
            if self._drain(index, queue):
                self.notify_used(index)
            return
        epoch = self._epoch
        self.executor(lambda: self._deferred(epoch, index, queue))

    def _drain(self, index: int, queue: DeviceRing) -> bool:
        served = 0
        while (chain := queue.pop()) is not None:
            queue.add_used(chain.head, self._serve(chain))
            served += 1
        self.per_queue[index] += served
        self.max_batch = max(self.max_batch, served)
        return served > 0

    # --- deferred processing (with an executor) -----------------------------------------

    def _deferred(self, epoch: int, index: int, queue: DeviceRing) -> None:
        """Runs on the executor's thread; never raises (an executor may swallow errors)."""
        served = False
        failure: str | None = None
        with self._work_lock:
            if epoch != self._epoch or self.closed:
                return  # queued before a reset (the queue is gone) or after close
            try:
                served = self._drain(index, queue)
            except VirtioMsgError as exc:
                failure = str(exc)
            except Exception as exc:  # a model bug must not vanish into a Future
                log.exception("blk: deferred work on queue %d", index)
                failure = f"model error {exc!r}"
        # The transport lock is taken only here, outside the work lock (no deadlock
        # with a reset, which holds the transport lock and waits for the work lock).
        try:
            if served:
                self.notify_used(index)
            if failure is not None:
                self.fail(f"queue {index}: {failure}")
        except Exception:
            log.exception("blk: completing deferred work on queue %d", index)

    # --- requests ----------------------------------------------------------------------

    def _serve(self, chain: DescriptorChain) -> int:
        """Execute one chain; return the used length.  Never raises for request contents."""
        wlen = chain.writable_len
        if wlen == 0:
            self.errors["no-status-byte"] += 1  # nowhere to report anything
            return 0
        try:
            status = self._execute(chain)
        except (OSError, MemoryAccessError) as exc:
            log.warning("blk: request failed: %s", exc)
            self.errors["io-error"] += 1
            status = VIRTIO_BLK_S_IOERR
        chain.write(bytes((status,)), wlen - 1)
        return wlen

    def _reject(self, rej: Rejection) -> int:
        self.errors[rej.reason] += 1
        return rej.status

    def _execute(self, chain: DescriptorChain) -> int:
        region = self.region
        limits = self._limits
        header = _gather(region, chain.readable, 0, min(chain.readable_len, REQ_HEADER.size))
        req = parse_request(header, chain.readable_len, chain.writable_len, limits)
        if isinstance(req, Rejection):
            return self._reject(req)
        rtype = req.type
        offset = req.sector << SECTOR_SHIFT
        if rtype == VIRTIO_BLK_T_IN:
            _io_full("read", self.fd, _views(region, chain.writable, 0, req.data_len), offset)
            self.bytes_read += req.data_len
        elif rtype == VIRTIO_BLK_T_OUT:
            views = _views(region, chain.readable, REQ_HEADER.size, req.data_len)
            _io_full("write", self.fd, views, offset)
            self.bytes_written += req.data_len
        elif rtype == VIRTIO_BLK_T_FLUSH:
            if not self.read_only:
                os.fsync(self.fd)
        elif rtype == VIRTIO_BLK_T_GET_ID:
            chain.write(self.serial[: req.data_len])
        else:
            payload = _gather(region, chain.readable, REQ_HEADER.size, req.data_len)
            segments = parse_segments(rtype, payload, limits)
            if isinstance(segments, Rejection):
                return self._reject(segments)
            for sector, num, flags in segments:
                if rtype == VIRTIO_BLK_T_DISCARD:
                    self._discard(sector << SECTOR_SHIFT, num << SECTOR_SHIFT)
                else:
                    unmap = bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
                    self._write_zeroes(sector << SECTOR_SHIFT, num << SECTOR_SHIFT, unmap)
        self.requests[REQUEST_TYPE_NAMES.get(rtype, "other")] += 1
        return VIRTIO_BLK_S_OK

    def _discard(self, offset: int, length: int) -> None:
        # §5.2.6.2: the device MAY deallocate; where it cannot, discard does nothing.
        if length and self._can_punch:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            self._can_punch = _fallocate(self.fd, mode, offset, length)

    def _write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        # Reads of the range must return zeros afterwards, whatever the file system does.
        if not length:
            return
        if unmap and self._can_punch:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self.fd, mode, offset, length):
                return
            self._can_punch = False
        if self._can_zero_range:
            mode = _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self.fd, mode, offset, length):
                return
            self._can_zero_range = False
        zeros = bytes(min(length, ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = os.pwrite(self.fd, memoryview(zeros)[: min(len(zeros), end - offset)], offset)
            if n <= 0:
                raise OSError(errno.EIO, "write-zeroes: short write")
            offset += n


__all__ = [
    "CONFIG",
    "DEFAULT_TEMP_SIZE",
    "ID_BYTES",
    "POOL_MAPPING_CAP",
    "REQ_HEADER",
    "SECTOR_SIZE",
    "SEGMENT",
    "VIRTIO_BLK_F_BLK_SIZE",
    "VIRTIO_BLK_F_DISCARD",
    "VIRTIO_BLK_F_FLUSH",
    "VIRTIO_BLK_F_MQ",
    "VIRTIO_BLK_F_RO",
    "VIRTIO_BLK_F_SEG_MAX",
    "VIRTIO_BLK_F_SIZE_MAX",
    "VIRTIO_BLK_F_WRITE_ZEROES",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_T_DISCARD",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_WRITE_ZEROES",
    "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP",
    "BlkConfig",
    "BlkDevice",
    "BlkRequest",
    "Executor",
    "Limits",
    "Rejection",
    "parse_request",
    "parse_segments",
]
