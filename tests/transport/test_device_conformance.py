"""Device-side conformance: one test per message-level DEV-xx requirement.

The checklist is section 6.4 of ``virtio-msg-spec.md``; each test is named
after its ID.  Every message goes through :class:`EnginePair`, i.e. through
the real wire encoding of the bus profile (``spec`` and ``linux-rfc1``), into
a :class:`DeviceTransport` driving :class:`ConfModel`, a small device model
with a config space (partly writable), four queues (queue 1 unavailable) and
one shared-memory region.  Tests that need a SET_VQUEUE form the seed cannot
express (any ``flags`` other than the one-shot enable) run on ``spec`` only.

A bug found here is first kept as an ``xfail(strict=True)`` test whose reason
starts with ``BUG:``; once the code is fixed the marker goes.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

import virtio_msg.spec as C
from virtio_msg.errors import MalformedMessage
from virtio_msg.testing import EnginePair
from virtio_msg.transport import BusParams, DeviceModel
from virtio_msg.transport.device import RING_FEATURES
from virtio_msg.virtqueue import DeviceRing, DriverQueue
from virtio_msg.wire import GenericMessage, Message, Profile
from virtio_msg.wire import spec as S

SPLIT_RING_FEATURES = RING_FEATURES & ~(
    (1 << C.VIRTIO_F_RING_PACKED) | (1 << C.VIRTIO_F_IN_ORDER) | (1 << C.VIRTIO_F_NOTIFICATION_DATA)
)
"""The ring features these tests offer: they drive split rings written by hand."""

PROFILES = ("spec", "linux-rfc1")
DEV = 0x0123
"""Device number used by every pair (non-zero, so a wrong dev_num shows)."""
STRICT = C.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION

F_A = 1 << 0
F_B = 1 << 1
"""Device-specific feature bits; ConfModel refuses A and B together."""
V1 = 1 << C.VIRTIO_F_VERSION_1
AP = 1 << C.VIRTIO_F_ACCESS_PLATFORM
RING_RESET = 1 << C.VIRTIO_F_RING_RESET

CONFIG = bytes(range(0x40, 0x80))
"""64 bytes of config space, all non-zero."""
WRITABLE = ((8, 48),)
"""Bytes 8..55 are writable; 0..7 and 56..63 are read-only."""
QUEUE_MAX = (64, 0, 16, 8)
"""Queue 1 reports max size 0: unavailable."""
SHM_ADDR, SHM_LEN = 0x8000_0000, 0x10_0000
SHM = {1: (SHM_ADDR, SHM_LEN)}
"""shmid -> (address, length); 32-bit values so linux-rfc1 can carry them."""
DEVICE_ID = 42
REGION = 1 << 18

ACK = C.Status.ACKNOWLEDGE
DRV = C.Status.DRIVER
FOK = C.Status.FEATURES_OK
DOK = C.Status.DRIVER_OK
NEEDS_RESET = C.Status.DEVICE_NEEDS_RESET


class ConfModel(DeviceModel):
    """Conformance model: serves every chain by filling its writable part with 0xA5."""

    device_id = DEVICE_ID
    name = "conf"

    def __init__(
        self,
        *,
        features: int = F_A | F_B,
        uuid: bytes = bytes(16),
        ring_features: int = SPLIT_RING_FEATURES,
    ) -> None:
        """Describe the device (see the module constants)."""
        super().__init__(
            features=features,
            config=CONFIG,
            num_queues=len(QUEUE_MAX),
            queue_max_size=QUEUE_MAX,
            uuid=uuid,
            writable_config=WRITABLE,
            shm=dict(SHM),
            ring_features=ring_features,
        )
        self.notified: list[int] = []
        self.resets = 0

    def validate_features(self, features: int) -> bool:
        """Refuse the combination A+B."""
        return features & (F_A | F_B) != F_A | F_B

    def reset(self) -> None:
        """Count resets."""
        self.resets += 1

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Serve every available chain."""
        self.notified.append(index)
        served = False
        while (chain := queue.pop()) is not None:
            written = chain.write(b"\xa5" * chain.writable_len) if chain.writable_len else 0
            queue.add_used(chain.head, written)
            served = True
        if served:
            self.notify_used(index)


Factory = Callable[..., EnginePair]


@pytest.fixture
def factory() -> Iterator[Factory]:
    """Build pairs on demand; close them all afterwards."""
    made: list[EnginePair] = []

    def make(
        profile: str,
        *,
        strict: bool = False,
        max_size: int | None = None,
        async_reset_polls: int = 0,
        model: DeviceModel | None = None,
        polling_only: bool = False,
    ) -> EnginePair:
        params = BusParams(
            profile=Profile(profile),
            max_msg_size=max_size,
            transport_features=STRICT if strict else 0,
            polling_only=polling_only,
        )
        pair = EnginePair(
            model if model is not None else ConfModel(),
            params,
            dev_num=DEV,
            region_size=REGION,
            async_reset_polls=async_reset_polls,
        )
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    """Both wire profiles."""
    value: str = request.param
    return value


@pytest.fixture
def pair(factory: Factory, profile: str) -> EnginePair:
    """A pair in the profile under test, baseline configuration profile."""
    return factory(profile)


@pytest.fixture
def spec_pair(factory: Factory) -> EnginePair:
    """A pair in the ``spec`` profile (SET_VQUEUE flags are expressible)."""
    return factory("spec")


# --- helpers -----------------------------------------------------------------------


def conf(pair: EnginePair) -> ConfModel:
    """The pair's model, typed."""
    model = pair.model
    assert isinstance(model, ConfModel)
    return model


def ask(pair: EnginePair, msg: Message) -> Message:
    """Send ``msg`` to the device (our dev_num) and return its one response."""
    resp = pair.send(msg._replace(dev_num=DEV))
    assert resp is not None, f"no response to {msg!r}"
    return resp


def status(pair: EnginePair) -> int:
    """GET_DEVICE_STATUS."""
    return int(ask(pair, S.GetDeviceStatus()).status)


def set_status(pair: EnginePair, value: int) -> int:
    """SET_DEVICE_STATUS; the status in the reply."""
    return int(ask(pair, S.SetDeviceStatus(value)).status)


def vq(pair: EnginePair, index: int) -> Message:
    """GET_VQUEUE."""
    return ask(pair, S.GetVqueue(index))


