"""``virtio-msg backend --kernel``: arguments, serving until stopped, SIGTERM and SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from virtio_msg.bus.kernel import KernelChannel
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.cli import build_parser
from virtio_msg.cli.common import Output
from virtio_msg.cli.kernel import parse_kernel_devices, serve_kernel


def test_device_items_take_numbers_and_blk_images(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    assert parse_kernel_devices(["rng", f"5:blk={img}", "console"]) == [
        (0, "rng", None),
        (5, "blk", img),
        (1, "console", None),
    ]
    with pytest.raises(ValueError, match="only blk takes =IMAGE"):
        parse_kernel_devices(["rng=x"])
    with pytest.raises(ValueError, match="empty image path"):
        parse_kernel_devices(["blk="])
    with pytest.raises(ValueError, match="unknown device type"):
        parse_kernel_devices(["gpu"])


def test_backend_parser_accepts_the_kernel_options() -> None:
    argv = ["backend", "--kernel", "--lb", "/x/lb", "--base", "0x100000000"]
    argv += ["--size", "0x400000", "--device", "rng", "blk=/tmp/i"]
    args = build_parser().parse_args(argv)
    assert args.kernel and args.lb == "/x/lb"
    assert (args.base, args.size) == (0x1_0000_0000, 0x40_0000)
    assert args.device == ["rng"] and args.devices == ["blk=/tmp/i"]


def test_serve_until_stopped_then_remove_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    kernel = SeedLoopback(size=1 << 20)
    try:
        channel = KernelChannel(kernel, kernel.bus.region.base)
        stop = threading.Event()
        rc: list[int] = []
        t = threading.Thread(
            target=lambda: rc.append(
                serve_kernel(channel, [(0, "rng", None), (1, "blk", img)], Output(False), stop)
            )
        )
        t.start()
        deadline = time.monotonic() + 20
        while kernel.present() != [0, 1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kernel.present() == [0, 1]
        stop.set()
        t.join(20)
        assert rc == [0]
        assert kernel.present() == []
        text = capsys.readouterr().out
        assert "device 1 added: blk" in text and "device 0 removed" in text
    finally:
        kernel.close()


_CHILD = """
import sys
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.cli import build_parser
from virtio_msg.cli.kernel import cmd_backend_kernel
kernel = SeedLoopback(size=1 << 20)
base = hex(kernel.bus.region.base)
argv = ["backend", "--kernel", "--json", "--base", base, "rng", "console"]
args = build_parser().parse_args(argv)
rc = cmd_backend_kernel(args, files=kernel)
print("present-after", kernel.present(), flush=True)
kernel.close()
sys.exit(rc)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_every_device_and_exits_cleanly(sig: signal.Signals) -> None:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    added = 0
    try:
        for line in proc.stdout:
            if '"event": "added"' in line:
                added += 1
                if added == 2:
                    break
        assert added == 2
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.count('"event": "removed"') == 2
    assert "present-after []" in out
