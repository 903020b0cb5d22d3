"""tshark helpers shared by the capture tests: PDML fields, and the frame-by-frame check.

:func:`check_same_as_decode` runs tshark with the shipped dissector on a
capture and compares every frame's fields with what
:func:`~virtio_msg.capture.frames.decode_frame` gives for it.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from virtio_msg.capture.dissector import script_path
from virtio_msg.capture.frames import decode_frame, read_capture
from virtio_msg.errors import MalformedMessage

TSHARK = shutil.which("tshark")


def tshark_packets(path: Path) -> list[list[tuple[str, str, str]]]:
    """(field name, show, value) of every field of every packet, in tree order."""
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-2", "-X", f"lua_script:{script_path()}", "-r", str(path), "-T", "pdml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    packets = []
    for packet in ET.fromstring(out).iter("packet"):
        packets.append(
            [
                (f.get("name", ""), f.get("show", ""), f.get("value", ""))
                for f in packet.iter("field")
            ]
        )
    return packets


def check_same_as_decode(path: Path) -> int:
    """Compare every frame; return the number of frames decode refused."""
    frames = [f for f in read_capture(path) if not isinstance(f, MalformedMessage)]
    packets = tshark_packets(path)
    assert len(packets) == len(frames)
    refused = 0
    for frame, fields in zip(frames, packets, strict=True):
        names = [n for n, _, _ in fields]
        assert not any("lua" in n and "error" in n for n in names), fields
        assert not any(n.startswith("_ws.malformed") for n in names), fields
        malformed = "virtio_msg.malformed" in names
        control = [s for n, s, _ in fields if n == "virtio_msg.control"]
        assert control == ["1" if frame.control else "0"], (frame.number, control)
        try:
            record = decode_frame(frame)
        except MalformedMessage:
            refused += 1
            assert malformed, f"frame {frame.number}: decode refuses it, the dissector does not"
            continue
        assert not malformed, f"frame {frame.number}: dissector flags {record}"
        got: dict[str, list[Any]] = {}
        for name, show, value in fields:
            got.setdefault(name, []).append((show, value))

        def one(key: str, got: dict[str, list[Any]] = got) -> str:
            return str(got[f"virtio_msg.{key}"][0][0])

        assert one("name") == record["name"]
        assert int(one("direction")) == frame.direction
        if record["name"] == "END":  # an empty control frame: the connection's hang-up
            assert frame.control and not frame.data and "virtio_msg.msg_id" not in got
            continue
        assert int(one("msg_id"), 0) == record["msg_id"]
        assert int(one("type"), 0) == record["type"]
        assert (one("response") == "1") == record["response"]
        assert (one("bus") == "1") == record["bus"]
        assert int(one("dev_num")) == record["dev_num"]
        assert int(one("msg_size")) == record["msg_size"]
        assert int(one("direction")) == frame.direction
        if record["token"] is None:
            assert "virtio_msg.token" not in got
        else:
            assert int(one("token")) == record["token"]
        for key, value in record["fields"].items():
            items = got.get(f"virtio_msg.fields.{key}", [])
            if isinstance(value, list):
                assert [int(s, 0) for s, _ in items] == value, key
            elif isinstance(value, str):  # bytes as hex; an empty tail has no item
                assert (items[0][1] if items else "") == value, key
            else:
                assert len(items) == 1 and int(items[0][0], 0) == value, key
    return refused
