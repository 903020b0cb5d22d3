"""The kernel channel against the emulated seed loopback (no kernel needed).

BUS-44 style requirements of the seed: every message the kernel sends is
answered, kicks included; EVENT_USED is its own write; ADD returns after the
probe and its errors are reported clearly; the region is mapped exactly.
"""

from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kernel_observed import PROBE_SEQUENCE

from virtio_msg.bus.kernel import (
    IOCTL_VMSG_LB_ADD,
    IOCTL_VMSG_LB_REMOVE,
    KernelChannel,
    KernelError,
    LbDevice,
    MsgDevice,
)
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.devices.catalog import make_device
from virtio_msg.errors import TransportError
from virtio_msg.spec import TransportMsg

SIZE = 1 << 20


@pytest.fixture
def kernel() -> Iterator[SeedLoopback]:
    k = SeedLoopback(size=SIZE, timeout_s=2.0)
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def channel(kernel: SeedLoopback) -> Iterator[KernelChannel]:
    ch = KernelChannel(kernel, kernel.bus.region.base, SIZE, op_timeout_s=10.0)
    try:
        yield ch
    finally:
        ch.close()


def _driver(kernel: SeedLoopback, dev_num: int) -> object:
    entry = kernel.bus.device(dev_num)
    assert entry is not None
    assert entry.error is None, entry.error
    assert entry.driver is not None
    return entry.driver


@pytest.mark.parametrize("type_name", ["rng", "blk", "console", "i2c"])
def test_every_device_model_is_probed_and_used_through_the_channel(
    kernel: SeedLoopback, channel: KernelChannel, type_name: str
) -> None:
    channel.serve(3, make_device(type_name))
    assert kernel.present() == [3]  # ADD returned after the probe
    result = _driver(kernel, 3).selftest()  # type: ignore[attr-defined]
    assert result
    assert kernel.timeouts == 0  # the kernel never waited in vain
    assert channel.stats["refused"] == 0
    kicks = [f for f in kernel.frames if f[1] == TransportMsg.EVENT_AVAIL]
    answers = [f for f in kernel.written if f[:2] == bytes((0x01, TransportMsg.EVENT_AVAIL))]
    assert kicks and len(answers) == len(kicks)  # every kick answered
    # EVENT_USED comes from the writer thread; the driver may have seen the used
    # ring before it was written, so wait (bounded) for it.
    assert _eventually(lambda: _used(kernel))
    assert all(len(f) == 44 for f in _used(kernel))  # each its own 44-byte message


def _used(kernel: SeedLoopback) -> list[bytes]:
    return [f for f in kernel.written if f[:2] == bytes((0x00, TransportMsg.EVENT_USED))]


