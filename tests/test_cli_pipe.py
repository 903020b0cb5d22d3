"""A reader that goes away (``virtio-msg decode ... | head``): status 141, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FRAME = "00020000060000000000000000000000000000000000000000000000000000000000000000000000" + "0" * 8


def test_decode_into_a_closed_pipe_ends_quietly_with_status_141(tmp_path: Path) -> None:
    frames = tmp_path / "frames.hex"
    # far more output than a pipe holds, so writes go on after the reader left
    frames.write_text("\n".join([FRAME] * 20000) + "\n")
    with frames.open("rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "virtio_msg", "decode", "--profile", "linux-rfc1", "-"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert b'"DEVICE_INFO"' in first
    proc.stdout.close()  # like head -1
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141
