"""The running kernel's device tree (``/sys/firmware/devicetree/base``) and its loopback region.

Strategy: Linux exports the live tree as a directory per node and a file per
property holding the property's raw big-endian bytes; :func:`read_live_tree`
turns that into the same :class:`~virtio_msg.dt.tree.DtTree` a DTB gives, so
the binding's own analysis (:func:`virtio_msg.dt.loader.analyze`) finds the
region: a ``virtio,msg-loopback`` node and its ``memory-region``, or, for the
seed kernel, the legacy ``/reserved-memory`` child named ``vmsglb``.
:func:`kernel_region` returns that region's base and size, or raises a
:class:`~virtio_msg.errors.ConfigError` that says what was looked for.  The
tree is untrusted input: sizes are bounded and unreadable entries skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, NamedTuple

from virtio_msg.dt.legacy import LEGACY_POOL_NAME
from virtio_msg.dt.loader import analyze
from virtio_msg.dt.problems import errors_of
from virtio_msg.dt.tree import DtNode, DtTree, PropertyTypeError, prop_u32s
from virtio_msg.errors import ConfigError

__all__ = ["LIVE_TREE", "KernelRegion", "kernel_region", "read_live_tree"]

LIVE_TREE: Final = "/sys/firmware/devicetree/base"
"""Where Linux exports the device tree it booted with."""
_MAX_PROPERTY: Final = 1 << 20
_MAX_NODES: Final = 100_000


class KernelRegion(NamedTuple):
    """The loopback's region as the tree describes it."""

    base: int
    size: int
    node: str
    """Path of the pool node it came from."""
    legacy: bool
    """True when found by the seed's node name ``vmsglb`` rather than the binding."""


def read_live_tree(root: str | Path = LIVE_TREE) -> DtTree:
    """Read the exported tree under ``root`` (ConfigError if it is not a directory)."""
    top = Path(root)
    if not top.is_dir():
        raise ConfigError(f"{top}: no live device tree here (is this a device-tree system?)")
    nodes: dict[str, DtNode] = {}
    phandles: dict[int, str] = {}
    pending: list[tuple[Path, str, str | None]] = [(top, "/", None)]
    while pending:
        directory, path, parent = pending.pop(0)
        if len(nodes) >= _MAX_NODES:
            raise ConfigError(f"{top}: more than {_MAX_NODES} nodes")
        props: dict[str, bytes] = {}
        children: list[tuple[Path, str]] = []
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            entries = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    child = path.rstrip("/") + "/" + entry.name
                    children.append((entry, child))
                elif entry.stat().st_size <= _MAX_PROPERTY:
                    props[entry.name] = entry.read_bytes()[:_MAX_PROPERTY]
            except OSError:
                continue
        props.pop("name", None)  # Linux adds the node name as a property
        name = "" if path == "/" else path.rsplit("/", 1)[1]
        nodes[path] = DtNode(path, name, parent, props, tuple(c for _, c in children))
        for key in ("phandle", "linux,phandle"):
            if key in props:
                try:
                    cells = prop_u32s(props[key])
                except PropertyTypeError:
                    continue
                if len(cells) == 1:
                    phandles.setdefault(cells[0], path)
        pending.extend((d, c, path) for d, c in children)
    return DtTree(str(top), "dtb", b"", nodes, phandles, {})


def kernel_region(root: str | Path = LIVE_TREE) -> KernelRegion:
    """Find the loopback region in the live tree under ``root``.

    The binding's node wins; without one the seed's ``vmsglb`` pool is used.
    ConfigError names what is missing or wrong (and suggests ``--base/--size``).
    """
    tree = read_live_tree(root)
    configs, problems = analyze(tree, legacy_pool_name=LEGACY_POOL_NAME)
    errors = errors_of(problems)
    if errors or not configs:
        detail = "; ".join(str(p) for p in errors) or "no loopback region"
        raise ConfigError(
            f"{root}: no usable loopback region (looked for a virtio,msg-loopback node with "
            f'a memory-region, then a /reserved-memory child named "{LEGACY_POOL_NAME}"): '
            f"{detail}. Give --base and --size to name the region yourself"
        )
    first = configs[0]
    return KernelRegion(first.base, first.size, first.pool_path, first.legacy)
