"""The guest's initramfs: busybox, Python from Debian's arm64 packages, this project, ``/init``.

The Debian packages (:data:`ARM64_PACKAGES`) are taken from a cache folder that
``scripts/install-test-deps.sh`` fills with ``apt-get download``; each is
unpacked with ``dpkg-deb -x``.  The project's own package and its pure-Python
dependencies are copied from where this interpreter imports them.  The archive
is a gzip-compressed ``newc`` cpio written here (the format the kernel's
``BLK_DEV_INITRD`` unpacks), with files, directories and symlinks as found.
"""

from __future__ import annotations

import gzip
import importlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from virtio_msg.guest.dtb import GuestSetupError

ARM64_PACKAGES: tuple[str, ...] = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libgcc-s1",
    "libcrypt1",
)
"""Debian arm64 packages unpacked into the initramfs (bookworm names)."""
PYTHON_DEPS: tuple[str, ...] = (
    "virtio_msg",
    "fdt",
    "dpkt",
    "rich",
    "markdown_it",
    "mdurl",
    "pygments",
)
"""Import packages copied into the guest's ``dist-packages``: the project and its pure deps."""
SITE = "usr/lib/python3/dist-packages"
DEFAULT_BUDGET = 3600.0
"""The in-guest watchdog's bound when the harness gives none (seconds)."""
DEFAULT_CACHE = Path.home() / ".cache" / "virtio-msg" / "arm64-debs"
"""Where the install script downloads the arm64 packages (``VIRTIO_MSG_ARM64_CACHE`` overrides)."""

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "VMSG-BOOT $(uname -r)"
PYTHONPATH=/{site} /usr/bin/python3.11 -m virtio_msg.guest.inguest {devices} {budget}{options}
echo "VMSG-RC $?"
echo "VMSG-DMESG"
dmesg
echo "VMSG-END"
sync
poweroff -f
"""


def cache_dir() -> Path:
    """The arm64 package cache folder in effect."""
    return Path(os.environ.get("VIRTIO_MSG_ARM64_CACHE", DEFAULT_CACHE))


def find_debs(cache: Path) -> list[Path]:
    """One ``.deb`` per :data:`ARM64_PACKAGES` entry in ``cache``, or a clear error."""
    found: list[Path] = []
    missing: list[str] = []
    for pkg in ARM64_PACKAGES:
        hits = sorted(cache.glob(f"{pkg}_*_arm64.deb"))
        if hits:
            found.append(hits[-1])
        else:
            missing.append(pkg)
    if missing:
        raise GuestSetupError(
            f"arm64 packages missing from {cache}: {', '.join(missing)} "
            "(run scripts/install-test-deps.sh, or set VIRTIO_MSG_ARM64_CACHE)"
        )
    return found


def _copy_package(name: str, dest: Path) -> None:
    mod = importlib.import_module(name)
    src = Path(mod.__file__ or "").parent
    shutil.copytree(
        src, dest / name, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


def copy_python_packages(site: Path) -> None:
    """Copy the project and its pure-Python runtime dependencies into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for name in PYTHON_DEPS:
        _copy_package(name, site)


def stage(
    root: Path,
    debs: Sequence[Path],
    devices: Sequence[str],
    budget: float = DEFAULT_BUDGET,
    bench: float = 0.0,
    conformance: bool = False,
    files: Mapping[str, bytes] | None = None,
) -> None:
    """Fill ``root`` with the unpacked packages, the Python code and ``/init``.

    ``budget`` bounds the in-guest checks (seconds, from the start of ``/init``);
    ``bench`` > 0 also times /dev/hwrng for that many seconds per rng;
    ``conformance`` also runs the driver conformance suite behind the kernel channel;
    ``files`` are extra files (path relative to the root: content), e.g. the
    capture request of :mod:`virtio_msg.guest.capture_out`.
    """
    for deb in debs:
        proc = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise GuestSetupError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian"):
        shutil.rmtree(root / junk, ignore_errors=True)
    copy_python_packages(root / SITE)
    for name, data in (files or {}).items():
        extra = root / name
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_bytes(data)
    init = root / "init"
    init.write_text(
        INIT.format(
            site=SITE,
            devices=",".join(devices),
            budget=f"{budget:.0f}",
            options=(f" --bench {bench:g}" if bench > 0 else "")
            + (" --conformance" if conformance else ""),
        )
    )
    init.chmod(0o755)


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    yield ".", root
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            yield str(path.relative_to(root)), path


def _newc(out: gzip.GzipFile, name: str, mode: int, data: bytes, ino: int, nlink: int) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + encoded + b"\0" * ((-len(header) - len(encoded)) % 4))
    out.write(data + b"\0" * (-len(data) % 4))


def write_cpio(root: Path, dest: Path) -> int:
    """Write ``root`` as a gzip-compressed newc cpio at ``dest``; the number of entries."""
    count = 0
    with gzip.open(dest, "wb", compresslevel=1) as out:
        assert isinstance(out, gzip.GzipFile)
        for ino, (name, path) in enumerate(_entries(root), start=1):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
                mode = stat.S_IFLNK | 0o777
            elif stat.S_ISDIR(st.st_mode):
                data, mode = b"", stat.S_IFDIR | stat.S_IMODE(st.st_mode)
            elif stat.S_ISREG(st.st_mode):
                data, mode = path.read_bytes(), stat.S_IFREG | stat.S_IMODE(st.st_mode)
            else:
                continue
            _newc(out, name, mode, data, ino, 2 if stat.S_ISDIR(mode) else 1)
            count += 1
        _newc(out, "TRAILER!!!", 0, b"", 0, 1)
    return count


def build_initramfs(
    dest: Path,
    devices: Sequence[str],
    cache: Path | None = None,
    *,
    budget: float = DEFAULT_BUDGET,
    bench: float = 0.0,
    conformance: bool = False,
    files: Mapping[str, bytes] | None = None,
) -> int:
    """Build the initramfs at ``dest`` (see :func:`stage`); the number of archive entries."""
    debs = find_debs(cache or cache_dir())
    with tempfile.TemporaryDirectory(prefix="vmsg-initramfs-") as tmp:
        root = Path(tmp)
        stage(root, debs, devices, budget, bench, conformance, files)
        return write_cpio(root, dest)
