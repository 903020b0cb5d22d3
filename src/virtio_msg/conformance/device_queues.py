"""Device scenarios on virtqueues: SET_VQUEUE rules, I/O, and a hostile driver.

The tool lays split rings out in its region, configures them with raw
SET_VQUEUE requests, posts device-writable buffers and kicks; it diffs the
whole region around every kick, so a device that writes anywhere but the
used ring and the buffers it was given fails ``RING-01``.  The hostile cases
(rings outside the region, a descriptor loop, buffers outside the region, an
available index that jumps past the queue size) must never stop the device
from answering; whether it refuses the queue, ignores the chain or enters
DEVICE_NEEDS_RESET is the device's choice, reported as lenient.
"""

from __future__ import annotations

import virtio_msg.spec as C
from virtio_msg.conformance.device_scenarios import scenario
from virtio_msg.conformance.probe import DeviceProbe, Failure, Skip, SplitRing
from virtio_msg.wire import spec as S

_ST = C.Status
_READY = _ST.ACKNOWLEDGE | _ST.DRIVER | _ST.FEATURES_OK
_VRING_DESC_F_NEXT = 1
_VRING_DESC_F_WRITE = 2


def _same(a: S.GetVqueueResp, b: S.GetVqueueResp) -> bool:
    return bool(a._replace(token=0) == b._replace(token=0))


def _first_queue(p: DeviceProbe) -> tuple[int, int]:
    info = p.info()
    for i in range(min(info.max_virtqueues, 64)):
        q = p.request(S.GetVqueue(i))
        if q.max_size:
            return i, q.max_size
    raise Skip("the device has no available virtqueue")


def _ready(p: DeviceProbe, features: int | None = None) -> tuple[int, int, int]:
    """Initialise to FEATURES_OK; return (queue index, max size, negotiated features)."""
    _info, selected, status = p.init(features)
    if not status & _ST.FEATURES_OK:
        raise Failure("DEV-34", "FEATURES_OK refused for the offered feature set")
    index, max_size = _first_queue(p)
    return index, max_size, selected


@scenario("vqueue-set-rules", "DEV-63", "DEV-64", "DEV-65", "DEV-66", "DEV-67", "DEV-68",
          "DEV-69", "G-05")
