"""Driver-side conformance: the DRV-xx requirements observable through DriverEngine.

The checklist is section 6.3 of ``virtio-msg-spec.md``; tests are named after
its IDs.  Procedures run against a real :class:`DeviceTransport` through
:class:`EnginePair` (both wire profiles), or against a fake ``answer``
function given to :func:`run_sync` when the device has to misbehave.  The
``linux-rfc1`` profile follows the seed kernel (``linux-rfc1.md`` section 2):
exactly 64 feature bits read as index 0 / num 2, SET_VQUEUE implies enable,
one-shot reset without polling.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from math import ceil

import pytest

import virtio_msg.spec as C
from virtio_msg.errors import TransportError
from virtio_msg.testing import EnginePair
from virtio_msg.transport import (
    BusParams,
    DeviceModel,
    DriverEngine,
    FeaturesRefused,
    ProtocolViolation,
    QueueSetupFailed,
    run_sync,
)
from virtio_msg.transport.engine import Delay
from virtio_msg.virtqueue import DriverQueue
from virtio_msg.wire import GenericMessage, Message, Profile
from virtio_msg.wire import spec as S

PROFILES = ("spec", "linux-rfc1")
SMALLEST = {"spec": 52, "linux-rfc1": 44}
DEV = 0x0042
STRICT = C.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION

F_A = 1 << 0
F_B = 1 << 1
"""Device-specific feature bits; DrvModel refuses A and B together."""
V1 = 1 << C.VIRTIO_F_VERSION_1
AP = 1 << C.VIRTIO_F_ACCESS_PLATFORM
NOTIF_DATA = 1 << C.VIRTIO_F_NOTIFICATION_DATA
NOTIF_CONFIG_DATA = 1 << C.VIRTIO_F_NOTIF_CONFIG_DATA

CONFIG = bytes((i * 7 + 3) & 0xFF for i in range(100))
"""100 bytes of config: several chunks on the smallest buses."""
WRITABLE = ((16, 80),)
"""Bytes 16..95 are writable."""
QUEUE_MAX = (64, 0, 16)
"""Queue 1 is unavailable."""
REGION = 1 << 18

ACK = C.Status.ACKNOWLEDGE
DRV = C.Status.DRIVER
FOK = C.Status.FEATURES_OK
DOK = C.Status.DRIVER_OK
NEEDS_RESET = C.Status.DEVICE_NEEDS_RESET


class DrvModel(DeviceModel):
    """A device for driver tests: config space, three queues, refuses features A+B."""

    device_id = 43
    name = "drv"

    def __init__(self, *, features: int = F_A | F_B) -> None:
        """Offer ``features`` on top of the transport's required and ring features."""
        super().__init__(
            features=features,
            config=CONFIG,
            num_queues=len(QUEUE_MAX),
            queue_max_size=QUEUE_MAX,
            writable_config=WRITABLE,
        )

    def validate_features(self, features: int) -> bool:
        """Refuse the combination A+B."""
        return features & (F_A | F_B) != F_A | F_B


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
        config_retries: int = 5,
        reset_poll_limit: int = 1000,
    ) -> EnginePair:
        params = BusParams(
            profile=Profile(profile),
            max_msg_size=max_size,
            transport_features=STRICT if strict else 0,
            config_retries=config_retries,
            reset_poll_limit=reset_poll_limit,
        )
        pair = EnginePair(
            model if model is not None else DrvModel(),
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
    """A pair in the profile under test (baseline configuration profile)."""
    return factory(profile)


# --- helpers -----------------------------------------------------------------------


def init(pair: EnginePair, features: int | None = None) -> int:
    """GET_DEVICE_INFO, reset, ACK, DRIVER, features (default: offered but B), FEATURES_OK."""
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.reset())
    pair.run(d.set_status(ACK))
    pair.run(d.set_status(ACK | DRV))
    pair.run(d.read_features())
    want = d.offered_features & ~F_B if features is None else features
    return pair.run(d.write_features(want))


def setup(pair: EnginePair, index: int, size: int) -> DriverQueue:
    """Allocate real rings for queue ``index`` and set it up through the engine."""
    q = DriverQueue(pair.pool, index, size, pair.driver.negotiated_features)
    pair.run(pair.driver.setup_vqueue(index, size, q.desc_addr, q.driver_addr, q.device_addr))
    return q


