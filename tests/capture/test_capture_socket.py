"""``bus --capture`` and ``backend --socket --capture``: both ends of one connection recorded.

A real ``virtio-msg bus`` and ``virtio-msg backend`` (processes) each write a
capture; read back with the project's reader, the bus side holds every
datagram of the connection both ways with the socket channel's own frames
(ANNOUNCE, ADD, REMOVE, and END for the hang-up) flagged as control frames,
and the backend side holds the very same bytes in the same order per
direction.  tshark with the shipped dissector gives the same fields as
``decode`` on both files.  Hand-made frames check the control flag's rules.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capture_helpers import TSHARK, check_same_as_decode, tshark_packets

from virtio_msg.bus.capture import (
    PSEUDO_HEADER,
    CaptureWriter,
    ChannelKind,
    Direction,
    Side,
    pseudo_header,
)
from virtio_msg.capture.frames import Frame, decode_frame, read_capture
from virtio_msg.capture.pairing import EVENT, pair_frames
from virtio_msg.capture.trace import trace_capture
from virtio_msg.cli import main
from virtio_msg.errors import MalformedMessage
from virtio_msg.wire import Profile

WAIT = 30.0
CONTROL_NAMES = {"ANNOUNCE", "ADD", "REMOVE", "END"}


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtio_msg", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=WAIT)


def read_lines(proc: subprocess.Popen[str], until: str, count: int = 1) -> list[dict[str, Any]]:
    """JSON lines of ``proc`` until ``count`` lines with event ``until`` (bounded)."""
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(json.loads(line))
            if sum(e.get("event") == until for e in got) >= count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(WAIT), f"no {until!r} line; got {got}"
    return got


def frames_of(path: Path) -> list[Frame]:
    out = []
    for f in read_capture(path):
        assert not isinstance(f, MalformedMessage), f
        out.append(f)
    return out


@pytest.fixture(scope="module", params=["spec", "linux-rfc1"])
def both_sides(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, Path]]:
    """Captures of one bus/backend session: (profile, bus file, backend file)."""
    profile = request.param
    d = Path(tempfile.mkdtemp(prefix="vmsg-cap-"))
    sock, bus_cap, be_cap = d / "bus.sock", d / "bus.pcapng", d / "backend.pcapng"
    bus = spawn("bus", "--socket", str(sock), "--json", "--profile", profile,
                "--capture", str(bus_cap))
    backend = None
    try:
        read_lines(bus, "listening")
        backend = spawn("backend", "--socket", str(sock), "--json", "rng", "3:rng",
                        "--capture", str(be_cap), "--capture-files", "1")
        events = read_lines(bus, "selftest", 2)
        assert all(e["ok"] for e in events if e["event"] == "selftest"), events
        read_lines(backend, "added", 2)  # both ADDs returned: a SIGTERM now REMOVEs both
        _out, err = stop(backend)  # SIGTERM: REMOVE both devices, then hang up
        assert backend.returncode == 0, err
        assert "capture: " in err and str(be_cap) in err
        read_lines(bus, "disconnected")
        _out, err = stop(bus, signal.SIGINT)
        assert bus.returncode == 0, err
        assert f"frames in {bus_cap}" in err
        yield profile, bus_cap, be_cap
    finally:
        for proc in (backend, bus):
            if proc is not None:
                stop(proc, signal.SIGKILL)


def test_bus_capture_holds_every_datagram_of_the_connection(
    both_sides: tuple[str, Path, Path],
) -> None:
    profile, bus_cap, _ = both_sides
    frames = frames_of(bus_cap)
    records = [decode_frame(f) for f in frames]
    assert {(f.channel, f.side, f.connection) for f in frames} == {
        (ChannelKind.SOCKET, Side.BUS, 1)  # backend-1, the first connection
    }
    assert {r["profile"] for r in records} == {profile}
    # the channel's own frames are flagged, and nothing else is
    assert all(f.control == (r["name"] in CONTROL_NAMES) for f, r in zip(frames, records,
                                                                            strict=True))
    first, last = records[0], records[-1]
    assert first["name"] == "ANNOUNCE" and first["direction"] == "driver->device"
    assert first["fields"]["profile"] == (0 if profile == "spec" else 1)
    assert last["name"] == "END" and last["direction"] == "device->driver"  # backend hung up
    control = [(r["name"], r["response"], r["direction"], r["fields"].get("dev_num"),
                r["fields"].get("status")) for r in records if r["control"]][1:-1]
    up, down = "device->driver", "driver->device"
    assert sorted(control, key=str) == sorted([
        ("ADD", False, up, 0, None), ("ADD", True, down, 0, 0),
        ("ADD", False, up, 3, None), ("ADD", True, down, 3, 0),
        ("REMOVE", False, up, 0, None), ("REMOVE", True, down, 0, 0),
        ("REMOVE", False, up, 3, None), ("REMOVE", True, down, 3, 0),
    ], key=str)
    names = {r["name"] for r in records}
    assert {"SET_DEVICE_STATUS", "SET_VQUEUE", "EVENT_AVAIL", "EVENT_USED"} <= names
    assert {r["dev_num"] for r in records if not r["bus"]} == {0, 3}
    # the bytes are the datagrams: msg_size is each one's length
    assert all(r["msg_size"] == len(f.data) for r, f in zip(records, frames, strict=True))


def test_backend_capture_holds_the_same_bytes_in_the_same_order(
    both_sides: tuple[str, Path, Path],
) -> None:
    _, bus_cap, be_cap = both_sides
    bus, be = frames_of(bus_cap), frames_of(be_cap)
    assert {(f.channel, f.side, f.connection) for f in be} == {
        (ChannelKind.SOCKET, Side.BACKEND, 0)
    }
    for direction in Direction:
        assert [(f.data, f.control) for f in bus if f.direction is direction and f.data] == [
            (f.data, f.control) for f in be if f.direction is direction and f.data
        ], direction
    (end,) = [f for f in be if not f.data]
    assert end.control and end.direction is Direction.TO_DRIVER  # the backend hung up


def test_trace_and_decode_of_socket_captures(
    both_sides: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bus_cap, be_cap = both_sides
    for path in (bus_cap, be_cap):
        result = trace_capture(path)
        summary = {e["name"]: e for e in result["summary"]}
        assert summary["ADD"]["answered"] == summary["REMOVE"]["answered"] == 2
        assert not any(e["errors"] for e in result["summary"]), result["summary"]
        rows = {r["name"]: r for r in result["frames"]}
        assert rows["ANNOUNCE"]["kind"] == rows["END"]["kind"] == EVENT
        assert rows["ANNOUNCE"]["control"] and not rows["SET_DEVICE_STATUS"]["control"]
        assert main(["decode", "--pcap", str(path)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[0]["name"] == "ANNOUNCE" and lines[0]["control"] is True
        assert lines[-1]["name"] == "END" and lines[-1]["channel"] == "socket"
    assert main(["trace", str(bus_cap), "--msg", "END"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "END dev 0 (connection closed by the backend)" in text


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_reads_both_sides_like_decode(both_sides: tuple[str, Path, Path]) -> None:
    _, bus_cap, be_cap = both_sides
    for path in (bus_cap, be_cap):
        assert check_same_as_decode(path) == 0
        rows = pair_frames(read_capture(path))
        for row, fields in zip(rows, tshark_packets(path), strict=True):
            partner = [int(s) for n, s, _ in fields
                       if n in ("virtio_msg.response_to", "virtio_msg.response_in")]
            assert (partner[0] if partner else None) == row.pair, row


def _frames(path: Path, items: list[tuple[bytes, bytes]]) -> None:
    with CaptureWriter(path) as writer:
        for prefix, data in items:
            writer.record(prefix, data)


def test_control_flag_rules(tmp_path: Path) -> None:
    ctl = pseudo_header(Direction.TO_DRIVER, ChannelKind.SOCKET, Profile.SPEC, max_size=264,
                        control=True)
    plain = pseudo_header(Direction.TO_DRIVER, ChannelKind.SOCKET, Profile.SPEC, max_size=264)
    add = bytes.fromhex("0281000009000c00" "0500" "0000")
    ping = bytes.fromhex("0203000001000c00" "78563412")
    path = tmp_path / "ctl.pcapng"
    _frames(path, [(ctl, add), (plain, add), (ctl, ping), (ctl, b""), (plain, ping)])
    frames = frames_of(path)
    assert decode_frame(frames[0])["control"] is True
    assert decode_frame(frames[1])["name"] == "ADD"  # a capture without the flag still reads
    with pytest.raises(MalformedMessage, match="control frame with bus msg_id 0x03"):
        decode_frame(frames[2])
    end = decode_frame(frames[3])
    assert end["name"] == "END" and end["msg_id"] is None and end["direction"] == "device->driver"
    assert decode_frame(frames[4])["name"] == "PING" and not decode_frame(frames[4])["control"]
    if TSHARK is not None:
        assert check_same_as_decode(path) == 1  # the flagged PING, by both
    bad_flags = bytearray(plain)
    bad_flags[PSEUDO_HEADER.size - 1] = 0x02
    path2 = tmp_path / "flags.pcapng"
    _frames(path2, [(bytes(bad_flags), ping)])
    (bad,) = list(read_capture(path2))
    assert isinstance(bad, MalformedMessage) and "flags 0x02" in str(bad)
    if TSHARK is not None:
        assert any(n == "virtio_msg.malformed" for n, _, _ in tshark_packets(path2)[0])


def test_a_bus_that_shuts_down_is_recorded_as_its_hang_up_on_both_sides(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="vmsg-cap-"))
    sock, bus_cap, be_cap = d / "bus.sock", tmp_path / "bus.pcapng", tmp_path / "be.pcapng"
    bus = spawn("bus", "--socket", str(sock), "--json", "--no-selftest", "--capture", str(bus_cap))
    backend = None
    try:
        read_lines(bus, "listening")
        backend = spawn("backend", "--socket", str(sock), "--json", "rng", "--capture", str(be_cap))
        read_lines(bus, "added")
        read_lines(backend, "added")  # its ADD returned before the bus goes away
        _out, err = stop(bus)  # SIGTERM: the bus closes every connection
        assert bus.returncode == 0, err
        out, err = stop(backend, signal.SIGCONT)  # it leaves by itself once the bus is gone
        assert backend.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["event"] == "disconnected"
    finally:
        for proc in (backend, bus):
            if proc is not None:
                stop(proc, signal.SIGKILL)
    for path in (bus_cap, be_cap):
        frames = frames_of(path)
        ends = [f for f in frames if f.control and not f.data]
        assert ends == [frames[-1]], path  # exactly one END, the last frame
        assert ends[0].direction is Direction.TO_DEVICE  # the bus side hung up
        assert decode_frame(ends[0])["name"] == "END"


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_run_over_the_socket_with_capture(profile: str, tmp_path: Path) -> None:
    path = tmp_path / "run-socket.pcapng"
    assert main(["run", "--socket", "--json", "--profile", profile, "--capture", str(path)]) == 0
    frames = frames_of(path)
    assert {(f.channel, f.side, f.bus) for f in frames} == {(ChannelKind.SOCKET, Side.BUS, 0)}
    records = [decode_frame(f) for f in frames]
    assert records[0]["name"] == "ANNOUNCE" and records[-1]["name"] == "END"
    assert {r["dev_num"] for r in records if not r["bus"]} == {0, 1, 2, 3}
    added = {r["fields"]["dev_num"] for r in records if r["name"] == "ADD" and r["response"]}
    assert added == {0, 1, 2, 3}
    rows = pair_frames(read_capture(path))
    assert not [r for r in rows if r.kind == "request" and r.pair is None]
    if TSHARK is not None:
        assert check_same_as_decode(path) == 0
