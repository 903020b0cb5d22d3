"""Request correlation for the loopback bus: requests in flight and the tables they use.

A :class:`Pending` record is made for every request the bus sends; it names
the one response class that answers the request (:data:`EXPECT`: the
request's message id with the response bit), the device number and the
channel the request went to.  The bus completes it with one response or one
error, never both (see :mod:`virtio_msg.bus.loopback`).  The tables are
built once, from the codec's layout list: how the bus routes each message
class it receives (:data:`KIND`), and the spec names the statistics use
(:func:`label`).  Statistics are counted by class on the hot path and turned
into names only when read (:func:`by_label`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

import virtio_msg.spec as C
from virtio_msg.errors import TransportError
from virtio_msg.wire import Message
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter


class Pending:
    """One request in flight.

    ``expect`` is the one response class that answers it, ``channel`` the
    channel it was delivered to (compared by identity only): a response
    completes it only if it has that class, this device number and comes
    from that channel.  ``done`` and the fields it guards change under the
    bus lock; ``event`` is only created when the requester really has to
    wait (an in-process backend usually answers before ``deliver`` returns).
    """

    __slots__ = ("channel", "dev_num", "done", "error", "event", "expect", "response", "token")

    def __init__(self, dev_num: int, expect: type, token: int, channel: object) -> None:
        """A request to ``dev_num`` with ``token``, answered by an ``expect`` from ``channel``."""
        self.dev_num = dev_num
        self.expect = expect
        self.token = token
        self.channel = channel
        self.done = False
        self.event: threading.Event | None = None
        self.response: Message | None = None
        self.error: TransportError | None = None

    def complete(self, response: Message | None, error: TransportError | None) -> None:
        """Record the one outcome (call with the bus lock held) and wake the requester."""
        self.response = response
        self.error = error
        self.done = True
        if self.event is not None:
            self.event.set()


def label(msg: Message) -> str:
    """The spec name of a message for statistics ("GET_CONFIG", "GET_CONFIG resp")."""
    return LABELS.get(type(msg), type(msg).__name__)


def label_of(cls: type) -> str:
    """The spec name of a message class for statistics (see :func:`label`)."""
    return LABELS.get(cls, cls.__name__)


def by_label(counts: Mapping[type, int]) -> Counter[str]:
    """Counts by message class -> the same counts by spec name."""
    out: Counter[str] = Counter()
    for cls, n in counts.items():
        if n:
            out[label_of(cls)] += n
    return out


_LAYOUTS = WireAdapter().codec.layouts()
REQUEST, RESPONSE, EVENT, BUS = "request", "response", "event", "bus"
KIND: dict[type, str] = {
    lay.cls: BUS
    if lay.bus
    else RESPONSE
    if lay.response
    else EVENT
    if lay.msg_id & C.MSG_ID_EVENT
    else REQUEST
    for lay in _LAYOUTS
}
"""How the bus routes each draft message class it receives (GenericMessage: bus)."""
KIND[R.EventAvailResp] = RESPONSE  # linux-rfc1's kick acknowledgement
RESPONSES = frozenset(cls for cls, kind in KIND.items() if kind is RESPONSE)
"""The classes :data:`KIND` routes as responses."""
LABELS: dict[type, str] = {
    lay.cls: lay.name + (" resp" if lay.response else "") for lay in _LAYOUTS
}
LABELS[R.EventAvailResp] = "EVENT_AVAIL resp"
EXPECT: dict[type, type] = {
    req.cls: resp.cls
    for req in _LAYOUTS
    for resp in _LAYOUTS
    if KIND[req.cls] is REQUEST and KIND[resp.cls] is RESPONSE and resp.msg_id == req.msg_id
}
"""Request class -> the one response class answering it (same id, response bit)."""
EXPECT[S.EventAvail] = R.EventAvailResp  # linux-rfc1 answers kicks (see the bus's send_event)

__all__ = ["EXPECT", "KIND", "LABELS", "RESPONSES", "Pending", "by_label", "label", "label_of"]
