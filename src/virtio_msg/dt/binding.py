"""The ``virtio,msg-loopback`` binding as data: names, defaults, limits, the config object.

Strategy: the dt-schema YAML (``docs/bindings/virtio,msg-loopback.yaml``, a copy
ships in ``virtio_msg/data/``) is the documented ABI; this module holds the same
facts for the Python side, so the loader can enforce every rule of the binding
without dtschema installed, and so the bus and CLI get one frozen
:class:`LoopbackConfig` per bus instance.  The seed found its pool by the node
name ``vmsglb``; review rejected that as hidden ABI (linux-rfc1.md §4.3), so here
node names never matter: only ``compatible`` and the ``memory-region`` phandle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from virtio_msg import spec
from virtio_msg.memory.pool import DEFAULT_MAX_SEGMENT_SLOTS, DEFAULT_SLOT_SIZE
from virtio_msg.wire import Profile, profile_limits

__all__ = [
    "BINDING_DOC",
    "BOUNCE_BUDGET_PER_DEVICE",
    "BUILTIN_DEVICE_TYPES",
    "COMPATIBLE",
    "DEFAULT_DEVICES",
    "DEFAULT_TIMEOUT_MS",
    "KNOWN_TRANSPORT_FEATURES",
    "MAX_DEVICES",
    "MAX_POOL_SIZE",
    "MAX_TIMEOUT_MS",
    "PAGE_SIZE",
    "POOL_COMPATIBLE",
    "POOL_FIXED_MIN",
    "POOL_FORBIDDEN_PROPERTIES",
    "PROFILES",
    "PROFILE_MAX_MSG_SIZE",
    "PROP_DEVICES",
    "PROP_DEVICE_NUMBERS",
    "PROP_MAX_MSG_SIZE",
    "PROP_MEMORY_REGION",
    "PROP_PROFILE",
    "PROP_TIMEOUT_MS",
    "PROP_TRANSPORT_FEATURES",
    "RING_BUDGET_PER_DEVICE",
    "VENDOR_PROPERTIES",
    "DeviceSpec",
    "LoopbackConfig",
    "default_max_msg_size",
    "min_pool_size",
]

BINDING_DOC: Final = "docs/bindings/virtio,msg-loopback.yaml"
"""Where the binding is documented (a copy ships as ``virtio_msg/data/``), for hints."""
COMPATIBLE: Final = "virtio,msg-loopback"
"""The bus node's compatible; "virtio" is the OASIS vendor prefix of "virtio,mmio"."""
POOL_COMPATIBLE: Final = "restricted-dma-pool"
"""The pool's compatible: Linux's swiotlb-backed pool that confines a device's DMA."""

PROP_MEMORY_REGION: Final = "memory-region"
PROP_PROFILE: Final = "virtio,msg-profile"
PROP_MAX_MSG_SIZE: Final = "virtio,max-msg-size"
PROP_TRANSPORT_FEATURES: Final = "virtio,transport-features"
PROP_TIMEOUT_MS: Final = "virtio,timeout-ms"
PROP_DEVICES: Final = "virtio,devices"
PROP_DEVICE_NUMBERS: Final = "virtio,device-numbers"
VENDOR_PROPERTIES: Final = (
    PROP_PROFILE,
    PROP_MAX_MSG_SIZE,
    PROP_TRANSPORT_FEATURES,
    PROP_TIMEOUT_MS,
    PROP_DEVICES,
    PROP_DEVICE_NUMBERS,
)
"""Every ``virtio,`` property the binding defines (any other one is a typo)."""

PROFILES: Final = tuple(p.value for p in Profile)
"""Wire profiles, as spelled in ``virtio,msg-profile`` ("spec", "linux-rfc1")."""
PROFILE_MAX_MSG_SIZE: Final[dict[str, tuple[int, int, int]]] = {
    p.value: profile_limits(p) for p in Profile
}
"""Per profile: (smallest, largest, default) ``virtio,max-msg-size``, from the codec."""

KNOWN_TRANSPORT_FEATURES: Final = spec.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION
"""Transport feature bits the spec defines; other bits are warned about."""

DEFAULT_TIMEOUT_MS: Final = 5000
"""Request timeout when ``virtio,timeout-ms`` is absent (the 2026 kernel relay's value)."""
MAX_TIMEOUT_MS: Final = 600_000
"""Ten minutes: a longer wait is a hang, not a timeout."""

BUILTIN_DEVICE_TYPES: Final[dict[str, spec.DeviceId]] = {
    "rng": spec.DeviceId.ENTROPY,
    "blk": spec.DeviceId.BLOCK,
    "console": spec.DeviceId.CONSOLE,
    "i2c": spec.DeviceId.I2C,
}
"""Short names accepted in ``virtio,devices`` and the virtio device type of each."""
MAX_DEVICES: Final = 256
"""Most devices one node may create at start (the binding's ``maxItems``)."""
MAX_DEV_NUM: Final = 0xFFFF
"""``dev_num`` is a le16 in every message header."""

