"""The kernel channel: a backend on the seed kernel's /dev/virtio-msg-N and /dev/virtio-msg-lb.

Theory of operation.  The seed's loopback (linux-rfc1.md sections 3 and 4,
linux-rfc1-observed.md) hands every request of the kernel's virtio drivers to
user space through one misc device: ``read(44)`` blocks until the kernel has a
request and returns it as a 44-byte frame (bytes after ``msg_size`` are stale);
a ``write`` of at least 44 bytes with the response bit completes the kernel's
one outstanding transfer, and an EVENT_USED written without it interrupts the
driver — inside the writer's ``write`` call.  ``/dev/virtio-msg-lb`` maps the
restricted DMA pool (file offset 0 = the pool's base, which the device does not
report) and takes the ADD/REMOVE ioctls; ADD returns only after the kernel has
probed the device, so the request reader must already be running.

:class:`KernelChannel` is a :class:`~virtio_msg.bus.backend.BusPort` for a
:class:`~virtio_msg.bus.backend.Backend` in ``linux-rfc1`` kernel-compat mode:

* one reader thread blocked in ``read(44)`` from before the first ADD; it hands
  each frame to the backend and writes the response (kicks included) itself;
  a frame the backend cannot answer (malformed, unknown device) gets a zeroed
  response of the same id, so the kernel fails at once instead of after its
  4 s timeout;
* one writer thread for EVENT_USED / EVENT_CONFIG: the kernel runs the driver's
  callback inside that ``write``, and a kick the callback makes needs the
  reader free (seed defect 20);
* ADD and REMOVE with the seed's ioctl numbers, each bounded, errno turned into
  a :class:`KernelError` that says what happened; before REMOVE the kernel
  driver is unbound through sysfs when it can be, because the seed calls the
  driver's remove with its transfer lock held (seed defect 2);
* the region is mapped with exactly the size ``lseek(SEEK_END)`` reports, never
  more (seed defect 1: the kernel's own bound check would allow it);
* with a ``capture`` writer, every buffer is recorded exactly as ``read``
  returned it (driver->device, stale bytes after ``msg_size`` kept) and as it
  is handed to ``write`` (device->driver, the 44-byte frame).

All device-file access goes through the small :class:`KernelFiles` interface:
:class:`DeviceFiles` is the real one (``os.open``, ``os.read``, ``fcntl.ioctl``,
``mmap``); :mod:`virtio_msg.bus.kernel_emulation` plays the seed kernel in
process for tests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import queue
import re
import signal
import struct
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol, TypeVar

from virtio_msg.bus.backend import Backend
from virtio_msg.bus.capture import CaptureWriter, ChannelKind, ChannelTap, Side
from virtio_msg.errors import VirtioMsgError
from virtio_msg.memory import Region
from virtio_msg.transport.model import DeviceModel
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Profile
from virtio_msg.wire.compat import KERNEL_FRAME_SIZE

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LB_PATH",
    "DEFAULT_MSG_PATH",
    "IOCTL_VMSG_LB_ADD",
    "IOCTL_VMSG_LB_REMOVE",
    "DeviceFiles",
    "KernelChannel",
    "KernelError",
    "KernelFiles",
    "LbDevice",
    "MsgDevice",
]

IOCTL_VMSG_LB_ADD: Final = 0x00045000
"""``_IOC(_IOC_NONE, 'P', 0, 4)``: the seed's ADD (argument: ``struct vmsg_lb_dev_info``)."""
IOCTL_VMSG_LB_REMOVE: Final = 0x00045001
"""``_IOC(_IOC_NONE, 'P', 1, 4)``: the seed's REMOVE."""
DEFAULT_LB_PATH: Final = "/dev/virtio-msg-lb"
"""The seed loopback's region and control device."""
DEFAULT_MSG_PATH: Final = "/dev/virtio-msg-0"
"""The user API device of the first virtio-msg bus (the loopback on a seed kernel)."""
DEFAULT_SYSFS_DIR: Final = "/sys/class/misc/virtio-msg-lb"
"""Where the kernel's virtio devices of the loopback appear (``virtioN`` children)."""
KERNEL_TIMEOUT_S: Final = 4.0
"""The seed's transfer timeout: 1000 jiffies, 4 s at HZ=250 (observed 4.07 s)."""
_DEV_INFO: Final = struct.Struct("<I")  # struct vmsg_lb_dev_info { unsigned int dev_id; }
_VIRTIO_NAME: Final = re.compile(r"virtio\d+\Z")
_T = TypeVar("_T")


