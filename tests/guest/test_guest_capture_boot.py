"""Real boots with ``virtio-msg guest --capture``: the stock kernel and one with the series.

The stock kernel has no /dev/virtio-msg-lb, so the in-guest backend never runs:
the ``capture`` check must fail saying so, and no file is written.  With a
kernel carrying the RFC series (``VIRTIO_MSG_KERNEL``) the capture taken inside
the guest must come out intact and hold the kernel channel's 44-byte buffers.
Both are skipped when their kernel is not there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from virtio_msg.bus.capture import ChannelKind, Direction, Side
from virtio_msg.capture.frames import decode_frame, read_capture
from virtio_msg.cli import main
from virtio_msg.errors import MalformedMessage
from virtio_msg.guest.initramfs import ARM64_PACKAGES, cache_dir

STOCK = cache_dir() / "stock-kernel" / "Image"
HAVE_DEBS = all(any(cache_dir().glob(f"{p}_*_arm64.deb")) for p in ARM64_PACKAGES)
needs_guest = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None or not HAVE_DEBS,
    reason="qemu-system-aarch64 or the arm64 packages missing (scripts/install-test-deps.sh)",
)


def _checks(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    main(["guest", *args, "--json"])
    report = json.loads(capsys.readouterr().out)
    return {c["name"]: c for c in report["checks"]}


@needs_guest
@pytest.mark.skipif(not STOCK.is_file(), reason=f"no stock arm64 kernel at {STOCK}")
def test_stock_kernel_capture_check_says_the_backend_never_ran(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "guest.pcapng"
    checks = _checks(capsys, "--kernel", str(STOCK), "--timeout", "240", "--capture", str(dest),
                     "--devices", "rng")
    assert checks["boot"]["ok"] is True and checks["loopback"]["ok"] is False
    assert checks["capture"]["ok"] is False
    assert "the backend never ran" in str(checks["capture"]["detail"])
    assert not dest.exists()


@needs_guest
@pytest.mark.skipif(
    not os.environ.get("VIRTIO_MSG_KERNEL"),
    reason="VIRTIO_MSG_KERNEL does not name a kernel image with the RFC series",
)
def test_kernel_with_the_series_capture_comes_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "guest.pcapng"
    checks = _checks(capsys, "--kernel", os.environ["VIRTIO_MSG_KERNEL"], "--timeout", "600",
                     "--devices", "rng,blk", "--capture", str(dest), "--capture-size", "4")
    assert checks["capture"]["ok"] is True, checks
    frames = []
    for f in read_capture(dest):
        assert not isinstance(f, MalformedMessage), f
        frames.append(f)
    assert {(f.channel, f.side) for f in frames} == {(ChannelKind.KERNEL, Side.BACKEND)}
    assert all(len(f.data) == 44 for f in frames)
    assert {f.direction for f in frames} == set(Direction)
    names = set()
    for f in frames:
        try:
            names.add(decode_frame(f)["name"])
        except MalformedMessage:
            continue
    assert {"DEVICE_INFO", "SET_VQUEUE", "EVENT_AVAIL", "EVENT_USED"} <= names
