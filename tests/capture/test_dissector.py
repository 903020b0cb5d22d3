"""The Wireshark dissector read by tshark: same fields as ``decode``, malformed flagged.

tshark (Debian's package, installed by scripts/install-test-deps.sh) reads
captures of ``virtio-msg run`` in both profiles, the golden vectors of the
codec tests, and hand-made malformed frames; every frame's fields must equal
what :func:`~virtio_msg.capture.frames.decode_frame` gives, and a frame gets
the ``virtio_msg.malformed`` expert info exactly when decode refuses it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from capture_helpers import TSHARK, check_same_as_decode, tshark_packets

from virtio_msg.bus.capture import CaptureWriter, ChannelKind
from virtio_msg.capture.frames import read_capture
from virtio_msg.capture.pairing import pair_frames
from virtio_msg.cli import main
from virtio_msg.wire import Profile

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
WIRE_TESTS = Path(__file__).parent.parent / "wire"


def golden(name: str) -> list[str]:
    spec = importlib.util.spec_from_file_location(name, WIRE_TESTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [p.values[0] for p in module.VECTORS]


def test_dissector_reads_run_captures_in_both_profiles(tmp_path: Path) -> None:
    for profile in ("spec", "linux-rfc1"):
        path = tmp_path / f"{profile}.pcapng"
        assert main(["run", "--json", "--profile", profile, "--capture", str(path)]) == 0
        assert check_same_as_decode(path) == 0
        # pairing: the dissector's response-to matches the Python pairing
        rows = pair_frames(read_capture(path))
        packets = tshark_packets(path)
        for row, fields in zip(rows, packets, strict=True):
            to = [int(s) for n, s, _ in fields if n == "virtio_msg.response_to"]
            into = [int(s) for n, s, _ in fields if n == "virtio_msg.response_in"]
            partner: list[int | None] = [*to, *into] or [None]
            assert partner[0] == row.pair, row


def test_golden_vectors_give_the_same_fields_as_decode(tmp_path: Path) -> None:
    path = tmp_path / "golden.pcapng"
    with CaptureWriter(path) as writer:
        for profile, name in ((Profile.SPEC, "test_golden_spec"), (Profile.LINUX_RFC1,
                              "test_golden_rfc1")):
            tap = writer.tap(ChannelKind.IN_PROCESS, profile, max_size=65535)
            for text in golden(name):
                tap.down(bytes.fromhex(text.replace(" ", "")))
    assert check_same_as_decode(path) == 0


def test_malformed_frames_are_flagged_not_lua_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcapng"
    bad = [
        "0007",  # truncated header
        "0007000001000400",  # msg_size smaller than the header
        "0007000001002000",  # msg_size larger than the frame
        "0202050001000c0000000000",  # bus message with dev_num 5
        "0142000000000c0000000000",  # EVENT_USED with the response bit
        "007f000001000800",  # unknown transport msg_id
        "01050000010010000000000000000000",  # GET_CONFIG resp, payload too short
        "0105000001001400000000000000000004000000",  # length 4, no data bytes
        "0103000001001400000000000200000001000000",  # 2 feature words announced, 1 sent
    ]
    good = ["0007000001000800", "0007000001000800ffff"]  # the second has 2 trailing bytes
    with CaptureWriter(path) as writer:
        tap = writer.tap(ChannelKind.SOCKET, Profile.SPEC, max_size=264)
        for text in bad + good:
            tap.down(bytes.fromhex(text))
    assert check_same_as_decode(path) == len(bad)