class KernelError(VirtioMsgError):
    """The kernel refused or failed an operation; the message says which and why."""

    def __init__(self, message: str, err: int | None = None) -> None:
        """``err`` is the errno the kernel returned, if any."""
        super().__init__(message)
        self.errno = err


class MsgDevice(Protocol):
    """``/dev/virtio-msg-N`` as the seed defines it (no poll, no O_NONBLOCK)."""

    def read(self, count: int) -> bytes:
        """Block until the kernel has a message; b"" when interrupted (or count < 44)."""

    def write(self, data: bytes) -> int:
        """Hand one message to the kernel; the count written (0 if refused)."""

    def close(self) -> None:
        """Close the file."""


class LbDevice(Protocol):
    """``/dev/virtio-msg-lb``: region size, mapping, ADD/REMOVE, and the kernel's virtio devices."""

    def region_size(self) -> int:
        """The region's size (``lseek(fd, 0, SEEK_END)``)."""

    def map(self, length: int, offset: int) -> mmap.mmap:
        """Map ``length`` bytes at file ``offset`` (shared, read/write); OSError if refused."""

    def ioctl(self, cmd: int, dev_id: int | None) -> None:
        """Issue ``cmd`` with a ``vmsg_lb_dev_info`` (None: a NULL pointer); OSError on failure."""

    def virtio_devices(self) -> set[str]:
        """Names (``virtioN``) of the kernel's virtio devices on this loopback, if visible."""

    def unbind(self, name: str) -> bool:
        """Unbind the kernel driver of virtio device ``name``; False if none was bound."""

    def close(self) -> None:
        """Close the file."""


class KernelFiles(Protocol):
    """Opens the two device files and can interrupt a thread blocked in ``read``."""

    def open_lb(self) -> LbDevice:
        """Open the loopback's control device."""

    def open_msg(self) -> MsgDevice:
        """Open the bus's message device."""

    def interrupt(self, thread_id: int) -> None:
        """Make a ``read`` blocked in thread ``thread_id`` return b"" (best effort)."""


# --- the real files ---------------------------------------------------------------------------


class _RealMsg:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def read(self, count: int) -> bytes:
        return os.read(self.fd, count)

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


class _RealLb:
    def __init__(self, path: str, sysfs_dir: str) -> None:
        self.path = path
        self.sysfs = Path(sysfs_dir)
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def region_size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def map(self, length: int, offset: int) -> mmap.mmap:
        return mmap.mmap(
            self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )

    def ioctl(self, cmd: int, dev_id: int | None) -> None:
        if dev_id is None:
            fcntl.ioctl(self.fd, cmd, 0)  # a NULL pointer: EFAULT from the seed
        else:
            fcntl.ioctl(self.fd, cmd, _DEV_INFO.pack(dev_id))

    def virtio_devices(self) -> set[str]:
        try:
            return {p.name for p in self.sysfs.iterdir() if _VIRTIO_NAME.match(p.name)}
        except OSError:
            return set()

    def unbind(self, name: str) -> bool:
        unbind = self.sysfs / name / "driver" / "unbind"
        if not unbind.exists():
            return False
        unbind.write_text(name)
        return True

    def close(self) -> None:
        os.close(self.fd)