def _eventually(check: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_blk_image_file_reads_and_writes_through_the_kernel_path(
    kernel: SeedLoopback, channel: KernelChannel, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    channel.serve(1, make_device("blk", path=image))
    drv = _driver(kernel, 1)
    assert drv.read_sectors(2, 1) == (bytes(range(256)) * 2)  # type: ignore[attr-defined]
    drv.write_sectors(5, b"\x5a" * 512)  # type: ignore[attr-defined]
    drv.flush()  # type: ignore[attr-defined]
    channel.withdraw(1)
    assert image.read_bytes()[5 * 512 : 6 * 512] == b"\x5a" * 512


def test_several_devices_and_clean_shutdown_removes_them(kernel: SeedLoopback) -> None:
    ch = KernelChannel(kernel, kernel.bus.region.base)
    for n, t in enumerate(["rng", "console", "i2c"]):
        ch.serve(n, make_device(t))
    assert kernel.present() == [0, 1, 2]
    ch.close()
    assert kernel.present() == []  # unbound first, so the seed's REMOVE did not deadlock
    assert not any("Timed out" in line for line in kernel.kernel_log)


def test_region_is_mapped_exactly_once_at_its_own_size(
    kernel: SeedLoopback, channel: KernelChannel
) -> None:
    assert kernel.maps == [(SIZE, 0)]
    assert channel.region.size == SIZE and channel.region.base == kernel.bus.region.base


def test_emulated_mmap_check_has_the_seeds_underflow(kernel: SeedLoopback) -> None:
    kernel.map(0x1000, SIZE - 0x1000).close()
    with pytest.raises(OSError) as exc:
        kernel.map(0x1000, SIZE)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        kernel.map(SIZE, 0x1000)
    kernel.map(2 * SIZE, 0).close()  # accepted, as by the real seed: callers must not ask


def test_configured_size_that_differs_from_the_device_is_refused(kernel: SeedLoopback) -> None:
    with pytest.raises(KernelError, match="differs from the 0x100000 bytes"):
        KernelChannel(kernel, kernel.bus.region.base, 2 * SIZE)
    assert kernel.maps == []


def test_add_of_a_present_number_is_eexist(kernel: SeedLoopback, channel: KernelChannel) -> None:
    channel.serve(0, make_device("rng"))
    with pytest.raises(KernelError, match=r"already on the kernel's loopback \(EEXIST\)"):
        channel.add(0)


def test_remove_of_an_absent_number_is_enodev(channel: KernelChannel) -> None:
    with pytest.raises(KernelError, match=r"REMOVE 9: .*not on the kernel's loopback \(ENODEV\)"):
        channel.remove(9)


def test_add_of_a_number_without_a_model_is_refused_at_once(
    kernel: SeedLoopback, channel: KernelChannel
) -> None:
    # The backend serves nothing as 4: the channel answers DEVICE_INFO with a
    # zeroed response, and the kernel refuses the device without timing out.
    with pytest.raises(KernelError, match=r"refused device 4 .*\(ENODEV\)"):
        channel.add(4)
    assert kernel.timeouts == 0 and channel.stats["refused"] == 1


class _DeafFiles:
    """The emulated kernel, but the channel's reader never gets a message."""

    def __init__(self, kernel: SeedLoopback) -> None:
        self.kernel = kernel
        self.wake = threading.Event()

    def open_lb(self) -> LbDevice:
        return self.kernel

    def open_msg(self) -> MsgDevice:
        files = self

        class Deaf:
            def read(self, count: int) -> bytes:
                files.wake.wait(10)
                return b""

            def write(self, data: bytes) -> int:
                return 0

            def close(self) -> None:
                pass

        return Deaf()

    def interrupt(self, thread_id: int) -> None:
        self.wake.set()


def test_add_that_the_kernel_gives_up_on_is_etimedout() -> None:
    kernel = SeedLoopback(size=SIZE, timeout_s=0.2)
    try:
        ch = KernelChannel(_DeafFiles(kernel), kernel.bus.region.base)
        with pytest.raises(KernelError, match=r"gave up on device 2 after its 4 s timeout"):
            ch.add(2)
        assert "misc virtio-msg-lb: Timed out waiting for response" in kernel.kernel_log
        ch.close()
    finally:
        kernel.close()


def test_emulated_ioctl_errors(kernel: SeedLoopback) -> None:
    for cmd, arg, code in (
        (IOCTL_VMSG_LB_ADD | 0x40000000, 0, errno.ENOTTY),  # the _IOW-encoded number
        (0x1234, 0, errno.ENOTTY),
        (IOCTL_VMSG_LB_ADD, None, errno.EFAULT),
        (0x1234, None, errno.EFAULT),  # the argument is read before the command
        (IOCTL_VMSG_LB_REMOVE, 5, errno.ENODEV),
    ):
        with pytest.raises(OSError) as exc:
            kernel.ioctl(cmd, arg)
        assert exc.value.errno == code


def test_emulated_short_reads_and_writes_return_zero(kernel: SeedLoopback) -> None:
    msg = kernel.open_msg()
    assert msg.read(10) == b""
    assert msg.write(b"\x01" * 10) == 0
    assert msg.write(b"\x01" * 43) == 0


def _play_kernel(kernel: SeedLoopback, frame: bytes) -> bytes:
    """Send one frame as the kernel's transfer would; return what the backend wrote."""
    before = len(kernel.written)
    kernel.transfer(frame)
    answers = kernel.written[before:]
    responses = [a for a in answers if a[0] & 1]
    assert len(responses) == 1, answers
    return responses[0]


def test_the_observed_probe_sequence_is_answered_frame_by_frame(
    kernel: SeedLoopback, channel: KernelChannel
) -> None:
    channel.backend.serve(0, make_device("rng"), add=False)
    for name, frame in PROBE_SEQUENCE:
        answer = _play_kernel(kernel, frame)
        assert answer[1] == frame[1], name
        assert len(answer) == 44
        if name == "DEVICE_INFO":
            assert struct.unpack_from("<I", answer, 6)[0] == 4  # virtio-rng
        if name == "GET_DEV_FEATURES":
            words = struct.unpack_from("<II", answer, 14)
            assert words[1] & 0x3 == 0x3  # VERSION_1 and ACCESS_PLATFORM offered
    status = [a for a in kernel.written if a[:2] == b"\x01\x07"][-1]
    assert struct.unpack_from("<I", status, 6)[0] == 0xB  # FEATURES_OK kept: #8 was understood
    assert channel.stats["refused"] == 0


@pytest.mark.parametrize(
    "frame",
    [
        bytes(44),  # DEVICE_INFO-shaped zeros... msg_size 0
        b"\x00\x77\x00\x00\x06\x00".ljust(44, b"\0"),  # unknown msg_id
        b"\x00\x02\x00\x00\xff\xff".ljust(44, b"\xee"),  # msg_size past the frame
        b"\x01\x02\x00\x00\x06\x00".ljust(44, b"\0"),  # a response from the kernel
        b"\x02\x03\x00\x00\x0a\x00".ljust(44, b"\0"),  # a bus message
        b"\x00\x02\x09\x00\x06\x00".ljust(44, b"\0"),  # a device nobody serves
        b"\x00\x04\x00\x00\x0e\x00\x00\x00\x00\x00\xff\xff\xff\xff".ljust(44, b"\0"),
    ],
    ids=["zero-size", "unknown-id", "oversize", "response", "bus", "unknown-dev", "huge-num"],
)
def test_hostile_kernel_frames_are_answered_without_a_timeout(
    kernel: SeedLoopback, channel: KernelChannel, frame: bytes
) -> None:
    channel.backend.serve(0, make_device("rng"), add=False)
    answer = _play_kernel(kernel, frame)
    assert answer[1] == frame[1] and answer[2:4] == frame[2:4]
    assert answer[4:6] == b"\x06\x00" and answer[6:] == bytes(38)  # zeroed: fails fast
    assert kernel.timeouts == 0
    assert channel.stats["refused"] == 1
    # the channel still serves afterwards
    channel.serve(1, make_device("rng"))
    assert _driver(kernel, 1).read(8)  # type: ignore[attr-defined]


def test_stale_bytes_after_msg_size_are_ignored(
    kernel: SeedLoopback, channel: KernelChannel
) -> None:
    channel.serve(0, make_device("rng"))
    stale = [f for f in kernel.frames if any(f[struct.unpack_from("<H", f, 4)[0] :])]
    assert stale  # the emulation leaves residue like the real kernel ...
    assert channel.stats["refused"] == 0  # ... and every frame was still understood
    feats = [f for f in kernel.frames if f[1] == TransportMsg.SET_DRIVER_FEATURES]
    assert feats and all(struct.unpack_from("<H", f, 4)[0] == 14 for f in feats)


def test_unanswered_transfer_times_out_in_the_emulation(kernel: SeedLoopback) -> None:
    quick = SeedLoopback(size=SIZE, timeout_s=0.1)
    try:
        with pytest.raises(TransportError, match="Timed out"):
            quick.transfer(PROBE_SEQUENCE[0][1])
        assert quick.timeouts == 1
    finally:
        quick.close()


class _NoSysfs:
    """The emulated kernel without sysfs: the channel cannot unbind the driver first."""

    def __init__(self, kernel: SeedLoopback) -> None:
        self.kernel = kernel

    def open_lb(self) -> LbDevice:
        kernel = self.kernel

        class Lb:
            region_size = kernel.region_size
            map = kernel.map
            ioctl = kernel.ioctl

            def virtio_devices(self) -> set[str]:
                return set()

            def unbind(self, name: str) -> bool:
                return False

            def close(self) -> None:
                pass

        return Lb()

    def open_msg(self) -> MsgDevice:
        return self.kernel.open_msg()

    def interrupt(self, thread_id: int) -> None:
        self.kernel.interrupt(thread_id)


def test_remove_with_a_bound_driver_is_bounded_and_names_the_seed_defect() -> None:
    kernel = SeedLoopback(size=SIZE)
    try:
        ch = KernelChannel(_NoSysfs(kernel), kernel.bus.region.base, op_timeout_s=0.3)
        ch.serve(0, make_device("rng"))
        with pytest.raises(KernelError, match=r"REMOVE 0: no return within 0.3 s .*defect 2"):
            ch.close()
    finally:
        kernel.close()


@pytest.mark.parametrize("type_name", ["rng", "console"])
def test_a_kick_is_answered_only_after_its_queue_was_processed(
    kernel: SeedLoopback, channel: KernelChannel, type_name: str
) -> None:
    """The used ring is written before the kick returns to the kernel.

    virtio_console polls the used ring right after a kick with a spinlock held
    (__send_control_msg, put_chars); on a one-CPU guest the backend never runs
    again, so an answer sent before the processing froze the real kernel.
    """
    model = make_device(type_name)
    events: list[str] = []
    notify = model.queue_notify

    def traced_notify(index: int, queue: object) -> None:
        notify(index, queue)  # type: ignore[arg-type]
        events.append("processed")

    model.queue_notify = traced_notify  # type: ignore[method-assign]
    write = kernel._write

    def traced_write(data: bytes) -> int:
        if data[:2] == bytes((0x01, TransportMsg.EVENT_AVAIL)):
            events.append("answered")
        return write(data)

    kernel._write = traced_write  # type: ignore[method-assign]
    channel.serve(0, model)
    assert _driver(kernel, 0).selftest()  # type: ignore[attr-defined]
    assert events.count("answered") >= 1
    pairs = [events[i : i + 2] for i in range(0, len(events), 2)]
    assert all(p == ["processed", "answered"] for p in pairs), events


def test_used_events_of_a_kick_are_written_after_its_answer(kernel: SeedLoopback) -> None:
    """A kick's EVENT_USED follows the kick's answer, never precedes it.

    The kernel may hold a spinlock across the kick that the EVENT_USED
    callback takes (virtio_console: hvc's lock in put_chars, then hvc_poll in
    in_intr); an event written before the answer spins until the answer comes.
    """
    order: list[str] = []
    read, write = kernel._read, kernel._write

    def traced_read(count: int) -> bytes:
        frame = read(count)
        if frame[:2] == bytes((0x00, TransportMsg.EVENT_AVAIL)):
            order.append("kick")
        return frame

    used_tried = threading.Event()

    def traced_write(data: bytes) -> int:
        if data[:2] == bytes((0x01, TransportMsg.EVENT_AVAIL)):
            # give an event that was not held back the time to overtake the answer
            used_tried.wait(0.3)
            order.append("answer")
        elif data[:2] == bytes((0x00, TransportMsg.EVENT_USED)):
            used_tried.set()
            order.append("used")
        return write(data)

    kernel._read = traced_read  # type: ignore[method-assign]
    kernel._write = traced_write  # type: ignore[method-assign]
    ch = KernelChannel(kernel, kernel.bus.region.base, SIZE, op_timeout_s=10.0)
    try:
        ch.serve(0, make_device("rng"))
        assert _driver(kernel, 0).selftest()  # type: ignore[attr-defined]
        assert _eventually(lambda: "used" in order)
    finally:
        ch.close()
    pending = False  # a kick read and not yet answered
    for item in order:
        if item == "kick":
            pending = True
        elif item == "answer":
            pending = False
        else:
            assert not pending, order