PAGE_SIZE: Final = 4096
"""Linux needs a restricted pool page-aligned in base and size; 4 KiB is the smallest page."""
POOL_FIXED_MIN: Final = 256 * 1024
"""Pool bytes kept free whatever the devices: headroom for bus-level mappings."""
RING_BUDGET_PER_DEVICE: Final = 32 * 1024
"""Rings of two 256-entry split queues (descriptor, avail, used parts page-aligned)."""
BOUNCE_BUDGET_PER_DEVICE: Final = DEFAULT_SLOT_SIZE * DEFAULT_MAX_SEGMENT_SLOTS
"""One largest streaming mapping (128 slots of 2 KiB = 256 KiB) in flight per device."""
MAX_POOL_SIZE: Final = 1 << 30
"""1 GiB: the pool is a memfd both sides map; a larger one is almost surely a reg typo."""

POOL_FORBIDDEN_PROPERTIES: Final[dict[str, str]] = {
    "no-map": "the pool must stay mapped: the loopback bounces buffers through it",
    "reusable": "the pool must be reserved for this bus alone, not lent to the CMA allocator",
    "linux,cma-default": "a restricted pool cannot be the default CMA area",
    "linux,dma-default": "a restricted pool cannot be the default coherent DMA pool",
}
"""Properties Linux's ``rmem_swiotlb_setup`` refuses on a restricted pool, with the reason."""


def default_max_msg_size(profile: str) -> int:
    """Return the maximum message size a bus of ``profile`` advertises by default."""
    return PROFILE_MAX_MSG_SIZE[profile][2]


def min_pool_size(device_count: int) -> int:
    """Return the smallest pool (bytes) the binding accepts for ``device_count`` devices.

    ``POOL_FIXED_MIN`` plus, per device, ``RING_BUDGET_PER_DEVICE`` for its rings
    and ``BOUNCE_BUDGET_PER_DEVICE`` for one maximum-size streaming mapping.
    """
    return POOL_FIXED_MIN + device_count * (RING_BUDGET_PER_DEVICE + BOUNCE_BUDGET_PER_DEVICE)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One built-in device a bus instance creates at start.

    ``dev_num`` is the device number on the bus (u16); ``type`` is a key of
    :data:`BUILTIN_DEVICE_TYPES` ("rng", "blk", "console", "i2c").
    """

    dev_num: int
    type: str

    @property
    def device_id(self) -> spec.DeviceId:
        """The virtio device type (GET_DEVICE_INFO ``device_id``) of this device."""
        return BUILTIN_DEVICE_TYPES[self.type]

    def __str__(self) -> str:
        """Return ``type@dev_num``, the form used in summaries."""
        return f"{self.type}@{self.dev_num}"


DEFAULT_DEVICES: Final = (
    DeviceSpec(0, "rng"),
    DeviceSpec(1, "blk"),
    DeviceSpec(2, "console"),
    DeviceSpec(3, "i2c"),
)
"""Devices created when a node has no ``virtio,devices``: rng 0, blk 1, console 2, i2c 3."""


@dataclass(frozen=True, slots=True)
class LoopbackConfig:
    """One loopback bus instance, as described by one ``virtio,msg-loopback`` node.

    ``profile`` is a :class:`~virtio_msg.wire.Profile` (a ``str`` enum: "spec"
    or "linux-rfc1"), ready for ``BusParams``.  ``node_path`` is the bus node
    (for a legacy tree accepted by name, the pool itself); ``pool_path``,
    ``base`` and ``size`` describe its restricted DMA pool (bus addresses).
    ``max_msg_size`` is ``None`` for the profile's default;
    :attr:`effective_max_msg_size` resolves it.  ``legacy`` is true when the
    pool was found by node name (``--legacy-pool-name``), not by the binding.
    """

    node_path: str
    pool_path: str
    base: int
    size: int
    profile: Profile = Profile.SPEC
    max_msg_size: int | None = None
    transport_features: int = 0
    devices: tuple[DeviceSpec, ...] = field(default=DEFAULT_DEVICES)
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    legacy: bool = False

    @property
    def end(self) -> int:
        """First bus address past the pool."""
        return self.base + self.size

    @property
    def effective_max_msg_size(self) -> int:
        """``max_msg_size``, or the profile's default when it is ``None``."""
        if self.max_msg_size is not None:
            return self.max_msg_size
        return default_max_msg_size(self.profile)

    def summary(self) -> str:
        """Return a one-line description of the instance, as ``dt check`` prints it."""
        devices = " ".join(str(d) for d in self.devices) or "none"
        size = _human_size(self.size)
        legacy = " [legacy: pool found by name]" if self.legacy else ""
        return (
            f"{self.node_path}: pool {self.pool_path} at {self.base:#x} size {size}, "
            f"profile {self.profile}, max msg {self.effective_max_msg_size}, "
            f"features {self.transport_features:#x}, timeout {self.timeout_ms} ms, "
            f"devices {devices}{legacy}"
        )

    def to_json(self) -> dict[str, object]:
        """Return the instance as plain JSON-ready data (``dt check --json``)."""
        return {
            "node": self.node_path,
            "pool": self.pool_path,
            "base": self.base,
            "size": self.size,
            "profile": self.profile.value,
            "max_msg_size": self.effective_max_msg_size,
            "transport_features": self.transport_features,
            "timeout_ms": self.timeout_ms,
            "devices": [{"dev_num": d.dev_num, "type": d.type} for d in self.devices],
            "legacy": self.legacy,
        }


def _human_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size:#x} bytes"
