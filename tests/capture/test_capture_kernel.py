"""``backend --kernel --capture``: the raw 44-byte buffers of /dev/virtio-msg-N, both ways.

Against the emulated seed loopback (``SeedLoopback``, which keeps the seed's
stale bytes after ``msg_size``): the capture holds exactly the buffers the
kernel handed to ``read`` (driver->device) and the buffers written back
(device->driver), in order, with channel ``kernel``, side ``backend``,
profile ``linux-rfc1``; the stale bytes are kept and shown as ``trailing``
by ``decode --pcap`` and as the ``virtio_msg.stale`` note by the dissector.
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_helpers import TSHARK, check_same_as_decode, tshark_packets

from virtio_msg.bus.capture import CaptureWriter, ChannelKind, Direction, Side
from virtio_msg.bus.kernel import KernelChannel
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.capture.frames import Frame, decode_frame, read_capture
from virtio_msg.devices.catalog import make_device
from virtio_msg.drivers.rng import RngDriver
from virtio_msg.errors import MalformedMessage
from virtio_msg.spec import TransportMsg
from virtio_msg.wire import Profile
from virtio_msg.wire.compat import KERNEL_FRAME_SIZE

SIZE = 1 << 20


def frames_of(path: Path) -> list[Frame]:
    out = []
    for f in read_capture(path):
        assert not isinstance(f, MalformedMessage), f
        out.append(f)
    return out


def _msg_size(frame: bytes) -> int:
    return int(struct.unpack_from("<H", frame, 4)[0])


def check_kernel_capture(path: Path, read: list[bytes], written: list[bytes]) -> list[Frame]:
    """The capture equals what the kernel handed out and took back, buffer for buffer."""
    frames = frames_of(path)
    assert {(f.channel, f.side, f.profile, f.max_size, f.control) for f in frames} == {
        (ChannelKind.KERNEL, Side.BACKEND, Profile.LINUX_RFC1, KERNEL_FRAME_SIZE, False)
    }
    assert [f.data for f in frames if f.direction is Direction.TO_DEVICE] == read
    assert [f.data for f in frames if f.direction is Direction.TO_DRIVER] == written
    assert all(len(f.data) == KERNEL_FRAME_SIZE for f in frames)
    return frames


@contextlib.contextmanager
def captured_rng(path: Path) -> Iterator[tuple[SeedLoopback, CaptureWriter]]:
    """``backend --kernel --capture path`` serving rng as device 0 on the emulated seed."""
    kernel = SeedLoopback(size=SIZE, timeout_s=2.0)
    writer = CaptureWriter(path)
    try:
        channel = KernelChannel(kernel, kernel.bus.region.base, SIZE, capture=writer)
        try:
            channel.serve(0, make_device("rng"))
            yield kernel, writer
        finally:
            channel.close()
    finally:
        writer.close()
        kernel.close()


def test_kernel_channel_records_every_buffer_as_read_and_written(tmp_path: Path) -> None:
    path = tmp_path / "kernel.pcapng"
    with captured_rng(path) as (kernel, writer):
        entry = kernel.bus.device(0)
        assert entry is not None and isinstance(entry.driver, RngDriver)
        assert len(entry.driver.read(32)) == 32  # kicks and EVENT_USED on the way
    frames = check_kernel_capture(path, kernel.frames, kernel.written)
    assert writer.dropped == 0
    records = {}
    for f in frames:
        with contextlib.suppress(MalformedMessage):  # the strict codec refuses some seed frames
            records[f.number] = decode_frame(f)
    # the seed's residue is kept: SET_DRV_FEATURES goes out with msg_size 14 and stale bytes
    feats = [f for f in frames if f.data[:2] == bytes((0, TransportMsg.SET_DRIVER_FEATURES))]
    assert feats and all(_msg_size(f.data) == 14 for f in feats)
    stale = [f for f in frames if any(f.data[_msg_size(f.data):])]
    assert stale
    for f in stale:
        if f.number in records:
            trailing = records[f.number]["trailing"]
            assert bytes.fromhex(trailing) == f.data[_msg_size(f.data):]
    names = {r["name"] for r in records.values()}
    assert {"DEVICE_INFO", "SET_VQUEUE", "EVENT_AVAIL", "EVENT_USED"} <= names
    if TSHARK is not None:
        assert check_same_as_decode(path) == len(frames) - len(records)
        packets = tshark_packets(path)
        for f in stale:
            fields = [n for n, _, _ in packets[f.number - 1]]
            assert "virtio_msg.trailing" in fields and "virtio_msg.stale" in fields, f.number


_CHILD = """
import json, sys
from virtio_msg.bus.kernel_emulation import SeedLoopback
from virtio_msg.cli import build_parser
from virtio_msg.cli.kernel import cmd_backend_kernel
kernel = SeedLoopback(size=1 << 20)
argv = ["backend", "--kernel", "--json", "--base", hex(kernel.bus.region.base), "rng", "console",
        "--capture", sys.argv[1], "--capture-files", "1"]
rc = cmd_backend_kernel(build_parser().parse_args(argv), files=kernel)
print(json.dumps({"read": [f.hex() for f in kernel.frames],
                  "written": [f.hex() for f in kernel.written]}), flush=True)
kernel.close()
sys.exit(rc)
"""


def test_backend_kernel_capture_option(tmp_path: Path) -> None:
    path = tmp_path / "backend-kernel.pcapng"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    try:
        added = 0
        for line in proc.stdout:
            added += '"event": "added"' in line
            if added == 2:
                break
        assert added == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"frames in {path}" in err  # the summary line on stderr
    seen = json.loads(out.splitlines()[-1])
    read = [bytes.fromhex(h) for h in seen["read"]]
    written = [bytes.fromhex(h) for h in seen["written"]]
    assert read and written
    check_kernel_capture(path, read, written)


@pytest.mark.parametrize("size", ["0.001", "-1"])
def test_backend_kernel_refuses_a_bad_capture_size(
    size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from virtio_msg.cli import main

    argv = ["backend", "--kernel", "--base", "0x100000000", "--capture", str(tmp_path / "x"),
            "--capture-size", size, "--lb", str(tmp_path / "none")]
    assert main(argv) == 2
    assert "capture size limit" in capsys.readouterr().err


def test_decode_pcap_kernel_compat_reads_the_seeds_set_drv_features(tmp_path: Path) -> None:
    """Strictly the seed's SET_DRV_FEATURES (msg_size 14) is malformed; with the rule it reads."""
    path = tmp_path / "kernel.pcapng"
    with captured_rng(path):
        pass  # the probe is enough: it sends SET_DRV_FEATURES
    frames = list(read_capture(path))
    feats = [
        f
        for f in frames
        if not isinstance(f, MalformedMessage)
        and f.data[:2] == bytes((0, TransportMsg.SET_DRIVER_FEATURES))
    ]
    assert feats
    for f in feats:
        with pytest.raises(MalformedMessage):
            decode_frame(f)
        record = decode_frame(f, kernel_compat=True)
        assert record["name"] == "SET_DRV_FEATURES"
        assert record["kernel_compat"] == {"wire_msg_size": 14, "msg_size": 22}
        assert record["fields"]["features"][1] & 1  # VIRTIO_F_VERSION_1, read past msg_size
    strict = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "decode", "--pcap", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    compat = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "decode", "--pcap", str(path), "--kernel-compat"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert strict.returncode == 1 and "features: num=2 needs 8 bytes" in strict.stderr
    assert compat.returncode == 0, compat.stderr
    assert compat.stdout.count('"kernel_compat"') == len(feats)