def sent(pair: EnginePair, cls: type) -> list[Message]:
    """Requests of class ``cls`` sent so far."""
    return [m for m in pair.requests() if type(m) is cls]


def names(pair: EnginePair, start: int = 0) -> list[str]:
    """Class names of the requests sent, from index ``start``."""
    return [type(m).__name__ for m in pair.requests()[start:]]


def with_hook(pair: EnginePair, hook: Callable[[Message], Message | None]) -> Callable[
    [Message], Message
]:
    """An answer function: ``hook`` may answer (or act) first, else the real device does."""

    def answer(msg: Message) -> Message:
        out = hook(msg)
        return out if out is not None else pair.answer(msg)

    return answer


def feature_words(pair: EnginePair) -> int:
    """The driver-selected bits written by every SET_DRIVER_FEATURES so far."""
    bits = 0
    for m in sent(pair, S.SetDriverFeatures):
        for i, w in enumerate(m.features):
            bits |= w << (32 * (m.block_index + i))
    return bits


# --- DRV-01 message size ---------------------------------------------------------------


def test_drv_01_nothing_sent_above_the_maximum(factory: Factory, profile: str) -> None:
    smallest = SMALLEST[profile]
    pair = factory(profile, max_size=smallest)
    d = pair.driver
    hs = pair.adapter.header_size
    init(pair)
    assert pair.run(d.config_read(0, len(CONFIG))) == CONFIG
    new = bytes(range(200, 120, -1))
    assert pair.run(d.config_write(16, new))
    assert pair.run(d.config_read(16, 80)) == new
    setup(pair, 0, 8)
    pair.run(d.set_status(d.status | DOK))
    chunk = smallest - hs - 12
    reads = sent(pair, S.GetConfig)
    assert len(reads) == ceil(len(CONFIG) / chunk) + ceil(80 / chunk)
    assert all(m.length <= chunk for m in reads)
    writes = sent(pair, S.SetConfig)
    assert [m.length for m in writes] == [min(chunk, 80 - o) for o in range(0, 80, chunk)]
    for msg in [*pair.requests(), d.event_avail(0)]:
        assert len(pair.adapter.encode(msg)) <= smallest


def test_drv_01_feature_blocks_split_at_52_bytes(factory: Factory) -> None:
    model = DrvModel(features=F_A | 1 << 300)
    pair = factory("spec", max_size=52, model=model)
    d = pair.driver
    init(pair)
    assert pair.driver.info is not None
    assert pair.driver.info.num_feature_blocks == 10
    per = (52 - 8 - 8) // 4
    assert [(m.block_index, m.num_blocks) for m in sent(pair, S.GetDeviceFeatures)] == [
        (0, per), (per, 10 - per)
    ]
    assert d.offered_features == model.offered_features
    assert [(m.block_index, m.num_blocks) for m in sent(pair, S.SetDriverFeatures)] == [
        (0, per), (per, 10 - per)
    ]
    assert model.negotiated_features >> 300 & 1
    for msg in pair.requests():
        assert len(pair.adapter.encode(msg)) <= 52


# --- DRV-07..12 configuration generation -------------------------------------------------


def test_drv_07_config_change_between_chunks_is_reread(factory: Factory, profile: str) -> None:
    pair = factory(profile, max_size=SMALLEST[profile])
    init(pair)
    start = len(pair.requests())
    reads: list[Message] = []

    def hook(msg: Message) -> None:
        if type(msg) is S.GetConfig:
            reads.append(msg)
            if len(reads) == 2:
                pair.model.update_config(0, b"\xee" * 4)  # between chunk 1 and chunk 2

    got = run_sync(pair.driver.config_read(0, len(CONFIG)), with_hook(pair, hook))
    assert got == b"\xee" * 4 + CONFIG[4:]  # a consistent snapshot of the new contents
    chunks = ceil(len(CONFIG) / (SMALLEST[profile] - pair.adapter.header_size - 12))
    assert len(reads) == 2 * chunks
    assert set(names(pair, start)) == {"GetConfig"}