def vq_state(pair: EnginePair, index: int) -> tuple[int, int, int, int, int, int]:
    """(max_size, cur_size, flags, desc, driver, device) of queue ``index``."""
    r = vq(pair, index)
    return (r.max_size, r.cur_size, r.flags, r.desc_addr, r.driver_addr, r.device_addr)


def addrs(pair: EnginePair, n: int = 0) -> tuple[int, int, int]:
    """Three aligned ring addresses inside the region (set ``n`` differs)."""
    base = pair.region.base + 0x1000 * (1 + 4 * n)
    return base, base + 0x1000, base + 0x2000


def set_vq(
    pair: EnginePair, index: int, flags: int, size: int, a: tuple[int, int, int],
    reserved: int = 0,
) -> None:
    """SET_VQUEUE; asserts the normal empty response."""
    resp = ask(pair, S.SetVqueue(index, flags, size, reserved, *a))
    assert type(resp) is S.SetVqueueResp


def select(pair: EnginePair, features: int) -> int:
    """ACK, DRIVER, write ``features`` in block 0 and 1, set FEATURES_OK; reply status."""
    assert set_status(pair, ACK) == ACK
    assert set_status(pair, ACK | DRV) == ACK | DRV
    words = (features & 0xFFFFFFFF, features >> 32 & 0xFFFFFFFF)
    ask(pair, S.SetDriverFeatures(0, 2, words))
    return set_status(pair, ACK | DRV | FOK)


def offered(pair: EnginePair) -> int:
    """The offered feature bits, from GET_DEVICE_FEATURES (two blocks)."""
    r = ask(pair, S.GetDeviceFeatures(0, 2))
    return int(r.features[0] | r.features[1] << 32)


def negotiate(pair: EnginePair, features: int | None = None) -> int:
    """Negotiate ``features`` (default: everything but F_B); assert FEATURES_OK."""
    want = offered(pair) & ~F_B if features is None else features
    assert select(pair, want) & FOK
    return want


def wire(pair: EnginePair, msg: Message) -> bytes:
    """The encoded form of ``msg`` on the pair's bus."""
    return pair.adapter.encode(msg)


def live_queue(pair: EnginePair, index: int = 0, size: int = 8) -> DriverQueue:
    """Negotiate, set up queue ``index`` with real rings, set DRIVER_OK."""
    features = negotiate(pair)
    q = DriverQueue(pair.pool, index, size, features)
    set_vq(pair, index, C.VQ_OP_ENABLE, size, (q.desc_addr, q.driver_addr, q.device_addr))
    assert set_status(pair, ACK | DRV | FOK | DOK) & DOK
    return q


def config_events(pair: EnginePair) -> list[Message]:
    """EVENT_CONFIGs emitted so far."""
    return [m for m in pair.events if type(m) is S.EventConfig]


# --- DEV-01 limits ------------------------------------------------------------------


def test_dev_01_responses_and_events_fit_the_smallest_bus(factory: Factory, profile: str) -> None:
    smallest = 52 if profile == "spec" else 44
    pair = factory(profile, max_size=smallest)
    hs = pair.adapter.header_size
    fit = smallest - hs - 12
    r = ask(pair, S.GetConfig(0, fit))
    assert r.data == CONFIG[:fit]
    assert len(wire(pair, r)) == smallest
    # One byte more would need a response above the maximum: not sent.
    assert pair.send(S.GetConfig(0, fit + 1, dev_num=DEV)) is None
    blocks = (smallest - hs - 8) // 4
    r = ask(pair, S.GetDeviceFeatures(0, blocks))
    assert len(wire(pair, r)) == hs + 8 + 4 * blocks <= smallest
    assert pair.send(S.GetDeviceFeatures(0, blocks + 1, dev_num=DEV)) is None
    assert len(wire(pair, ask(pair, S.GetDeviceInfo()))) <= smallest
    room = smallest - hs - 16
    pair.model.update_config(8, b"\x01" * room)  # fits: data included
    pair.model.update_config(8, b"\x02" * (room + 1))  # does not fit: sent without data
    ev_fit, ev_big = config_events(pair)
    assert ev_fit.data == b"\x01" * room
    assert len(wire(pair, ev_fit)) == smallest
    assert (ev_big.length, ev_big.data) == (room + 1, b"")
    assert len(wire(pair, ev_big)) == hs + 16
    for direction, msg in pair.trace:
        if direction != "req":
            assert len(wire(pair, msg)) <= smallest


# --- DEV-06..17 configuration profiles -----------------------------------------------


def test_dev_06_every_config_reply_and_event_carries_current_generation(
    pair: EnginePair,
) -> None:
    dev = pair.device
    assert ask(pair, S.GetConfig(0, 4)).generation == dev.generation
    pair.model.update_config(8, b"\x99\x98")
    (ev,) = config_events(pair)
    assert ev.generation == dev.generation
    r = ask(pair, S.SetConfig(0, 10, 2, b"\x11\x22"))
    assert r.length == 2
    assert r.generation == dev.generation
    assert ask(pair, S.GetConfig(10, 2)).generation == dev.generation
    pair.model.fail("injected")
    assert config_events(pair)[-1].generation == dev.generation


def test_dev_07_generation_changes_with_config_contents(pair: EnginePair) -> None:
    before = ask(pair, S.GetConfig(8, 4))
    pair.model.update_config(8, b"\xde\xad\xbe\xef")  # device-side change
    after_device = ask(pair, S.GetConfig(8, 4))
    assert after_device.data != before.data
    assert after_device.generation != before.generation
    assert ask(pair, S.SetConfig(0, 8, 4, b"\x01\x02\x03\x04")).length == 4  # driver change
    after_driver = ask(pair, S.GetConfig(8, 4))
    assert after_driver.data == b"\x01\x02\x03\x04"
    assert after_driver.generation not in (before.generation, after_device.generation)


def test_dev_08_baseline_ignores_request_generation(pair: EnginePair) -> None:
    current = ask(pair, S.GetConfig(0, 0)).generation
    for i, gen in enumerate((0xDEADBEEF, 0, current ^ 0x5555)):
        data = bytes([i + 1]) * 4
        r = ask(pair, S.SetConfig(gen, 12, 4, data))
        assert (r.length, r.data) == (4, data)
        assert ask(pair, S.GetConfig(12, 4)).data == data


