"""Request/response pairing of a capture, the rule the Wireshark dissector applies too.

A request is matched by the first later response that crossed the same
channel (bus instance, channel kind, connection) in the other direction, in
the same namespace (transport or bus), for the same device number and message
id, and -- in the ``spec`` profile -- with the same token.  ``linux-rfc1`` has
no token: a response completes the oldest unanswered request with the same
id (the seed's devices answer in order), and its EVENT_AVAIL is a request
too, since the seed answers every kick.  Events are never paired.  The
latency of a pair is the time between the two frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import virtio_msg.spec as C
from virtio_msg.bus.capture import Direction
from virtio_msg.capture.frames import Frame, decode_frame
from virtio_msg.errors import MalformedMessage
from virtio_msg.wire import Profile

REQUEST: Final = "request"
RESPONSE: Final = "response"
EVENT: Final = "event"
MALFORMED: Final = "malformed"


@dataclass(slots=True)
class Row:
    """One frame of a capture, decoded and paired."""

    number: int
    time: float
    direction: Direction | None
    kind: str
    """request, response, event or malformed."""
    record: dict[str, Any] | None = None
    """The decoded message (``decode_frame``), None if malformed."""
    error: str | None = None
    pair: int | None = None
    """Frame number of the matching request or response."""
    latency: float | None = None
    """Seconds between request and response (on both rows of a pair)."""
    frame: Frame | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """Message name, ``malformed`` if it did not decode."""
        return str(self.record["name"]) if self.record else MALFORMED

    @property
    def dev_num(self) -> int | None:
        """Header ``dev_num`` (None if malformed)."""
        return int(self.record["dev_num"]) if self.record else None

    def as_json(self) -> dict[str, Any]:
        """The row for ``trace --json``."""
        out: dict[str, Any] = {
            "frame": self.number,
            "time": self.time,
            "direction": self.direction.label if self.direction is not None else None,
            "kind": self.kind,
            "name": self.name,
            "dev_num": self.dev_num,
            "token": self.record.get("token") if self.record else None,
            "control": bool(self.record and self.record.get("control")),
            "pair": self.pair,
            "latency_us": round(self.latency * 1e6, 1) if self.latency is not None else None,
        }
        if self.error:
            out["error"] = self.error
        return out


def classify(record: dict[str, Any]) -> str:
    """request, response or event, from the decoded header.

    The socket channel's ANNOUNCE and END (a hang-up) are never answered: events.
    """
    if record["name"] in ("ANNOUNCE", "END"):
        return EVENT
    if record["response"]:
        return RESPONSE
    rfc1_kick = (
        record["profile"] == Profile.LINUX_RFC1.value
        and not record["bus"]
        and record["msg_id"] == C.TransportMsg.EVENT_AVAIL
    )
    if record["msg_id"] & C.MSG_ID_EVENT and not rfc1_kick:
        return EVENT
    return REQUEST


def _key(frame: Frame, record: dict[str, Any], request_dir: Direction) -> tuple[Any, ...]:
    token = record["token"] if record["profile"] == Profile.SPEC.value else None
    return (
        frame.bus,
        frame.channel,
        frame.connection,
        request_dir,
        record["bus"],
        record["dev_num"],
        record["msg_id"],
        token,
    )


def pair_frames(frames: Iterable[Frame | MalformedMessage]) -> list[Row]:
    """Decode and pair every frame of a capture, in capture order."""
    rows: list[Row] = []
    waiting: dict[tuple[Any, ...], deque[Row]] = {}
    for item in frames:
        if isinstance(item, MalformedMessage):
            rows.append(Row(len(rows) + 1, 0.0, None, MALFORMED, error=str(item)))
            continue
        try:
            record = decode_frame(item)
        except MalformedMessage as exc:
            rows.append(
                Row(item.number, item.time, item.direction, MALFORMED, error=str(exc), frame=item)
            )
            continue
        kind = classify(record)
        row = Row(item.number, item.time, item.direction, kind, record, frame=item)
        rows.append(row)
        if kind == REQUEST:
            waiting.setdefault(_key(item, record, item.direction), deque()).append(row)
        elif kind == RESPONSE:
            other = Direction(1 - item.direction)
            queue = waiting.get(_key(item, record, other))
            if queue:
                req = queue.popleft()
                req.pair, row.pair = row.number, req.number
                req.latency = row.latency = max(0.0, row.time - req.time)
    return rows


__all__ = ["EVENT", "MALFORMED", "REQUEST", "RESPONSE", "Row", "classify", "pair_frames"]
