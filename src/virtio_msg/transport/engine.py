"""Driver-side protocol engine, sans I/O.

Theory of operation.  Each transport operation is a generator ("procedure")
that yields the request messages it needs and receives their responses, and
finally returns its result.  The engine never waits, sleeps or touches a
socket: a runner (the blocking :class:`~virtio_msg.transport.driver.DriverTransport`,
or a test that feeds responses by hand) moves the messages.  Between reset
polls a procedure may yield a :class:`Delay`, which a runner honours with a
bounded sleep.

Every response is checked against the request it answers (class, device
number, echoed fields) before it is used; a mismatch raises
:class:`ProtocolViolation`.  The engine implements the spec's initialization
sequence and the driver requirements of checklist section 6.3: config reads
chunked to the maximum message size with generation re-reads (DRV-07),
baseline and strict configuration profiles (DRV-05..11), FEATURES_OK checked in
the reply (DRV-30), queues confirmed with GET_VQUEUE (DRV-25, DRV-68),
bounded reset polling (DRV-55..57).  Profile ``linux-rfc1`` differences: exactly
64 feature bits, SET_VQUEUE implies enable, one-shot reset without polling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import virtio_msg.spec as C
from virtio_msg.errors import TransportError
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message, with_header
from virtio_msg.wire import spec as S

T = TypeVar("T")


class Delay(NamedTuple):
    """Yielded by a procedure: wait ``seconds`` before continuing (reset polling)."""

    seconds: float


Proc = Generator[Message | Delay, Any, T]
"""A procedure: yields requests (or a Delay), receives responses, returns a result."""


class ProtocolViolation(TransportError):
    """The device answered with something that does not match the request."""

    def __init__(self, message: str) -> None:
        """Describe the violation."""
        super().__init__("protocol", message)


class FeaturesRefused(TransportError):
    """The device cleared FEATURES_OK: it cannot work with the selected features."""

    def __init__(self, message: str) -> None:
        """Describe the refusal."""
        super().__init__("features", message)


class QueueSetupFailed(TransportError):
    """GET_VQUEUE did not confirm a SET_VQUEUE (or the queue is unavailable)."""

    def __init__(self, message: str) -> None:
        """Describe the failure."""
        super().__init__("queue", message)


@dataclass(frozen=True)
class DeviceInfo:
    """What GET_DEVICE_INFO reported (authoritative for limits, DRV-42)."""

    device_id: int
    vendor_id: int
    device_uuid: bytes
    num_feature_blocks: int
    config_size: int
    max_virtqueues: int
    admin_vq_start: int
    admin_vq_count: int


@dataclass(frozen=True)
class VqueueInfo:
    """What GET_VQUEUE reported for one queue."""

    index: int
    max_size: int
    cur_size: int
    enabled: bool
    desc_addr: int
    driver_addr: int
    device_addr: int


class DriverEngine:
    """Protocol state of one device, driver side (no I/O)."""

    RESET_POLL_INTERVAL = 0.01
    """Seconds between reset polls after the first few (Linux polls every 10 ms)."""
    IMMEDIATE_POLLS = 8
    """Polls made without any delay first: an in-process device finishes quickly."""

    def __init__(self, dev_num: int, params: BusParams | None = None) -> None:
        """Start with nothing known about device ``dev_num``."""
        if not 0 <= dev_num <= 0xFFFF:
            raise ValueError(f"device number {dev_num} outside 0..65535")
        self.dev_num = dev_num
        self.params = params or BusParams()
        self.info: DeviceInfo | None = None
        self.status = 0
        self.generation = 0
        self.config_stale = False
        """Set by every EVENT_CONFIG: the driver re-reads its config view before more I/O."""
        self.offered_features = 0
        self.negotiated_features = 0
        self.discarded: Counter[str] = Counter()
        self.status_request = S.GetDeviceStatus(dev_num=dev_num)
        """GET_DEVICE_STATUS for this device: immutable, so built once (see :meth:`take_status`)."""

    # --- plumbing -------------------------------------------------------------------

    def _call(self, req: Message, expect: type) -> Proc[Any]:
        resp: Any = yield with_header(req, self.dev_num, 0)
        got = type(resp)
        if got is not expect or resp[-2] != self.dev_num:
            self.violation(req, resp, expect)
        return resp

    def violation(self, req: Message, resp: Message, expect: type) -> None:
        """Raise the ProtocolViolation for ``resp``, which does not answer ``req``.

        Called only after the one check every response gets (its class is
        ``expect`` and it carries this device's number), here and in the
        runner's one-request fast path; this names what was wrong.
        """
        got = type(resp)
        if got is not expect:
            raise ProtocolViolation(
                f"device {self.dev_num}: {type(req).__name__} answered with {got.__name__}"
            )
        raise ProtocolViolation(f"device {self.dev_num}: response carries dev_num {resp[-2]}")

    @property
    def _room(self) -> int:
        """Payload bytes a message may carry on this bus."""
        return self.params.max_size - self.params.header_size

    def _need_info(self) -> DeviceInfo:
        if self.info is None:
            raise TransportError("protocol", "GET_DEVICE_INFO must come first (DRV-23)")
        return self.info

    # --- identification ---------------------------------------------------------------

    def get_device_info(self) -> Proc[DeviceInfo]:
        """GET_DEVICE_INFO: identity and limits (the early-discovery exception)."""
        r = yield from self._call(S.GetDeviceInfo(), S.GetDeviceInfoResp)
        if r.device_id == 0:
            raise TransportError("nodev", f"device {self.dev_num} reports device_id 0")
        if self.params.rfc1 and r.num_feature_blocks != 2:
            raise ProtocolViolation(
                f"linux-rfc1 requires exactly 64 feature bits, device reports "
                f"{r.num_feature_blocks * 32}"
            )
        if r.admin_vq_count and r.admin_vq_start + r.admin_vq_count > r.max_virtqueues:
            raise ProtocolViolation("admin virtqueue range exceeds max_virtqueues")
        if r.max_virtqueues > C.MAX_VIRTQUEUES:
            raise ProtocolViolation(f"max_virtqueues {r.max_virtqueues} exceeds 65536")
        self.info = DeviceInfo(
            r.device_id,
            r.vendor_id,
            bytes(r.device_uuid),
            r.num_feature_blocks,
            r.config_size,
            r.max_virtqueues,
            r.admin_vq_start,
            r.admin_vq_count,
        )
        return self.info

    # --- status ------------------------------------------------------------------------

    def get_status(self) -> Proc[int]:
        """GET_DEVICE_STATUS."""
        return self.take_status((yield self.status_request))

    def take_status(self, resp: Message) -> int:
        """Check and apply the answer to :attr:`status_request`; the status it reports.

        :meth:`get_status` in one step, for runners that send
        :attr:`status_request` themselves (no generator per request): the
        same check (:meth:`violation`) and the same result.
        """
        if type(resp) is not S.GetDeviceStatusResp or resp[-2] != self.dev_num:
            self.violation(self.status_request, resp, S.GetDeviceStatusResp)
        self.status = int(resp[0]) & 0xFF
        return self.status

    def set_status(self, status: int) -> Proc[int]:
        """SET_DEVICE_STATUS; returns the status the device reports afterwards."""
        r = yield from self._call(S.SetDeviceStatus(status), S.SetDeviceStatusResp)
        self.status = r.status & 0xFF
        return self.status

    def reset(self) -> Proc[None]:
        """Reset: SET_DEVICE_STATUS(0), then poll GET_DEVICE_STATUS until 0 (bounded)."""
        status = yield from self.set_status(0)
        self.negotiated_features = 0
        self.config_stale = False  # the driver reads its config again while re-initializing
        if self.params.rfc1 or status == 0:
            self.status = 0
            return
        for i in range(self.params.reset_poll_limit):
            if i >= self.IMMEDIATE_POLLS:
                yield Delay(self.RESET_POLL_INTERVAL)
            if (yield from self.get_status()) == 0:
                return
        raise TransportError(
            "timeout",
            f"device {self.dev_num}: reset not complete after "
            f"{self.params.reset_poll_limit} status polls",
        )

    # --- features ----------------------------------------------------------------------

    def read_features(self) -> Proc[int]:
        """Read every offered feature block (several requests if the bus is small)."""
        info = self._need_info()
        if self.params.rfc1:
            r = yield from self._call(S.GetDeviceFeatures(0, 2), S.GetDeviceFeaturesResp)
            words = r.features
        else:
            per = max(1, (self._room - 8) // 4)
            words = ()
            block = 0
            while block < info.num_feature_blocks:
                n = min(per, info.num_feature_blocks - block)
                r = yield from self._call(S.GetDeviceFeatures(block, n), S.GetDeviceFeaturesResp)
                if r.block_index != block or r.num_blocks != n:
                    raise ProtocolViolation("GET_DEVICE_FEATURES reply does not echo the window")
                words += r.features
                block += n
        self.offered_features = sum(w << (32 * i) for i, w in enumerate(words))
        return self.offered_features

    def write_features(self, features: int) -> Proc[int]:
        """Select ``features`` and set FEATURES_OK; FeaturesRefused if the device says no."""
        info = self._need_info()
        features &= self.offered_features  # DRV-28/47: only bits offered
        features &= ~(1 << C.VIRTIO_F_NOTIF_CONFIG_DATA)  # DRV-29
        if not self.params.notification_data:
            features &= ~(1 << C.VIRTIO_F_NOTIFICATION_DATA)  # BUS-51: linux-rfc1
        nblocks = 2 if self.params.rfc1 else info.num_feature_blocks
        words = tuple((features >> (32 * i)) & 0xFFFFFFFF for i in range(nblocks))
        per = 2 if self.params.rfc1 else max(1, (self._room - 8) // 4)
        for block in range(0, nblocks, per):
            chunk = words[block : block + per]
            yield from self._call(
                S.SetDriverFeatures(block, len(chunk), chunk), S.SetDriverFeaturesResp
            )
        status = yield from self.set_status(self.status | C.Status.FEATURES_OK)
        if self.params.rfc1:
            status = yield from self.get_status()  # the seed ignores SET replies
        if not status & C.Status.FEATURES_OK:
            raise FeaturesRefused(
                f"device {self.dev_num} refused features {features:#x} (status {status:#x})"
            )
        self.negotiated_features = features
        return features

    # --- configuration space ----------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        info = self._need_info()
        if offset < 0 or length < 0 or offset + length > info.config_size:
            raise ValueError(
                f"config access {offset}+{length} outside config_size {info.config_size} (DRV-27)"
            )

    def config_read(self, offset: int, length: int) -> Proc[bytes]:
        """Read config bytes, chunked to the bus size, re-read until generations agree."""
        self._check_range(offset, length)
        chunk = self._room - 12
        for _ in range(self.params.config_retries):
            parts: list[bytes] = []
            gens: set[int] = set()
            pos = 0
            while True:
                n = min(chunk, length - pos)
                r = yield from self._call(S.GetConfig(offset + pos, n), S.GetConfigResp)
                if r.offset != offset + pos or r.length != n:
                    raise ProtocolViolation(
                        f"GET_CONFIG {offset + pos}+{n} answered with {r.offset}+{r.length}"
                    )
                parts.append(r.data)
                gens.add(r.generation)
                pos += n
                if pos >= length:
                    break
            self.generation = r.generation
            if len(gens) == 1:
                return b"".join(parts)
        raise TransportError(
            "protocol",
            f"device {self.dev_num}: config kept changing over {self.params.config_retries} reads",
        )

    def read_generation(self) -> Proc[int]:
        """The config generation (GET_CONFIG with length 0, open question 18)."""
        r = yield from self._call(S.GetConfig(0, 0), S.GetConfigResp)
        self.generation = int(r.generation)
        return self.generation

    def write_generation(self) -> int:
        """The generation a SET_CONFIG carries: 0 (baseline, DRV-08) or the latest seen (DRV-10)."""
        return self.generation if self.params.strict_config else 0

    def after_rejection(self) -> Proc[None]:
        """Strict: a write was rejected for its generation; re-read it before the retry (DRV-11)."""
        yield from self.read_generation()

    def config_write(self, offset: int, data: bytes) -> Proc[bool]:
        """Write config bytes chunk by chunk; False if the device did not apply a chunk."""
        self._check_range(offset, len(data))
        chunk = self._room - 12
        pos = 0
        while pos < len(data):
            part = bytes(data[pos : pos + chunk])
            for attempt in range(2 if self.params.strict_config else 1):
                gen = self.write_generation()
                r = yield from self._call(
                    S.SetConfig(gen, offset + pos, len(part), part), S.SetConfigResp
                )
                self.generation = r.generation
                if r.length == len(part):
                    break
                if r.length != 0:
                    raise ProtocolViolation(
                        f"SET_CONFIG of {len(part)} bytes answered with length {r.length} (DRV-52)"
                    )
                if attempt == 0 and self.params.strict_config:
                    yield from self.after_rejection()
            else:
                return False
            pos += len(part)
        return True

    # --- virtqueues -------------------------------------------------------------------

    def get_vqueue(self, index: int) -> Proc[VqueueInfo]:
        """GET_VQUEUE."""
        r = yield from self._call(S.GetVqueue(index), S.GetVqueueResp)
        if r.index != index:
            raise ProtocolViolation(f"GET_VQUEUE {index} answered for queue {r.index}")
        return VqueueInfo(
            index,
            r.max_size,
            r.cur_size,
            bool(r.flags & C.VQ_ENABLED),
            r.desc_addr,
            r.driver_addr,
            r.device_addr,
        )

    def setup_vqueue(
        self, index: int, size: int, desc_addr: int, driver_addr: int, device_addr: int
    ) -> Proc[VqueueInfo]:
        """Configure and enable a queue in one SET_VQUEUE, then confirm with GET_VQUEUE."""
        before = yield from self.get_vqueue(index)  # DRV-58/62
        if before.max_size == 0:
            raise QueueSetupFailed(f"device {self.dev_num}: queue {index} is unavailable")
        if size > before.max_size:
            raise QueueSetupFailed(f"queue {index}: size {size} above max {before.max_size}")
        if before.enabled:
            raise QueueSetupFailed(f"queue {index} is already enabled (reset it first)")
        yield from self._call(
            S.SetVqueue(index, C.VQ_OP_ENABLE, size, 0, desc_addr, driver_addr, device_addr),
            S.SetVqueueResp,
        )
        after = yield from self.get_vqueue(index)  # DRV-25/68
        want = (size, True, desc_addr, driver_addr, device_addr)
        got = (after.cur_size, after.enabled, after.desc_addr, after.driver_addr, after.device_addr)
        if got != want:
            raise QueueSetupFailed(
                f"device {self.dev_num}: queue {index} not confirmed: wanted size/enabled/"
                f"addresses {want}, GET_VQUEUE says {got}"
            )
        return after

    def reset_vqueue(self, index: int) -> Proc[None]:
        """RESET_VQUEUE (only with VIRTIO_F_RING_RESET negotiated, DRV-69)."""
        if not self.negotiated_features >> C.VIRTIO_F_RING_RESET & 1:
            raise TransportError("protocol", "RESET_VQUEUE needs VIRTIO_F_RING_RESET")
        yield from self._call(S.ResetVqueue(index), S.ResetVqueueResp)

    def get_shm(self, shmid: int) -> Proc[tuple[int, int]]:
        """GET_SHM: (address, length); length 0 means the region is not provided."""
        r = yield from self._call(S.GetShm(shmid), S.GetShmResp)
        if r.shmid != shmid:
            raise ProtocolViolation(f"GET_SHM {shmid} answered for {r.shmid}")
        return r.address, r.length

    # --- notifications -------------------------------------------------------------------

    def event_avail(self, index: int, next_offset: int = 0) -> Message:
        """The EVENT_AVAIL for queue ``index`` (DRV-72/73); an event, no response."""
        if not self.negotiated_features >> C.VIRTIO_F_NOTIFICATION_DATA & 1:
            next_offset = 0
        return S.EventAvail(index, next_offset & 0xFFFFFFFF, dev_num=self.dev_num)

    def note_event(self, msg: Message) -> None:
        """An event as the bus receives it, before dispatch: EVENT_CONFIG marks the config stale."""
        if type(msg) is S.EventConfig:
            self.config_stale = True  # DRV-37: known before any later response

    def accept_event(self, msg: Message) -> Message | None:
        """Validate an event from the device; None (counted) if it must be ignored."""
        if type(msg) is S.EventUsed:
            return msg
        if type(msg) is S.EventConfig:
            self.generation = msg.generation
            self.config_stale = True  # DRV-09, DRV-37, DRV-38
            if msg.device_status & C.Status.DEVICE_NEEDS_RESET:
                self.status |= C.Status.DEVICE_NEEDS_RESET
            return msg
        self.discarded[f"unexpected:{type(msg).__name__}"] += 1  # DRV-04/13
        return None


def run_sync(proc: Proc[T], answer: Any) -> T:
    """Drive ``proc`` with ``answer(request) -> response``; Delays are skipped.

    For tests and in-memory use: a device engine (or a fake) answers at once.
    """
    try:
        req = next(proc)
        while True:
            resp = None if isinstance(req, Delay) else answer(req)
            req = proc.send(resp)
    except StopIteration as stop:
        result: T = stop.value
        return result


__all__ = [
    "Delay",
    "DeviceInfo",
    "DriverEngine",
    "FeaturesRefused",
    "Proc",
    "ProtocolViolation",
    "QueueSetupFailed",
    "VqueueInfo",
    "run_sync",
]