@pytest.mark.parametrize("strict", [False, True], ids=["baseline", "strict"])
def test_dev_09_no_event_config_for_mismatched_generation(
    factory: Factory, profile: str, strict: bool
) -> None:
    pair = factory(profile, strict=strict)
    stale = ask(pair, S.GetConfig(0, 0)).generation ^ 0x1234
    r = ask(pair, S.SetConfig(stale, 8, 2, b"\x07\x07"))
    assert r.length == (0 if strict else 2)
    assert pair.events == []


def test_dev_11_device_side_config_change_sends_event_config(pair: EnginePair) -> None:
    pair.model.update_config(20, b"\xaa\xbb\xcc")
    (ev,) = pair.events
    assert type(ev) is S.EventConfig
    assert (ev.offset, ev.length, ev.data) == (20, 3, b"\xaa\xbb\xcc")
    assert ev.device_status == status(pair)
    assert ask(pair, S.GetConfig(20, 3)).data == b"\xaa\xbb\xcc"
    pair.model.update_config(20, b"\xaa\xbb\xcc")  # no change: no event
    assert len(pair.events) == 1


def test_dev_12_status_event_only_for_device_originated_changes(pair: EnginePair) -> None:
    # A refused FEATURES_OK is reported in the reply, not by an event.
    assert not select(pair, offered(pair)) & FOK  # A+B refused
    assert pair.events == []
    pair.model.fail("injected fault")
    (ev,) = pair.events
    assert type(ev) is S.EventConfig
    assert ev.device_status & NEEDS_RESET
    assert status(pair) & NEEDS_RESET


def test_dev_13_no_event_config_for_driver_status_writes(pair: EnginePair) -> None:
    negotiate(pair)
    assert set_status(pair, ACK | DRV | FOK | DOK) & DOK
    assert set_status(pair, ACK) == ACK | DRV | FOK | DOK  # clearing bits: ignored
    assert set_status(pair, 0) == 0
    assert set_status(pair, ACK) == ACK
    assert pair.events == []


def test_dev_14_status_only_event_has_zero_offset_and_length(pair: EnginePair) -> None:
    pair.model.fail("injected")
    (ev,) = pair.events
    assert (ev.offset, ev.length, ev.data) == (0, 0, b"")
    assert len(wire(pair, ev)) == pair.adapter.header_size + 16


def test_dev_16_strict_profile_rejects_stale_generation(factory: Factory, profile: str) -> None:
    pair = factory(profile, strict=True)
    gen = ask(pair, S.GetConfig(0, 0)).generation
    pair.model.update_config(30, b"\x31")  # the driver's view is now stale
    r = ask(pair, S.SetConfig(gen, 16, 4, b"\x10\x20\x30\x40"))
    assert (r.length, r.data) == (0, b"")
    assert ask(pair, S.GetConfig(16, 4)).data == CONFIG[16:20]
    assert r.generation != gen  # the reply tells the current generation
    r = ask(pair, S.SetConfig(r.generation, 16, 4, b"\x10\x20\x30\x40"))
    assert (r.length, r.data) == (4, b"\x10\x20\x30\x40")
    assert ask(pair, S.GetConfig(16, 4)).data == b"\x10\x20\x30\x40"


def test_dev_17_large_change_sent_without_data_and_readable(
    factory: Factory, profile: str
) -> None:
    pair = factory(profile, max_size=52 if profile == "spec" else 44)
    room = pair.params.max_size - pair.adapter.header_size - 16
    new = bytes(range(0xF0, 0xF0 - room - 1, -1))
    pair.model.update_config(8, new)
    (ev,) = pair.events
    assert (ev.offset, ev.length, ev.data) == (8, len(new), b"")
    chunk = pair.params.max_size - pair.adapter.header_size - 12
    got = b"".join(
        ask(pair, S.GetConfig(off, min(chunk, 8 + len(new) - off))).data
        for off in range(8, 8 + len(new), chunk)
    )
    assert got == new


# --- DEV-18..20 feature blocks ----------------------------------------------------------


def test_dev_18_feature_blocks_beyond_implemented_read_zero(pair: EnginePair) -> None:
    r = ask(pair, S.GetDeviceFeatures(0, 2))
    assert r.features[0] & (F_A | F_B) and r.features[1] & 1  # VERSION_1
    for index in (2, 5, 1000, 0xFFFFFFF0):
        r = ask(pair, S.GetDeviceFeatures(index, 2))
        assert (r.block_index, r.num_blocks, r.features) == (index, 2, (0, 0))


def test_dev_19_set_driver_features_changes_only_addressed_blocks(pair: EnginePair) -> None:
    set_status(pair, ACK)
    set_status(pair, ACK | DRV)
    want = F_A | V1 | AP | RING_RESET
    ask(pair, S.SetDriverFeatures(1, 1, (want >> 32,)))  # block 1 first
    ask(pair, S.SetDriverFeatures(0, 1, (want & 0xFFFFFFFF,)))  # must not clear block 1
    assert set_status(pair, ACK | DRV | FOK) & FOK  # VERSION_1 (block 1) survived
    assert pair.model.negotiated_features == want


def test_dev_20_get_features_returns_offered_not_selected(pair: EnginePair) -> None:
    before = offered(pair)
    negotiate(pair, V1 | AP)
    assert offered(pair) == before
    assert before != V1 | AP


# --- DEV-21, 24, 26, 29..31 message handling ---------------------------------------------

_DISCARDED: dict[str, Message] = {
    "response": S.GetDeviceStatusResp(ACK, dev_num=DEV),
    "device-event-used": S.EventUsed(0, dev_num=DEV),
    "device-event-config": S.EventConfig(0, 1, 0, 0, b"", dev_num=DEV),
    "impl-defined-request": GenericMessage(0x85, False, False, b"\x01\x02", dev_num=DEV),
    "impl-defined-event": GenericMessage(0xC5, False, False, b"", dev_num=DEV),
    "wrong-dev-num": S.SetDeviceStatus(ACK, dev_num=DEV + 1),
    "wrong-dev-num-event": S.EventAvail(0, 0, dev_num=DEV + 1),
}


@pytest.mark.parametrize("kind", sorted(_DISCARDED))
def test_dev_21_unsupported_messages_discarded_without_traffic(
    pair: EnginePair, kind: str
) -> None:
    discarded = sum(pair.device.discarded.values())
    assert pair.send(_DISCARDED[kind]) is None
    assert pair.events == []
    assert sum(pair.device.discarded.values()) == discarded + 1
    assert status(pair) == 0  # nothing was applied