def test_drv_07_rereads_are_bounded(factory: Factory, profile: str) -> None:
    pair = factory(profile, max_size=SMALLEST[profile], config_retries=3)
    init(pair)
    reads: list[Message] = []

    def hook(msg: Message) -> None:
        if type(msg) is S.GetConfig:
            reads.append(msg)
            pair.model.update_config(0, bytes([len(reads)]))  # changes before every chunk

    with pytest.raises(TransportError):
        run_sync(pair.driver.config_read(0, len(CONFIG)), with_hook(pair, hook))
    chunks = ceil(len(CONFIG) / (SMALLEST[profile] - pair.adapter.header_size - 12))
    assert len(reads) == 3 * chunks


def test_drv_08_baseline_sends_generation_zero(pair: EnginePair) -> None:
    init(pair)
    pair.model.update_config(96, b"\x01")
    pair.model.update_config(96, b"\x02")
    d = pair.driver
    pair.run(d.config_read(0, 8))
    assert d.generation not in (0, 1)
    for ev in pair.events:
        d.accept_event(ev)
    assert pair.run(d.config_write(16, b"base"))
    (w,) = sent(pair, S.SetConfig)
    assert w.generation == 0
    assert pair.run(d.config_read(16, 4)) == b"base"


def test_drv_10_strict_sends_latest_generation(factory: Factory, profile: str) -> None:
    pair = factory(profile, strict=True, max_size=SMALLEST[profile])
    init(pair)
    d = pair.driver
    pair.run(d.config_read(0, 4))
    assert pair.run(d.config_write(16, b"\x01\x02"))
    pair.model.update_config(96, b"\x33")  # device-side change, reported by an event
    (ev,) = pair.events
    assert d.accept_event(ev) == ev
    assert pair.run(d.config_write(20, b"\x03\x04"))
    # A multi-chunk write: each chunk carries the generation of the previous reply.
    assert pair.run(d.config_write(16, bytes(80)))
    writes = sent(pair, S.SetConfig)
    replies = [m for dirn, m in pair.trace if dirn == "resp" and type(m) is S.SetConfigResp]
    assert all(r.length > 0 for r in replies)  # never rejected
    assert writes[1].generation == ev.generation
    for w, previous in zip(writes[2:], replies[1:], strict=False):
        assert w.generation == previous.generation
    assert len(writes) == 2 + ceil(80 / (SMALLEST[profile] - pair.adapter.header_size - 12))
    assert not sent(pair, S.GetConfig)[1:]  # no re-read was ever needed


def test_drv_11_strict_rejection_rereads_then_retries(factory: Factory, profile: str) -> None:
    pair = factory(profile, strict=True)
    init(pair)
    d = pair.driver
    pair.run(d.config_read(0, 4))
    old = d.generation
    pair.model.update_config(96, b"\x44")  # event lost: the driver's generation is stale
    current = pair.device.generation
    assert current != old
    start = len(pair.requests())
    assert pair.run(d.config_write(16, b"wxyz"))
    reqs = pair.requests()[start:]
    assert [type(m).__name__ for m in reqs] == ["SetConfig", "GetConfig", "SetConfig"]
    assert reqs[0].generation == old
    assert reqs[2].generation == current
    assert pair.run(d.config_read(16, 4)) == b"wxyz"


def test_drv_12_generation_going_backwards_is_a_change(factory: Factory, profile: str) -> None:
    pair = factory(profile, max_size=SMALLEST[profile])
    init(pair)
    pair.device.generation = 1000
    reads: list[Message] = []

    def hook(msg: Message) -> None:
        if type(msg) is S.GetConfig:
            reads.append(msg)
            if len(reads) == 2:
                pair.device.generation = 7  # e.g. the device restarted its counter

    assert run_sync(pair.driver.config_read(0, 40), with_hook(pair, hook)) == CONFIG[:40]
    chunks = ceil(40 / (SMALLEST[profile] - pair.adapter.header_size - 12))
    assert len(reads) == 2 * chunks
    assert pair.driver.generation == 7


def test_drv_12_strict_uses_lower_generation_after_device_reset(
    factory: Factory, profile: str
) -> None:
    pair = factory(profile, strict=True)
    init(pair)
    d = pair.driver
    pair.device.generation = 1000
    pair.run(d.config_read(0, 4))
    assert d.generation == 1000
    pair.device.generation = 3  # the device reset its counter (DEV-15)
    assert pair.run(d.config_write(16, b"ab"))  # stale 1000 rejected, re-read, retried
    writes = sent(pair, S.SetConfig)
    assert [w.generation for w in writes] == [1000, 3]
    current = pair.run(d.read_generation())
    assert current == pair.device.generation < 1000
    assert pair.run(d.config_write(18, b"cd"))
    assert sent(pair, S.SetConfig)[-1].generation == current  # no "max seen" kept


