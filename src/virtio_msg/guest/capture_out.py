"""``guest --capture``: the capture taken inside the guest, copied out over the serial console.

The guest's only way out is the serial console the harness already reads
(``VMSG-CHECK`` lines), so the capture travels there too.  The host asks for
a capture by adding :data:`CONFIG_NAME` to the initramfs (:func:`config_file`);
inside the guest :func:`backend_args` turns it into the ``--capture`` options
of ``virtio-msg backend --kernel``, and after the backend has stopped (its
capture file closed) :func:`emit_capture` prints each file of the capture
ring as a ``VMSG-CAPTURE-BEGIN {json}`` line (index, size, SHA-256), base64
lines prefixed ``VMSG-CAP`` and ``VMSG-CAPTURE-END``, then a
``VMSG-CAPTURE-TIME {json}`` line with how long printing took, or one
``VMSG-CAPTURE-NONE reason`` line when there is nothing to send.  On the host
:func:`extract_captures` finds those blocks in the console text (kernel
messages may interleave: only prefixed lines count), checks size and digest,
and :func:`save_captures` writes ``FILE``, ``FILE.1``, ... as the backend had
named them.  A block that is truncated or does not match its digest is an
error naming what was wrong, never a silently broken file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from virtio_msg.bus.capture import DEFAULT_FILES, DEFAULT_MAX_BYTES, ring_path

CONFIG_NAME: Final = "etc/vmsg-capture.json"
"""Where the request lies in the guest's root file system."""
GUEST_PATH: Final = "/tmp/vmsg-capture.pcapng"
"""The capture file inside the guest (its tmpfs)."""
BEGIN: Final = "VMSG-CAPTURE-BEGIN"
LINE: Final = "VMSG-CAP"
END: Final = "VMSG-CAPTURE-END"
NONE: Final = "VMSG-CAPTURE-NONE"
TIME: Final = "VMSG-CAPTURE-TIME"
"""After the blocks: ``{"bytes": N, "seconds": S}``, how long the guest took to print them."""
CHUNK: Final = 57
"""Bytes per base64 line (76 characters)."""
_BLOCK: Final = re.compile(
    rf"^{BEGIN} (\{{.*\}})\s*$|^{LINE} ([A-Za-z0-9+/=]+)\s*$|^{END}\s*$|^{NONE} (.*)$"
)


class CaptureCopyError(Exception):
    """The capture could not be copied out of the guest (the message says why)."""


@dataclass(frozen=True)
class GuestCapture:
    """One file of the guest's capture ring, as it came out."""

    index: int
    """0 for FILE, n for FILE.n (as :func:`~virtio_msg.bus.capture.ring_path` names them)."""
    data: bytes


def config_file(max_bytes: int = DEFAULT_MAX_BYTES, files: int = DEFAULT_FILES) -> bytes:
    """The content of :data:`CONFIG_NAME` asking the guest for a capture with these limits."""
    return json.dumps({"path": GUEST_PATH, "max_bytes": max_bytes, "files": files}).encode()