@pytest.mark.parametrize(
    "raw_kind", ["unknown-standard-id", "truncated-payload", "size-above-frame"]
)
def test_dev_21_malformed_bytes_never_reach_the_device(pair: EnginePair, raw_kind: str) -> None:
    good = bytearray(wire(pair, S.SetDeviceStatus(ACK, dev_num=DEV)))
    hs = pair.adapter.header_size
    size_at = hs - 2
    if raw_kind == "unknown-standard-id":
        good[1] = 0x3F
    elif raw_kind == "truncated-payload":
        good = good[:hs]
        good[size_at : size_at + 2] = hs.to_bytes(2, "little")
    else:
        good[size_at : size_at + 2] = (len(good) + 1).to_bytes(2, "little")
    with pytest.raises(MalformedMessage):
        pair.adapter.decode(bytes(good))
    assert status(pair) == 0


_REQUESTS: list[Message] = [
    S.GetDeviceInfo(dev_num=DEV),
    S.GetDeviceStatus(dev_num=DEV),
    S.GetVqueue(0, dev_num=DEV),
    S.GetConfig(4, 8, dev_num=DEV),
    S.GetShm(1, dev_num=DEV),
    S.GetDeviceFeatures(0, 2, dev_num=DEV),
]


def test_dev_24_reserved_type_bits_ignored_and_sent_as_zero(
    factory: Factory, profile: str
) -> None:
    clean = factory(profile)
    fuzzed = factory(profile)
    for bits in (0x04, 0x80, 0xFC):
        for msg in [*_REQUESTS, S.SetDeviceStatus(ACK, dev_num=DEV)]:
            raw = bytearray(wire(fuzzed, msg))
            raw[0] |= bits
            got = fuzzed.device.handle(fuzzed.adapter.decode(bytes(raw)))
            want = clean.device.handle(clean.adapter.decode(wire(clean, msg)))
            assert got == want
            assert got is not None
            assert wire(fuzzed, got)[0] == C.TYPE_RESPONSE  # bits 2-7 sent as 0
    assert status(fuzzed) == ACK  # the fuzzed SET_DEVICE_STATUS was applied
    fuzzed.model.update_config(8, b"\x01")
    fuzzed.model.fail("x")
    assert len(fuzzed.events) == 2
    for ev in fuzzed.events:
        assert wire(fuzzed, ev)[0] == 0x00


def test_dev_26_own_device_number_in_every_message(pair: EnginePair) -> None:
    q = live_queue(pair)
    for msg in _REQUESTS:
        ask(pair, msg)
    q.add([], [8], "t")
    assert q.kick_prepare()
    pair.send(S.EventAvail(0, 0, dev_num=DEV))
    pair.model.update_config(8, b"\x42")
    pair.model.fail("x")
    kinds = {type(m) for m in pair.events}
    assert kinds == {S.EventUsed, S.EventConfig}
    sent = [m for d, m in pair.trace if d != "req"]
    assert len(sent) > len(_REQUESTS)
    for msg in sent:
        assert msg.dev_num == DEV
        assert int.from_bytes(wire(pair, msg)[2:4], "little") == DEV


def test_dev_29_random_tokens_echoed(spec_pair: EnginePair) -> None:
    rng = random.Random(29)
    for _ in range(4):
        for msg in [*_REQUESTS, S.SetDeviceStatus(ACK), S.SetVqueue(2, 0, 4, 0, 0, 0, 0)]:
            token = rng.randrange(0x10000)
            resp = ask(spec_pair, msg._replace(token=token))
            assert resp.token == token
            assert int.from_bytes(wire(spec_pair, resp)[4:6], "little") == token


def test_dev_30_requests_processed_in_receive_order(pair: EnginePair) -> None:
    ask(pair, S.SetConfig(0, 24, 4, b"\x0a\x0b\x0c\x0d"))
    assert ask(pair, S.GetConfig(24, 4)).data == b"\x0a\x0b\x0c\x0d"
    ask(pair, S.SetConfig(0, 24, 4, b"\x01\x01\x01\x01"))
    assert ask(pair, S.GetConfig(24, 4)).data == b"\x01\x01\x01\x01"
    set_status(pair, ACK)
    assert status(pair) == ACK
    set_vq(pair, 2, C.VQ_OP_ENABLE, 8, addrs(pair))
    assert vq(pair, 2).cur_size == 8


def test_dev_31_exactly_one_response_per_valid_request(pair: EnginePair) -> None:
    requests: list[Message] = [
        *_REQUESTS,
        S.SetDriverFeatures(0, 2, (0, 0)),
        S.SetConfig(0, 60, 4, b"\x00" * 4),  # refused (read-only): still answered
        S.SetConfig(0, 8, 0, b""),
        S.SetDeviceStatus(ACK),
        S.SetVqueue(1, C.VQ_OP_ENABLE, 8, 0, 0, 0, 0),  # unavailable queue: still answered
        S.ResetVqueue(0),
        S.GetShm(99),
        S.GetVqueue(0xFFFFFFFF),
    ]
    for msg in requests:
        pair.send(msg._replace(dev_num=DEV))
    directions = [d for d, _ in pair.trace]
    assert directions == ["req", "resp"] * len(requests)


def test_dev_31_set_vqueue_after_driver_ok_with_bad_rings_still_answered(
    pair: EnginePair,
) -> None:
    live_queue(pair, 0)
    base = pair.region.base
    bad = S.SetVqueue(2, C.VQ_OP_ENABLE, 8, 0, base + 8, base + 0x1000, base + 0x2000)
    resp = pair.send(bad._replace(dev_num=DEV))
    assert type(resp) is S.SetVqueueResp
    # Refusing (atomic no-op) or reporting DEVICE_NEEDS_RESET are both acceptable after it.
    if vq(pair, 2).flags & C.VQ_ENABLED and pair.device.live_queue(2) is None:
        assert status(pair) & NEEDS_RESET


# --- DEV-33..36 initialization --------------------------------------------------------


def test_dev_33_notif_config_data_never_offered(pair: EnginePair) -> None:
    assert not offered(pair) >> C.VIRTIO_F_NOTIF_CONFIG_DATA & 1
    with pytest.raises(ValueError, match="NOTIF_CONFIG_DATA"):
        ConfModel(features=1 << C.VIRTIO_F_NOTIF_CONFIG_DATA)


