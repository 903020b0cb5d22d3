"""Real boots through `virtio-msg guest`: the stock arm64 kernel and one with the series.

The stock kernel has no virtio-msg: the harness must boot it, run the guest
checks and end with the clear "no /dev/virtio-msg-lb" failed check naming the
missing CONFIG_ option, within its timeout.  When ``VIRTIO_MSG_KERNEL`` names an
image carrying the RFC series (see docs/kernel.md), every device check runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from virtio_msg.cli import main
from virtio_msg.guest.initramfs import ARM64_PACKAGES, cache_dir

STOCK = cache_dir() / "stock-kernel" / "Image"
HAVE_DEBS = all(any(cache_dir().glob(f"{p}_*_arm64.deb")) for p in ARM64_PACKAGES)
needs_guest = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None or not HAVE_DEBS,
    reason="qemu-system-aarch64 or the arm64 packages missing (scripts/install-test-deps.sh)",
)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    status = main(["guest", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


@needs_guest
@pytest.mark.skipif(
    not STOCK.is_file(),
    reason=f"no stock arm64 kernel at {STOCK} (scripts/install-test-deps.sh unpacks it)",
)
def test_stock_kernel_boots_and_fails_with_no_virtio_msg_lb(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, report = _run(
        capsys, "--kernel-image", str(STOCK), "--timeout", "240", "--keep", str(tmp_path)
    )
    assert status == 1 and report["ok"] is False
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[attr-defined]
    assert checks["boot"]["ok"] is True
    lb = checks["loopback"]
    assert lb["ok"] is False
    assert "no /dev/virtio-msg-lb" in lb["detail"] and "CONFIG_VIRTIO_MSG_LOOPBACK" in lb["detail"]
    for kind in ("rng", "blk", "console", "i2c"):
        assert checks[kind]["ok"] is False
    assert report["release"] and str(report["release"]).endswith("arm64")
    assert "VMSG-END" in (tmp_path / "console.log").read_text(errors="replace")
    assert (tmp_path / "guest.dtb").stat().st_size > 0


@needs_guest
@pytest.mark.skipif(
    not os.environ.get("VIRTIO_MSG_KERNEL"),
    reason="VIRTIO_MSG_KERNEL does not name a kernel image with the RFC series",
)
def test_kernel_with_the_series_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    kernel = os.environ["VIRTIO_MSG_KERNEL"]
    status, report = _run(capsys, "--kernel-image", kernel, "--timeout", "600")
    assert report["ok"] is True, report
    assert status == 0
    names = [c["name"] for c in report["checks"]]  # type: ignore[attr-defined]
    assert {"boot", "loopback", "rng", "blk", "console", "i2c"} <= set(names)
