"""An in-process emulation of the seed kernel's loopback device files, for tests without a kernel.

It implements :class:`~virtio_msg.bus.kernel.KernelFiles` with the seed's
semantics as recorded in linux-rfc1-observed.md and linux-rfc1.md sections 3
and 4; the kernel's virtio drivers are played by the project's driver side
(a :class:`~virtio_msg.bus.loopback.LoopbackBus` in ``linux-rfc1`` mode, whose
region stands in for the restricted DMA pool).

* One transfer at a time under one lock (``vmlb->lock``): the request is
  copied into one reused 44-byte buffer the way ``msg_prepare`` does it —
  only ``msg_size`` bytes cleared, SET_DRV_FEATURES sent with ``msg_size`` 14
  and SET_CONFIG with 18 while their fields lie past it — so stale bytes of
  earlier requests follow ``msg_size``; then the transfer waits, bounded by the
  kernel timeout (4 s by default), for any write with the response bit.
  EVENT_AVAIL waits for an answer too.
* ``read(count)``: 0 bytes if ``count`` < 44; else blocks until a request is
  posted and returns ``count`` bytes (the frame, zero-padded past 44);
  :meth:`interrupt` makes it return 0 bytes, like a signal.
* ``write(data)``: 0 if shorter than 44; a response completes the transfer
  (even a stray one: seed defect 7); EVENT_USED reaches the driver inside the
  writer's call (defect 20); any other request or bus message is logged as
  "Unsupported message received" and dropped; the count is returned.
* ioctl: the argument is read before the command (None → EFAULT), unknown
  command → ENOTTY, ADD of a present number → EEXIST, REMOVE of an absent one
  → ENODEV; ADD returns after the probe, and fails with ETIMEDOUT when
  DEVICE_INFO timed out, ENODEV when it named no device.  REMOVE while the
  kernel driver is still bound deadlocks in the seed (defect 2); here it
  blocks until :meth:`SeedLoopback.close`, then fails with EDEADLK.
* mmap: the seed's unsigned bound check, underflow included (defect 1): a
  mapping larger than the region is *accepted* and recorded in ``maps``.
* sysfs: each ADDed device appears as ``virtioN``; ``unbind`` runs the
  driver's remove (its requests go through the transfer path).
"""

from __future__ import annotations

import errno
import mmap
import struct
import threading
from typing import Final

from virtio_msg.bus.kernel import IOCTL_VMSG_LB_ADD, IOCTL_VMSG_LB_REMOVE, KERNEL_TIMEOUT_S
from virtio_msg.bus.loopback import DEFAULT_BASE, DEFAULT_SIZE, LoopbackBus
from virtio_msg.errors import TransportError
from virtio_msg.spec import TransportMsg
from virtio_msg.transport.params import BusParams
from virtio_msg.wire.compat import KERNEL_FRAME_SIZE, SEED_SET_CONFIG_SIZE, SEED_SET_FEATURES_SIZE

__all__ = ["SeedLoopback"]

_U16: Final = struct.Struct("<H")
_MASK64: Final = (1 << 64) - 1
_SEED_SIZES: Final[dict[int, int]] = {
    TransportMsg.SET_DRIVER_FEATURES: SEED_SET_FEATURES_SIZE,
    TransportMsg.SET_CONFIG: SEED_SET_CONFIG_SIZE,
}