# --- DRV-19/21 header fields ----------------------------------------------------------------


def test_drv_19_every_request_carries_the_device_number(pair: EnginePair) -> None:
    init(pair)
    setup(pair, 0, 8)
    for msg in [*pair.requests(), pair.driver.event_avail(0)]:
        assert msg.dev_num == DEV
        assert int.from_bytes(pair.adapter.encode(msg)[2:4], "little") == DEV


def test_drv_21_token_is_opaque(factory: Factory) -> None:
    pair = factory("spec")
    rng = random.Random(21)

    def hook(msg: Message) -> Message:
        resp = pair.answer(msg._replace(token=rng.randrange(0x10000)))
        return resp._replace(token=rng.randrange(0x10000))  # the bus rewrote both legs

    d = pair.driver
    answer = with_hook(pair, hook)
    run_sync(d.get_device_info(), answer)
    run_sync(d.reset(), answer)
    run_sync(d.set_status(ACK | DRV), answer)
    run_sync(d.read_features(), answer)
    run_sync(d.write_features(d.offered_features & ~F_B), answer)
    assert run_sync(d.config_read(0, 8), answer) == CONFIG[:8]
    assert d.status == ACK | DRV | FOK


def test_drv_19_response_for_another_device_is_a_violation(pair: EnginePair) -> None:
    def hook(msg: Message) -> Message:
        return pair.answer(msg)._replace(dev_num=DEV + 1)

    with pytest.raises(ProtocolViolation):
        run_sync(pair.driver.get_device_info(), with_hook(pair, hook))


# --- DRV-22..26 initialization sequence -----------------------------------------------------


def test_drv_22_to_26_initialization_order(pair: EnginePair, profile: str) -> None:
    d = pair.driver
    init(pair)
    setup(pair, 0, 8)
    setup(pair, 2, 16)
    assert pair.run(d.set_status(d.status | DOK)) == ACK | DRV | FOK | DOK
    expected = [
        "GetDeviceInfo",  # DRV-23: first
        "SetDeviceStatus",  # reset (0)
        "SetDeviceStatus",  # ACKNOWLEDGE
        "SetDeviceStatus",  # DRIVER
        "GetDeviceFeatures",
        "SetDriverFeatures",
        "SetDeviceStatus",  # FEATURES_OK
        *(["GetDeviceStatus"] if profile == "linux-rfc1" else []),  # seed reads it back
        "GetVqueue", "SetVqueue", "GetVqueue",  # DRV-25: confirmed before use
        "GetVqueue", "SetVqueue", "GetVqueue",
        "SetDeviceStatus",  # DRIVER_OK last (DRV-26)
    ]
    assert names(pair) == expected
    statuses = [m.status for m in sent(pair, S.SetDeviceStatus)]
    assert statuses == [0, ACK, ACK | DRV, ACK | DRV | FOK, ACK | DRV | FOK | DOK]  # DRV-22
    vqs = [(type(m).__name__, m.index) for m in pair.requests() if "Vqueue" in type(m).__name__]
    assert vqs == [("GetVqueue", 0), ("SetVqueue", 0), ("GetVqueue", 0),
                   ("GetVqueue", 2), ("SetVqueue", 2), ("GetVqueue", 2)]
    reqs = pair.requests()
    fok = next(i for i, m in enumerate(reqs) if type(m) is S.SetDeviceStatus and m.status & FOK)
    first_vq = next(i for i, m in enumerate(reqs) if type(m) is S.SetVqueue)
    assert fok < first_vq  # DRV-24
    assert pair.run(d.get_status()) & DOK


def test_drv_23_device_info_required_first(pair: EnginePair) -> None:
    d = pair.driver
    for proc in (d.read_features(), d.config_read(0, 4), d.write_features(V1)):
        with pytest.raises(TransportError, match="GET_DEVICE_INFO"):
            pair.run(proc)
    assert pair.trace == []


