"""``guest --capture``: the in-guest capture and its copy-out over the serial console.

No guest boots here (see test_guest_capture_boot.py for the boots).  The
in-guest part runs on the host: ``virtio-msg backend --kernel`` with the
options :func:`backend_args` derives from the request, against the emulated
seed loopback, then :func:`emit_capture` prints the file the way the guest
does; the console text (with kernel messages interleaved and CRLF line ends,
as the serial port delivers it) goes through the host side,
:func:`save_captures`, and the file that comes out must be byte for byte the
one the backend wrote and hold exactly the buffers the kernel exchanged.
The in-guest program's no-loopback path (what a stock kernel gives) is run
too, and the request's way into the initramfs.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_msg.bus.capture import ChannelKind, Direction, Side, ring_path
from virtio_msg.capture.frames import read_capture
from virtio_msg.cli import build_parser, main
from virtio_msg.errors import MalformedMessage
from virtio_msg.guest import capture_out
from virtio_msg.guest.capture_out import (
    CONFIG_NAME,
    CaptureCopyError,
    backend_args,
    config_file,
    emit_capture,
    extract_captures,
    load_config,
    save_captures,
)
from virtio_msg.guest.initramfs import stage

_CHILD = """
import json, sys
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.cli import build_parser
from virtio_msg.cli.kernel import cmd_backend_kernel
kernel = SeedLoopback(size=1 << 20)
argv = ["backend", "--kernel", "--json", "--base", hex(kernel.bus.region.base), "rng",
        *json.loads(sys.argv[1])]
rc = cmd_backend_kernel(build_parser().parse_args(argv), files=kernel)
print(json.dumps({"read": [f.hex() for f in kernel.frames],
                  "written": [f.hex() for f in kernel.written]}), flush=True)
kernel.close()
sys.exit(rc)
"""


def _request(tmp_path: Path, max_bytes: int = 1 << 20, files: int = 1) -> dict[str, object]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    raw = json.loads(config_file(max_bytes, files))
    raw["path"] = str(tmp_path / "in-guest.pcapng")  # the guest's /tmp, here
    (root / CONFIG_NAME).write_text(json.dumps(raw))
    config = load_config(root)
    assert config is not None
    return config


def _backend_in_guest(config: dict[str, object]) -> tuple[list[bytes], list[bytes]]:
    """Run the guest's backend command (with the request's options) against the emulation."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(backend_args(config))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if '"event": "added"' in line:
                break
        proc.send_signal(signal.SIGTERM)  # what the in-guest program does when it is done
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    seen = json.loads(out.splitlines()[-1])
    return [bytes.fromhex(h) for h in seen["read"]], [bytes.fromhex(h) for h in seen["written"]]


def _as_serial(text: str) -> str:
    """What the host reads: CRLF line ends and kernel messages between the lines."""
    lines = text.splitlines()
    noisy = []
    for i, line in enumerate(lines):
        noisy.append(line)
        if i % 7 == 3:
            noisy.append("[   12.345678] virtio_blk virtio1: [vda] 32768 512-byte logical blocks")
    return "\r\n".join(noisy) + "\r\n"


def test_in_guest_capture_comes_out_byte_for_byte(tmp_path: Path) -> None:
    config = _request(tmp_path)
    read, written = _backend_in_guest(config)
    inside = Path(str(config["path"]))
    out = io.StringIO()
    assert emit_capture(config, out) == 1
    dest = tmp_path / "host.pcapng"
    ok, detail = save_captures(_as_serial(out.getvalue()), dest)
    assert ok, detail
    assert dest.read_bytes() == inside.read_bytes() and f"to {dest}" in detail
    frames = []
    for f in read_capture(dest):
        assert not isinstance(f, MalformedMessage), f
        frames.append(f)
    assert {(f.channel, f.side) for f in frames} == {(ChannelKind.KERNEL, Side.BACKEND)}
    assert [f.data for f in frames if f.direction is Direction.TO_DEVICE] == read
    assert [f.data for f in frames if f.direction is Direction.TO_DRIVER] == written


def test_a_ring_comes_out_as_the_same_ring(tmp_path: Path) -> None:
    config = _request(tmp_path, files=3)
    inside = Path(str(config["path"]))
    parts = {n: bytes([n]) * (100 + n) for n in range(3)}
    for n, data in parts.items():
        ring_path(inside, n).write_bytes(data)
    out = io.StringIO()
    assert emit_capture(config, out) == 3
    dest = tmp_path / "x.pcapng"
    ok, detail = save_captures(out.getvalue(), dest)
    assert ok, detail
    assert {n: ring_path(dest, n).read_bytes() for n in range(3)} == parts