_REFUSED = {
    "not-offered": V1 | AP | (1 << 5),
    "not-offered-high-block": V1 | AP | (1 << 62),
    "missing-version-1": F_A | AP,
    "missing-access-platform": F_A | V1,
    "model-refuses-combination": F_A | F_B | V1 | AP,
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_dev_34_unsupported_feature_set_clears_features_ok(pair: EnginePair, case: str) -> None:
    reply = select(pair, _REFUSED[case])
    assert reply == ACK | DRV
    assert status(pair) == ACK | DRV
    assert pair.model.negotiated_features == 0
    assert pair.events == []


_FAR_BLOCK_SCRIPT = textwrap.dedent(
    """
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
    import logging
    logging.disable(logging.CRITICAL)
    from virtio_msg.testing import EnginePair
    from virtio_msg.transport import DeviceModel
    from virtio_msg.wire import spec as S

    class M(DeviceModel):
        device_id = 42

    p = EnginePair(M(), dev_num=3, region_size=1 << 16)
    for st in (1, 3):
        p.send(S.SetDeviceStatus(st, dev_num=3))
    p.send(S.SetDriverFeatures(0, 2, (0, 3), dev_num=3))
    p.send(S.SetDriverFeatures(0xFFFFFFFF, 1, (1,), dev_num=3))
    r = p.send(S.SetDeviceStatus(11, dev_num=3))
    print("none" if r is None else r.status)
    """
)


def test_dev_34_far_feature_block_refused_not_dropped() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FAR_BLOCK_SCRIPT],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    # The selection has a bit that was never offered: FEATURES_OK refused, reply 3.
    assert done.stdout.strip() == str(int(ACK | DRV))


def test_dev_35_event_avail_before_driver_ok_not_processed(pair: EnginePair) -> None:
    features = negotiate(pair)
    q = DriverQueue(pair.pool, 0, 8, features)
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, (q.desc_addr, q.driver_addr, q.device_addr))
    q.add([], [16], "early")
    assert q.kick_prepare()
    assert pair.send(S.EventAvail(0, 0, dev_num=DEV)) is None
    assert conf(pair).notified == []
    assert pair.region.read_u16(q.layout.used_idx) == 0
    assert q.get_used() == []
    assert pair.events == []
    # DEV-36: processing starts once DRIVER_OK is set.
    assert set_status(pair, ACK | DRV | FOK | DOK) & DOK
    assert conf(pair).notified == [0]
    assert pair.events == [S.EventUsed(0, dev_num=DEV)]
    assert q.get_used() == [("early", b"\xa5" * 16)]


def test_dev_37_event_used_for_used_buffers(pair: EnginePair) -> None:
    q = live_queue(pair)
    for round_ in range(2):
        q.add([], [4], round_)
        assert q.kick_prepare()
        pair.send(S.EventAvail(0, 0, dev_num=DEV))
        assert pair.events[-1] == S.EventUsed(0, dev_num=DEV)
        assert q.get_used() == [(round_, b"\xa5" * 4)]
    assert len(pair.events) == 2


def test_dev_38_polling_only_mode_sends_no_event_used(factory: Factory, profile: str) -> None:
    pair = factory(profile, polling_only=True)
    q = live_queue(pair)
    q.add([], [4], "p")
    q.kick_prepare()
    pair.send(S.EventAvail(0, 0, dev_num=DEV))
    assert pair.events == []
    assert q.get_used() == [("p", b"\xa5" * 4)]


def test_dev_39_all_eleven_requests_answered(pair: EnginePair) -> None:
    expected: list[tuple[Message, type]] = [
        (S.GetDeviceInfo(), S.GetDeviceInfoResp),
        (S.GetDeviceFeatures(0, 2), S.GetDeviceFeaturesResp),
        (S.SetDriverFeatures(0, 2, (0, 0)), S.SetDriverFeaturesResp),
        (S.GetConfig(0, 8), S.GetConfigResp),
        (S.SetConfig(0, 8, 4, b"\x01\x02\x03\x04"), S.SetConfigResp),
        (S.GetDeviceStatus(), S.GetDeviceStatusResp),
        (S.SetDeviceStatus(ACK), S.SetDeviceStatusResp),
        (S.GetVqueue(0), S.GetVqueueResp),
        (S.SetVqueue(0, C.VQ_OP_ENABLE, 8, 0, *addrs(pair)), S.SetVqueueResp),
        (S.ResetVqueue(0), S.ResetVqueueResp),
        (S.GetShm(1), S.GetShmResp),
    ]
    ids = set()
    for msg, resp_cls in expected:
        resp = ask(pair, msg)
        assert type(resp) is resp_cls
        ids.add(wire(pair, resp)[1])
    assert ids == set(range(0x02, 0x0D))


# --- DEV-40..48 GET_DEVICE_INFO ----------------------------------------------------------


def test_dev_40_device_info_answered_in_every_state(factory: Factory, profile: str) -> None:
    pair = factory(profile, async_reset_polls=3)
    first = ask(pair, S.GetDeviceInfo())
    assert (first.device_id, first.vendor_id) == (DEVICE_ID, pair.model.vendor_id)
    assert (first.config_size, first.max_virtqueues) == (len(CONFIG), len(QUEUE_MAX))
    assert first.num_feature_blocks == 2
    seen = [ask(pair, S.GetDeviceInfo())]
    live_queue(pair)
    seen.append(ask(pair, S.GetDeviceInfo()))
    assert set_status(pair, 0) != 0  # asynchronous reset pending
    seen.append(ask(pair, S.GetDeviceInfo()))
    assert [status(pair) for _ in range(3)][-1] == 0  # the reset finished
    pair.model.fail("x")
    seen.append(ask(pair, S.GetDeviceInfo()))
    assert all(s == first for s in seen)


def test_dev_41_feature_blocks_cover_every_offered_bit(factory: Factory, profile: str) -> None:
    pair = factory(profile, model=ConfModel(features=F_A | 1 << 70))
    info = ask(pair, S.GetDeviceInfo())
    assert info.num_feature_blocks >= 3
    r = ask(pair, S.GetDeviceFeatures(0, info.num_feature_blocks))
    bits = sum(w << (32 * i) for i, w in enumerate(r.features))
    assert bits == pair.model.offered_features
    assert bits >> 70 & 1