# --- DRV-27..30 config range, features --------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "offset", "length"),
    [("read", 90, 11), ("read", 100, 1), ("read", -1, 4), ("write", 98, 3), ("write", 0, 101)],
)
def test_drv_27_config_access_bounded_by_config_size(
    pair: EnginePair, op: str, offset: int, length: int
) -> None:
    init(pair)
    before = len(pair.trace)
    d = pair.driver
    proc = d.config_read(offset, length) if op == "read" else d.config_write(offset, bytes(length))
    with pytest.raises(ValueError, match="config_size"):
        pair.run(proc)
    assert len(pair.trace) == before


def test_drv_28_47_only_offered_bits_written(pair: EnginePair) -> None:
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.reset())
    pair.run(d.set_status(ACK | DRV))
    offered = pair.run(d.read_features())
    want = ((1 << 64) - 1) & ~F_B  # asks for bits the device never offered
    got = pair.run(d.write_features(want))
    written = feature_words(pair)
    assert written == offered & ~F_B == got
    assert not written & ~offered
    assert d.negotiated_features == pair.model.negotiated_features == got


def test_drv_29_notif_config_data_never_negotiated(factory: Factory, profile: str) -> None:
    model = DrvModel()
    model.offered_features |= NOTIF_CONFIG_DATA  # a non-conformant device offers bit 39
    pair = factory(profile, model=model)
    d = pair.driver
    got = init(pair, ((1 << 64) - 1) & ~F_B)
    assert d.offered_features & NOTIF_CONFIG_DATA
    assert not got & NOTIF_CONFIG_DATA
    assert not feature_words(pair) & NOTIF_CONFIG_DATA
    assert not model.negotiated_features & NOTIF_CONFIG_DATA
    assert d.status & FOK


@pytest.mark.parametrize(
    "features", [F_A | F_B | V1 | AP, F_A | AP, F_A | V1], ids=["refused-combo", "no-v1", "no-ap"]
)
def test_drv_30_refused_features_ok_raises(pair: EnginePair, features: int) -> None:
    with pytest.raises(FeaturesRefused):
        init(pair, features)
    d = pair.driver
    assert not d.status & FOK
    assert d.negotiated_features == 0
    assert not pair.run(d.get_status()) & FOK


# --- DRV-52 SET_CONFIG reply length ---------------------------------------------------------


@pytest.mark.parametrize("reply_len", [1, 3, 5, 200])
def test_drv_52_partial_set_config_reply_is_a_violation(pair: EnginePair, reply_len: int) -> None:
    init(pair)

    def hook(msg: Message) -> Message | None:
        if type(msg) is S.SetConfig:
            return S.SetConfigResp(pair.device.generation, msg.offset, reply_len, b"",
                                   dev_num=DEV)
        return None

    with pytest.raises(ProtocolViolation, match="DRV-52"):
        run_sync(pair.driver.config_write(16, b"four"), with_hook(pair, hook))


def test_drv_52_zero_length_reply_means_not_applied(pair: EnginePair) -> None:
    init(pair)
    d = pair.driver
    assert pair.run(d.config_write(8, b"ro")) is False  # read-only bytes: refused
    assert pair.run(d.config_read(8, 2)) == CONFIG[8:10]
    assert pair.run(d.config_write(16, b"rw")) is True


# --- DRV-55/57 reset ------------------------------------------------------------------------


def test_drv_55_57_async_reset_polled_until_zero(factory: Factory) -> None:
    pair = factory("spec", async_reset_polls=5)
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.set_status(ACK))
    start = len(pair.requests())
    pair.run(d.reset())
    assert names(pair, start) == ["SetDeviceStatus"] + ["GetDeviceStatus"] * 5
    assert d.status == 0
    assert pair.device.status == 0
    init(pair)  # re-initialization continues only after that
    assert d.status & FOK


def test_drv_57_synchronous_reset_is_not_polled(pair: EnginePair) -> None:
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.set_status(ACK))
    start = len(pair.requests())
    pair.run(d.reset())
    assert names(pair, start) == ["SetDeviceStatus"]
    assert d.status == 0


