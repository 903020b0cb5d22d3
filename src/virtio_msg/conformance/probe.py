"""The tool's driver: raw requests to one device number, every frame judged.

:class:`DeviceProbe` is what the device scenarios drive.  It encodes requests
in the link's profile (with a fresh token per request in ``spec``), sends
them, waits -- bounded by ``timeout_ms`` -- for the one response, and checks
every frame the device sends on the way: ``msg_size`` equal to the frame and
within the maximum (G-04, DEV-25, DEV-01), reserved ``type`` bits 0 (DEV-24),
its own device number (DEV-26), events never sent as responses (G-01), a
payload that decodes strictly (DEV-23) and the request's token copied
(DEV-29).  A violation raises :class:`Failure` naming the checklist ids.
"No reply" checks wait ``silence_ms``.  It also lays out split rings in the
region (:class:`SplitRing`) and diffs the region to judge every byte the
device writes.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import virtio_msg.spec as C
from virtio_msg.conformance.links import DeviceLink
from virtio_msg.errors import MalformedMessage
from virtio_msg.transport.params import BusParams
from virtio_msg.wire import Message
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S
from virtio_msg.wire.translate import WireAdapter

_EVENTS = (S.EventConfig, S.EventUsed)


class Failure(Exception):
    """A scenario found a violation of the checklist ``ids``."""

    def __init__(self, ids: tuple[str, ...] | str, message: str) -> None:
        """Name the violated ids and what was seen."""
        self.ids = (ids,) if isinstance(ids, str) else tuple(ids)
        super().__init__(f"{'/'.join(self.ids)}: {message}")


class Skip(Exception):
    """The scenario cannot run against this target (the message says why)."""


class DeviceProbe:
    """Requests to device ``dev_num`` over ``link``; every frame checked."""

    def __init__(
        self, link: DeviceLink, dev_num: int, *, timeout_ms: int = 1000, silence_ms: int = 150,
        seed: int = 0x5EED,
    ) -> None:
        """Talk to ``dev_num``; ``timeout_ms`` bounds each response, ``silence_ms`` "no reply"."""
        self.link = link
        self.dev_num = dev_num
        self.params: BusParams = link.params
        self.adapter = WireAdapter(self.params.profile, self.params.max_size)
        self.rfc1 = self.params.rfc1
        self.timeout = timeout_ms / 1000
        self.silence = silence_ms / 1000
        self.rng = random.Random(seed ^ dev_num)
        self.events: list[Message] = []
        self.kick_acks = 0
        self.frames_seen = 0
        self.choices: list[str] = []
        self._alloc = 0

    # --- frames -------------------------------------------------------------------------

    def check_frame(self, data: bytes) -> Message:
        """Judge one frame from the device; return the decoded message."""
        hs = self.params.header_size
        self.frames_seen += 1
        if len(data) < hs:
            raise Failure("DEV-25", f"{len(data)}-byte frame is shorter than the header")
        size = struct.unpack_from("<H", data, hs - 2)[0]
        if size != len(data):
            raise Failure(("G-04", "DEV-25"), f"msg_size {size} in a {len(data)}-byte frame")
        if size > self.params.max_size:
            raise Failure("DEV-01",
                          f"{size}-byte message exceeds the maximum {self.params.max_size}")
        if data[0] & C.TYPE_RESERVED_MASK:
            raise Failure("DEV-24", f"reserved type bits set: {data[0]:#04x}")
        if data[1] & C.MSG_ID_EVENT and data[0] & C.TYPE_RESPONSE and not (
            self.rfc1 and data[1] == C.TransportMsg.EVENT_AVAIL
        ):
            raise Failure("G-01", f"event id {data[1]:#04x} sent as a response")
        dev = struct.unpack_from("<H", data, 2)[0]
        if dev != self.dev_num:
            raise Failure("DEV-26", f"frame carries dev_num {dev}, the device is {self.dev_num}")
        try:
            return self.adapter.decode(data)
        except MalformedMessage as exc:
            raise Failure("DEV-23", f"malformed frame {data.hex()}: {exc}") from None

    def _next(self, deadline: float) -> Message | None:
        """The next response from this device before ``deadline``; events are collected."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self.link.receive(left)
            if data is None:
                return None
            if len(data) >= 4 and struct.unpack_from("<H", data, 2)[0] != self.dev_num and \
                    data[0] & C.TYPE_RESPONSE == 0:
                continue  # another device's event: not this scenario's business
            msg = self.check_frame(data)
            if isinstance(msg, _EVENTS):
                self.events.append(msg)
                continue
            if type(msg) is R.EventAvailResp:
                self.kick_acks += 1
                continue
            return msg

    def reply_within(self, seconds: float) -> Message | None:
        """The next response from this device within ``seconds`` (None: silence)."""
        return self._next(time.monotonic() + seconds)

    # --- requests -----------------------------------------------------------------------

    def encode(self, msg: Message, token: int | None = None) -> tuple[bytes, int]:
        """Encode ``msg`` for this device with ``token`` (random in spec); return (frame, token)."""
        if self.rfc1:
            token = 0
        elif token is None:
            token = self.rng.randrange(1, 0x10000)
        msg = msg._replace(dev_num=self.dev_num, token=token)
        try:
            return self.adapter.encode(msg), token
        except Exception as exc:  # EncodeError: the profile cannot express it
            raise Skip(f"{type(msg).__name__} not expressible in {self.params.profile.value}: "
                       f"{exc}") from None

    def request(self, msg: Message, *, token: int | None = None, type_or: int = 0,
                ids: tuple[str, ...] = ("DEV-31",)) -> Message:
        """Send one request and return its response (Failure if none, or a wrong one)."""
        frame, token = self.encode(msg, token)
        if type_or:
            frame = bytes([frame[0] | type_or]) + frame[1:]
        return self.send_frame(frame, msg, token, ids)

    def send_frame(self, frame: bytes, msg: Message, token: int,
                   ids: tuple[str, ...] = ("DEV-31",)) -> Message:
        """Send an encoded request and wait for its response."""
        self.link.send(frame)
        resp = self._next(time.monotonic() + self.timeout)
        name = type(msg).__name__
        if resp is None:
            raise Failure(ids, f"no response to {name} within {self.timeout * 1000:.0f} ms")
        if type(resp).__name__ != f"{name}Resp":
            raise Failure(("DEV-30", "DEV-31"), f"{name} answered with {type(resp).__name__}")
        if resp.token != token:
            raise Failure("DEV-29", f"{name} sent token {token:#06x}, the response carries "
                          f"{resp.token:#06x}")
        return resp

    def expect_silence(self, what: str, ids: tuple[str, ...]) -> None:
        """Fail if the device answers anything within ``silence_ms`` (after ``what``)."""
        resp = self._next(time.monotonic() + self.silence)
        if resp is not None:
            raise Failure(ids, f"the device answered {what} with {type(resp).__name__}")

    def events_within(self, seconds: float | None = None) -> list[Message]:
        """Collect events for ``seconds`` (default ``silence_ms``); return the new ones."""
        before = len(self.events)
        resp = self._next(time.monotonic() + (self.silence if seconds is None else seconds))
        if resp is not None:
            raise Failure(("DEV-31", "DEV-32"), f"unsolicited {type(resp).__name__}")
        return self.events[before:]

    def choose(self, behaviour: str) -> None:
        """Record the behaviour a lenient check saw."""
        self.choices.append(behaviour)

    # --- procedures ---------------------------------------------------------------------

    def info(self) -> S.GetDeviceInfoResp:
        """GET_DEVICE_INFO."""
        resp: S.GetDeviceInfoResp = self.request(S.GetDeviceInfo(), ids=("DEV-39", "DEV-40"))
        return resp

    def status(self) -> int:
        """GET_DEVICE_STATUS."""
        return int(self.request(S.GetDeviceStatus(), ids=("DEV-39", "DEV-54")).status)

    def set_status(self, value: int) -> int:
        """SET_DEVICE_STATUS; return the reply's status."""
        return int(self.request(S.SetDeviceStatus(value), ids=("DEV-39",)).status)

    def reset(self) -> str:
        """Reset and wait (bounded) for status 0; return "synchronous" or "asynchronous"."""
        if self.set_status(0) == 0:
            return "synchronous"
        deadline = time.monotonic() + max(self.timeout * 10, 2.0)
        while time.monotonic() < deadline:
            if self.status() == 0:
                return "asynchronous"
            time.sleep(0.002)
        raise Failure("DEV-57", "status never reached 0 after SET_DEVICE_STATUS(0)")

    def offered(self, blocks: int) -> int:
        """The offered features of ``blocks`` blocks (several requests if needed)."""
        per = max(1, (self.params.max_size - self.params.header_size - 8) // 4)
        value, i = 0, 0
        while i < blocks:
            n = min(per, blocks - i)
            resp = self.request(S.GetDeviceFeatures(i, n), ids=("DEV-39",))
            if (resp.block_index, resp.num_blocks) != (i, n) or len(resp.features) != n:
                raise Failure("DEV-39", f"GET_DEVICE_FEATURES({i}, {n}) echoed "
                              f"({resp.block_index}, {resp.num_blocks})")
            for k, word in enumerate(resp.features):
                value |= word << (32 * (i + k))
            i += n
        return value

    def select(self, features: int, blocks: int) -> None:
        """SET_DRIVER_FEATURES for ``blocks`` blocks, one block per request."""
        for i in range(blocks):
            self.request(S.SetDriverFeatures(i, 1, ((features >> (32 * i)) & 0xFFFFFFFF,)),
                         ids=("DEV-39",))

    def init(self, features: int | None = None) -> tuple[S.GetDeviceInfoResp, int, int]:
        """Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK.

        The default selection is every offered bit but RING_PACKED and
        NOTIFICATION_DATA (the tool lays out split rings and kicks with 0).

        Returns (info, selected features, status after FEATURES_OK).
        """
        info = self.info()
        self.reset()
        self.set_status(C.Status.ACKNOWLEDGE)
        self.set_status(C.Status.ACKNOWLEDGE | C.Status.DRIVER)
        offered = self.offered(info.num_feature_blocks)
        split_only = (1 << C.VIRTIO_F_NOTIFICATION_DATA) | (1 << C.VIRTIO_F_RING_PACKED)
        selected = offered & ~split_only if features is None else features
        self.select(selected, max(info.num_feature_blocks, (selected.bit_length() + 31) // 32))
        status = self.set_status(C.Status.ACKNOWLEDGE | C.Status.DRIVER | C.Status.FEATURES_OK)
        return info, selected, status

    # --- memory -------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 16) -> int:
        """A fresh, zeroed piece of the region (bump allocator, reset per scenario)."""
        start = (self._alloc + align - 1) // align * align
        if start + size > self.link.region.size:
            raise Skip("the region is too small for this scenario")
        self._alloc = start + size
        addr = self.link.region.base + start
        self.link.region.fill(addr, size, 0)
        return addr

    @contextmanager
    def watch(self, allowed: list[tuple[int, int]], ids: tuple[str, ...]) -> Iterator[None]:
        """Fail if, within the block, the device writes outside ``allowed`` (addr, len) ranges."""
        region = self.link.region
        before = region.read(region.base, region.size)
        yield
        after = region.read(region.base, region.size)
        if before == after:
            return
        step = 4096
        for off in range(0, region.size, step):
            if before[off:off + step] == after[off:off + step]:
                continue
            for i in range(off, min(off + step, region.size)):
                if before[i] != after[i]:
                    addr = region.base + i
                    if not any(a <= addr < a + n for a, n in allowed):
                        raise Failure(ids, f"the device wrote {addr:#x} (outside the used ring "
                                      "and the device-writable buffers)")


class SplitRing:
    """A split virtqueue the tool lays out in the region and drives by hand."""

    def __init__(self, probe: DeviceProbe, size: int = 8) -> None:
        """Allocate descriptor table, available and used ring for ``size`` entries."""
        self.probe = probe
        self.size = size
        self.desc = probe.alloc(16 * size, 16)
        self.avail = probe.alloc(6 + 2 * size, 2)
        self.used = probe.alloc(6 + 8 * size, 4)
        self.avail_idx = 0
        self.region = probe.link.region

    @property
    def used_area(self) -> tuple[int, int]:
        """(address, length) of the used ring: the device may write it."""
        return self.used, 6 + 8 * self.size

    def set_desc(self, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        """Write descriptor ``i``."""
        self.region.write(self.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        """Put chain ``head`` in the available ring and bump the index."""
        self.region.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.region.write_u16(self.avail + 2, self.avail_idx)

    def used_idx(self) -> int:
        """The device's used index."""
        return self.region.read_u16(self.used + 2)

    def used_elem(self, i: int) -> tuple[int, int]:
        """(id, len) of used element ``i``."""
        id_, length = struct.unpack("<II", self.region.read(self.used + 4 + 8 * (i % self.size), 8))
        return id_, length

    def set_vqueue(self, index: int, flags: int = C.VQ_OP_ENABLE) -> S.SetVqueue:
        """The SET_VQUEUE request that configures this ring as queue ``index``."""
        return S.SetVqueue(index, flags, self.size, 0, self.desc, self.avail, self.used)


__all__ = ["DeviceProbe", "Failure", "Skip", "SplitRing"]