def test_dev_44_no_admin_queues_means_start_zero(pair: EnginePair) -> None:
    info = ask(pair, S.GetDeviceInfo())
    assert info.admin_vq_count == 0
    assert info.admin_vq_start == 0


def test_dev_45_admin_range_within_max_virtqueues(pair: EnginePair) -> None:
    info = ask(pair, S.GetDeviceInfo())
    assert info.admin_vq_start + info.admin_vq_count <= info.max_virtqueues


def test_dev_48_nil_uuid_when_none_provided(factory: Factory) -> None:
    nil = factory("spec")
    assert ask(nil, S.GetDeviceInfo()).device_uuid == bytes(16)
    raw = wire(nil, ask(nil, S.GetDeviceInfo()))
    assert raw[8 + 8 : 8 + 24] == bytes(16)
    uuid = bytes.fromhex("0f1e2d3c4b5a4978a695847362514031")  # version 4
    given = factory("spec", model=ConfModel(uuid=uuid))
    assert ask(given, S.GetDeviceInfo()).device_uuid == uuid


# --- DEV-49..53 GET_CONFIG / SET_CONFIG ---------------------------------------------------


def test_dev_49_get_config_generation_is_current(pair: EnginePair) -> None:
    old = ask(pair, S.GetConfig(0, 8)).generation
    pair.model.update_config(40, b"\x77")
    new = ask(pair, S.GetConfig(0, 8)).generation
    assert new != old
    assert new == pair.events[-1].generation == pair.device.generation


def test_dev_50_set_config_reply_generation_is_current(pair: EnginePair) -> None:
    old = ask(pair, S.GetConfig(0, 0)).generation
    r = ask(pair, S.SetConfig(0, 8, 4, b"\x55\x66\x77\x88"))
    assert r.length == 4
    assert r.generation != old  # the write changed the config
    assert r.generation == ask(pair, S.GetConfig(8, 4)).generation
    refused = ask(pair, S.SetConfig(0, 0, 4, b"\x00" * 4))  # read-only range
    assert refused.length == 0
    assert refused.generation == r.generation


def test_dev_51_zero_length_set_config_is_a_noop(pair: EnginePair) -> None:
    gen = ask(pair, S.GetConfig(0, 0)).generation
    for offset in (0, 8, 60):
        r = ask(pair, S.SetConfig(0, offset, 0, b""))
        assert (r.length, r.data, r.generation) == (0, b"", gen)
    assert ask(pair, S.GetConfig(0, 26)).data == CONFIG[:26]
    assert ask(pair, S.GetConfig(26, 26)).data == CONFIG[26:52]
    assert pair.events == []


@pytest.mark.parametrize(
    ("offset", "data", "applied"),
    [
        (8, b"\x01" * 8, True),
        (48, b"\x02" * 8, True),  # last writable bytes
        (52, b"\x03" * 8, False),  # crosses into the read-only tail
        (4, b"\x04" * 8, False),  # starts in the read-only head
        (60, b"\x05" * 8, False),  # beyond config_size
    ],
)
def test_dev_52_set_config_all_or_nothing(
    pair: EnginePair, offset: int, data: bytes, applied: bool
) -> None:
    r = ask(pair, S.SetConfig(0, offset, len(data), data))
    if applied:
        assert (r.length, r.data) == (len(data), data)
    else:
        assert (r.length, r.data) == (0, b"")
    want = bytearray(CONFIG)
    if applied:
        want[offset : offset + len(data)] = data
    got = ask(pair, S.GetConfig(0, 26)).data + ask(pair, S.GetConfig(26, 26)).data
    got += ask(pair, S.GetConfig(52, 12)).data
    assert got == bytes(want)


def test_dev_53_refused_set_config_reply_has_no_data(pair: EnginePair) -> None:
    r = ask(pair, S.SetConfig(0, 54, 4, b"\xff" * 4))
    assert r.length == 0
    raw = wire(pair, r)
    hs = pair.adapter.header_size
    assert len(raw) == hs + 12
    assert int.from_bytes(raw[hs - 2 : hs], "little") == hs + 12


# --- DEV-54..59 status and reset ---------------------------------------------------------


def test_dev_54_status_reports_features_ok_and_needs_reset(pair: EnginePair) -> None:
    assert not select(pair, offered(pair)) & FOK
    assert status(pair) == ACK | DRV
    ask(pair, S.SetDriverFeatures(0, 2, (F_A, (V1 | AP) >> 32)))
    assert set_status(pair, ACK | DRV | FOK) & FOK
    assert status(pair) == ACK | DRV | FOK
    pair.model.fail("x")
    assert status(pair) == ACK | DRV | FOK | NEEDS_RESET


def test_dev_55_ring_error_sets_needs_reset_and_reports_it(pair: EnginePair) -> None:
    q = live_queue(pair)
    pair.region.write_u16(q.layout.avail_ring, 200)  # head beyond the queue size
    pair.region.write_u16(q.layout.avail_idx, 1)
    assert pair.send(S.EventAvail(0, 0, dev_num=DEV)) is None
    (ev,) = pair.events
    assert type(ev) is S.EventConfig
    assert ev.device_status & NEEDS_RESET
    assert (ev.offset, ev.length, ev.data) == (0, 0, b"")
    assert status(pair) & NEEDS_RESET
    assert set_status(pair, 0) == 0  # recovery through reset
    assert status(pair) == 0


def test_dev_56_set_status_reply_matches_later_get(pair: EnginePair) -> None:
    sequence = [
        ACK,
        ACK | DRV,
        ACK | DRV | DOK,  # DRIVER_OK before FEATURES_OK: not applied
        ACK | DRV | FOK,  # refused: nothing selected (VERSION_1 missing)
        ACK,  # clearing bits without reset: ignored
        0,
        ACK,
    ]
    for value in sequence:
        assert set_status(pair, value) == status(pair)
    ask(pair, S.SetDriverFeatures(0, 2, (F_A, (V1 | AP) >> 32)))
    for value in (ACK | DRV, ACK | DRV | FOK, ACK | DRV | FOK | DOK):
        assert set_status(pair, value) == status(pair)
    assert status(pair) == ACK | DRV | FOK | DOK