def vqueue_rules(p: DeviceProbe) -> None:
    """SET_VQUEUE: invalid requests are silent no-ops; ignore bits; no change once enabled."""
    if p.rfc1:
        raise Skip("linux-rfc1 has only the one-shot enable form of SET_VQUEUE")
    index, max_size, _ = _ready(p)
    size = min(8, max_size)
    ring = SplitRing(p, size)
    info = p.info()

    def get() -> S.GetVqueueResp:
        q: S.GetVqueueResp = p.request(S.GetVqueue(index))
        return q

    base = get()
    for what, req, ids in (
        ("invalid index", S.SetVqueue(info.max_virtqueues, 0, size, 0, ring.desc, ring.avail,
                                      ring.used), ("DEV-63",)),
        ("reserved field", ring.set_vqueue(index, 0)._replace(reserved=1), ("DEV-64",)),
        ("reserved flag bits", ring.set_vqueue(index, 1 << 6), ("DEV-64",)),
        ("state operation 3", ring.set_vqueue(index, 3), ("DEV-64",)),
    ):
        p.request(req, ids=ids)
        if not _same(get(), base) and what != "invalid index":
            raise Failure(ids, f"SET_VQUEUE with {what} changed queue {index}")
    p.request(ring.set_vqueue(index, C.VQ_OP_KEEP_DISABLED), ids=("DEV-67",))
    q = get()
    if (q.cur_size, q.desc_addr, q.driver_addr, q.device_addr, q.flags) != (
            size, ring.desc, ring.avail, ring.used, 0):
        raise Failure(("DEV-67", "DEV-69", "G-05"), f"flags 0 did not apply the fields: {q}")
    keep = C.VQ_OP_ENABLE | C.VQ_SIZE_IGNORE | C.VQ_DESC_IGNORE | C.VQ_DRIVER_IGNORE | \
        C.VQ_DEVICE_IGNORE
    p.request(S.SetVqueue(index, keep, 0, 0, 0, 0, 0), ids=("DEV-67",))
    q = get()
    if not q.flags & C.VQ_ENABLED or (q.cur_size, q.desc_addr) != (size, ring.desc):
        raise Failure(("DEV-67", "DEV-69"), f"enable with every ignore bit: {q}")
    enabled = q
    p.request(ring.set_vqueue(index, C.VQ_OP_KEEP_DISABLED), ids=("DEV-65",))
    if not _same(get(), enabled):
        raise Failure(("DEV-65", "DEV-69"), "state op 0 changed an enabled queue")
    p.request(ring.set_vqueue(index, C.VQ_OP_KEEP)._replace(size=size // 2 or 1), ids=("DEV-68",))
    if not _same(get(), enabled):
        raise Failure(("DEV-68", "DEV-66"), "an enabled queue's size changed")
    p.reset()


@scenario("vqueue-reset", "DEV-70", "DEV-71", "DEV-72")
def vqueue_reset(p: DeviceProbe) -> None:
    """RESET_VQUEUE: no-op without RING_RESET or for a bad index; resets the queue with it."""
    info = p.info()
    offered = p.offered(info.num_feature_blocks)
    no_rr = offered & ~(1 << C.VIRTIO_F_RING_RESET) & ~(1 << C.VIRTIO_F_NOTIFICATION_DATA) \
        & ~(1 << C.VIRTIO_F_RING_PACKED)
    index, max_size, _ = _ready(p, no_rr)
    ring = SplitRing(p, min(8, max_size))
    p.request(ring.set_vqueue(index))
    before = p.request(S.GetVqueue(index))
    p.request(S.ResetVqueue(index), ids=("DEV-71",))
    if not _same(p.request(S.GetVqueue(index)), before):
        raise Failure("DEV-71", "RESET_VQUEUE acted without VIRTIO_F_RING_RESET negotiated")
    if not offered >> C.VIRTIO_F_RING_RESET & 1:
        p.choose("RING_RESET not offered: only the no-op case checked")
        p.reset()
        return
    _ready(p)
    ring = SplitRing(p, min(8, max_size))
    p.request(ring.set_vqueue(index))
    p.request(S.ResetVqueue(info.max_virtqueues), ids=("DEV-70",))
    p.request(S.ResetVqueue(index), ids=("DEV-72",))
    q = p.request(S.GetVqueue(index))
    if q.flags & C.VQ_ENABLED:
        raise Failure("DEV-72", "queue still enabled after RESET_VQUEUE")
    p.request(ring.set_vqueue(index))
    if not p.request(S.GetVqueue(index)).flags & C.VQ_ENABLED:
        raise Failure("DEV-72", "queue cannot be re-enabled after RESET_VQUEUE")
    p.reset()


@scenario("get-shm", "DEV-73", "DEV-74")
def get_shm(p: DeviceProbe) -> None:
    """GET_SHM echoes shmid, reserved 0, length 0 for regions it does not have."""
    found = []
    for shmid in (0, 1, 2, 0xFF, 0xFFFFFFFF):
        r = p.request(S.GetShm(shmid), ids=("DEV-73",))
        if r.shmid != shmid:
            raise Failure("DEV-73", f"GET_SHM({shmid:#x}) echoed {r.shmid:#x}")
        if r.reserved:
            raise Failure("DEV-74", f"GET_SHM reserved field {r.reserved:#x}")
        if r.length:
            found.append(shmid)
    p.choose(f"shared memory regions: {found or 'none'}")


def _post_writable(p: DeviceProbe, ring: SplitRing, count: int, size: int = 64) -> list[int]:
    bufs = []
    for i in range(count):
        buf = p.alloc(size, 16)
        ring.set_desc(i, buf, size, _VRING_DESC_F_WRITE)
        ring.publish(i)
        bufs.append(buf)
    return bufs


@scenario("io-after-driver-ok", "DEV-35", "DEV-36", "DEV-37", "RING-01")
def io_driver_ok(p: DeviceProbe) -> None:
    """No queue I/O before DRIVER_OK; after it, used entries are sane and signalled."""
    index, max_size, _ = _ready(p, None)
    ring = SplitRing(p, min(8, max_size))
    p.request(ring.set_vqueue(index))
    bufs = _post_writable(p, ring, 2)
    allowed = [ring.used_area, *((b, 64) for b in bufs)]
    kick, _ = p.encode(S.EventAvail(index, 0))
    with p.watch([], ("DEV-35", "RING-01")):
        p.link.send(kick)
        p.events_within()
    if ring.used_idx():
        raise Failure("DEV-35", "the device used buffers before DRIVER_OK")
    mark = len(p.events)
    with p.watch(allowed, ("RING-01",)):
        p.set_status(_READY | _ST.DRIVER_OK)
        p.link.send(kick)
        p.events_within()
    events = p.events[mark:]
    used = ring.used_idx()
    status = p.status()
    if status & _ST.DEVICE_NEEDS_RESET:
        p.choose("writable-only buffers made the device set DEVICE_NEEDS_RESET")
    if used == 0:
        p.choose("no buffer completed (the device needs device-specific requests)")
    for k in range(used):
        head, length = ring.used_elem(k)
        if head not in (0, 1) or length > 64:
            raise Failure("RING-01", f"used element {k}: id {head} len {length}")
    if used and not any(type(e) is S.EventUsed and e.vq_index == index for e in events):
        flags = p.link.region.read_u16(ring.avail)
        if not flags & 1:
            raise Failure("DEV-37", f"{used} buffers used on queue {index} without EVENT_USED")
    if used:
        p.choose(f"{used} buffer(s) completed")
    p.reset()


def _hostile(p: DeviceProbe, what: str, setup: str) -> None:
    """Post a hostile chain after DRIVER_OK; the device must stay answerable."""
    index, max_size, _ = _ready(p)
    ring = SplitRing(p, min(8, max_size))
    p.request(ring.set_vqueue(index))
    p.set_status(_READY | _ST.DRIVER_OK)
    region = p.link.region
    if setup == "loop":
        buf = p.alloc(64)
        ring.set_desc(0, buf, 64, _VRING_DESC_F_WRITE | _VRING_DESC_F_NEXT, 1)
        ring.set_desc(1, buf, 64, _VRING_DESC_F_WRITE | _VRING_DESC_F_NEXT, 0)
        ring.publish(0)
    elif setup == "outside":
        ring.set_desc(0, region.base + region.size - 16, 64, _VRING_DESC_F_WRITE)
        ring.publish(0)
    else:  # avail index far past the queue size
        region.write_u16(ring.avail + 2, (ring.size * 3) & 0xFFFF)
    kick, _ = p.encode(S.EventAvail(index, 0))
    mark = len(p.events)
    with p.watch([ring.used_area], ("RING-01",)):
        p.link.send(kick)
        p.events_within()
    events = p.events[mark:]
    status = p.status()
    used = ring.used_idx()
    if status & _ST.DEVICE_NEEDS_RESET:
        cfg = [e for e in events if type(e) is S.EventConfig]
        if not cfg:
            raise Failure("DEV-12", f"{what}: DEVICE_NEEDS_RESET set without EVENT_CONFIG")
        if (cfg[0].offset, cfg[0].length) != (0, 0):
            raise Failure("DEV-14", "status-only EVENT_CONFIG with offset/length not 0")
        p.choose(f"{what}: DEVICE_NEEDS_RESET with a status-only EVENT_CONFIG")
    elif used:
        p.choose(f"{what}: completed {used} used element(s)")
    else:
        p.choose(f"{what}: chain ignored")
    p.reset()


@scenario("hostile-descriptor-loop", "DEV-21", "DEV-55", "DEV-12", "DEV-14", "RING-01")
def hostile_loop(p: DeviceProbe) -> None:
    """A descriptor chain that loops: no hang, no stray writes, device still answers."""
    _hostile(p, "descriptor loop", "loop")


@scenario("hostile-buffer-outside-region", "DEV-55", "DEV-12", "DEV-14", "RING-01")
def hostile_outside(p: DeviceProbe) -> None:
    """A buffer running past the region's end: never written, device still answers."""
    _hostile(p, "buffer past the region", "outside")


@scenario("hostile-avail-index-jump", "DEV-55", "DEV-12", "DEV-14", "RING-01")
def hostile_jump(p: DeviceProbe) -> None:
    """The available index jumps by three times the queue size: no hang, no stray writes."""
    _hostile(p, "available index jump", "jump")


@scenario("hostile-bad-rings", "DEV-31", "DEV-66", "RING-01")
def hostile_rings(p: DeviceProbe) -> None:
    """SET_VQUEUE with rings outside the region or misaligned is answered; no stray writes."""
    index, max_size, _ = _ready(p)
    region = p.link.region
    size = min(8, max_size)
    for what, desc in (("outside the region", region.base + region.size + 0x1000),
                       ("below the region", max(region.base - 0x10000, 0)),
                       ("misaligned", region.base + 0x1001)):
        with p.watch([], ("RING-01",)):
            p.request(S.SetVqueue(index, C.VQ_OP_ENABLE, size, 0, desc, desc + 0x100,
                                  desc + 0x200), ids=("DEV-31",))
        q = p.request(S.GetVqueue(index))
        if q.flags & C.VQ_ENABLED:
            p.choose(f"rings {what}: accepted by SET_VQUEUE")
            p.reset()
            _ready(p)
        else:
            p.choose(f"rings {what}: refused")
    p.reset()


@scenario("event-avail-unconfigured", "DEV-21", "DEV-35")
def kick_unconfigured(p: DeviceProbe) -> None:
    """EVENT_AVAIL for an unconfigured or nonexistent queue: no reply, device still answers."""
    p.init()
    for index in (0, 0xFFFF, 0xFFFFFFFF):
        kick, _ = p.encode(S.EventAvail(index, 0))
        p.link.send(kick)
        p.expect_silence(f"EVENT_AVAIL for queue {index:#x}", ("DEV-21",))
    p.status()
    p.reset()


@scenario("pipelined-requests", "DEV-30", "DEV-31")
def pipelined(p: DeviceProbe) -> None:
    """Requests sent back to back are processed in order, one response each."""
    p.reset()
    frames = []
    for msg in (S.SetDeviceStatus(_ST.ACKNOWLEDGE), S.GetDeviceStatus(),
                S.SetDeviceStatus(_ST.ACKNOWLEDGE | _ST.DRIVER), S.GetDeviceStatus()):
        frames.append((msg, *p.encode(msg)))
    for _msg, frame, _token in frames:
        p.link.send(frame)
    got = []
    for msg, _frame, token in frames:
        resp = p.reply_within(p.timeout)
        if resp is None:
            raise Failure("DEV-31", f"no response to pipelined {type(msg).__name__}")
        if not p.rfc1 and resp.token != token:
            raise Failure("DEV-30", "pipelined responses out of order")
        got.append(resp.status)
    if got[1] != _ST.ACKNOWLEDGE or got[3] != _ST.ACKNOWLEDGE | _ST.DRIVER:
        raise Failure("DEV-30", f"pipelined statuses {got}: not processed in order")
    p.expect_silence("nothing more", ("DEV-31",))
    p.reset()


__all__: list[str] = []
