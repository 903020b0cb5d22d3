"""The checks the guest runs with the kernel's own drivers (executed inside the booted guest).

``python3 -m virtio_msg.guest.inguest rng,blk,console,i2c [BUDGET]`` is started
by the initramfs' ``/init``.  It starts ``virtio-msg backend --kernel`` on the seed's
device files, waits (bounded) for each device's kernel driver to bind, then
exercises it the way a user would: ``/dev/hwrng`` is read, ``/dev/vda`` is
written and compared with the image file the backend serves (both ways, past
the page cache), a line written to ``/dev/hvc0`` must come back from the
backend's echo console, and a ds1338 is instantiated on the virtio I2C adapter
and its clock set and read back.  Every verdict is printed on the console as one
``VMSG-CHECK {json}`` line (``/init`` then prints the kernel log and
``VMSG-END``).  A missing kernel feature is a failed check naming the
``CONFIG_`` option.  A watchdog bounds the whole run by ``BUDGET`` seconds:
when it is spent, the run ends with a failed ``complete`` check naming the step
that was stuck, the backend's threads' tracebacks and, where the kernel has
``CONFIG_MAGIC_SYSRQ``, its blocked tasks in the kernel log.  When the host
asked for a capture (:mod:`.capture_out`), the backend records the kernel
channel and, once it has stopped, the capture is printed on the console for
the host to copy out.
"""

from __future__ import annotations

import argparse
import faulthandler
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from virtio_msg.devices.i2c import DEMO_RTC_ADDRESS
from virtio_msg.guest.capture_out import CaptureCopyError, backend_args, emit_capture, load_config
from virtio_msg.guest.inguest_conformance import run_conformance

LB = Path("/dev/virtio-msg-lb")
RTC_TIME = struct.Struct("9i")
"""``struct rtc_time``: sec, min, hour, mday, mon (0-11), year (-1900), wday, yday, isdst."""
RTC_SET_TIME = 0x4024700A
"""``_IOW('p', 0x0a, struct rtc_time)``."""
RTC_RD_TIME = 0x80247009
"""``_IOR('p', 0x09, struct rtc_time)``."""
RTC_PROBE_TIME = (5, 4, 3, 2, 0, 130, 3, 1, 0)
"""2030-01-02 03:04:05, a Wednesday: a date a DS1338 (years 2000-2099) can hold."""
DISK = Path("/tmp/vmsg-disk.img")
"""The image file the backend serves as the blk device (in the guest's tmpfs)."""
DISK_SIZE = 16 << 20
WAIT_S = 60.0
DRIVERS = {
    "rng": ("virtio_rng", "CONFIG_HW_RANDOM_VIRTIO"),
    "blk": ("virtio_blk", "CONFIG_VIRTIO_BLK"),
    "console": ("virtio_console", "CONFIG_VIRTIO_CONSOLE"),
    "i2c": ("i2c_virtio", "CONFIG_I2C_VIRTIO"),
}
LB_OPTIONS = (
    "CONFIG_VIRTIO_MSG_LOOPBACK (with CONFIG_VIRTIO_MSG, CONFIG_VIRTIO_MSG_USER, "
    "CONFIG_DMA_RESTRICTED_POOL, CONFIG_OF_RESERVED_MEM)"
)


def emit(name: str, ok: bool, detail: str) -> None:
    """Print one verdict line on the console."""
    line = json.dumps({"name": name, "ok": ok, "detail": detail})
    sys.stdout.write(f"\nVMSG-CHECK {line}\n")
    sys.stdout.flush()


