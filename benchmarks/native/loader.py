"""Build and load ``_bounce``, the C prototype of DmaPool.map/unmap (benchmarks only).

Strategy: the extension is compiled on demand with the system C compiler
(``$CC``, else ``cc`` or ``gcc``; ``$CFLAGS`` appended) against the running interpreter's headers
(``sysconfig``), into ``benchmarks/native/build/`` (git-ignored) or a directory
the caller names, and imported from there by file path; it is never installed
with the package.  :func:`native_pool` gives it the same geometry as
:class:`~virtio_msg.memory.DmaPool` (slots of the pool's size over the same span
of a region) and hands it the pool's own exception classes, ``Mapping`` and
``DmaDirection.TO_DEVICE``, so the two pools are interchangeable for streaming
mappings.  When no compiler or no ``Python.h`` is found :class:`NativeUnavailable`
says which, and callers skip.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

from virtio_msg.memory import (
    DEFAULT_MAX_SEGMENT_SLOTS,
    DEFAULT_SLOT_SIZE,
    DmaDirection,
    EmptyMapping,
    Mapping,
    MappingTooLarge,
    PoolExhausted,
    Region,
    UnknownMapping,
)

SOURCE = Path(__file__).resolve().parent / "_bounce.c"
BUILD_DIR = Path(__file__).resolve().parent / "build"


class NativeUnavailable(RuntimeError):
    """The extension cannot be built here (no compiler, no headers, or a failed build)."""


class NativePool(Protocol):
    """What the compiled pool offers: DmaPool's streaming mappings and its counters."""

    def map(self, data: bytes | bytearray | memoryview | int, direction: DmaDirection) -> Mapping:
        """DmaPool.map, in one C call."""

    def unmap(self, mapping: Mapping | int) -> bytes | None:
        """DmaPool.unmap, in one C call."""

    def stats(self) -> dict[str, int]:
        """The counters DmaPool.stats() has for streaming mappings."""

    def used_map(self) -> bytes:
        """The slot map, one byte per slot (0 free, 1 used)."""

    def close(self) -> None:
        """Release the pool's view of the region."""


def compiler() -> list[str] | None:
    """The C compiler command (``$CC`` split like a shell would, ``cc`` or ``gcc``), or None."""
    env = os.environ.get("CC")
    if env:
        return shlex.split(env)
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def build(out_dir: Path = BUILD_DIR) -> Path:
    """Compile ``_bounce.c`` into ``out_dir`` (unless an up-to-date build is there)."""
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found ($CC, cc or gcc)")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise NativeUnavailable(f"Python.h not found in {include} (install python3-dev)")
    target = out_dir / f"_bounce{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    if target.is_file() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{target.name}.{os.getpid()}"
    cmd = [*cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", f"-I{include}",
           *shlex.split(os.environ.get("CFLAGS", "")), str(SOURCE), "-o", str(partial)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NativeUnavailable(f"{shlex.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise NativeUnavailable(f"{shlex.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(partial, target)  # atomic: a concurrent loader sees the old or the new file
    return target


def load(out_dir: Path = BUILD_DIR) -> ModuleType:
    """Build (if needed) and import the extension from ``out_dir``."""
    path = build(out_dir)
    spec = importlib.util.spec_from_file_location("_bounce", path)
    if spec is None or spec.loader is None:
        raise NativeUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native_pool(
    module: ModuleType,
    region: Region,
    slot_size: int = DEFAULT_SLOT_SIZE,
    max_segment_slots: int = DEFAULT_MAX_SEGMENT_SLOTS,
    *,
    pool_base: int | None = None,
    pool_size: int | None = None,
) -> NativePool:
    """A compiled pool over the span ``DmaPool(region, ...)`` would use, same arguments."""
    base = region.base if pool_base is None else pool_base
    span = region.end - base if pool_size is None else pool_size
    nslots = span // slot_size if slot_size > 0 else 0
    if nslots <= 0:
        raise ValueError(f"pool span of {span} bytes holds no {slot_size}-byte slot")
    view = region.view(base, nslots * slot_size)
    return cast(NativePool, module.Pool(
        view, base, slot_size, max_segment_slots, Mapping, DmaDirection.TO_DEVICE,
        EmptyMapping, MappingTooLarge, PoolExhausted, UnknownMapping,
    ))