def test_drv_55_reset_polling_is_bounded(factory: Factory) -> None:
    limit = 20
    pair = factory("spec", async_reset_polls=10**9, reset_poll_limit=limit)
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.set_status(ACK))
    proc = d.reset()
    delays: list[Delay] = []
    polls = 0
    with pytest.raises(TransportError) as err:
        req = next(proc)
        while True:
            if isinstance(req, Delay):
                delays.append(req)
                req = proc.send(None)
            else:
                polls += type(req) is S.GetDeviceStatus
                req = proc.send(pair.answer(req))
    assert err.value.kind == "timeout"
    assert polls == limit
    assert len(delays) == limit - DriverEngine.IMMEDIATE_POLLS
    assert all(dl.seconds > 0 for dl in delays)


def test_rfc1_one_shot_reset_without_polling(factory: Factory) -> None:
    pair = factory("linux-rfc1", async_reset_polls=3)
    d = pair.driver
    pair.run(d.get_device_info())
    pair.run(d.set_status(ACK))
    start = len(pair.requests())
    pair.run(d.reset())
    assert names(pair, start) == ["SetDeviceStatus"]
    assert [m.status for m in sent(pair, S.SetDeviceStatus)][-1] == 0
    assert not sent(pair, S.GetDeviceStatus)
    assert d.status == 0


# --- DRV-58..68 virtqueues ---------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(1, 8), (7, 8), (0xFFFF, 8), (2, 32), (0, 128)])
def test_drv_58_59_unavailable_queue_or_size_above_max_refused(
    pair: EnginePair, index: int, size: int
) -> None:
    init(pair)
    start = len(pair.requests())
    base = pair.region.base
    with pytest.raises(QueueSetupFailed):
        pair.run(pair.driver.setup_vqueue(index, size, base, base + 0x1000, base + 0x2000))
    assert names(pair, start) == ["GetVqueue"]  # no SET_VQUEUE was sent


def test_drv_60_61_63_set_vqueue_fields(pair: EnginePair, profile: str) -> None:
    init(pair)
    setup(pair, 0, 8)
    (msg,) = sent(pair, S.SetVqueue)
    assert msg.flags == C.VQ_OP_ENABLE  # op 1, no ignore bits, no reserved bits
    assert msg.reserved == 0
    raw = pair.adapter.encode(msg)
    hs = pair.adapter.header_size
    if profile == "spec":
        flags, size, reserved = struct.unpack_from("<III", raw, hs + 4)
        assert (flags, size, reserved) == (C.VQ_OP_ENABLE, 8, 0)
    else:
        unused, size = struct.unpack_from("<II", raw, hs + 4)
        assert (unused, size) == (0, 8)
    # DRV-63: an enabled queue is never "disabled" with op 0, nor reconfigured.
    start = len(pair.requests())
    base = pair.region.base
    with pytest.raises(QueueSetupFailed, match="already enabled"):
        pair.run(pair.driver.setup_vqueue(0, 8, base, base + 0x1000, base + 0x2000))
    assert names(pair, start) == ["GetVqueue"]


def test_drv_68_device_ignoring_set_vqueue_detected(pair: EnginePair) -> None:
    init(pair)

    def hook(msg: Message) -> Message | None:
        if type(msg) is S.SetVqueue:
            return S.SetVqueueResp(dev_num=DEV)  # answered, not applied
        return None

    q = DriverQueue(pair.pool, 0, 8, pair.driver.negotiated_features)
    proc = pair.driver.setup_vqueue(0, 8, q.desc_addr, q.driver_addr, q.device_addr)
    with pytest.raises(QueueSetupFailed, match="not confirmed"):
        run_sync(proc, with_hook(pair, hook))
    assert names(pair)[-1] == "GetVqueue"