class DeviceFiles:
    """The real device files (paths configurable); see :class:`KernelFiles`.

    :meth:`interrupt` signals the reader thread with SIGUSR1 when the program
    has installed a Python handler for it (the seed's ``read`` returns 0 on a
    signal); otherwise the reader, a daemon thread, ends with the process.
    """

    def __init__(
        self,
        lb_path: str = DEFAULT_LB_PATH,
        msg_path: str = DEFAULT_MSG_PATH,
        sysfs_dir: str = DEFAULT_SYSFS_DIR,
    ) -> None:
        """Remember the paths; nothing is opened yet."""
        self.lb_path = lb_path
        self.msg_path = msg_path
        self.sysfs_dir = sysfs_dir

    def open_lb(self) -> LbDevice:
        """Open ``lb_path`` read/write."""
        return _RealLb(self.lb_path, self.sysfs_dir)

    def open_msg(self) -> MsgDevice:
        """Open ``msg_path`` read/write."""
        return _RealMsg(self.msg_path)

    def interrupt(self, thread_id: int) -> None:
        """Send SIGUSR1 to the thread if a Python handler is installed for it."""
        if callable(signal.getsignal(signal.SIGUSR1)):
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(thread_id, signal.SIGUSR1)


# --- errno -> message -----------------------------------------------------------------------


def _ioctl_error(op: str, dev_num: int, exc: OSError) -> KernelError:
    code = exc.errno
    name = errno.errorcode.get(code or 0, str(code))
    why = {
        errno.EEXIST: f"device {dev_num} is already on the kernel's loopback",
        errno.ENODEV: (
            f"device {dev_num} is not on the kernel's loopback"
            if op == "REMOVE"
            else f"the kernel refused device {dev_num} (no usable device type or "
            "feature set in the answers it got)"
        ),
        errno.ETIMEDOUT: (
            f"the kernel gave up on device {dev_num} after its 4 s timeout: a request "
            "went unanswered (is the backend reading /dev/virtio-msg-N?)"
        ),
        errno.ENOTTY: "the device does not know the seed's ioctl: is this the seed's "
        "/dev/virtio-msg-lb?",
        errno.EFAULT: "the kernel could not read the ioctl argument",
    }.get(code or 0, exc.strerror or "failed")
    return KernelError(f"{op} {dev_num}: {why} ({name})", code)


# --- the channel -----------------------------------------------------------------------------


