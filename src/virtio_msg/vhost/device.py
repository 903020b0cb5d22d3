"""A virtio-msg device served by an external vhost-user back end.

Strategy.  :class:`VhostUserDevice` is a :class:`~virtio_msg.transport.device.DeviceModel`:
the device transport engine runs the virtio-msg side exactly as for a Python
device model (status handshake, feature blocks, config generation, SET_VQUEUE
validation), and this class turns the engine's hooks into vhost-user requests
(QEMU's ``vhost_dev_start``/``stop`` sequence):

=========================================  ==================================================
virtio-msg (engine hook)                   vhost-user
=========================================  ==================================================
construction                               GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
                                           GET_QUEUE_NUM, SET_OWNER, GET_CONFIG
GET_DEVICE_FEATURES                        back end's features through the type's allow list
GET_CONFIG                                 config read from the back end (cached, as QEMU does)
SET_CONFIG (``config_write``)              SET_CONFIG, only for the type's writable bytes
DRIVER_OK (``activate``)                   SET_FEATURES, SET_MEM_TABLE (region memfd, guest
                                           address = user address = region base), then per
                                           enabled queue SET_VRING_NUM, _BASE, _ADDR, _CALL,
                                           _KICK, _ENABLE
EVENT_AVAIL (``queue_notify``)             write that queue's kick eventfd
a queue's call eventfd fires               one EVENT_USED for that queue only
status 0 (``reset``), RESET_VQUEUE         SET_VRING_ENABLE 0, GET_VRING_BASE, wait (bounded)
                                           for the back end's in-flight requests to complete
=========================================  ==================================================

Because the region is shared by its memfd at its own bus address, every ring
and buffer address a driver writes is already an address the back end can
use: nothing is translated, and the back end never reaches outside the region.
VIRTIO_F_ACCESS_PLATFORM is the transport's business (the engine offers it);
it is never sent to the back end.  VIRTIO_F_RING_RESET is implemented here
(stop one ring, start it again at index 0), so it is offered whatever the
back end says.

A watcher thread waits on every queue's call eventfd and on the socket.  A
call becomes one EVENT_USED for exactly that queue (the back end already
applied EVENT_IDX suppression before signalling).  The socket turning
readable while no request is in flight means the back end closed it (or broke
the protocol): the device enters DEVICE_NEEDS_RESET at once -- the driver's
waits end with an error, never a hang -- and ``on_disconnect`` callbacks run
(the command line uses one to REMOVE the device).  Every request the engine
makes is bounded by the front end's reply timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from virtio_msg.spec import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VQ_MAX_SIZE,
)
from virtio_msg.transport.model import DeviceModel
from virtio_msg.vhost.frontend import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, VhostUserFrontend
from virtio_msg.vhost.profiles import (
    BLK_NUM_QUEUES_OFFSET,
    COMMON_FEATURES,
    DeviceProfile,
    OptionError,
    fs_config,
    infer_type,
    net_config,
    parse_mac,
    profile,
    random_mac,
)
from virtio_msg.vhost.protocol import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    MemoryRegion,
    ProtocolFeature,
    VhostUserDisconnected,
    VhostUserError,
    VhostUserRefused,
)
from virtio_msg.virtqueue import DeviceQueue, DeviceRing

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 256
"""Largest ring offered per queue (vhost-user cannot ask; libvhost-user allows 1024)."""
DRAIN_TIMEOUT: Final = 2.0
"""Bound on waiting for a stopped ring's in-flight requests to complete, seconds."""
WATCH_SLICE: Final = 1.0
"""The watcher re-checks its stop flag at least this often, seconds."""
JOIN_TIMEOUT: Final = 5.0
"""Bound on waiting for the watcher thread when closing, seconds."""
DEFAULT_FS_TAG: Final = "virtio-msg-fs"


@dataclass
class _Ring:
    """One started vhost-user ring: what GET_VRING_BASE and the drain need."""

    index: int
    size: int
    used_idx_addr: int