def test_drv_68_device_applying_other_values_detected(pair: EnginePair) -> None:
    init(pair)

    def hook(msg: Message) -> Message | None:
        if type(msg) is S.SetVqueue:
            return pair.answer(msg._replace(size=msg.size // 2))
        return None

    q = DriverQueue(pair.pool, 0, 8, pair.driver.negotiated_features)
    proc = pair.driver.setup_vqueue(0, 8, q.desc_addr, q.driver_addr, q.device_addr)
    with pytest.raises(QueueSetupFailed, match="not confirmed"):
        run_sync(proc, with_hook(pair, hook))


# --- DRV-72/73 EVENT_AVAIL ------------------------------------------------------------------------


@pytest.mark.parametrize("notification_data", [False, True], ids=["plain", "notif-data"])
def test_drv_72_73_event_avail_payload(
    factory: Factory, profile: str, notification_data: bool
) -> None:
    pair = factory(profile, model=DrvModel(features=F_A | NOTIF_DATA))
    got = init(pair, None if notification_data else (F_A | V1 | AP))
    # BUS-51: linux-rfc1 cannot carry notification data, so it is never negotiated there.
    notification_data = notification_data and profile != "linux-rfc1"
    assert bool(got & NOTIF_DATA) == notification_data
    data = 0x8000_0005  # next_off 5, wrap bit set
    ev = pair.driver.event_avail(2, data)
    assert type(ev) is S.EventAvail
    assert (ev.vq_index, ev.dev_num) == (2, DEV)
    expected = data if notification_data else 0
    assert ev.next_offset == expected
    hs = pair.adapter.header_size
    raw = pair.adapter.encode(ev)
    assert raw[:2] == bytes([0x00, C.TransportMsg.EVENT_AVAIL])
    assert struct.unpack_from("<II", raw, hs) == (2, expected)


# --- DRV-04/13 unexpected messages -------------------------------------------------------------

_UNEXPECTED: dict[str, Message] = {
    "event-avail": S.EventAvail(0, 0, dev_num=DEV),
    "stray-response": S.GetDeviceStatusResp(NEEDS_RESET, dev_num=DEV),
    "request": S.GetDeviceInfo(dev_num=DEV),
    "impl-defined-event": GenericMessage(0xC7, False, False, b"\x01", dev_num=DEV),
    "impl-defined-request": GenericMessage(0x87, False, False, b"", dev_num=DEV),
    "bus-event": S.EventDevice(DEV, C.DeviceBusState.REMOVED),
}


@pytest.mark.parametrize("kind", sorted(_UNEXPECTED))
def test_drv_04_13_unexpected_messages_ignored_and_counted(kind: str) -> None:
    d = DriverEngine(DEV)
    d.generation = 5
    assert d.accept_event(_UNEXPECTED[kind]) is None
    assert sum(d.discarded.values()) == 1
    assert (d.status, d.generation) == (0, 5)  # nothing acted upon


def test_drv_04_13_expected_events_accepted() -> None:
    d = DriverEngine(DEV)
    used = S.EventUsed(0, dev_num=DEV)
    assert d.accept_event(used) is used
    cfg = S.EventConfig(ACK | NEEDS_RESET, 77, 0, 0, b"", dev_num=DEV)
    assert d.accept_event(cfg) is cfg
    assert d.generation == 77
    assert d.status & NEEDS_RESET
    assert not d.discarded


# --- linux-rfc1 specifics ------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_rfc1_requires_exactly_64_feature_bits(factory: Factory, profile: str, blocks: int) -> None:
    pair = factory(profile)

    def hook(msg: Message) -> Message | None:
        if type(msg) is S.GetDeviceInfo:
            return pair.answer(msg)._replace(num_feature_blocks=blocks)
        return None

    proc = pair.driver.get_device_info()
    if profile == "linux-rfc1" and blocks != 2:
        with pytest.raises(ProtocolViolation, match="64 feature bits"):
            run_sync(proc, with_hook(pair, hook))
    else:
        assert run_sync(proc, with_hook(pair, hook)).num_feature_blocks == blocks


def test_rfc1_device_with_more_than_64_bits_refused(factory: Factory) -> None:
    pair = factory("linux-rfc1", model=DrvModel(features=F_A | 1 << 70))
    with pytest.raises(ProtocolViolation, match="64 feature bits"):
        pair.run(pair.driver.get_device_info())


def test_rfc1_features_read_and_written_as_index_0_num_2(factory: Factory) -> None:
    pair = factory("linux-rfc1")
    got = init(pair)
    (get,) = sent(pair, S.GetDeviceFeatures)
    assert (get.block_index, get.num_blocks) == (0, 2)
    (put,) = sent(pair, S.SetDriverFeatures)
    assert (put.block_index, put.num_blocks) == (0, 2)
    assert put.features == (got & 0xFFFFFFFF, got >> 32)
    raw = pair.adapter.encode(get)
    assert len(raw) == 14  # the seed's GET_DEV_FEATURES msg_size
    assert struct.unpack_from("<II", raw, 6) == (0, 2)