def test_the_copy_out_reports_its_pace_and_a_bad_timing_line_costs_only_the_figure(
    tmp_path: Path,
) -> None:
    config = _request(tmp_path)
    Path(str(config["path"])).write_bytes(bytes(range(256)) * 40)
    out = io.StringIO()
    assert emit_capture(config, out) == 1
    text = out.getvalue()
    timing = capture_out.copy_time(_as_serial(text))
    assert timing is not None and timing[0] == 10240 and timing[1] >= 0
    ok, detail = save_captures(_as_serial(text), tmp_path / "a.pcapng")
    assert ok and f"10240 bytes copied out over the serial console in {timing[1]:.1f} s" in detail
    body = [line for line in text.splitlines() if not line.startswith(capture_out.TIME)]
    for bad in ("{not json", '{"bytes": 10240}', '{"bytes": 5, "seconds": 1.0}',
                '{"bytes": 10240, "seconds": -1}'):
        damaged = "\n".join([*body, f"{capture_out.TIME} {bad}"])
        ok, detail = save_captures(damaged, tmp_path / "b.pcapng")
        assert ok and "10240 bytes copied out over the serial console to" in detail, bad
    assert (tmp_path / "b.pcapng").read_bytes() == bytes(range(256)) * 40


def test_damaged_or_truncated_copies_are_refused_with_a_reason(tmp_path: Path) -> None:
    config = _request(tmp_path)
    Path(str(config["path"])).write_bytes(bytes(range(256)) * 4)
    out = io.StringIO()
    emit_capture(config, out)
    text = out.getvalue()
    lines = text.splitlines()
    cap = [i for i, line in enumerate(lines) if line.startswith("VMSG-CAP ")]
    flipped = list(lines)
    flipped[cap[2]] = flipped[cap[2]][:-6] + ("AAAA==" if not lines[cap[2]].endswith("AAAA==")
                                               else "BBBB==")
    with pytest.raises(CaptureCopyError):
        extract_captures("\n".join(flipped))
    ok, detail = save_captures("\n".join(lines[: cap[-1]]), tmp_path / "t.pcapng")
    assert not ok and "truncated" in detail and not (tmp_path / "t.pcapng").exists()
    lost = [line for i, line in enumerate(lines) if i != cap[1]]  # one line eaten by noise
    ok, detail = save_captures("\n".join(lost), tmp_path / "l.pcapng")
    assert not ok and "bytes arrived" in detail
    ok, detail = save_captures("VMSG-CHECK {}\n", tmp_path / "n.pcapng")
    assert not ok and "printed no capture" in detail


def test_the_no_loopback_path_says_why_there_is_no_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a stock kernel gives: no /dev/virtio-msg-lb, the backend never runs."""
    from virtio_msg.guest import inguest

    config = _request(tmp_path)
    monkeypatch.setattr(inguest, "LB", tmp_path / "no-virtio-msg-lb")

    class Dog:
        def enter(self, step: str) -> None:
            raise AssertionError(f"step {step} started without a loopback")

    assert inguest._checks(["rng"], Dog(), capture=config) == 1  # type: ignore[arg-type]
    ok, detail = save_captures(capsys.readouterr().out, tmp_path / "none.pcapng")
    assert not ok and "the backend never ran" in detail and "no-virtio-msg-lb" in detail


def test_the_request_reaches_the_initramfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stage(root, [], ["rng"], 60, files={CONFIG_NAME: config_file(2 << 20, 3)})
    config = load_config(root)
    assert config == {"path": capture_out.GUEST_PATH, "max_bytes": 2 << 20, "files": 3}
    args = build_parser().parse_args(["backend", "--kernel", *backend_args(config)])
    assert (args.capture, args.capture_size, args.capture_files) == (capture_out.GUEST_PATH, 2.0, 3)
    assert load_config(tmp_path) is None  # no request: no capture
    (tmp_path / "etc").mkdir()
    (tmp_path / CONFIG_NAME).write_text("{")
    with pytest.raises(CaptureCopyError, match="unreadable"):
        load_config(tmp_path)


def test_guest_capture_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["guest", "--kernel", "Image", "--capture", "g.pcapng", "--capture-size", "8"]
    )
    assert (args.capture, args.capture_size, args.capture_files) == ("g.pcapng", 8.0, 2)
    argv = ["guest", "--kernel", str(tmp_path / "Image"), "--capture", "g.pcapng",
            "--capture-size", "0.0001"]
    assert main(argv) == 2
    assert "capture size limit" in capsys.readouterr().err