def load_config(root: Path = Path("/")) -> dict[str, Any] | None:
    """The capture request in the guest, or None when the host asked for none."""
    try:
        raw = json.loads((root / CONFIG_NAME).read_text())
        path, size, files = str(raw["path"]), int(raw["max_bytes"]), int(raw["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaptureCopyError(f"unreadable {CONFIG_NAME}: {exc}") from None
    return {"path": path, "max_bytes": size, "files": files}


def backend_args(config: dict[str, Any] | None) -> list[str]:
    """The ``virtio-msg backend`` options for the request (none without one)."""
    if config is None:
        return []
    mib = config["max_bytes"] / (1 << 20)
    return [
        "--capture", config["path"],
        "--capture-size", repr(mib),
        "--capture-files", str(config["files"]),
    ]


def emit_capture(config: dict[str, Any], out: TextIO | None = None, reason: str = "") -> int:
    """Print every file of the guest's capture ring on ``out`` (stdout, the console).

    Returns the number of files sent; ``reason`` (or finding no file) prints a
    ``VMSG-CAPTURE-NONE`` line instead.
    """
    out = out or sys.stdout
    path = Path(config["path"])
    sent = total = 0
    t0 = time.monotonic()
    if not reason:
        for n in range(int(config["files"]) - 1, -1, -1):  # oldest first
            part = ring_path(path, n)
            try:
                data = part.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                reason = f"cannot read {part}: {exc.strerror or exc}"
                break
            meta = {"index": n, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            out.write(f"\n{BEGIN} {json.dumps(meta)}\n")
            for i in range(0, len(data), CHUNK):
                out.write(f"{LINE} {base64.b64encode(data[i : i + CHUNK]).decode()}\n")
            out.write(f"{END}\n")
            out.flush()
            sent += 1
            total += len(data)
        if sent:  # the console blocks while its buffer is full: this is the copy-out's pace
            timing = {"bytes": total, "seconds": round(time.monotonic() - t0, 3)}
            out.write(f"{TIME} {json.dumps(timing)}\n")
            out.flush()
        if not sent and not reason:
            reason = f"the backend wrote no capture at {path}"
    if reason:
        out.write(f"\n{NONE} {reason}\n")
        out.flush()
    return sent


def extract_captures(text: str) -> tuple[list[GuestCapture], str | None]:
    """The capture files in console ``text``, and the guest's reason when it sent none.

    Raises CaptureCopyError for a block that is truncated or damaged.
    """
    found: list[GuestCapture] = []
    none: str | None = None
    meta: dict[str, Any] | None = None
    parts: list[bytes] = []
    for raw in text.splitlines():
        m = _BLOCK.match(raw.strip("\r"))
        if m is None:
            continue
        begin, chunk, reason = m.group(1), m.group(2), m.group(3)
        if reason is not None:
            none = reason.strip()
        elif begin is not None:
            if meta is not None:
                raise CaptureCopyError(f"capture file {meta['index']} ends without {END}")
            meta, parts = _meta(begin), []
        elif chunk is not None:
            if meta is None:
                raise CaptureCopyError(f"a {LINE} line outside a capture block")
            try:
                parts.append(base64.b64decode(chunk, validate=True))
            except binascii.Error as exc:
                raise CaptureCopyError(f"damaged {LINE} line: {exc}") from None
        else:  # END
            if meta is None:
                raise CaptureCopyError(f"{END} without {BEGIN}")
            found.append(_finish(meta, b"".join(parts)))
            meta = None
    if meta is not None:
        got = sum(len(p) for p in parts)
        raise CaptureCopyError(
            f"capture file {meta['index']} is truncated: {got} of {meta['size']} bytes "
            "arrived before the console ended"
        )
    return found, none


def copy_time(text: str) -> tuple[int, float] | None:
    """(bytes, seconds) of the guest's last :data:`TIME` line in ``text``; None if none is valid."""
    found = None
    for raw in text.splitlines():
        line = raw.strip("\r")
        if not line.startswith(TIME + " "):
            continue
        try:
            got = json.loads(line[len(TIME) + 1 :])
            size, seconds = int(got["bytes"]), float(got["seconds"])
        except (ValueError, KeyError, TypeError):
            continue  # a damaged timing line costs the figure, not the capture
        if size >= 0 and 0 <= seconds < 1e6:
            found = (size, seconds)
    return found


def _meta(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
        index, size, digest = int(raw["index"]), int(raw["size"]), str(raw["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptureCopyError(f"bad {BEGIN} line: {exc}") from None
    if not 0 <= index < 1000 or size < 0:
        raise CaptureCopyError(f"bad {BEGIN} line: index {index}, size {size}")
    return {"index": index, "size": size, "sha256": digest}


def _finish(meta: dict[str, Any], data: bytes) -> GuestCapture:
    if len(data) != meta["size"]:
        raise CaptureCopyError(
            f"capture file {meta['index']}: {len(data)} bytes arrived, {meta['size']} were sent"
        )
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CaptureCopyError(f"capture file {meta['index']}: SHA-256 mismatch")
    return GuestCapture(meta["index"], data)


def save_captures(text: str, dest: Path) -> tuple[bool, str]:
    """Write the capture in console ``text`` to ``dest`` (ring files beside it).

    Returns (ok, detail) for the report's ``capture`` check; never raises for
    what the guest sent.
    """
    try:
        files, none = extract_captures(text)
    except CaptureCopyError as exc:
        return False, f"the capture did not come out intact: {exc}"
    if not files:
        why = none or "the guest printed no capture (did it finish its checks?)"
        return False, f"no capture: {why}"
    try:
        for f in files:
            ring_path(dest, f.index).write_bytes(f.data)
    except OSError as exc:
        return False, f"cannot write {dest}: {exc.strerror or exc}"
    total = sum(len(f.data) for f in files)
    names = ", ".join(str(ring_path(dest, f.index)) for f in sorted(files, key=lambda f: f.index))
    pace = ""
    timing = copy_time(text)
    if timing is not None and timing[0] == total:
        seconds = timing[1]
        rate = f", {total / seconds / 1000:.1f} kB/s" if seconds > 0 else ""
        pace = f" in {seconds:.1f} s{rate}"
    return True, f"{total} bytes copied out over the serial console{pace} to {names}"


__all__ = [
    "CONFIG_NAME",
    "GUEST_PATH",
    "CaptureCopyError",
    "GuestCapture",
    "backend_args",
    "config_file",
    "copy_time",
    "emit_capture",
    "extract_captures",
    "load_config",
    "save_captures",
]
