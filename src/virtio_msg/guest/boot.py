"""Boot the guest under QEMU, bounded by a timeout, and read its verdict from the console.

:func:`run_guest` builds the tree and the initramfs in a work folder (kept with
``keep``), starts ``qemu-system-aarch64`` with the serial console on a pipe,
collects ``VMSG-CHECK`` lines as the guest prints them and stops QEMU when the
guest prints ``VMSG-END``, powers off, or the timeout passes.  The boot itself
is a check: no verdict in time is a failed ``boot`` check quoting the last
console lines, never a hang.  KVM is used when ``/dev/kvm`` is usable and the
host is arm64; otherwise QEMU's software emulation.  With ``capture``, the
guest records its kernel channel and the file comes out on the same console
(:mod:`.capture_out`); whether it did is the ``capture`` check.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtio_msg.bus.capture import CaptureLimits
from virtio_msg.guest.capture_out import CONFIG_NAME, config_file, save_captures
from virtio_msg.guest.dtb import GuestSetupError, MachineOptions, build_guest_dtb
from virtio_msg.guest.initramfs import build_initramfs

DEVICE_KINDS: tuple[str, ...] = ("rng", "blk", "console", "i2c")
"""The device checks the harness knows, in their default order."""
CHECK_RE = re.compile(r"VMSG-CHECK (\{.*\})")
BENCH_RE = re.compile(r"VMSG-BENCH (\{.*\})")
CONFORMANCE_RE = re.compile(r"VMSG-CONFORMANCE (\{.*\})")
APPEND = "console=ttyAMA0 rdinit=/init loglevel=3 panic=-1"


@dataclass(frozen=True)
class Check:
    """One verdict: a check's name, whether it passed and what was seen."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        """The check as the ``--json`` output shows it."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class GuestReport:
    """The harness's verdict on one kernel."""

    kernel: str
    checks: list[Check] = field(default_factory=list)
    release: str | None = None
    bench: list[dict[str, object]] = field(default_factory=list)
    """hwrng timings (``run_guest(bench=...)``): rng, via, reads_per_s, bytes_per_s."""
    conformance: dict[str, object] | None = None
    """The in-guest driver conformance report (``run_guest(conformance=True)``)."""

    @property
    def ok(self) -> bool:
        """True only if there are checks and every one passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, object]:
        """``{"kernel", "release", "checks": [...], "ok"}``."""
        return {
            "kernel": self.kernel,
            "release": self.release,
            "checks": [c.to_json() for c in self.checks],
            "ok": self.ok,
            **({"bench": self.bench} if self.bench else {}),
            **({"conformance": self.conformance} if self.conformance is not None else {}),
        }


def parse_console(text: str) -> list[Check]:
    """The ``VMSG-CHECK`` verdicts in console output; malformed lines are skipped."""
    checks: list[Check] = []
    for match in CHECK_RE.finditer(text):
        try:
            item = json.loads(match.group(1))
            checks.append(Check(str(item["name"]), bool(item["ok"]), str(item["detail"])))
        except (ValueError, KeyError, TypeError):
            continue
    return checks


def parse_bench(text: str) -> list[dict[str, object]]:
    """The ``VMSG-BENCH`` timings in console output; malformed lines are skipped."""
    found: list[dict[str, object]] = []
    for match in BENCH_RE.finditer(text):
        try:
            item = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(item, dict) and {"rng", "via", "reads_per_s", "bytes_per_s"} <= set(item):
            found.append(item)
    return found


def parse_conformance(text: str) -> dict[str, object] | None:
    """The last ``VMSG-CONFORMANCE`` report in console output (None if there is none)."""
    for match in reversed(list(CONFORMANCE_RE.finditer(text))):
        try:
            item = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(item, dict) and "results" in item:
            return item
    return None


def parse_devices(spec: str) -> list[str]:
    """``rng,blk`` into a list; ValueError naming an unknown or repeated device."""
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    for kind in kinds:
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device {kind!r} (known: {', '.join(DEVICE_KINDS)})")
    if len(set(kinds)) != len(kinds) or not kinds:
        raise ValueError(f"device list {spec!r} is empty or repeats a device")
    return kinds


def guest_budget(timeout: float) -> float:
    """The in-guest watchdog's bound: the timeout less room for boot, kernel log and poweroff."""
    return max(10.0, timeout * 0.9 - 30.0)


