"""Capture: ``run --capture``, the pcapng reader, decode --pcap, trace, the ring limit.

Captures are made by the real bus and devices (``virtio-msg run``) and read
back with the project's reader; the Wireshark side is in test_dissector.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dpkt
import pytest

from virtio_msg.bus.capture import (
    LINKTYPE,
    CaptureLimits,
    CaptureWriter,
    ChannelKind,
    Direction,
    ring_path,
)
from virtio_msg.capture.dissector import SCRIPT_NAME, lua_tables, script_path, shipped_tables
from virtio_msg.capture.frames import CaptureError, Frame, decode_frame, read_capture
from virtio_msg.capture.pairing import REQUEST, RESPONSE, pair_frames
from virtio_msg.capture.trace import trace_capture
from virtio_msg.cli import main
from virtio_msg.errors import MalformedMessage
from virtio_msg.wire import Profile


@pytest.fixture(scope="module", params=["spec", "linux-rfc1"])
def run_capture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / f"run-{request.param}.pcapng"
    assert main(["run", "--json", "--profile", request.param, "--capture", str(path)]) == 0
    return path


def frames_of(path: Path) -> list[Frame]:
    out = []
    for f in read_capture(path):
        assert not isinstance(f, MalformedMessage), f
        out.append(f)
    return out


def test_run_capture_holds_every_message_both_ways(run_capture: Path) -> None:
    frames = frames_of(run_capture)
    records = [decode_frame(f) for f in frames]
    names = {r["name"] for r in records}
    assert {"GET_VQUEUE", "SET_DEVICE_STATUS", "SET_VQUEUE", "EVENT_USED"} <= names
    assert {r["direction"] for r in records} == {"driver->device", "device->driver"}
    assert {r["channel"] for r in records} == {"in-process"}
    assert {r["dev_num"] for r in records if not r["bus"]} == {0, 1, 2, 3}
    # the bytes are the wire bytes: msg_size is the frame's length
    assert all(r["msg_size"] == len(f.data) for r, f in zip(records, frames, strict=True))


def test_run_capture_pairs_every_request(run_capture: Path) -> None:
    rows = pair_frames(read_capture(run_capture))
    requests = [r for r in rows if r.kind == REQUEST]
    assert requests and all(r.pair is not None for r in requests)
    by_number = {r.number: r for r in rows}
    for req in requests:
        resp = by_number[req.pair or 0]
        assert resp.kind == RESPONSE and resp.pair == req.number
        assert resp.record and req.record and resp.record["name"] == req.record["name"]
        assert resp.record["dev_num"] == req.record["dev_num"]
        assert resp.direction is not req.direction
        assert req.latency is not None and req.latency >= 0


def test_decode_pcap_prints_one_json_line_per_frame(
    run_capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", "--pcap", str(run_capture)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["frame"] for x in lines] == list(range(1, len(frames_of(run_capture)) + 1))
    assert all({"time", "direction", "name", "fields", "msg_size"} <= set(x) for x in lines)


def test_trace_json_summary_and_filters(
    run_capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = trace_capture(run_capture)
    summary = {s["name"]: s for s in full["summary"]}
    status = summary["SET_DEVICE_STATUS"]
    assert status["answered"] * 2 == status["count"] and status["errors"] == 0
    assert status["p50_us"] is not None and status["p99_us"] >= status["p50_us"]
    only = trace_capture(run_capture, dev=2, msg="get_vqueue")
    assert only["frames"] and all(
        f["dev_num"] == 2 and f["name"] == "GET_VQUEUE" for f in only["frames"]
    )
    assert main(["trace", str(run_capture), "--dev", "1"]) == 0
    out = capsys.readouterr().out
    assert "INFO resp dev 1" in out and "dev 0" not in out and "summary" in out


def test_ring_keeps_at_most_n_files_and_each_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "ring.pcapng"
    writer = CaptureWriter(path, CaptureLimits(max_bytes=8192, files=3))
    tap = writer.tap(ChannelKind.SOCKET, Profile.SPEC, max_size=264)
    msg = bytes.fromhex("02030000070010000100000078563412")  # PING request, data 0x12345678
    for _ in range(2000):
        tap.up(msg)
    writer.close()
    assert writer.rotations > 0 and writer.dropped == 0
    files = sorted(tmp_path.iterdir())
    assert files == sorted([ring_path(path, n) for n in range(3)])
    for f in files:
        assert f.stat().st_size <= 8192
        frames = frames_of(f)
        assert frames and all(decode_frame(x)["name"] == "PING" for x in frames)


def test_a_frame_queued_while_a_batch_is_written_does_not_rotate(tmp_path: Path) -> None:
    """Only the size limit rotates the ring: frames from other threads wait for the next batch.

    The channels record from their own threads while the writer thread writes;
    a frame queued during a write used to be taken for "the limit was
    reached", rotating the file and moving the capture's first frames away.
    """
    path = tmp_path / "race.pcapng"
    writer = CaptureWriter(path, CaptureLimits(files=2))
    tap = writer.tap(ChannelKind.IN_PROCESS, Profile.SPEC)
    msg = bytes.fromhex("0007000001000800")  # GET_DEVICE_STATUS request
    assert writer._writer is not None
    real = writer._writer.writepkts
    queued_during_write: list[bool] = []

    def write_while_a_frame_arrives(pkts: Any) -> None:
        if not queued_during_write:
            queued_during_write.append(True)
            tap.down(msg)  # another thread's frame, queued in the middle of this write
        real(pkts)

    writer._writer.writepkts = write_while_a_frame_arrives
    for _ in range(5):
        tap.down(msg)
    writer.close()
    assert queued_during_write
    assert writer.rotations == 0 and writer.dropped == 0
    assert not ring_path(path, 1).exists()
    assert len(frames_of(path)) == 6


def test_size_limit_without_ring_stops_and_counts(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "one.pcapng", CaptureLimits(max_bytes=4096, files=1))
    tap = writer.tap(ChannelKind.IN_PROCESS, Profile.SPEC)
    for _ in range(1000):
        tap.down(bytes.fromhex("0007000001000800"))
    writer.close()
    assert writer.dropped > 0 and writer.frames + writer.dropped == 1000
    assert (tmp_path / "one.pcapng").stat().st_size <= 4096
    assert "size limit" in writer.summary()


def test_reader_rejects_files_that_are_not_virtio_msg_captures(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"not a capture at all")
    with pytest.raises(CaptureError, match="not a pcapng"):
        list(read_capture(junk))
    other = tmp_path / "eth.pcapng"
    with other.open("wb") as f:
        dpkt.pcapng.Writer(f, linktype=1).writepkts([(1.0, b"\x00" * 14)])
    with pytest.raises(CaptureError, match="link type 1"):
        list(read_capture(other))
    short = tmp_path / "short.pcapng"
    with short.open("wb") as f:
        dpkt.pcapng.Writer(f, linktype=LINKTYPE).writepkts([(1.0, b"\x01\x00")])
    (bad,) = list(read_capture(short))
    assert isinstance(bad, MalformedMessage) and "pseudo-header" in str(bad)


def test_socket_channel_messages_are_named(tmp_path: Path) -> None:
    path = tmp_path / "sock.pcapng"
    with CaptureWriter(path) as writer:
        tap = writer.tap(ChannelKind.SOCKET, Profile.SPEC, max_size=264)
        tap.up(bytes.fromhex("0281000009000c00" "0500" "0000"))  # ADD dev 5, token 9
        tap.down(bytes.fromhex("0381000009001000" "0500" "0000" "00000000"))  # ADD resp OK
    (add, resp) = [decode_frame(f) for f in frames_of(path)]
    assert add["name"] == resp["name"] == "ADD"
    assert add["fields"] == {"dev_num": 5, "reserved": 0}
    assert resp["fields"]["status"] == 0 and resp["direction"] == Direction.TO_DEVICE.label
    rows = pair_frames(read_capture(path))
    assert rows[0].pair == 2


def test_shipped_dissector_tables_match_the_codec_layouts() -> None:
    assert script_path().name == SCRIPT_NAME
    assert shipped_tables(script_path().read_text()) == lua_tables()


def test_wireshark_path_and_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wireshark", "path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == script_path()
    assert main(["wireshark", "install", "--dir", str(tmp_path / "plugins")]) == 0
    installed = tmp_path / "plugins" / SCRIPT_NAME
    assert installed.read_bytes() == script_path().read_bytes()
