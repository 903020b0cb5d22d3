"""From a device tree to one :class:`LoopbackConfig` per ``virtio,msg-loopback`` node.

Strategy: :func:`analyze` is the semantic pass shared by :func:`load_tree` and
``dt check``.  It finds every enabled node whose compatible contains
``virtio,msg-loopback`` (wherever it sits, whatever its name), resolves its
``memory-region`` phandle, checks the pool (:mod:`virtio_msg.dt.pool`), decodes
the optional ``virtio,*`` properties with the binding's types and ranges, and
finally checks the instances against each other (one pool each, no overlap).
It never stops early and never raises on bad input: it returns the configs it
could build and every problem found.  :func:`load_tree` raises one
:class:`DeviceTreeError` when any problem is an error.

Trees with no enabled loopback node, seed-era trees among them, are handled by
:mod:`virtio_msg.dt.legacy`.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Final

from virtio_msg.dt.binding import (
    BINDING_DOC,
    BUILTIN_DEVICE_TYPES,
    COMPATIBLE,
    DEFAULT_DEVICES,
    DEFAULT_TIMEOUT_MS,
    KNOWN_TRANSPORT_FEATURES,
    MAX_DEV_NUM,
    MAX_DEVICES,
    MAX_TIMEOUT_MS,
    POOL_COMPATIBLE,
    PROFILE_MAX_MSG_SIZE,
    PROFILES,
    PROP_DEVICE_NUMBERS,
    PROP_DEVICES,
    PROP_MAX_MSG_SIZE,
    PROP_MEMORY_REGION,
    PROP_PROFILE,
    PROP_TIMEOUT_MS,
    PROP_TRANSPORT_FEATURES,
    VENDOR_PROPERTIES,
    DeviceSpec,
    LoopbackConfig,
)
from virtio_msg.dt.legacy import LEGACY_POOL_NAME, without_loopback_node
from virtio_msg.dt.pool import RESERVED_MEMORY, check_pool, check_pool_size
from virtio_msg.dt.problems import WARNING, DeviceTreeError, Problem, errors_of
from virtio_msg.dt.tree import DtNode, DtTree, PropertyTypeError, prop_strings, prop_u32s, read_tree
from virtio_msg.wire import Profile

__all__ = [
    "LEGACY_POOL_NAME",
    "analyze",
    "default_tree_path",
    "load_default",
    "load_tree",
    "overlay_marker",
]

_STANDARD_PROPERTIES: Final = frozenset(
    {
        "compatible",
        PROP_MEMORY_REGION,
        "status",
        "secure-status",
        "phandle",
        "linux,phandle",
        "pinctrl-names",
    }
)
"""Properties dtschema allows on every node besides those of the binding."""
_STANDARD_PATTERN: Final = re.compile(r"^(pinctrl-[0-9]+|bootph-.+)$")
_log = logging.getLogger("virtio_msg.dt")


def default_tree_path() -> Path:
    """Return the path of the embedded default DTB (``virtio_msg/data/default.dtb``).

    Its source, ``default.dts`` beside it and in ``docs/examples/``, describes a
    4 MiB restricted-dma-pool at bus address 0x1_0000_0000 and one loopback node
    with the default devices.
    """
    return Path(__file__).resolve().parent.parent / "data" / "default.dtb"


def load_default() -> list[LoopbackConfig]:
    """Load the embedded default tree (a DTB: needs neither dtc nor dtschema)."""
    return load_tree(default_tree_path())


def load_tree(path: str | Path, *, legacy_pool_name: str | None = None) -> list[LoopbackConfig]:
    """Read the DTS or DTB at ``path`` and return one config per loopback bus instance.

    Raise :class:`~virtio_msg.dt.problems.DeviceTreeError` (a ``ConfigError``)
    listing every error when the tree cannot be used; warnings (including the
    legacy-pool warning) go to the ``virtio_msg.dt`` logger.
    """
    tree = read_tree(path)
    for warning in tree.warnings:
        _log.debug("%s: %s", tree.source, warning)
    configs, problems = analyze(tree, legacy_pool_name=legacy_pool_name)
    if errors_of(problems):
        raise DeviceTreeError(tree.source, problems)
    for problem in problems:
        hint = "".join(f"\n    {line}" for line in problem.hint.splitlines())
        _log.warning("%s: %s%s", tree.source, problem, hint)
    return configs


OVERLAY_NODES = ("/__fixups__", "/__local_fixups__")
"""Root nodes only an overlay has: references to resolve against the base tree."""


def overlay_marker(tree: DtTree) -> str | None:
    """The path that shows ``tree`` is an overlay, or None for a whole tree.

    An overlay that references labels has ``/__fixups__``; one that only
    uses path references (``&{/path}``) or targets has none, but every overlay
    has ``fragment`` nodes with an ``__overlay__`` child.
    """
    for path in OVERLAY_NODES:
        if tree.node(path) is not None:
            return path
    for node in tree.walk():
        if node.path.endswith("/__overlay__"):
            return node.path
    return None


def analyze(
    tree: DtTree, *, legacy_pool_name: str | None = None
) -> tuple[list[LoopbackConfig], list[Problem]]:
    """Run the semantic checks of the binding over ``tree``.

    Return the configs that could be built (only trustworthy when no problem is
    an error) and every problem found, in tree order.
    """
    problems: list[Problem] = []
    marker = overlay_marker(tree)
    if marker is not None:
        problems.append(
            Problem(
                marker,
                "this is a device tree overlay (/plugin/), not a whole tree: its nodes and "
                "phandles take effect only when it is applied",
                "apply it to the base tree first: fdtoverlay -i base.dtb -o full.dtb overlay.dtbo",
            )
        )
        return [], problems
    nodes = tree.find_compatible(COMPATIBLE)
    enabled = [n for n in nodes if n.is_enabled()]
    if not enabled:
        return without_loopback_node(tree, nodes, legacy_pool_name, problems), problems
    if legacy_pool_name is not None:
        problems.append(
            Problem(
                "/",
                f"--legacy-pool-name {legacy_pool_name} ignored: the tree has "
                f"{len(enabled)} {COMPATIBLE} node(s), which are used instead",
                "drop --legacy-pool-name for this tree",
                severity=WARNING,
            )
        )
    configs: list[LoopbackConfig] = []
    for node in enabled:
        config = _instance(tree, node, problems)
        if config is not None:
            configs.append(config)
    _check_instances(configs, problems)
    # A pool shared by two nodes is checked twice: report each problem once.
    return configs, list(dict.fromkeys(problems))


# --- one bus node ------------------------------------------------------------


def _instance(tree: DtTree, node: DtNode, problems: list[Problem]) -> LoopbackConfig | None:
    start = len(problems)
    _check_unknown_properties(node, problems)
    pool_node = _resolve_memory_region(tree, node, problems)
    pool = check_pool(tree, pool_node, node.path, problems) if pool_node else None
    profile = _profile(node, problems)
    max_msg_size = _max_msg_size(node, profile, problems)
    features = _transport_features(node, profile, problems)
    timeout_ms = _u32(node, PROP_TIMEOUT_MS, problems, DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS)
    devices = _devices(node, problems)
    if pool is not None and devices is not None:
        too_small = check_pool_size(pool, len(devices), node.path)
        if too_small is not None:
            problems.append(too_small)
    if (
        pool is None
        or devices is None
        or timeout_ms is None
        or features is None
        or errors_of(problems[start:])
    ):
        return None
    return LoopbackConfig(
        node_path=node.path,
        pool_path=pool.path,
        base=pool.base,
        size=pool.size,
        profile=Profile(profile or "spec"),
        max_msg_size=max_msg_size,
        transport_features=features,
        devices=devices,
        timeout_ms=timeout_ms,
    )


def _check_unknown_properties(node: DtNode, problems: list[Problem]) -> None:
    for prop in node.props:
        if prop in _STANDARD_PROPERTIES or prop in VENDOR_PROPERTIES:
            continue
        if _STANDARD_PATTERN.match(prop):
            continue
        if prop.startswith("virtio,"):
            close = difflib.get_close_matches(prop, VENDOR_PROPERTIES, n=1, cutoff=0.8)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else ("the binding defines " + ", ".join(VENDOR_PROPERTIES))
            )
            problems.append(Problem(node.path, "unknown property of the binding", hint, prop=prop))
        else:
            problems.append(
                Problem(
                    node.path,
                    "property is not part of the binding (additionalProperties: false)",
                    f"remove it; see {BINDING_DOC}",
                    prop=prop,
                )
            )


def _resolve_memory_region(tree: DtTree, node: DtNode, problems: list[Problem]) -> DtNode | None:
    raw = node.props.get(PROP_MEMORY_REGION)
    if raw is None:
        problems.append(
            Problem(
                node.path,
                "is missing: the bus needs its restricted DMA pool",
                f"add memory-region = <&pool>; where pool is the label of a "
                f"{POOL_COMPATIBLE} node under {RESERVED_MEMORY}",
                prop=PROP_MEMORY_REGION,
            )
        )
        return None
    try:
        handles = prop_u32s(raw)
    except PropertyTypeError as exc:
        problems.append(
            Problem(node.path, f"{exc}", "write memory-region = <&label>;", prop=PROP_MEMORY_REGION)
        )
        return None
    if len(handles) != 1:
        problems.append(
            Problem(
                node.path,
                f"lists {len(handles)} regions; a loopback bus uses exactly one pool",
                "keep one phandle: memory-region = <&pool>;",
                prop=PROP_MEMORY_REGION,
            )
        )  # and go on with the first, so its own problems are reported too
    target = tree.by_phandle(handles[0])
    if target is None:
        problems.append(
            Problem(
                node.path,
                f"phandle {handles[0]:#x} does not resolve to any node",
                "point memory-region at the pool by label (memory-region = <&pool>;) and "
                "compile with dtc, which assigns the phandle",
                prop=PROP_MEMORY_REGION,
            )
        )
        return None
    return target


def _single(node: DtNode, prop: str, problems: list[Problem], strings: bool) -> str | int | None:
    raw = node.props.get(prop)
    if raw is None:
        return None
    try:
        values: list[str] | list[int] = prop_strings(raw) if strings else prop_u32s(raw)
    except PropertyTypeError as exc:
        kind = 'a string, e.g. "spec"' if strings else "one 32-bit cell, e.g. <264>"
        problems.append(Problem(node.path, f"{exc}", f"write it as {kind}", prop=prop))
        return None
    if len(values) != 1:
        problems.append(Problem(node.path, f"has {len(values)} values, expected one", prop=prop))
        return None
    return values[0]


def _u32(
    node: DtNode, prop: str, problems: list[Problem], default: int, low: int, high: int
) -> int | None:
    value = _single(node, prop, problems, strings=False)
    if value is None:
        return None if prop in node.props else default
    assert isinstance(value, int)
    if not low <= value <= high:
        problems.append(
            Problem(
                node.path,
                f"{value} is outside {low}..{high}",
                f"use a value in {low}..{high}",
                prop=prop,
            )
        )
        return None
    return value


def _profile(node: DtNode, problems: list[Problem]) -> str | None:
    value = _single(node, PROP_PROFILE, problems, strings=True)
    if value is None:
        return None if PROP_PROFILE in node.props else "spec"
    if value not in PROFILES:
        problems.append(
            Problem(
                node.path,
                f'"{value}" is not a wire profile',
                "use " + " or ".join(f'"{p}"' for p in PROFILES),
                prop=PROP_PROFILE,
            )
        )
        return None
    assert isinstance(value, str)
    return value


def _max_msg_size(node: DtNode, profile: str | None, problems: list[Problem]) -> int | None:
    low, high, _ = PROFILE_MAX_MSG_SIZE[profile or "spec"]
    if PROP_MAX_MSG_SIZE not in node.props:
        return None
    return _u32(node, PROP_MAX_MSG_SIZE, problems, 0, low, high)


def _transport_features(node: DtNode, profile: str | None, problems: list[Problem]) -> int | None:
    features = _u32(node, PROP_TRANSPORT_FEATURES, problems, 0, 0, 0xFFFF_FFFF)
    if features is None:
        return None
    if profile == "linux-rfc1" and features:
        problems.append(
            Problem(
                node.path,
                "the linux-rfc1 profile has no transport feature bits",
                "set it to <0> or remove it",
                prop=PROP_TRANSPORT_FEATURES,
            )
        )
        return None
    unknown = features & ~KNOWN_TRANSPORT_FEATURES
    if unknown:
        problems.append(
            Problem(
                node.path,
                f"bits {unknown:#x} are not defined by the spec; no peer will agree to them",
                "only bit 0 (VIRTIO_MSG_F_STRICT_CONFIG_GENERATION) is defined",
                severity=WARNING,
                prop=PROP_TRANSPORT_FEATURES,
            )
        )
    return features


def _devices(node: DtNode, problems: list[Problem]) -> tuple[DeviceSpec, ...] | None:
    raw_types = node.props.get(PROP_DEVICES)
    raw_nums = node.props.get(PROP_DEVICE_NUMBERS)
    if raw_types is None:
        if raw_nums is not None:
            problems.append(
                Problem(
                    node.path,
                    f"{PROP_DEVICE_NUMBERS} without {PROP_DEVICES}",
                    f'name the device types too, e.g. {PROP_DEVICES} = "rng", "blk";',
                    prop=PROP_DEVICE_NUMBERS,
                )
            )
            return None
        return DEFAULT_DEVICES
    ok = True
    try:
        types = prop_strings(raw_types)
    except PropertyTypeError as exc:
        problems.append(Problem(node.path, f"{exc}", 'e.g. "rng", "blk"', prop=PROP_DEVICES))
        return None
    names = ", ".join(BUILTIN_DEVICE_TYPES)
    for kind in types:
        if kind not in BUILTIN_DEVICE_TYPES:
            problems.append(
                Problem(
                    node.path,
                    f'"{kind}" is not a built-in device',
                    f"use one of {names}",
                    prop=PROP_DEVICES,
                )
            )
            ok = False
    if len(types) > MAX_DEVICES:
        problems.append(
            Problem(
                node.path, f"lists {len(types)} devices, more than {MAX_DEVICES}", prop=PROP_DEVICES
            )
        )
        ok = False
    numbers = list(range(len(types)))
    if raw_nums is not None:
        try:
            numbers = prop_u32s(raw_nums)
        except PropertyTypeError as exc:
            problems.append(Problem(node.path, f"{exc}", "e.g. <0 1>", prop=PROP_DEVICE_NUMBERS))
            return None
        if len(numbers) != len(types):
            problems.append(
                Problem(
                    node.path,
                    f"has {len(numbers)} number(s) for {len(types)} device(s) in {PROP_DEVICES}",
                    "give exactly one device number per device type, in the same order",
                    prop=PROP_DEVICE_NUMBERS,
                )
            )
            return None
    seen: set[int] = set()
    for number in numbers:
        if number > MAX_DEV_NUM:
            problems.append(
                Problem(
                    node.path,
                    f"{number} does not fit dev_num (0..{MAX_DEV_NUM})",
                    prop=PROP_DEVICE_NUMBERS,
                )
            )
            ok = False
        elif number in seen:
            problems.append(
                Problem(
                    node.path,
                    f"device number {number} is used twice",
                    "make the numbers unique",
                    prop=PROP_DEVICE_NUMBERS,
                )
            )
            ok = False
        seen.add(number)
    if not ok:
        return None
    return tuple(DeviceSpec(n, t) for n, t in zip(numbers, types, strict=True))


# --- across instances --------------------------------------------------------


def _check_instances(configs: list[LoopbackConfig], problems: list[Problem]) -> None:
    owner: dict[str, str] = {}
    for config in configs:
        first = owner.setdefault(config.pool_path, config.node_path)
        if first != config.node_path:
            problems.append(
                Problem(
                    config.node_path,
                    f"uses the pool {config.pool_path} of {first}; "
                    "each bus instance needs its own pool",
                    f"add another {POOL_COMPATIBLE} node and point this memory-region at it",
                    prop=PROP_MEMORY_REGION,
                )
            )
    distinct = sorted({c.pool_path: c for c in configs}.values(), key=lambda c: (c.base, c.end))
    reach: LoopbackConfig | None = None  # the earlier pool that reaches furthest
    for config in distinct:
        if reach is not None and config.base < reach.end:
            problems.append(
                Problem(
                    config.pool_path,
                    f"pool [{config.base:#x}, {config.end:#x}) of {config.node_path} overlaps pool "
                    f"{reach.pool_path} [{reach.base:#x}, {reach.end:#x}) of {reach.node_path}",
                    f"move this pool to start at or after {reach.end:#x}",
                    prop="reg",
                )
            )
        if reach is None or config.end > reach.end:
            reach = config
