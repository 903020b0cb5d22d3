"""DriverTransport.get_status (one step, no generator) agrees with the engine's procedure.

``DriverTransport.get_status`` sends the engine's prebuilt GET_DEVICE_STATUS
and applies the answer with ``DriverEngine.take_status``; the general runner
drives the ``DriverEngine.get_status`` generator (as reset polling does).
On the same answers, good and bad, both must give the same request, the same
result or error, the same status and the same sticky failure (DRV-15).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from virtio_msg.errors import DeviceBroken, TransportError, VirtioMsgError
from virtio_msg.memory import DmaPool, Region
from virtio_msg.transport import BusParams
from virtio_msg.transport.driver import DriverTransport
from virtio_msg.transport.engine import DriverEngine, FeaturesRefused, run_sync
from virtio_msg.wire import Message
from virtio_msg.wire import spec as S

DEV = 7


def _raise(exc: Exception) -> Callable[[Message], Message]:
    def answer(_req: Message) -> Message:
        raise exc

    return answer


ANSWERS: dict[str, Callable[[Message], Message]] = {
    "status": lambda req: S.GetDeviceStatusResp(0x0F, dev_num=req.dev_num),
    "status-upper-bits": lambda req: S.GetDeviceStatusResp(0x1234_5601, dev_num=req.dev_num),
    "status-zero": lambda req: S.GetDeviceStatusResp(0, dev_num=req.dev_num),
    "token-left-in": lambda req: S.GetDeviceStatusResp(3, dev_num=req.dev_num, token=9),
    "other-class": lambda req: S.SetDeviceStatusResp(0x0F, dev_num=req.dev_num),
    "other-class-other-id": lambda req: S.GetShmResp(0, 0, 0, 0, dev_num=req.dev_num),
    "other-dev_num": lambda req: S.GetDeviceStatusResp(0x0F, dev_num=req.dev_num + 1),
    "request-echoed": lambda req: req,
    "timeout": _raise(TransportError("timeout", "no response")),
    "removed": _raise(TransportError("removed", "device went away")),
    "features": _raise(FeaturesRefused("refused")),
    "not-a-transport-error": _raise(VirtioMsgError("something else")),
}


@pytest.fixture
def pool() -> Iterator[DmaPool]:
    with Region(1 << 16) as region:
        dma = DmaPool(region)
        yield dma
        dma.close()


def _transport(pool: DmaPool, answer: Callable[[Message], Message]) -> tuple[
    DriverTransport, list[Message]
]:
    seen: list[Message] = []

    def request(req: Message) -> Message:
        seen.append(req)
        return answer(req)

    return DriverTransport(DEV, BusParams(), request, lambda _m: None, pool), seen


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as exc:  # every error is compared by type and text
        return type(exc).__name__, str(exc)


def _state(t: DriverTransport) -> tuple[Any, ...]:
    return (t.broken, t.engine.status)


@pytest.mark.parametrize("case", list(ANSWERS))
def test_drv_15_status_fast_path_equals_the_procedure(pool: DmaPool, case: str) -> None:
    fast, fast_seen = _transport(pool, ANSWERS[case])
    slow, slow_seen = _transport(pool, ANSWERS[case])
    for _ in range(2):  # the second call sees the first one's sticky state
        got = _outcome(fast.get_status)
        want = _outcome(lambda: slow._run(slow.engine.get_status()))
        assert got == want
        assert _state(fast) == _state(slow)
    assert fast_seen == slow_seen
    assert fast_seen[0] == S.GetDeviceStatus(dev_num=DEV, token=0)
    assert type(fast_seen[0]) is S.GetDeviceStatus


def test_status_fast_path_outcomes_are_the_engine_rules(pool: DmaPool) -> None:
    """What the shared outcomes are: masked status, violations sticky, features not."""
    assert _outcome(_transport(pool, ANSWERS["status-upper-bits"])[0].get_status) == ("ok", 1)
    bad, _ = _transport(pool, ANSWERS["other-dev_num"])
    assert _outcome(bad.get_status)[0] == "ProtocolViolation"
    assert bad.broken and "dev_num 8" in bad.broken
    with pytest.raises(DeviceBroken):
        bad.get_status()
    refused, _ = _transport(pool, ANSWERS["features"])
    assert _outcome(refused.get_status)[0] == "FeaturesRefused" and refused.broken is None


@pytest.mark.parametrize("state", ["removed", "broken"])
def test_status_fast_path_refuses_like_the_procedure(pool: DmaPool, state: str) -> None:
    fast, fast_seen = _transport(pool, ANSWERS["status"])
    slow, slow_seen = _transport(pool, ANSWERS["status"])
    for t in (fast, slow):
        if state == "removed":
            t.mark_removed()
        else:
            t.broken = "an earlier timeout"
    assert _outcome(fast.get_status) == _outcome(lambda: slow._run(slow.engine.get_status()))
    assert fast_seen == slow_seen == []


@pytest.mark.parametrize("case", list(ANSWERS))
def test_take_status_equals_the_procedure_driven_by_hand(case: str) -> None:
    """The engine alone (sans I/O): take_status and the generator agree."""
    fast, slow = DriverEngine(DEV, BusParams()), DriverEngine(DEV, BusParams())
    answer = ANSWERS[case]
    got = _outcome(lambda: fast.take_status(answer(fast.status_request)))
    want = _outcome(lambda: run_sync(slow.get_status(), answer))
    assert got == want
    assert fast.status == slow.status
