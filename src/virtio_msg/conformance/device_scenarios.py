"""Device scenarios: the tool plays driver and bus against one device number.

Each scenario is a function of a :class:`~virtio_msg.conformance.probe.DeviceProbe`
registered with the checklist ids it checks (spec reference section 6.1 and
6.4, plus ``RING-01``: the core rule that a device writes only the used ring
and device-writable buffers).  A scenario returns normally (pass, or lenient
when it recorded the behaviour it saw with ``probe.choose``), or raises
``Failure`` / ``Skip``.  Scenarios depend on nothing but the wire and the
region, never on the implementation under test.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import virtio_msg.spec as C
from virtio_msg.conformance.probe import DeviceProbe, Failure, Skip
from virtio_msg.wire import spec as S

_ST = C.Status
_INIT = _ST.ACKNOWLEDGE | _ST.DRIVER


@dataclass(frozen=True)
class Scenario:
    """One registered scenario."""

    name: str
    ids: tuple[str, ...]
    title: str
    run: Callable[[DeviceProbe], None]


SCENARIOS: list[Scenario] = []
"""Every device scenario, in run order."""


def scenario(name: str, *ids: str) -> Callable[[Callable[[DeviceProbe], None]],
                                                Callable[[DeviceProbe], None]]:
    """Register a scenario under ``name`` checking ``ids`` (docstring = title)."""
    def wrap(fn: Callable[[DeviceProbe], None]) -> Callable[[DeviceProbe], None]:
        SCENARIOS.append(Scenario(name, ids, (fn.__doc__ or "").strip().splitlines()[0], fn))
        return fn
    return wrap


@scenario("device-info", "DEV-40", "DEV-41", "DEV-42", "DEV-43", "DEV-44", "DEV-45", "DEV-47",
          "DEV-48", "DEV-18", "DEV-33")
def device_info(p: DeviceProbe) -> None:
    """GET_DEVICE_INFO before any reset, repeated, consistent and within limits."""
    first = p.info()
    again = p.info()
    if first._replace(token=0) != again._replace(token=0):
        raise Failure("DEV-40", f"two GET_DEVICE_INFO replies differ: {first} / {again}")
    if first.max_virtqueues > C.MAX_VIRTQUEUES:
        raise Failure("DEV-42", f"max_virtqueues {first.max_virtqueues} > 65536")
    if first.admin_vq_count == 0 and first.admin_vq_start != 0:
        raise Failure("DEV-44", f"admin_vq_start {first.admin_vq_start} with no admin queues")
    if first.admin_vq_start + first.admin_vq_count > first.max_virtqueues:
        raise Failure(("DEV-43", "DEV-45"), "admin queue range exceeds max_virtqueues")
    uuid = first.device_uuid
    if uuid != bytes(16) and uuid[6] >> 4 != 4:
        p.choose(f"non-nil UUID of version {uuid[6] >> 4} (SHOULD be 4)")
    blocks = first.num_feature_blocks
    offered = p.offered(blocks)
    beyond = p.request(S.GetDeviceFeatures(blocks, 1)).features
    if beyond != (0,):
        raise Failure(("DEV-41", "DEV-18"), f"block {blocks} (past num_feature_blocks) reads "
                      f"{beyond[0]:#x}")
    far = p.request(S.GetDeviceFeatures(1000, 1)).features
    if far != (0,):
        raise Failure("DEV-18", f"feature block 1000 reads {far[0]:#x}, must be 0")
    if offered >> C.VIRTIO_F_NOTIF_CONFIG_DATA & 1:
        raise Failure("DEV-33", "the device offers VIRTIO_F_NOTIF_CONFIG_DATA (39)")


@scenario("mandatory-requests", "DEV-39", "DEV-31")
def mandatory(p: DeviceProbe) -> None:
    """Each of the eleven transport requests gets exactly its response."""
    p.info()
    p.request(S.GetDeviceFeatures(0, 1))
    p.request(S.SetDriverFeatures(0, 1, (0,)))
    p.request(S.GetConfig(0, 0))
    p.request(S.SetConfig(0, 0, 0, b""))
    p.status()
    p.set_status(0)
    p.request(S.GetVqueue(0))
    p.request(S.ResetVqueue(0))
    p.request(S.GetShm(0))
    try:
        p.request(S.SetVqueue(0xFFFFFFFF, 1, 0, 0, 0, 0, 0))
    except Skip:
        p.choose("SET_VQUEUE to an invalid index not sent (linux-rfc1 form)")
    p.expect_silence("nothing (one response per request)", ("DEV-31",))


@scenario("token-echo", "DEV-28", "DEV-29")
def token_echo(p: DeviceProbe) -> None:
    """Random tokens (0, 0xffff and others) are copied into every response."""
    if p.rfc1:
        raise Skip("linux-rfc1 has no token field")
    for token in (0, 0xFFFF, 0x0001, 0x8000, *(p.rng.randrange(1, 0xFFFF) for _ in range(6))):
        p.request(S.GetDeviceStatus(), token=token, ids=("DEV-28", "DEV-31"))
        p.request(S.GetDeviceInfo(), token=token, ids=("DEV-28", "DEV-31"))


@scenario("reserved-type-bits", "G-03", "DEV-24")
def reserved_type_bits(p: DeviceProbe) -> None:
    """Reserved type bits set on a request are ignored; replies carry them as 0."""
    plain = p.info()
    marked = p.request(S.GetDeviceInfo(), type_or=0xFC, ids=("G-03", "DEV-24"))
    if marked._replace(token=0) != plain._replace(token=0):
        raise Failure("G-03", "reserved type bits changed the GET_DEVICE_INFO answer")


def _alive(p: DeviceProbe, ids: tuple[str, ...]) -> None:
    p.request(S.GetDeviceStatus(), ids=ids)


def _raw(p: DeviceProbe, what: str, frame: bytes, ids: tuple[str, ...]) -> None:
    p.link.send(frame)
    p.expect_silence(what, ids)
    _alive(p, ids)


def _header(p: DeviceProbe, typ: int, msg_id: int, size: int, token: int = 0x77) -> bytes:
    if p.rfc1:
        return struct.pack("<BBHH", typ, msg_id, p.dev_num, size)
    return struct.pack("<BBHHH", typ, msg_id, p.dev_num, token, size)


@scenario("unknown-msg-id", "DEV-04", "DEV-21", "DEV-32")
def unknown_ids(p: DeviceProbe) -> None:
    """Unknown, reserved and implementation-defined request ids get no reply."""
    hs = p.params.header_size
    for msg_id in (0x3F, 0x00, 0x01, 0x0D, 0x80, 0xBF):
        _raw(p, f"msg_id {msg_id:#04x}", _header(p, 0, msg_id, hs), ("DEV-04", "DEV-21", "DEV-32"))


@scenario("malformed-dropped", "DEV-21", "DEV-32", "G-04")
def malformed(p: DeviceProbe) -> None:
    """Truncated frames, wrong msg_size and short payloads are dropped silently."""
    hs = p.params.header_size
    ids = ("DEV-21", "DEV-32")
    get_config = C.TransportMsg.GET_CONFIG
    good, _ = p.encode(S.GetConfig(0, 0))
    _raw(p, "a truncated header", good[: hs - 1], ids)
    _raw(p, "msg_size smaller than the header", _header(p, 0, C.TransportMsg.GET_DEVICE_STATUS,
                                                        hs - 1), ids)
    _raw(p, "msg_size larger than the frame", _header(p, 0, get_config, hs + 8) + bytes(4), ids)
    _raw(p, "a short GET_CONFIG payload", _header(p, 0, get_config, hs + 4) + bytes(4), ids)
    _raw(p, "msg_size shorter than the frame", good[: hs - 2] + struct.pack("<H", hs + 4)
         + good[hs:], ids)
    _raw(p, "a transport response sent to the device",
         _header(p, C.TYPE_RESPONSE, C.TransportMsg.GET_DEVICE_STATUS, hs + 4) + bytes(4), ids)
    _raw(p, "an event id with the response bit",
         _header(p, C.TYPE_RESPONSE, C.TransportMsg.EVENT_USED, hs + 4) + bytes(4), ids)


@scenario("oversize-dropped", "DEV-01", "DEV-21")
def oversize(p: DeviceProbe) -> None:
    """A frame above the maximum message size is dropped; no reply ever exceeds it."""
    hs, mx = p.params.header_size, p.params.max_size
    if mx + 1 > 0xFFFF:
        raise Skip("maximum message size 65535: no oversize frame can be built")
    frame = _header(p, 0, C.TransportMsg.GET_CONFIG, mx + 1) + struct.pack("<II", 0, 0)
    _raw(p, "an oversize frame", frame + bytes(mx + 1 - len(frame)), ("DEV-21",))
    room = (mx - hs - 8) // 4
    p.request(S.GetDeviceFeatures(0, room), ids=("DEV-01",))  # exactly the maximum
    frame, _ = p.encode(S.GetDeviceFeatures(0, room + 1))
    p.link.send(frame)
    resp = p.reply_within(p.silence)
    if resp is None:
        p.choose("GET_DEVICE_FEATURES whose reply cannot fit: discarded")
    else:
        p.choose(f"GET_DEVICE_FEATURES whose reply cannot fit: answered {type(resp).__name__}")


@scenario("status-handshake", "DEV-54", "DEV-56", "DEV-57", "DEV-58", "DEV-59", "DEV-13")
def status_handshake(p: DeviceProbe) -> None:
    """Reset, ACKNOWLEDGE, DRIVER, FEATURES_OK: replies match GET_DEVICE_STATUS; no events."""
    p.choose(f"reset is {p.reset()}")
    for value in (_ST.ACKNOWLEDGE, _INIT):
        reply = p.set_status(value)
        if reply != p.status():
            raise Failure("DEV-56", f"SET_DEVICE_STATUS reply {reply:#x} differs from GET")
        if reply & value != value:
            raise Failure("DEV-54", f"status {value:#x} written, {reply:#x} reported")
    _info, _selected, status = p.init()
    if not status & _ST.FEATURES_OK:
        raise Failure("DEV-34", "FEATURES_OK refused for exactly the offered feature set")
    if status != p.status():
        raise Failure("DEV-54", "FEATURES_OK reply differs from GET_DEVICE_STATUS")
    if p.reset() and p.status() != 0:
        raise Failure("DEV-57", "status not 0 after reset")
    events = [e for e in p.events_within() if type(e) is S.EventConfig]
    if events:
        raise Failure("DEV-13", f"EVENT_CONFIG after driver status writes: {events[0]}")


@scenario("features-ok-refusal", "DEV-34", "DEV-54", "DEV-56")
def features_refusal(p: DeviceProbe) -> None:
    """Selecting a feature bit that was not offered must clear FEATURES_OK."""
    info = p.info()
    offered = p.offered(info.num_feature_blocks)
    unoffered = next((b for b in range(32 * info.num_feature_blocks)
                      if not offered >> b & 1 and b != C.VIRTIO_F_NOTIF_CONFIG_DATA), None)
    if unoffered is None:
        raise Skip("the device offers every bit of its feature blocks")
    _info, _sel, status = p.init(offered | 1 << unoffered)
    if status & _ST.FEATURES_OK:
        raise Failure("DEV-34", f"FEATURES_OK accepted with unoffered bit {unoffered} selected")
    if p.status() & _ST.FEATURES_OK:
        raise Failure("DEV-54", "GET_DEVICE_STATUS shows FEATURES_OK the reply refused")
    p.reset()


@scenario("feature-blocks", "DEV-19", "DEV-20")
def feature_blocks(p: DeviceProbe) -> None:
    """SET_DRIVER_FEATURES changes only its block; GET returns the offered set."""
    info = p.info()
    p.reset()
    p.set_status(_ST.ACKNOWLEDGE)
    p.set_status(_INIT)
    offered = p.offered(info.num_feature_blocks)
    for i in reversed(range(info.num_feature_blocks)):  # block 1 first, then block 0
        p.request(S.SetDriverFeatures(i, 1, ((offered >> (32 * i)) & 0xFFFFFFFF,)))
    if p.offered(info.num_feature_blocks) != offered:
        raise Failure("DEV-20", "GET_DEVICE_FEATURES changed after SET_DRIVER_FEATURES")
    if not p.set_status(_INIT | _ST.FEATURES_OK) & _ST.FEATURES_OK:
        raise Failure("DEV-19", "block-by-block selection of the offered set was refused "
                      "(a later block write changed an earlier block)")
    p.reset()


@scenario("config-read", "DEV-49", "DEV-06")
def config_read(p: DeviceProbe) -> None:
    """GET_CONFIG of the whole space in chunks; generation stable; out-of-range handled."""
    info = p.info()
    room = p.params.max_size - p.params.header_size - 12
    gens = set()
    for off in range(0, info.config_size, room):
        n = min(room, info.config_size - off)
        resp = p.request(S.GetConfig(off, n), ids=("DEV-49",))
        if (resp.offset, resp.length, len(resp.data)) != (off, n, n):
            raise Failure("DEV-49", f"GET_CONFIG({off}, {n}) answered offset {resp.offset} "
                          f"length {resp.length} with {len(resp.data)} bytes")
        gens.add(resp.generation)
    if len(gens) > 1:
        raise Failure("DEV-06", f"generation changed during a quiet read: {sorted(gens)}")
    frame, _ = p.encode(S.GetConfig(info.config_size, 4))
    p.link.send(frame)
    resp = p.reply_within(p.silence)
    p.choose("out-of-range GET_CONFIG: " + ("discarded" if resp is None else
                                            f"answered length {getattr(resp, 'length', None)}"))
    if resp is not None and getattr(resp, "length", None) and len(resp.data) != resp.length:
        raise Failure("DEV-49", "out-of-range GET_CONFIG answered with inconsistent data")


def _find_writable(p: DeviceProbe, size: int) -> tuple[int, bytes, int] | None:
    for off in range(size):
        cur = p.request(S.GetConfig(off, 1))
        resp = p.request(S.SetConfig(cur.generation, off, 1, cur.data), ids=("DEV-50",))
        if resp.length == 1:
            return off, cur.data, resp.generation
    return None


@scenario("config-write", "DEV-50", "DEV-51", "DEV-52", "DEV-53", "DEV-08", "DEV-16", "DEV-09",
          "DEV-07")
def config_write(p: DeviceProbe) -> None:
    """SET_CONFIG: length 0 no-op, all-or-nothing replies, generation rules of the profile."""
    info = p.info()
    room = p.params.max_size - p.params.header_size - 12
    before = p.request(S.GetConfig(0, min(info.config_size, 32, room)))
    noop = p.request(S.SetConfig(0, 0, 0, b""), ids=("DEV-51",))
    if noop.length != 0 or noop.data:
        raise Failure("DEV-51", f"length-0 SET_CONFIG answered length {noop.length}")
    if p.request(S.GetConfig(0, before.length)).data != before.data:
        raise Failure("DEV-51", "length-0 SET_CONFIG changed the config space")
    if info.config_size == 0:
        raise Skip("no config space")
    found = _find_writable(p, min(info.config_size, 64))
    if found is None:
        p.choose("no writable config byte in the first 64 (every write refused, length 0)")
        return
    off, value, gen = found
    strict = p.params.strict_config
    stale = p.request(S.SetConfig(gen ^ 0xDEADBEEF, off, 1, value), ids=("DEV-50",))
    if strict and stale.length != 0:
        raise Failure("DEV-16", "strict profile: a SET_CONFIG with a stale generation applied")
    if not strict and stale.length != 1:
        raise Failure("DEV-08", "baseline profile: SET_CONFIG refused for its generation")
    if stale.length == 0 and stale.data:
        raise Failure("DEV-53", "a refused SET_CONFIG carries data bytes")
    if [e for e in p.events_within() if type(e) is S.EventConfig]:
        raise Failure("DEV-09", "EVENT_CONFIG after a SET_CONFIG")
    flipped = bytes([value[0] ^ 0x01])
    g0 = p.request(S.GetConfig(off, 1)).generation
    resp = p.request(S.SetConfig(g0, off, 1, flipped))
    if resp.length not in (0, 1):
        raise Failure("DEV-52", f"SET_CONFIG of 1 byte answered length {resp.length}")
    if resp.length == 1:
        after = p.request(S.GetConfig(off, 1))
        if after.data == flipped and after.generation == g0:
            raise Failure("DEV-07", "config changed but the generation did not")
        p.request(S.SetConfig(after.generation, off, 1, value))
        p.choose(f"byte {off} writable; a changed value " + (
            "is stored" if after.data == flipped else "is refused by the device"))
    else:
        p.choose(f"byte {off} accepts only its current value")


@scenario("vqueue-get", "DEV-60", "DEV-61", "DEV-62")
def vqueue_get(p: DeviceProbe) -> None:
    """GET_VQUEUE: unconfigured queues report size 0, disabled; bad indexes the sentinel."""
    info = p.info()
    p.reset()
    for i in range(min(info.max_virtqueues, 8)):
        q = p.request(S.GetVqueue(i), ids=("DEV-60",))
        if q.index != i:
            raise Failure("DEV-60", f"GET_VQUEUE({i}) echoed index {q.index}")
        if q.max_size and (q.cur_size or q.flags):
            raise Failure("DEV-60", f"queue {i} after reset: size {q.cur_size} flags {q.flags}")
        if q.flags & ~C.VQ_ENABLED:
            raise Failure("DEV-62", f"queue {i} flags {q.flags:#x}: bits 31:1 must be 0")
    for bad in (info.max_virtqueues, 0xFFFFFFFF):
        q = p.request(S.GetVqueue(bad), ids=("DEV-61",))
        if q != S.GetVqueueResp(bad, 0, 0, 0, 0, 0, 0, dev_num=q.dev_num, token=q.token):
            raise Failure("DEV-61", f"GET_VQUEUE({bad:#x}) is not the unavailable sentinel: {q}")


__all__ = ["SCENARIOS", "Scenario", "scenario"]