class KernelChannel:
    """A backend served to the seed kernel through its device files (see the module docstring)."""

    def __init__(
        self,
        files: KernelFiles,
        base: int,
        size: int | None = None,
        *,
        op_timeout_s: float = 60.0,
        backend_class: type[Backend] = Backend,
        capture: CaptureWriter | None = None,
    ) -> None:
        """Open the files, map the region at bus address ``base`` and start the reader.

        ``size``, when given (from the device tree or the command line), must
        equal the size the device reports; the mapping always has the
        device's size.  ``op_timeout_s`` bounds each ADD and REMOVE.
        ``backend_class`` serves the devices (a recording one for the
        conformance tool); ``capture`` records every buffer read and written
        (channel ``kernel``, side ``backend``).
        """
        self.files = files
        self.tap: ChannelTap | None = None
        """Where the buffers are recorded (None: capture is off)."""
        if capture is not None:
            self.tap = capture.tap(
                ChannelKind.KERNEL, Profile.LINUX_RFC1, max_size=KERNEL_FRAME_SIZE,
                side=Side.BACKEND,
            )
        self.op_timeout_s = op_timeout_s
        self.stats: Counter[str] = Counter()
        """Frames read, responses and events written, frames refused, ..."""
        self._names: dict[int, str] = {}
        self._added: set[int] = set()
        self._stop = threading.Event()
        self._events: queue.Queue[bytes | None] = queue.Queue()
        self._answered = False
        self._delivering = False  # the reader is answering a frame (reader thread only)
        self._held: list[bytes] = []  # events raised meanwhile, written after the answer
        self.closed = False
        self.lb = files.open_lb()
        try:
            self.region = self._map(base, size)
        except BaseException:
            self.lb.close()
            raise
        try:
            self.msg = files.open_msg()
        except BaseException:
            self.region.close()
            self.lb.close()
            raise
        params = BusParams(profile="linux-rfc1", max_msg_size=KERNEL_FRAME_SIZE)
        self.backend = backend_class(
            self.region, params, kernel_compat=True, answer_kicks_first=False
        )
        self.backend.attach(self)
        self._reader = threading.Thread(target=self._read_loop, name="kernel-reader", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="kernel-writer", daemon=True)
        self._reader.start()
        self._writer.start()

    def _map(self, base: int, size: int | None) -> Region:
        real = self.lb.region_size()
        if real <= 0:
            raise KernelError("the loopback reports an empty region (lseek SEEK_END = 0)")
        if size is not None and size != real:
            raise KernelError(
                f"the configured region size {size:#x} differs from the {real:#x} bytes "
                "the loopback device maps: fix the device tree or --size"
            )
        try:
            mm = self.lb.map(real, 0)  # exactly the region, never more (seed defect 1)
        except OSError as exc:
            raise KernelError(f"cannot map the region ({real:#x} bytes): {exc}", exc.errno) from exc
        try:
            return Region.from_mapping(mm, base)
        except BaseException:
            mm.close()
            raise

    # --- serving ----------------------------------------------------------------------------

    def serve(self, dev_num: int, model: DeviceModel, *, async_reset_polls: int = 0) -> None:
        """Serve ``model`` as device ``dev_num`` and ADD it (returns once the kernel probed it)."""
        self.backend.serve(dev_num, model, async_reset_polls=async_reset_polls)

    def withdraw(self, dev_num: int) -> None:
        """REMOVE ``dev_num`` from the kernel and stop serving it."""
        self.backend.withdraw(dev_num)

    @property
    def devices(self) -> list[int]:
        """The device numbers served."""
        return sorted(self.backend.devices)

    # --- BusPort ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write a response now (the reader's own answer) or queue an event for the writer.

        An event raised while the reader answers a request (the used buffers of
        a kick) is held until that answer is written: the kernel caller may hold
        a spinlock across the kick that the event's callback takes (hvc's lock:
        virtio_console's put_chars, then in_intr's hvc_poll), so an event
        written first spins in the kernel until the answer comes.
        """
        frame = data if len(data) >= KERNEL_FRAME_SIZE else data.ljust(KERNEL_FRAME_SIZE, b"\0")
        if frame[0] & 0x01:
            self._answered = True
            self._write(frame, "response")
        elif self._delivering and threading.get_ident() == self._reader.ident:
            self._held.append(frame)
        else:
            self._events.put(frame)

    def add(self, dev_num: int) -> None:
        """ADD ``dev_num`` (bounded); KernelError on failure."""
        before = self.lb.virtio_devices()
        self._bounded("ADD", dev_num, lambda: self.lb.ioctl(IOCTL_VMSG_LB_ADD, dev_num))
        self._added.add(dev_num)
        new = sorted(self.lb.virtio_devices() - before)
        if len(new) == 1:
            self._names[dev_num] = new[0]

    def remove(self, dev_num: int) -> None:
        """Unbind the kernel driver (when visible), then REMOVE ``dev_num`` (bounded)."""
        self._added.discard(dev_num)
        name = self._names.pop(dev_num, None)
        if name is not None:
            try:
                self._bounded("unbind", dev_num, lambda: self.lb.unbind(name))
            except (KernelError, OSError) as exc:
                log.warning("device %d: could not unbind %s: %s", dev_num, name, exc)
        self._bounded("REMOVE", dev_num, lambda: self.lb.ioctl(IOCTL_VMSG_LB_REMOVE, dev_num))

    def _bounded(self, op: str, dev_num: int, fn: Callable[[], _T]) -> _T:
        result: list[_T] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(fn())
            except BaseException as exc:  # handed to the caller
                error.append(exc)

        t = threading.Thread(target=run, name=f"kernel-{op}-{dev_num}", daemon=True)
        t.start()
        t.join(self.op_timeout_s)
        if t.is_alive():
            hint = (
                " (the seed kernel removes a device with its transfer lock held and "
                "deadlocks if a driver is still bound: linux-rfc1.md section 5, defect 2)"
                if op == "REMOVE"
                else ""
            )
            raise KernelError(f"{op} {dev_num}: no return within {self.op_timeout_s:g} s{hint}")
        if error:
            exc = error[0]
            if isinstance(exc, OSError) and op != "unbind":
                raise _ioctl_error(op, dev_num, exc) from exc
            raise exc
        return result[0]

    # --- threads ------------------------------------------------------------------------------

    def _write(self, frame: bytes, kind: str) -> None:
        if self.tap is not None:
            self.tap.up(frame)
        try:
            n = self.msg.write(frame)
        except OSError as exc:
            self.stats[f"{kind}-write-error"] += 1
            log.warning("kernel channel: %s write failed: %s", kind, exc)
            return
        if n != len(frame):
            self.stats[f"{kind}-refused"] += 1
            log.warning("kernel channel: the kernel took %d of %d bytes", n, len(frame))
        else:
            self.stats[kind] += 1

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.msg.read(KERNEL_FRAME_SIZE)
            except OSError as exc:
                if self._stop.is_set():
                    break
                self.stats["read-error"] += 1
                log.warning("kernel channel: read failed: %s", exc)
                self._stop.wait(0.05)
                continue
            if not frame:  # a signal (or the emulation's wake-up)
                self.stats["empty-read"] += 1
                continue
            self.stats["frame"] += 1
            if self.tap is not None:
                self.tap.down(frame)
            self._answered = False
            self._delivering = True
            try:
                self.backend.deliver(frame)
            except Exception:
                log.exception("kernel channel: backend failed on %s", frame.hex())
            finally:
                self._delivering = False
            if not self._answered:
                self._refuse(frame)
            for event in self._held:
                self._events.put(event)
            self._held.clear()

    def _refuse(self, frame: bytes) -> None:
        """Answer a frame the backend did not: a zeroed response, so the kernel fails now."""
        self.stats["refused"] += 1
        if len(frame) < 6:
            return
        log.debug("kernel channel: refused frame %s", frame.hex())
        answer = bytes((0x01 | (frame[0] & 0x02), frame[1])) + frame[2:4] + b"\x06\x00"
        self._write(answer.ljust(KERNEL_FRAME_SIZE, b"\0"), "refusal")

    def _write_loop(self) -> None:
        while True:
            try:
                frame = self._events.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if frame is None:
                return
            self._write(frame, "event")

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """REMOVE every device, stop both threads (bounded) and release the files."""
        if self.closed:
            return
        self.closed = True
        failures: list[str] = []
        for dev_num in sorted(self.backend.devices, reverse=True):
            if dev_num not in self._added:  # served without an ADD: nothing to REMOVE
                self.backend.devices.pop(dev_num).model.reset()
                continue
            try:
                self.backend.withdraw(dev_num)
            except (KernelError, ValueError) as exc:
                failures.append(str(exc))
                log.warning("kernel channel: %s", exc)
        self._events.put(None)
        self._writer.join(5.0)
        self._stop.set()
        if self._reader.ident is not None:
            self.files.interrupt(self._reader.ident)
        self._reader.join(2.0)
        if not self._reader.is_alive():
            self.msg.close()
        # else: still blocked in read(); closing its fd under it could hand the
        # number to another file.  It is a daemon thread and ends with the process.
        self.region.close()
        self.lb.close()
        if failures:
            raise KernelError("; ".join(failures))

    def __enter__(self) -> KernelChannel:
        """Context manager: :meth:`close` on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the channel."""
        self.close()