def wait_for(pred: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def bounded(fn: Callable[[], str], timeout: float) -> str:
    """Run ``fn`` in a thread; its result, or raise TimeoutError after ``timeout``."""
    box: list[str | BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class Watchdog:
    """Ends the run when its budget is spent, saying which step was stuck and where."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.step = "start"
        self.started = self.since = time.monotonic()
        self.backend: Backend | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.budget - (time.monotonic() - self.started)

    def enter(self, step: str) -> None:
        """Record the step now running."""
        self.step, self.since = step, time.monotonic()

    def stop(self) -> None:
        """The run finished in time."""
        self._done.set()

    def _run(self) -> None:
        if self._done.wait(self.budget):
            return
        stuck = time.monotonic() - self.since
        backend = self.backend
        if backend is not None and backend.proc.poll() is None:
            backend.proc.send_signal(signal.SIGABRT)  # faulthandler prints its threads
            with_timeout(lambda: backend.proc.wait(), 5)
        sysrq = Path("/proc/sysrq-trigger")
        if sysrq.exists():
            with_timeout(lambda: sysrq.write_text("w\n"), 5)  # blocked tasks, into dmesg
        sys.stdout.write("\nVMSG-LOG inguest threads:\n")
        sys.stdout.flush()
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        if backend is not None:
            log = bytes(backend.output[-6000:]).decode(errors="replace")
            sys.stdout.write(f"\nVMSG-LOG backend output (last 6000 bytes):\n{log}\n")
        emit(
            "complete",
            False,
            f"the checks did not finish within {self.budget:.0f} s: the {self.step} step "
            f"was stuck for {stuck:.0f} s (backend threads and the kernel log are in the "
            "console log: --keep DIR)",
        )
        os._exit(3)


def with_timeout(fn: Callable[[], object], timeout: float) -> None:
    """Run ``fn`` in a daemon thread and wait for it at most ``timeout`` seconds."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)


class Backend:
    """``virtio-msg backend --kernel`` in a child process, its output collected."""

    def __init__(self, devices: list[str], argv: list[str] | None = None) -> None:
        """Start the backend for ``devices`` (``argv`` replaces its command line)."""
        cmd = [sys.executable, "-X", "faulthandler", "-m", "virtio_msg", "backend", "--kernel"]
        cmd = argv if argv is not None else cmd + devices
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.output += chunk

    def tail(self) -> str:
        """The last lines the backend printed."""
        return bytes(self.output[-400:]).decode(errors="replace").strip()

    def stop(self) -> int | None:
        """SIGTERM, bounded wait; the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        return self.proc.returncode


def driver_present(kind: str) -> bool:
    """Whether the kernel has the device type's virtio driver."""
    return Path("/sys/bus/virtio/drivers", DRIVERS[kind][0]).is_dir()


HWRNG = Path("/sys/class/misc/hw_random")


def rng_names() -> list[str]:
    """The hwrng names the kernel offers (``rng_available``), [] if none."""
    try:
        return (HWRNG / "rng_available").read_text().split()
    except OSError:
        return []


def check_rng(before: Sequence[str]) -> str:
    """Make the loopback's virtio hwrng current and read 256 bytes from /dev/hwrng.

    Its name is the virtio one that was not offered before the backend ADDed
    its devices (another, e.g. QEMU's virtio-mmio rng, may already exist).
    """

    def ours() -> str | None:
        new = [n for n in rng_names() if n.startswith("virtio") and n not in before]
        return new[0] if new else None

    if not wait_for(lambda: ours() is not None):
        raise RuntimeError("no new virtio hwrng appeared after the rng device was added")
    name = ours()
    assert name is not None
    (HWRNG / "rng_current").write_text(name + "\n")

    def read() -> str:
        with open("/dev/hwrng", "rb", buffering=0) as f:
            data = f.read(256)
        if len(data) != 256 or data == bytes(256):
            raise RuntimeError(f"read {len(data)} bytes, all zero: {data == bytes(len(data))}")
        return f"256 bytes from {name}"

    return bounded(read, 30)


def bench_hwrng(name: str, via: str, seconds: float) -> dict[str, object]:
    """Time /dev/hwrng with ``name`` current: 32-byte reads/s, then bytes/s in 4 KiB reads."""
    (HWRNG / "rng_current").write_text(name + "\n")
    result: dict[str, object] = {"rng": name, "via": via, "seconds": seconds}
    with open("/dev/hwrng", "rb", buffering=0) as f:
        for label, size in (("reads_per_s", 32), ("bytes_per_s", 4096)):
            count = 0
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                data = f.read(size)
                count += len(data) if label == "bytes_per_s" else 1
            result[label] = round(count / elapsed, 1)
    return result


def _bench_json(name: str, via: str, seconds: float) -> str:
    return json.dumps(bench_hwrng(name, via, seconds))


def run_bench(loopback_rng: str, others: Sequence[str], seconds: float) -> bool:
    """Time the loopback's hwrng and every other virtio hwrng; one ``VMSG-BENCH`` line each."""
    ok = True
    for name, via in [(loopback_rng, "loopback"), *((o, "virtio-mmio") for o in others)]:
        try:
            result = bounded(partial(_bench_json, name, via, seconds), 2 * seconds + 30)
        except Exception as exc:
            emit("bench", False, f"timing {name} ({via}) failed: {exc}")
            ok = False
            continue
        sys.stdout.write(f"\nVMSG-BENCH {result}\n")
        sys.stdout.flush()
    return ok


def check_blk() -> str:
    """Bytes written through /dev/vda land in the backend's image, and back.

    A pattern written to /dev/vda (fsync) is read from the image file the
    backend serves; another, written into the image, is read through /dev/vda
    after the page cache is dropped.
    """
    if not wait_for(lambda: Path("/dev/vda").exists()):
        raise RuntimeError("no /dev/vda after the blk device was added")

    def rw() -> str:
        out, back = os.urandom(64 * 1024), os.urandom(64 * 1024)
        fd = os.open("/dev/vda", os.O_RDWR)
        try:
            os.pwrite(fd, out, 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(DISK, "r+b", buffering=0) as img:
            img.seek(4096)
            if img.read(len(out)) != out:
                raise RuntimeError(f"{DISK} does not hold what was written to /dev/vda")
            img.seek(1 << 20)
            img.write(back)
            os.fsync(img.fileno())
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        fd = os.open("/dev/vda", os.O_RDONLY)
        try:
            got = os.pread(fd, len(back), 1 << 20)
        finally:
            os.close(fd)
        if got != back:
            raise RuntimeError(f"/dev/vda does not read what was written into {DISK}")
        return f"64 KiB /dev/vda -> {DISK} and 64 KiB {DISK} -> /dev/vda"

    return bounded(rw, 60)


def check_console() -> str:
    """A line written to /dev/hvc0 comes back from the backend's echo console."""
    if not wait_for(lambda: Path("/dev/hvc0").exists()):
        raise RuntimeError("no /dev/hvc0 after the console device was added")
    fd = os.open("/dev/hvc0", os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)  # no echo by the tty itself
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        token = b"vmsg-" + os.urandom(8).hex().encode()
        os.write(fd, token + b"\n")
        got = bytearray()

        def read() -> str:
            while token not in got:
                chunk = os.read(fd, 256)
                if not chunk:
                    raise RuntimeError(f"/dev/hvc0 ended after {bytes(got)!r}")
                got.extend(chunk)
            return f"{len(token) + 1} bytes written to /dev/hvc0 came back from the backend"

        return bounded(read, 20)
    finally:
        os.close(fd)


def check_i2c() -> str:
    """Instantiate ds1338 where the backend's RTC is; set its clock and read it back."""

    def adapter() -> Path | None:
        for dev in Path("/sys/bus/i2c/devices").glob("i2c-*"):
            if "virtio" in (dev / "name").read_text().lower():
                return dev
        return None

    if not wait_for(lambda: adapter() is not None):
        raise RuntimeError("no virtio I2C adapter appeared")
    bus = adapter()
    assert bus is not None
    before = set(Path("/dev").glob("rtc*"))
    (bus / "new_device").write_text(f"ds1338 {DEMO_RTC_ADDRESS:#x}\n")
    if not wait_for(lambda: bool(set(Path("/dev").glob("rtc*")) - before), 20):
        raise RuntimeError(
            f"ds1338 at {DEMO_RTC_ADDRESS:#x} did not register an RTC (CONFIG_RTC_DRV_DS1307?)"
        )
    rtc = sorted(set(Path("/dev").glob("rtc*")) - before)[0]
    # A DS1338 powers up with its oscillator-stop flag set, and rtc-ds1307
    # refuses to read the time (EINVAL) until it is set: set a fixed time (the
    # guest's own clock may still be 1970, which the chip cannot hold), read it.
    fd = os.open(rtc, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, RTC_SET_TIME, RTC_TIME.pack(*RTC_PROBE_TIME))
        got = RTC_TIME.unpack(fcntl.ioctl(fd, RTC_RD_TIME, bytes(RTC_TIME.size)))
    finally:
        os.close(fd)
    sec, minute, hour, mday, mon, year = got[:6]
    shown = f"{year + 1900}-{mon + 1:02}-{mday:02} {hour:02}:{minute:02}:{sec:02}"
    if got[1:6] != RTC_PROBE_TIME[1:6] or not RTC_PROBE_TIME[0] <= sec <= RTC_PROBE_TIME[0] + 30:
        raise RuntimeError(f"{rtc} was set to 2030-01-02 03:04:05 and reads {shown}")
    return f"{bus.name}: {rtc} set to 2030-01-02 03:04:05, reads {shown}"


def main(argv: list[str]) -> int:
    """``DEVICES [BUDGET] [--bench S] [--conformance]``: run the checks, bounded by BUDGET s.

    ``--bench S`` also times /dev/hwrng for S seconds per rng; ``--conformance``
    then runs the driver conformance suite behind the kernel channel.
    """
    parser = argparse.ArgumentParser(prog="inguest")
    parser.add_argument("devices", nargs="?", default="rng,blk,console,i2c")
    parser.add_argument("budget", nargs="?", type=float, default=3600.0)
    parser.add_argument("--bench", type=float, default=0.0)
    parser.add_argument("--conformance", action="store_true")
    args = parser.parse_args(argv)
    kinds = [k for k in args.devices.split(",") if k]
    watchdog = Watchdog(args.budget)
    try:
        capture = load_config()
    except CaptureCopyError as exc:
        emit("capture", False, str(exc))
        capture = None
    try:
        return _checks(kinds, watchdog, args.bench, args.conformance, capture)
    finally:
        watchdog.stop()


def _checks(
    kinds: list[str],
    watchdog: Watchdog,
    bench: float = 0.0,
    conformance: bool = False,
    capture: dict[str, Any] | None = None,
) -> int:
    emit("boot", True, f"init reached, kernel {os.uname().release}")
    if not LB.exists():
        emit("loopback", False, f"no {LB}: the kernel lacks {LB_OPTIONS}")
        for kind in kinds:
            emit(kind, False, f"not run: no {LB}")
        if capture is not None:
            emit_capture(capture, reason=f"no {LB}: the backend never ran")
        return 1
    emit("loopback", True, f"{LB} present")
    missing = [k for k in kinds if not driver_present(k)]
    for kind in missing:
        emit(kind, False, f"the kernel has no {DRIVERS[kind][0]} driver: enable {DRIVERS[kind][1]}")
    run = [k for k in kinds if k not in missing]
    if "blk" in run:
        with open(DISK, "wb") as img:
            img.truncate(DISK_SIZE)
    specs = [f"{n}:{k}" + (f"={DISK}" if k == "blk" else "") for n, k in enumerate(kinds)]
    rngs_before = rng_names()
    watchdog.enter("backend start")
    served = [spec for spec, k in zip(specs, kinds, strict=True) if k in run]
    backend = Backend(served + backend_args(capture))
    watchdog.backend = backend
    checks: dict[str, Callable[[], str]] = {
        "rng": lambda: check_rng(rngs_before),
        "blk": check_blk,
        "console": check_console,
        "i2c": check_i2c,
    }
    failed = bool(missing)
    for kind in run:
        watchdog.enter(kind)
        if backend.proc.poll() is not None:
            emit(kind, False, f"backend exited ({backend.proc.returncode}): {backend.tail()}")
            failed = True
            continue
        start = time.monotonic()
        try:
            detail = checks[kind]()
            emit(kind, True, f"{detail} ({time.monotonic() - start:.1f} s)")
        except Exception as exc:
            took = time.monotonic() - start
            emit(kind, False, f"{exc} after {took:.1f} s [backend: {backend.tail()[-200:]}]")
            failed = True
    ours = [n for n in rng_names() if n.startswith("virtio") and n not in rngs_before]
    if bench > 0 and ours and backend.proc.poll() is None:
        watchdog.enter("bench")
        others = [n for n in rngs_before if n.startswith("virtio")]
        failed |= not run_bench(ours[0], others, bench)
    watchdog.enter("backend stop")
    status = backend.stop()
    emit("backend-exit", status == 0, f"backend exit status {status} after SIGTERM")
    if capture is not None:  # the file is complete: the backend has stopped
        watchdog.enter("capture copy-out")
        emit_capture(capture)
    if conformance and run and status == 0:
        watchdog.enter("conformance")
        start = time.monotonic()
        ok, detail, report = run_conformance(run, max(60.0, watchdog.remaining() - 20))
        if report:
            sys.stdout.write(f"\nVMSG-CONFORMANCE {json.dumps(report)}\n")
        emit("conformance", ok, f"{detail} ({time.monotonic() - start:.1f} s)")
        failed |= not ok
    return 1 if failed or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