def test_dev_57_reset_returns_to_initial_state(pair: EnginePair) -> None:
    q = live_queue(pair)
    assert vq(pair, 0).flags & C.VQ_ENABLED
    assert set_status(pair, 0) == 0
    assert status(pair) == 0
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)
    assert pair.model.negotiated_features == 0
    assert conf(pair).resets == 1
    # Features must be negotiated again: FEATURES_OK without selection is refused.
    set_status(pair, ACK)
    set_status(pair, ACK | DRV)
    assert not set_status(pair, ACK | DRV | FOK) & FOK
    q.close()


def test_dev_57_reset_at_status_zero_still_clears_queues(pair: EnginePair) -> None:
    set_vq(pair, 2, C.VQ_OP_ENABLE, 8, addrs(pair))
    assert vq(pair, 2).cur_size == 8
    assert set_status(pair, 0) == 0
    assert vq_state(pair, 2) == (QUEUE_MAX[2], 0, 0, 0, 0, 0)


def test_dev_57_reset_at_status_zero_forgets_selected_features(pair: EnginePair) -> None:
    ask(pair, S.SetDriverFeatures(0, 2, (F_A, (V1 | AP) >> 32)))
    assert set_status(pair, 0) == 0
    assert set_status(pair, ACK) == ACK
    assert set_status(pair, ACK | DRV) == ACK | DRV
    assert set_status(pair, ACK | DRV | FOK) == ACK | DRV  # nothing selected since the reset


@pytest.mark.parametrize("polls", [0, 1, 4])
def test_dev_58_reset_completes_sync_or_async(factory: Factory, profile: str, polls: int) -> None:
    pair = factory(profile, async_reset_polls=polls)
    live_queue(pair)
    reply = set_status(pair, 0)
    assert (reply == 0) == (polls == 0)
    seen = [status(pair) for _ in range(polls + 1)]
    assert seen[-1] == 0
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)


def test_dev_59_async_reset_never_reports_zero_early(factory: Factory, profile: str) -> None:
    pair = factory(profile, async_reset_polls=4)
    live_queue(pair)
    assert set_status(pair, 0) == ACK | DRV | FOK | DOK
    assert conf(pair).resets == 0
    assert set_status(pair, ACK) != 0  # writes during the reset: no-op, still not 0
    early = [status(pair) for _ in range(3)]
    assert all(s != 0 for s in early)
    assert conf(pair).resets == 0
    assert status(pair) == 0
    assert conf(pair).resets == 1
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)


# --- DEV-60..72 virtqueues -----------------------------------------------------------------


def test_dev_60_get_vqueue_reports_sizes(pair: EnginePair) -> None:
    for index in (0, 2, 3):
        assert vq_state(pair, index) == (QUEUE_MAX[index], 0, 0, 0, 0, 0)
    a = addrs(pair)
    set_vq(pair, 3, C.VQ_OP_ENABLE, 4, a)
    r = vq(pair, 3)
    assert (r.max_size, r.cur_size) == (QUEUE_MAX[3], 4)
    assert (r.desc_addr, r.driver_addr, r.device_addr) == a


@pytest.mark.parametrize("index", [1, 4, 0xFFFF, 0x10000, 0xFFFFFFFF])
def test_dev_61_unavailable_queue_sentinel(pair: EnginePair, index: int) -> None:
    r = vq(pair, index)
    assert r.index == index
    assert (r.max_size, r.cur_size, r.flags, r.desc_addr, r.driver_addr, r.device_addr) == (
        0, 0, 0, 0, 0, 0,
    )


def test_dev_62_enabled_flag_and_zero_upper_flag_bits(spec_pair: EnginePair) -> None:
    pair = spec_pair
    a = addrs(pair)
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED, 8, a)
    assert vq(pair, 0).flags == 0  # configured, disabled
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, a)
    assert vq(pair, 0).flags == C.VQ_ENABLED
    raw = wire(pair, vq(pair, 0))
    assert int.from_bytes(raw[8 + 12 : 8 + 16], "little") == 1


def test_dev_62_seed_queue_enabled_after_set_vqueue(pair: EnginePair) -> None:
    set_vq(pair, 2, C.VQ_OP_ENABLE, 8, addrs(pair))
    assert vq(pair, 2).flags == C.VQ_ENABLED


@pytest.mark.parametrize("index", [1, 4, 0xFFFFFFFF])
def test_dev_63_set_vqueue_invalid_index_is_a_noop(pair: EnginePair, index: int) -> None:
    before = {i: vq_state(pair, i) for i in range(len(QUEUE_MAX))}
    set_vq(pair, index, C.VQ_OP_ENABLE, 8, addrs(pair))
    assert {i: vq_state(pair, i) for i in range(len(QUEUE_MAX))} == before
    assert vq(pair, index).max_size == 0


def test_dev_64_nonzero_reserved_field_ignored(pair: EnginePair) -> None:
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, addrs(pair), reserved=1)
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "flags", [1 << 6, 1 << 31, C.VQ_OP_ENABLE | 0xFFFFFFC0, C.VQ_OP_RESERVED]
)
def test_dev_64_reserved_flag_bits_and_op_3_ignored(spec_pair: EnginePair, flags: int) -> None:
    set_vq(spec_pair, 0, flags, 8, addrs(spec_pair))
    assert vq_state(spec_pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)


def test_dev_65_op_keep_disabled_on_enabled_queue_is_a_noop(spec_pair: EnginePair) -> None:
    a = addrs(spec_pair)
    set_vq(spec_pair, 0, C.VQ_OP_ENABLE, 8, a)
    before = vq_state(spec_pair, 0)
    set_vq(spec_pair, 0, C.VQ_OP_KEEP_DISABLED, 8, a)
    assert vq_state(spec_pair, 0) == before
    assert before[2] == C.VQ_ENABLED


@pytest.mark.parametrize(
    ("flags", "size"),
    [
        (C.VQ_OP_ENABLE, 12),  # enable with a non-power-of-two size
        (C.VQ_OP_ENABLE, 0),  # enable with size 0
        (C.VQ_OP_KEEP_DISABLED, 128),  # above max_size (64)
        (C.VQ_OP_KEEP, 65),
    ],
)
def test_dev_66_set_vqueue_is_atomic(spec_pair: EnginePair, flags: int, size: int) -> None:
    pair = spec_pair
    old = addrs(pair, 0)
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED, 4, old)
    before = vq_state(pair, 0)
    set_vq(pair, 0, flags, size, addrs(pair, 1))  # new addresses + an invalid part
    assert vq_state(pair, 0) == before  # no field applied, no state change


