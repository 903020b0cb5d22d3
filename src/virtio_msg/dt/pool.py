"""Checking a restricted-dma-pool node and decoding its ``reg``.

Strategy: the pool is a standard ``/reserved-memory`` child (dtschema's
``shared-dma-pool.yaml`` covers its schema); this module adds what a schema
cannot say and what the loopback bus needs: one static, contiguous, page-aligned
range of sane size, decoded with the *parent's* ``#address-cells`` /
``#size-cells``, and none of the properties Linux's ``rmem_swiotlb_setup``
refuses.  Every rule appends a :class:`Problem` naming the pool node; the caller
decides what an error means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from virtio_msg.dt.binding import (
    MAX_POOL_SIZE,
    PAGE_SIZE,
    POOL_COMPATIBLE,
    POOL_FORBIDDEN_PROPERTIES,
    min_pool_size,
)
from virtio_msg.dt.problems import WARNING, Problem
from virtio_msg.dt.tree import DtNode, DtTree, PropertyTypeError, prop_u32s

__all__ = ["RESERVED_MEMORY", "PoolRange", "check_pool", "check_pool_size"]

RESERVED_MEMORY: Final = "/reserved-memory"
"""The only parent under which Linux reserves regions (``of_reserved_mem``)."""
_DEFAULT_ADDRESS_CELLS: Final = 2
_DEFAULT_SIZE_CELLS: Final = 1
"""Devicetree spec §2.3.5 defaults when a parent omits the cell counts."""
_ADDRESS_LIMIT: Final = 1 << 64


@dataclass(frozen=True, slots=True)
class PoolRange:
    """A checked pool: its node path and bus-address range ``[base, base + size)``."""

    path: str
    base: int
    size: int

    @property
    def end(self) -> int:
        """First bus address past the pool."""
        return self.base + self.size


def check_pool(
    tree: DtTree, pool: DtNode, referrer: str, problems: list[Problem]
) -> PoolRange | None:
    """Check ``pool`` as the restricted DMA pool of the bus node at ``referrer``.

    Append every problem found to ``problems``; return the decoded range (even
    when other rules failed, so the caller can still check its size), or
    ``None`` when ``reg`` cannot be decoded.
    """
    compatibles = pool.compatibles()
    if POOL_COMPATIBLE not in compatibles:
        found = ", ".join(f'"{c}"' for c in compatibles) or "no compatible"
        extra = ""
        if "shared-dma-pool" in compatibles:
            extra = (
                " (a shared-dma-pool only serves coherent allocations; the loopback also "
                "bounces streaming DMA through the pool)"
            )
        problems.append(
            Problem(
                pool.path,
                f"memory-region of {referrer} points at a node with {found}, "
                f"not a {POOL_COMPATIBLE}{extra}",
                f'set compatible = "{POOL_COMPATIBLE}"; in {pool.path}, '
                f"or point memory-region at the restricted-dma-pool node",
                prop="compatible",
            )
        )
    if not pool.is_enabled():
        problems.append(
            Problem(
                pool.path,
                f'the pool of {referrer} is disabled (status is not "okay")',
                'remove the status property or set status = "okay";',
                prop="status",
            )
        )
    if pool.parent != RESERVED_MEMORY:
        problems.append(
            Problem(
                pool.path,
                f"the pool of {referrer} is not a child of {RESERVED_MEMORY}, "
                "so nothing reserves it",
                f"move the node under {RESERVED_MEMORY} "
                "{ #address-cells = <2>; #size-cells = <2>; ranges; ... };",
            )
        )
    for prop, why in POOL_FORBIDDEN_PROPERTIES.items():
        if pool.has(prop):
            problems.append(
                Problem(
                    pool.path,
                    f"{prop} is not allowed on a {POOL_COMPATIBLE}: {why}",
                    f"delete the line '{prop};' from {pool.path}",
                    prop=prop,
                )
            )
    return _decode_reg(tree, pool, problems)


def check_pool_size(pool: PoolRange, device_count: int, referrer: str) -> Problem | None:
    """Return a warning when ``pool`` is too small for ``device_count`` devices, else ``None``.

    The binding does not size the pool: whether it fits is a property of the
    devices a run creates (``virtio-msg run`` refuses a run whose devices do
    not fit, :func:`virtio_msg.compose.config.from_tree`), so for the tree it
    is a warning.
    """
    need = min_pool_size(device_count)
    if pool.size >= need:
        return None
    need_pages = -(-need // PAGE_SIZE) * PAGE_SIZE
    return Problem(
        pool.path,
        f"pool is {pool.size:#x} bytes, too small for the {device_count} device(s) "
        f"`virtio-msg run` would create for {referrer}: they need at least {need:#x} "
        f"({need // 1024} KiB)",
        f"grow the size cell(s) of reg to at least {need_pages:#x}, or list fewer devices "
        "in virtio,devices (256 KiB + 288 KiB per device); backends that add their own "
        "devices (virtio-msg bus) are not affected",
        severity=WARNING,
        prop="reg",
    )


def _cells(
    tree: DtTree, pool: DtNode, name: str, default: int, problems: list[Problem]
) -> int | None:
    parent = tree.node(pool.parent) if pool.parent else None
    where = parent.path if parent else "/"
    raw = parent.props.get(name) if parent else None
    if raw is None:
        problems.append(
            Problem(
                where,
                f"{name} is missing; the pool's reg is decoded with the default {default}",
                f"state {name} explicitly in {where} (the same as the root node's)",
                severity=WARNING,
                prop=name,
            )
        )
        return default
    try:
        cells = prop_u32s(raw)
    except PropertyTypeError as exc:
        problems.append(Problem(where, f"{name}: {exc}", "use one cell, e.g. <2>", prop=name))
        return None
    if len(cells) != 1 or cells[0] not in (1, 2):
        problems.append(
            Problem(
                where,
                f"{name} = {cells} is not supported for a pool (only 1 or 2 cells, "
                "i.e. 32- or 64-bit values)",
                f"set {name} = <2>;",
                prop=name,
            )
        )
        return None
    return cells[0]


def _decode_reg(tree: DtTree, pool: DtNode, problems: list[Problem]) -> PoolRange | None:
    raw = pool.props.get("reg")
    if raw is None:
        dynamic = " (a size-only pool is placed by the OS at boot)" if pool.has("size") else ""
        problems.append(
            Problem(
                pool.path,
                f"the pool has no reg{dynamic}: the loopback needs a fixed bus address",
                "give the pool a static range: reg = <base size>; in the parent's cell sizes",
                prop="reg",
            )
        )
        return None
    ac = _cells(tree, pool, "#address-cells", _DEFAULT_ADDRESS_CELLS, problems)
    sc = _cells(tree, pool, "#size-cells", _DEFAULT_SIZE_CELLS, problems)
    parent = tree.node(pool.parent) if pool.parent else None
    if parent is not None and pool.parent == RESERVED_MEMORY:
        ranges = parent.props.get("ranges")
        if ranges:  # absent or empty (identity) are both usable
            problems.append(
                Problem(
                    parent.path,
                    "ranges is not empty: reserved-memory addresses must map 1:1 to the parent",
                    "use an empty 'ranges;'",
                    prop="ranges",
                )
            )
    if ac is None or sc is None:
        return None
    try:
        cells = prop_u32s(raw)
    except PropertyTypeError as exc:
        problems.append(Problem(pool.path, f"reg: {exc}", prop="reg"))
        return None
    entry = ac + sc
    if len(cells) % entry:
        problems.append(
            Problem(
                pool.path,
                f"reg has {len(cells)} cell(s), not a multiple of #address-cells + "
                f"#size-cells = {ac} + {sc}",
                f"write reg as <address size> with {ac} address and {sc} size cell(s)",
                prop="reg",
            )
        )
        return None
    if len(cells) != entry:
        problems.append(
            Problem(
                pool.path,
                f"reg lists {len(cells) // entry} ranges; "
                "a restricted pool is one contiguous range",
                "keep a single <address size> pair in reg",
                prop="reg",
            )
        )
        return None
    base = _combine(cells[:ac])
    size = _combine(cells[ac:])
    return _check_range(PoolRange(pool.path, base, size), problems)


def _check_range(pool: PoolRange, problems: list[Problem]) -> PoolRange | None:
    if pool.size == 0:
        problems.append(Problem(pool.path, "reg has size 0", "give the pool a size", prop="reg"))
        return None
    if pool.end > _ADDRESS_LIMIT:
        problems.append(
            Problem(
                pool.path,
                f"reg range {pool.base:#x} + {pool.size:#x} runs past the 64-bit address space",
                "lower the base or the size",
                prop="reg",
            )
        )
        return None
    if pool.base % PAGE_SIZE:
        down = pool.base - pool.base % PAGE_SIZE
        problems.append(
            Problem(
                pool.path,
                f"pool base {pool.base:#x} is not page-aligned ({PAGE_SIZE // 1024} KiB)",
                f"move the base to a multiple of {PAGE_SIZE:#x}, e.g. {down:#x}",
                prop="reg",
            )
        )
    if pool.size % PAGE_SIZE:
        up = pool.size + PAGE_SIZE - pool.size % PAGE_SIZE
        problems.append(
            Problem(
                pool.path,
                f"pool size {pool.size:#x} is not a whole number of "
                f"pages ({PAGE_SIZE // 1024} KiB)",
                f"round the size to a multiple of {PAGE_SIZE:#x}, e.g. {up:#x}",
                prop="reg",
            )
        )
    if pool.size > MAX_POOL_SIZE:
        problems.append(
            Problem(
                pool.path,
                f"pool size {pool.size:#x} is larger than the {MAX_POOL_SIZE >> 20} MiB "
                "the loopback maps",
                "check the size cells of reg (a 64-bit size needs #size-cells = <2>)",
                prop="reg",
            )
        )
    return pool


def _combine(cells: list[int]) -> int:
    value = 0
    for cell in cells:
        value = (value << 32) | cell
    return value