class SeedLoopback:
    """The seed kernel's ``/dev/virtio-msg-lb`` and ``/dev/virtio-msg-0``, emulated in process.

    ``frames`` records every request frame handed to a reader, ``written``
    every frame written, ``kernel_log`` what the seed would print, ``maps``
    every (length, offset) mapping granted.
    """

    def __init__(
        self,
        *,
        size: int = DEFAULT_SIZE,
        base: int = DEFAULT_BASE,
        timeout_s: float = KERNEL_TIMEOUT_S,
    ) -> None:
        """Create the driver side (a linux-rfc1 loopback bus with the region)."""
        self.timeout_s = timeout_s
        params = BusParams(profile="linux-rfc1", timeout_ms=int(timeout_s * 1000) + 2000)
        self.bus = LoopbackBus(params, size=size, base=base, name="virtio-msg-lb")
        self.bus.attach(self)
        self.frames: list[bytes] = []
        self.written: list[bytes] = []
        self.kernel_log: list[str] = []
        self.maps: list[tuple[int, int]] = []
        self.timeouts = 0
        self._transfer = threading.Lock()  # vmlb->lock around a transfer
        self._table = threading.Lock()  # vmlb->lock around the device list
        self._cond = threading.Condition()
        self._buffer = bytearray(KERNEL_FRAME_SIZE)  # vmdev->request, reused
        self._posted = 0  # r_completion
        self._completed = 0  # w_completion
        self._vmsg: bytes | None = None
        self._response: bytes | None = None
        self._waiting = False
        self._interrupted: set[int] = set()
        self._devices: dict[int, str] = {}
        self._next_virtio = 0
        self._closed = False

    # --- KernelFiles --------------------------------------------------------------------------

    def open_lb(self) -> SeedLoopback:
        """The control device (this object)."""
        return self

    def open_msg(self) -> _MsgFile:
        """The message device."""
        return _MsgFile(self)

    def interrupt(self, thread_id: int) -> None:
        """A signal to thread ``thread_id``: its blocked ``read`` returns 0 bytes."""
        with self._cond:
            self._interrupted.add(thread_id)
            self._cond.notify_all()

    # --- the Channel the driver side delivers to (virtio_msg_lb_transfer) ------------------

    def deliver(self, data: bytes) -> None:
        """One transfer of a driver-side request: post it the seed's way, hand back the answer."""
        with self._transfer:
            response = self._exchange(self._prepare(data))
        self.bus.receive(response, self)

    def transfer(self, frame: bytes) -> bytes:
        """Post ``frame`` exactly as given (as the kernel would) and return the response.

        TransportError("timeout") after the kernel timeout, like the seed's -ETIMEDOUT.
        """
        with self._transfer:
            return self._exchange(bytes(frame))

    def _exchange(self, frame: bytes) -> bytes:
        with self._cond:
            self._vmsg = frame
            self._response = None
            self._waiting = True
            self._posted += 1
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._completed > 0 or self._closed, self.timeout_s)
            if self._completed > 0:
                self._completed -= 1
            response, self._response = self._response, None
            self._vmsg = None
            self._waiting = False
        if not done or (self._closed and response is None):
            self.timeouts += 1
            self.kernel_log.append("misc virtio-msg-lb: Timed out waiting for response")
            raise TransportError("timeout", "Timed out waiting for response")
        if response is None:  # a stray response completed this transfer (defect 7)
            raise TransportError("protocol", "transfer completed by an earlier response")
        return response

    def _prepare(self, data: bytes) -> bytes:
        """Fill the reused request buffer like the seed's ``msg_prepare`` + field stores."""
        buf = self._buffer
        seed_size = len(data)
        if data[0] == 0x00:
            seed_size = _SEED_SIZES.get(data[1], seed_size)
        buf[: min(seed_size, KERNEL_FRAME_SIZE)] = bytes(min(seed_size, KERNEL_FRAME_SIZE))
        n = min(len(data), KERNEL_FRAME_SIZE)
        buf[:n] = data[:n]
        _U16.pack_into(buf, 4, seed_size)
        return bytes(buf)

    # --- read / write --------------------------------------------------------------------------

    def _read(self, count: int) -> bytes:
        if count < KERNEL_FRAME_SIZE:
            return b""
        me = threading.get_ident()
        with self._cond:
            self._cond.wait_for(lambda: self._posted > 0 or me in self._interrupted or self._closed)
            if self._posted == 0:
                self._interrupted.discard(me)
                return b""
            self._posted -= 1
            frame, self._vmsg = self._vmsg, None
        if frame is None:  # the request timed out before anyone read it (defect 7)
            self.kernel_log.append("WARNING: read() with no message pending")
            return b""
        self.frames.append(frame)
        return frame.ljust(count, b"\0")

    def _write(self, data: bytes) -> int:
        if len(data) < KERNEL_FRAME_SIZE:
            return 0
        frame = bytes(data)
        self.written.append(frame)
        if frame[0] & 0x01:
            with self._cond:
                if self._waiting:
                    self._response = frame[:KERNEL_FRAME_SIZE]  # always 44 bytes (defect 6)
                self._completed += 1
                self._cond.notify_all()
            return len(frame)
        if frame[0] & 0x02 or frame[1] != TransportMsg.EVENT_USED:
            self.kernel_log.append("misc virtio-msg-lb: Unsupported message received")
            return len(frame)
        (dev_id,) = _U16.unpack_from(frame, 2)
        if dev_id in self._devices:
            self.bus.receive(frame, self)  # the driver's callback runs in the writer (defect 20)
        return len(frame)

    # --- LbDevice ---------------------------------------------------------------------------

    def region_size(self) -> int:
        """``fixed_size_llseek`` at SEEK_END: the region's size."""
        return self.bus.region.size

    def map(self, length: int, offset: int) -> mmap.mmap:
        """The seed's check ``offset > size - length`` in unsigned 64-bit arithmetic."""
        if offset > (self.bus.region.size - length) & _MASK64:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.maps.append((length, offset))
        if offset + length > self.bus.region.size:
            # The seed maps physical memory past the pool; stand-in: anonymous pages.
            return mmap.mmap(-1, length)
        return mmap.mmap(
            self.bus.region.fd,
            length,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset,
        )

    def ioctl(self, cmd: int, dev_id: int | None) -> None:
        """ADD / REMOVE with the seed's numbers and errors."""
        if dev_id is None:
            raise OSError(errno.EFAULT, "Bad address")
        if cmd == IOCTL_VMSG_LB_ADD:
            self._add(dev_id)
        elif cmd == IOCTL_VMSG_LB_REMOVE:
            self._remove(dev_id)
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def _add(self, dev_id: int) -> None:
        num = dev_id & 0xFFFF  # stored in a u16 (defect 12)
        with self._table:
            if num in self._devices:
                raise OSError(errno.EEXIST, "File exists")
            self._devices[num] = f"virtio{self._next_virtio}"
            self._next_virtio += 1
        before = self.timeouts
        entry = self.bus.add_device(num, self)
        if entry.device_id == 0:  # virtio_msg_register failed: unlinked again
            self.bus.remove_device(num)
            with self._table:
                del self._devices[num]
            if self.timeouts > before:
                raise OSError(errno.ETIMEDOUT, "Connection timed out")
            raise OSError(errno.ENODEV, "No such device")

    def _remove(self, dev_id: int) -> None:
        num = dev_id & 0xFFFF
        with self._table:
            if num not in self._devices:
                self.kernel_log.append("misc virtio-msg-lb: Failed to find virtio msg lb device.")
                raise OSError(errno.ENODEV, "No such device")
        entry = self.bus.device(num)
        if entry is not None and entry.driver is not None:
            # The seed calls the driver's remove with vmlb->lock held; its first
            # transfer then waits for that lock forever (defect 2).
            with self._cond:
                self._cond.wait_for(lambda: self._closed)
            raise OSError(errno.EDEADLK, "REMOVE deadlocked with a bound driver (seed defect 2)")
        with self._table:
            del self._devices[num]
        self.bus.remove_device(num)

    def virtio_devices(self) -> set[str]:
        """The ``virtioN`` children of the loopback device in sysfs."""
        with self._table:
            return set(self._devices.values())

    def unbind(self, name: str) -> bool:
        """Write ``name`` to the driver's ``unbind``: the driver's remove runs now."""
        with self._table:
            nums = [n for n, v in self._devices.items() if v == name]
        entry = self.bus.device(nums[0]) if nums else None
        if entry is None or entry.driver is None:
            return False
        driver, entry.driver = entry.driver, None
        driver.remove()
        return True

    def present(self) -> list[int]:
        """Device numbers ADDed and not REMOVEd."""
        with self._table:
            return sorted(self._devices)

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiter and release the driver side."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.bus.close()


class _MsgFile:
    """``/dev/virtio-msg-0`` of a :class:`SeedLoopback`."""

    def __init__(self, kernel: SeedLoopback) -> None:
        self.kernel = kernel

    def read(self, count: int) -> bytes:
        """The seed's ``read`` (see the module docstring)."""
        return self.kernel._read(count)

    def write(self, data: bytes) -> int:
        """The seed's ``write`` (see the module docstring)."""
        return self.kernel._write(data)

    def close(self) -> None:
        """Nothing to release."""