@pytest.mark.parametrize(
    ("ignore", "kept"),
    [
        (C.VQ_SIZE_IGNORE, "size"),
        (C.VQ_DESC_IGNORE, "desc"),
        (C.VQ_DRIVER_IGNORE, "driver"),
        (C.VQ_DEVICE_IGNORE, "device"),
    ],
)
def test_dev_67_ignore_bits_keep_current_values(
    spec_pair: EnginePair, ignore: int, kept: str
) -> None:
    pair = spec_pair
    old, new = addrs(pair, 0), addrs(pair, 1)
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED, 4, old)
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED | ignore, 16, new)
    r = vq(pair, 0)
    got = {"size": r.cur_size, "desc": r.desc_addr, "driver": r.driver_addr,
           "device": r.device_addr}
    olds = {"size": 4, "desc": old[0], "driver": old[1], "device": old[2]}
    news = {"size": 16, "desc": new[0], "driver": new[1], "device": new[2]}
    for field in got:
        assert got[field] == (olds if field == kept else news)[field], field
    assert r.flags == 0


@pytest.mark.parametrize("change", ["size", "desc", "driver", "device"])
@pytest.mark.parametrize("op", [C.VQ_OP_ENABLE, C.VQ_OP_KEEP])
def test_dev_68_enabled_queue_refuses_field_changes(
    spec_pair: EnginePair, op: int, change: str
) -> None:
    pair = spec_pair
    a = addrs(pair)
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, a)
    before = vq_state(pair, 0)
    size = 16 if change == "size" else 8
    b = list(a)
    for i, name in enumerate(("desc", "driver", "device")):
        if change == name:
            b[i] += 0x4000
    set_vq(pair, 0, op, size, (b[0], b[1], b[2]))
    assert vq_state(pair, 0) == before


def test_dev_68_seed_second_set_vqueue_on_enabled_queue_refused(pair: EnginePair) -> None:
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, addrs(pair, 0))
    before = vq_state(pair, 0)
    set_vq(pair, 0, C.VQ_OP_ENABLE, 16, addrs(pair, 1))
    assert vq_state(pair, 0) == before


def test_dev_69_fields_applied_before_state_and_no_disable(spec_pair: EnginePair) -> None:
    pair = spec_pair
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED, 4, addrs(pair, 0))
    new = addrs(pair, 1)
    set_vq(pair, 0, C.VQ_OP_ENABLE, 16, new)  # fields, then enable: all in one request
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 16, C.VQ_ENABLED, *new)
    set_vq(pair, 0, C.VQ_OP_KEEP | C.VQ_SIZE_IGNORE | C.VQ_DESC_IGNORE | C.VQ_DRIVER_IGNORE
           | C.VQ_DEVICE_IGNORE, 0, (0, 0, 0))
    assert vq(pair, 0).flags == C.VQ_ENABLED
    set_vq(pair, 0, C.VQ_OP_KEEP_DISABLED | C.VQ_SIZE_IGNORE | C.VQ_DESC_IGNORE
           | C.VQ_DRIVER_IGNORE | C.VQ_DEVICE_IGNORE, 0, (0, 0, 0))
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 16, C.VQ_ENABLED, *new)


@pytest.mark.parametrize("index", [1, 4, 0xFFFFFFFF])
def test_dev_70_reset_vqueue_invalid_index_is_a_noop(pair: EnginePair, index: int) -> None:
    negotiate(pair)  # RING_RESET negotiated
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, addrs(pair))
    before = [vq_state(pair, i) for i in range(len(QUEUE_MAX))]
    assert type(ask(pair, S.ResetVqueue(index))) is S.ResetVqueueResp
    assert [vq_state(pair, i) for i in range(len(QUEUE_MAX))] == before


def test_dev_71_reset_vqueue_without_ring_reset_is_a_noop(pair: EnginePair) -> None:
    negotiate(pair, F_A | V1 | AP)  # RING_RESET offered but not negotiated
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, addrs(pair))
    before = vq_state(pair, 0)
    assert type(ask(pair, S.ResetVqueue(0))) is S.ResetVqueueResp
    assert vq_state(pair, 0) == before
    assert before[2] == C.VQ_ENABLED


def test_dev_72_reset_vqueue_with_ring_reset_clears_the_queue(pair: EnginePair) -> None:
    features = negotiate(pair)
    assert features & RING_RESET
    q = DriverQueue(pair.pool, 0, 8, features)
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, (q.desc_addr, q.driver_addr, q.device_addr))
    assert set_status(pair, ACK | DRV | FOK | DOK) & DOK
    assert type(ask(pair, S.ResetVqueue(0))) is S.ResetVqueueResp
    assert vq_state(pair, 0) == (QUEUE_MAX[0], 0, 0, 0, 0, 0)
    # Stopped: a kick is not processed.
    q.add([], [4], "stale")
    q.kick_prepare()
    pair.send(S.EventAvail(0, 0, dev_num=DEV))
    assert conf(pair).notified == []
    # Re-configurable while disabled, and processed again once enabled.
    q.reset()
    set_vq(pair, 0, C.VQ_OP_ENABLE, 8, (q.desc_addr, q.driver_addr, q.device_addr))
    assert vq(pair, 0).flags == C.VQ_ENABLED
    q.add([], [4], "fresh")
    q.kick_prepare()
    pair.send(S.EventAvail(0, 0, dev_num=DEV))
    assert q.get_used() == [("fresh", b"\xa5" * 4)]


# --- DEV-73/74 GET_SHM ----------------------------------------------------------------------


@pytest.mark.parametrize("shmid", [0, 1, 2, 0xFFFFFFFF])
def test_dev_73_get_shm_reports_regions(pair: EnginePair, shmid: int) -> None:
    r = ask(pair, S.GetShm(shmid))
    assert r.shmid == shmid
    if shmid in SHM:
        assert (r.address, r.length) == SHM[shmid]
    else:
        assert r.length == 0


def test_dev_74_get_shm_reserved_is_zero(spec_pair: EnginePair) -> None:
    for shmid in (0, 1):
        r = ask(spec_pair, S.GetShm(shmid))
        assert r.reserved == 0
        assert wire(spec_pair, r)[8 + 4 : 8 + 8] == bytes(4)
