"""``virtio-msg trace``: a capture as a driver | bus | device sequence, and a summary.

:func:`trace_capture` reads and pairs a capture (:mod:`virtio_msg.capture.pairing`),
applies the filters (device number, message name) and computes, per message
kind, the count, answered requests, p50/p99 latency, unanswered requests and
malformed frames.  :func:`render` prints it with rich: one line per message,
an arrow between the driver, bus and device columns, coloured by device,
responses marked with the frame of their request and the latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from virtio_msg.bus.capture import Direction
from virtio_msg.capture.frames import read_capture
from virtio_msg.capture.pairing import EVENT, MALFORMED, REQUEST, RESPONSE, Row, pair_frames

COLOURS: Final = ("cyan", "green", "magenta", "yellow", "blue", "red", "bright_cyan", "white")
"""Colour of device N is COLOURS[N % len(COLOURS)]; bus messages are plain."""


BUS_LANE: Final = frozenset(
    {"ANNOUNCE", "ADD", "REMOVE", "END", "PING", "GET_DEVICES", "EVENT_DEVICE"}
    | {"BUS_PING", "BUS_GET_DEVICES", "BUS_EVENT_DEVICE"}  # their linux-rfc1 names
)
"""Messages drawn between the bus and device columns (bus messages, channel control)."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(rows: list[Row]) -> list[dict[str, Any]]:
    """Per message kind: count, answered, p50/p99 latency (us), unanswered, malformed."""
    kinds: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.name
        entry = kinds.setdefault(
            name,
            {"name": name, "count": 0, "answered": 0, "unanswered": 0, "malformed": 0, "_lat": []},
        )
        entry["count"] += 1
        if row.kind == MALFORMED:
            entry["malformed"] += 1
        elif row.kind == REQUEST:
            if row.pair is None:
                entry["unanswered"] += 1
            else:
                entry["answered"] += 1
                entry["_lat"].append(row.latency or 0.0)
    out = []
    for entry in sorted(kinds.values(), key=lambda e: str(e["name"])):
        lat: list[float] = entry.pop("_lat")
        entry["p50_us"] = round(_percentile(lat, 0.5) * 1e6, 1) if lat else None
        entry["p99_us"] = round(_percentile(lat, 0.99) * 1e6, 1) if lat else None
        entry["errors"] = entry["unanswered"] + entry["malformed"]
        out.append(entry)
    return out


def trace_capture(
    path: str | Path, *, dev: int | None = None, msg: str | None = None
) -> dict[str, Any]:
    """Read, pair and filter a capture; the ``trace --json`` object."""
    rows = pair_frames(read_capture(path))
    if dev is not None:
        rows = [r for r in rows if r.dev_num == dev and not (r.record and r.record["bus"])]
    if msg is not None:
        rows = [r for r in rows if r.name.lower() == msg.lower()]
    start = rows[0].time if rows else 0.0
    return {
        "file": str(path),
        "frames": [r.as_json() | {"t_ms": round((r.time - start) * 1e3, 3)} for r in rows],
        "summary": summarize(rows),
    }


def _lanes(row: dict[str, Any]) -> str:
    """The arrow between the three columns (each 10 characters wide)."""
    bus_msg = row["name"] in BUS_LANE
    to_device = row["direction"] == Direction.TO_DEVICE.label
    if row["kind"] == MALFORMED:
        return "  " + "x" * 26
    if bus_msg:  # between the bus and the device side
        return " " * 12 + ("o------------>" if to_device else "<------------o")
    return "o-------------------------->" if to_device else "<--------------------------o"


def render(result: dict[str, Any]) -> None:
    """Print the sequence and the summary table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"[bold]{escape(result['file'])}[/bold]")
    console.print(f"{'frame':>6} {'t ms':>10}  {'driver':<12}{'bus':<14}{'device':<8}  message")
    for row in result["frames"]:
        dev = row["dev_num"]
        colour = COLOURS[dev % len(COLOURS)] if dev is not None and row["kind"] != EVENT else ""
        if row["kind"] == EVENT and dev is not None:
            colour = COLOURS[dev % len(COLOURS)]
        text = row["name"] + (" resp" if row["kind"] == RESPONSE else "")
        if dev is not None:
            text += f" dev {dev}"
        if row["token"]:
            text += f" tok {row['token']}"
        if row["name"] == "END":
            text += " (connection closed by the " + (
                "bus)" if row["direction"] == Direction.TO_DEVICE.label else "backend)"
            )
        if row["kind"] == RESPONSE and row["pair"] is not None:
            text += f"  (#{row['pair']}, {row['latency_us']} us)"
        elif row["kind"] == REQUEST and row["pair"] is None:
            text += "  [red](no response)[/red]"
        if row.get("error"):
            text += f"  [red]{escape(row['error'])}[/red]"
        line = f"{row['frame']:>6} {row['t_ms']:>10.3f}  {_lanes(row)}  "
        styled = f"[{colour}]{escape(text)}[/{colour}]" if colour else text
        if "[red]" in text:
            styled = text.replace(escape(row["name"]), row["name"])
        console.print(escape(line) + styled)
    table = Table(title="summary")
    for col in ("message", "count", "answered", "p50 us", "p99 us", "errors"):
        table.add_column(col, justify="left" if col == "message" else "right")
    for entry in result["summary"]:
        table.add_row(
            entry["name"],
            str(entry["count"]),
            str(entry["answered"]),
            "" if entry["p50_us"] is None else str(entry["p50_us"]),
            "" if entry["p99_us"] is None else str(entry["p99_us"]),
            str(entry["errors"]) if entry["errors"] else "",
        )
    console.print(table)


__all__ = ["COLOURS", "render", "summarize", "trace_capture"]