class VhostUserDevice(DeviceModel):
    """A device model whose queues are processed by a vhost-user back end.

    Build one with :meth:`connect`.  ``frontend`` must be connected and not yet
    handshaken.  Options: ``queue_size`` (largest ring offered), ``queues``
    (blk: request queues, fs: request queues; default all the back end has),
    ``mac`` (net; default random, locally administered), ``tag`` (fs).
    """

    def __init__(
        self,
        frontend: VhostUserFrontend,
        device: DeviceProfile,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queues: int | None = None,
        mac: str | bytes | None = None,
        tag: str = DEFAULT_FS_TAG,
    ) -> None:
        """Handshake with the back end and describe the device it serves."""
        if not 1 <= queue_size <= VQ_MAX_SIZE or queue_size & (queue_size - 1):
            raise OptionError(f"queue size {queue_size} is not a power of two in 1..{VQ_MAX_SIZE}")
        self.frontend = frontend
        self.profile = device
        self.device_id = device.device_id
        self.name = f"vhost-user-{device.name}"
        frontend.handshake()
        backend = frontend.features
        if not backend >> VIRTIO_F_VERSION_1 & 1:
            raise VhostUserError(
                f"{frontend.path}: back end does not offer VIRTIO_F_VERSION_1 "
                f"(features {backend:#x}); virtio-msg devices are virtio 1.x"
            )
        self.backend_mask = backend & (COMMON_FEATURES | device.backend_features)
        """The back end's bits this device passes through (and sends in SET_FEATURES)."""
        num_queues = device.queues_for(frontend.queue_num, queues)
        self.mac: bytes | None = None
        if device.name == "net":
            self.mac = parse_mac(mac) if isinstance(mac, str) else (mac or random_mac())
            config = net_config(self.mac)
        elif device.name == "fs":
            config = fs_config(tag, num_queues - 1)
        elif device.backend_config_size:
            config = self._read_backend_config(num_queues)
        else:
            config = b""
        super().__init__(
            features=self.backend_mask | device.frontend_features | (1 << VIRTIO_F_RING_RESET),
            config=config,
            num_queues=num_queues,
            queue_max_size=queue_size,
            writable_config=device.writable_config,
            ring_features=0,
        )
        self.on_disconnect: list[Callable[[str], None]] = []
        """Called once, on the watcher thread, when the back end goes away."""
        self.events_used = 0
        """EVENT_USED sent (one per call-eventfd wakeup of a started ring)."""
        self._rings: dict[int, _Ring] = {}
        self._rings_lock = threading.Lock()
        self._kick = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(num_queues)]
        self._call = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(num_queues)]
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closing = False
        self._closed = False
        self._reported = False
        self._watcher = threading.Thread(
            target=self._watch, name=f"vhost-user-{device.name}-watch", daemon=True
        )
        self._watcher.start()

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str],
        type_name: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queues: int | None = None,
        mac: str | bytes | None = None,
        tag: str = DEFAULT_FS_TAG,
    ) -> VhostUserDevice:
        """Connect to the back end at ``path`` and serve its device.

        ``type_name`` ("blk", "net", "fs") is required unless the back end is a
        program whose type can be inferred from its command line; when both are
        known and differ, that is an error (a misconfiguration, not a choice).
        """
        frontend = VhostUserFrontend.connect(path, timeout=timeout, connect_timeout=connect_timeout)
        try:
            inferred = infer_type(frontend.peer_pid())
            if type_name is None and inferred is None:
                raise OptionError(
                    f"{path}: cannot tell the device type of this back end; give it (blk, net, fs)"
                )
            if type_name is not None and inferred is not None and type_name != inferred:
                raise OptionError(
                    f"{path}: the back end serves {inferred}, not {type_name} (from its "
                    "command line)"
                )
            chosen = profile(type_name or inferred or "")
            return cls(frontend, chosen, queue_size=queue_size, queues=queues, mac=mac, tag=tag)
        except BaseException:
            frontend.close()
            raise

    def __repr__(self) -> str:
        """Type, socket and state."""
        rings = self.started_rings
        return f"<VhostUserDevice {self.profile.name} {self.frontend!r} rings={rings}>"

    def _read_backend_config(self, num_queues: int) -> bytes:
        size = self.profile.backend_config_size
        if not self.frontend.has_protocol_feature(ProtocolFeature.CONFIG):
            raise VhostUserError(
                f"{self.frontend.path}: a {self.profile.name} back end must offer the CONFIG "
                "protocol feature (its config space cannot be made up)"
            )
        config = bytearray(self.frontend.get_config(size))
        if self.profile.name == "blk":
            # As QEMU does: num_queues says what this front end exposes, not the back end.
            config[BLK_NUM_QUEUES_OFFSET : BLK_NUM_QUEUES_OFFSET + 2] = num_queues.to_bytes(
                2, "little"
            )
        return bytes(config)

    # --- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the back end connection is alive."""
        return self.frontend.connected

    @property
    def started_rings(self) -> list[int]:
        """Indices of the rings the back end is processing now."""
        with self._rings_lock:
            return sorted(self._rings)

    def _backend_features(self, negotiated: int) -> int:
        return negotiated & self.backend_mask & ~(1 << VIRTIO_F_ACCESS_PLATFORM)

    # --- engine hooks -------------------------------------------------------------------------

    def validate_features(self, features: int) -> bool:
        """Refuse FEATURES_OK once the back end is gone (the device cannot work)."""
        return self.frontend.connected

    def activate(self) -> None:
        """DRIVER_OK: features, memory table, then start every enabled queue.

        A failure puts the device into DEVICE_NEEDS_RESET (the DRIVER_OK reply
        still goes out, so the driver learns it at once instead of timing out).
        """
        fe = self.frontend
        try:
            fe.set_features(self._backend_features(self.negotiated_features))
            region = self.region
            fe.set_mem_table([(MemoryRegion(region.base, region.size, region.base, 0), region.fd)])
            for index in range(self.num_queues):
                queue = self.queue(index)
                if queue is not None:
                    self._start_ring(index, queue)
        except VhostUserError as exc:
            self.fail(f"vhost-user start failed: {exc}")

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """EVENT_AVAIL: kick the back end (starting the ring first if it was reset)."""
        if not self.frontend.connected:
            raise VhostUserDisconnected(f"vhost-user back end is gone: {self.frontend.reason}")
        with self._rings_lock:
            started = index in self._rings
        if not started:
            self._start_ring(index, queue)
        else:
            os.eventfd_write(self._kick[index], 1)

    def queue_reset(self, index: int) -> None:
        """RESET_VQUEUE: stop that ring cleanly; it starts again at its next use."""
        self._stop_ring(index)

    def reset(self) -> None:
        """Status 0: stop every ring cleanly and re-read the back end's config.

        Never raises: a back end that is gone makes the next FEATURES_OK fail
        instead (``validate_features``), which the driver sees at once.
        """
        for index in self.started_rings:
            self._stop_ring(index)
        if self.profile.backend_config_size and self.frontend.connected:
            try:
                fresh = self._read_backend_config(self.num_queues)
            except VhostUserError as exc:
                log.warning("%s: config not re-read after reset: %s", self.name, exc)
                return
            if fresh != bytes(self.config):
                self.update_config(0, fresh)

    def config_write(self, offset: int, data: bytes) -> bool:
        """Forward a write to a writable range with SET_CONFIG; refuse anything else.

        Only declared ranges go to the back end: libvhost-user back ends abort
        the whole connection on a SET_CONFIG they reject.
        """
        end = offset + len(data)
        if not any(s <= offset and end <= s + n for s, n in self.profile.writable_config):
            return False
        if not self.frontend.has_protocol_feature(ProtocolFeature.CONFIG):
            return False
        try:
            self.frontend.set_config(offset, bytes(data))
        except VhostUserRefused as exc:
            log.info("%s: back end refused SET_CONFIG at %d: %s", self.name, offset, exc)
            return False
        except VhostUserError as exc:
            self.fail(f"vhost-user SET_CONFIG failed: {exc}")
            return False
        self.config[offset:end] = data
        return True

    # --- rings --------------------------------------------------------------------------------

    def _start_ring(self, index: int, queue: DeviceRing) -> None:
        if not isinstance(queue, DeviceQueue):
            # Never offered (ring_features=0 keeps VIRTIO_F_RING_PACKED out).
            raise VhostUserError(f"queue {index}: vhost-user rings here are split rings only")
        fe = self.frontend
        layout = queue.layout
        fe.set_vring_num(index, queue.size)
        fe.set_vring_base(index, queue.next_avail)
        fe.set_vring_addr(index, layout.desc, layout.used, layout.avail)
        _drain_eventfd(self._call[index])
        # CALL before KICK: a back end starts processing at SET_VRING_KICK and
        # must already have somewhere to signal its first completion.
        fe.set_vring_call(index, self._call[index])
        fe.set_vring_kick(index, self._kick[index])
        if fe.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            fe.set_vring_enable(index, True)
        with self._rings_lock:
            self._rings[index] = _Ring(index, queue.size, layout.used_idx)
        # Buffers made available before the ring started got no kick of their own.
        os.eventfd_write(self._kick[index], 1)

    def _stop_ring(self, index: int) -> None:
        """Disable and stop one ring (GET_VRING_BASE), then drain it; never raises."""
        with self._rings_lock:
            ring = self._rings.pop(index, None)
        if ring is None or not self.frontend.connected:
            return
        fe = self.frontend
        try:
            if fe.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
                with contextlib.suppress(VhostUserRefused):
                    fe.set_vring_enable(index, False)
            base = fe.get_vring_base(index)
        except VhostUserError as exc:
            log.warning("%s: ring %d not stopped cleanly: %s", self.name, index, exc)
            return
        self._drain_ring(ring, base)

    def _drain_ring(self, ring: _Ring, base: int) -> None:
        """Wait (bounded) until the back end completed every request it had taken.

        ``base`` is the available index the back end stopped at: it took
        ``base`` chains, so the used index reaches ``base`` once they are all
        done.  A back end that processes asynchronously (qemu-storage-daemon)
        may still be writing when GET_VRING_BASE returns; the rings must not be
        reused before that.
        """
        if self.transport is None:
            return
        region = self.region
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            try:
                used = region.read_u16(ring.used_idx_addr)
            except Exception:  # the region was closed under us: nothing left to protect
                return
            if used == base or not self.frontend.connected:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: ring %d stopped with %d request(s) still in the back end",
                    self.name, ring.index, (base - used) & 0xFFFF,
                )
                return
            time.sleep(0.001)

    # --- the watcher thread -------------------------------------------------------------------

    def _signal_used(self, index: int) -> None:
        """One EVENT_USED for queue ``index`` (the back end already chose to notify)."""
        if self.transport is None or self.transport.live_queue(index) is None:
            return
        self.events_used += 1
        self.signal_used(index)

    def _watch(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake, selectors.EVENT_READ, -1)
            sel.register(self.frontend.fileno(), selectors.EVENT_READ, -2)
            for index, fd in enumerate(self._call):
                sel.register(fd, selectors.EVENT_READ, index)
            while not self._closing:
                for key, _mask in sel.select(WATCH_SLICE):
                    tag = key.data
                    if tag == -1:
                        _drain_eventfd(self._wake)
                    elif tag == -2:
                        self.frontend.poll_peer()
                        if not self.frontend.connected:
                            sel.unregister(key.fd)  # EOF stays readable
                            self._report_disconnect()
                    elif _drain_eventfd(self._call[tag]):
                        with self._rings_lock:
                            started = tag in self._rings
                        if started:
                            self._signal_used(tag)
        except Exception:  # never die silently: the device would hang its driver
            log.exception("%s: watcher failed", self.name)
            self.frontend.mark_dead("watcher thread failed")
            self._report_disconnect()
        finally:
            sel.close()

    def _report_disconnect(self) -> None:
        if self._reported or self._closing:
            return
        self._reported = True
        reason = f"vhost-user back end gone: {self.frontend.reason}"
        with self._rings_lock:
            self._rings.clear()
        self.fail(reason)
        for callback in list(self.on_disconnect):
            try:
                callback(reason)
            except Exception:
                log.exception("%s: on_disconnect callback failed", self.name)

    # --- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the rings (best effort), the watcher, and close the socket and eventfds."""
        if self._closed:
            return
        self._closed = True
        for index in self.started_rings:
            with contextlib.suppress(VhostUserError):
                self._stop_ring(index)
        self._closing = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join(JOIN_TIMEOUT)
        self.frontend.close()
        for fd in [*self._kick, *self._call, self._wake]:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> VhostUserDevice:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the device."""
        self.close()


def _drain_eventfd(fd: int) -> int:
    """Read and clear an eventfd's counter; 0 if it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


__all__ = ["DEFAULT_QUEUE_SIZE", "DRAIN_TIMEOUT", "VhostUserDevice"]