def kvm_usable() -> bool:
    """KVM works for an aarch64 guest only on an arm64 host with /dev/kvm accessible."""
    return platform.machine() in ("aarch64", "arm64") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def _machine() -> MachineOptions:
    if kvm_usable():
        return MachineOptions(accel="kvm", cpu="host")
    return MachineOptions()


def qemu_command(
    machine: MachineOptions, kernel: Path, dtb: Path, initrd: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The QEMU command line of the boot (``extra``: more QEMU options, e.g. devices)."""
    return [
        machine.qemu,
        *machine.args(),
        *extra,
        "-kernel",
        str(kernel),
        "-dtb",
        str(dtb),
        "-initrd",
        str(initrd),
        "-append",
        APPEND,
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]


def _boot(cmd: list[str], timeout: float, log: Path) -> tuple[str, bool]:
    """Run QEMU until VMSG-END, exit or ``timeout``; (console text, finished)."""
    out = bytearray()
    done = threading.Event()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def reader() -> None:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 4096):
                out.extend(chunk)
                sink.write(chunk)
                sink.flush()  # the log shows how far a guest that hangs got
                if b"VMSG-END" in out:
                    done.set()
            done.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        finished = done.wait(timeout)
        if finished:  # let the guest's poweroff end QEMU by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        t.join(5)
    return out.decode(errors="replace"), finished and b"VMSG-END" in out


def run_guest(
    kernel: str | Path,
    devices: Sequence[str] = DEVICE_KINDS,
    *,
    timeout: float = 300.0,
    keep: Path | None = None,
    qemu_extra: Sequence[str] = (),
    bench: float = 0.0,
    conformance: bool = False,
    capture: Path | None = None,
    capture_limits: CaptureLimits | None = None,
) -> GuestReport:
    """Boot ``kernel`` with the loopback and the checks for ``devices``; the report.

    ``qemu_extra`` adds QEMU options (the tree is dumped with them too); ``bench``
    > 0 also times /dev/hwrng in the guest for that many seconds per rng
    (``report.bench``); ``conformance`` also runs ``conformance driver --kernel``
    in the guest after the checks (``report.conformance``, and a ``conformance``
    check).  ``capture`` asks the guest to record its kernel channel
    (``capture_limits`` inside the guest) and is where the copied-out file is written.
    """
    image = Path(kernel)
    report = GuestReport(kernel=str(image))
    if not image.is_file():
        report.checks.append(Check("boot", False, f"kernel image {image} not found"))
        return report
    machine = _machine()
    if shutil.which(machine.qemu) is None:
        raise GuestSetupError(f"{machine.qemu} not found (install qemu-system-arm)")
    work = Path(tempfile.mkdtemp(prefix="vmsg-guest-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        dtb, initrd = work / "guest.dtb", work / "initramfs.cpio.gz"
        dtb.write_bytes(build_guest_dtb(machine, extra=qemu_extra))
        limits = capture_limits or CaptureLimits()
        request = {CONFIG_NAME: config_file(limits.max_bytes, limits.files)} if capture else None
        build_initramfs(
            initrd,
            devices,
            budget=guest_budget(timeout),
            bench=bench,
            conformance=conformance,
            files=request,
        )
        cmd = qemu_command(machine, image, dtb, initrd, qemu_extra)
        (work / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
        text, finished = _boot(cmd, timeout, work / "console.log")
        boot_line = re.search(r"VMSG-BOOT (\S+)", text)
        report.release = boot_line.group(1) if boot_line else None
        report.checks = parse_console(text)
        report.bench = parse_bench(text)
        report.conformance = parse_conformance(text)
        if not report.checks:
            tail = " | ".join(text.strip().splitlines()[-6:])[-600:]
            report.checks.append(
                Check(
                    "boot",
                    False,
                    f"the guest gave no verdict within {timeout:.0f} s; last console lines: {tail}",
                )
            )
        elif not finished:
            report.checks.append(
                Check(
                    "complete", False, f"the guest did not finish its checks within {timeout:.0f} s"
                )
            )
        if capture is not None:
            report.checks.append(Check("capture", *save_captures(text, capture)))
        return report
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
