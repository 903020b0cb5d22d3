"""Trees without a ``virtio,msg-loopback`` node: seed-era trees and the legacy opt-in.

Strategy: the seed kernel found its pool with ``of_reserved_mem_lookup_by_name
("vmsglb")``, a hidden ABI that review rejected (linux-rfc1.md §4.3).  A tree that
relies on it (a ``/reserved-memory`` child named ``vmsglb``, no loopback node) is
refused with an error that explains the binding and shows the node to add, as
dtc source that works without editing the pool (a label if the pool has one,
else a ``&{/path}`` reference).  With ``legacy_pool_name`` the caller opts in:
the ``/reserved-memory`` child of that name (unit address ignored) becomes one
instance with default settings, after the same pool checks, plus a warning.
"""

from __future__ import annotations

from typing import Final

from virtio_msg.dt.binding import (
    BINDING_DOC,
    COMPATIBLE,
    DEFAULT_DEVICES,
    POOL_COMPATIBLE,
    LoopbackConfig,
)
from virtio_msg.dt.pool import RESERVED_MEMORY, PoolRange, check_pool, check_pool_size
from virtio_msg.dt.problems import WARNING, Problem, errors_of
from virtio_msg.dt.tree import DtNode, DtTree

__all__ = ["LEGACY_POOL_NAME", "without_loopback_node"]

LEGACY_POOL_NAME: Final = "vmsglb"
"""The node name the seed kernel looked up (``of_reserved_mem_lookup_by_name``)."""


def without_loopback_node(
    tree: DtTree, disabled: list[DtNode], legacy_pool_name: str | None, problems: list[Problem]
) -> list[LoopbackConfig]:
    """Handle a tree with no enabled loopback node: legacy opt-in, seed-era refusal, or none.

    ``disabled`` lists the loopback nodes that exist but are disabled.  Append
    the problems to ``problems``; return the legacy instance when accepted.
    """
    if legacy_pool_name is not None:
        return _legacy(tree, legacy_pool_name, problems)
    seed_pools = _reserved_children_named(tree, LEGACY_POOL_NAME)
    if seed_pools:
        pool = seed_pools[0]
        problems.append(
            Problem(
                pool.path,
                f'seed-era tree: the pool is found only by its node name "{LEGACY_POOL_NAME}", '
                f"and there is no {COMPATIBLE} node. Node names are not ABI: the binding "
                f'({BINDING_DOC}) is a node with compatible = "{COMPATIBLE}" whose memory-region '
                f"points at a {POOL_COMPATIBLE} node of any name",
                _lines_to_add(tree, pool)
                + f"\nor accept this tree as it is with --legacy-pool-name {LEGACY_POOL_NAME}",
            )
        )
        return []
    what = f"no enabled {COMPATIBLE} node"
    if disabled:
        what += " (" + ", ".join(n.path for n in disabled) + " has status disabled)"
    pools = [n for n in tree.walk() if POOL_COMPATIBLE in n.compatibles()]
    hint = _lines_to_add(tree, pools[0]) if pools else _full_example()
    problems.append(Problem("/", what, hint))
    return []


def _legacy(tree: DtTree, name: str, problems: list[Problem]) -> list[LoopbackConfig]:
    candidates = _reserved_children_named(tree, name)
    if not candidates:
        problems.append(
            Problem(
                RESERVED_MEMORY,
                f'no {COMPATIBLE} node, and no {RESERVED_MEMORY} child named "{name}" '
                "for --legacy-pool-name",
                "check the name, or add a loopback node:\n" + _full_example(),
            )
        )
        return []
    if len(candidates) > 1:
        paths = ", ".join(n.path for n in candidates)
        problems.append(
            Problem(
                RESERVED_MEMORY,
                f'several nodes are named "{name}" ({paths}): the legacy lookup is ambiguous',
                "give each pool its own loopback node instead",
            )
        )
        return []
    node = candidates[0]
    start = len(problems)
    pool = check_pool(tree, node, node.path, problems)
    if pool is not None:
        too_small = check_pool_size(pool, len(DEFAULT_DEVICES), node.path)
        if too_small is not None:
            problems.append(too_small)
    if pool is None or errors_of(problems[start:]):
        return []
    problems.append(
        Problem(
            node.path,
            f'legacy: pool found by its node name "{name}" (--legacy-pool-name), the seed\'s '
            f"hidden ABI; the bus uses the default settings",
            _lines_to_add(tree, node),
            severity=WARNING,
        )
    )
    return [_legacy_config(pool)]


def _legacy_config(pool: PoolRange) -> LoopbackConfig:
    return LoopbackConfig(
        node_path=pool.path, pool_path=pool.path, base=pool.base, size=pool.size, legacy=True
    )


def _reserved_children_named(tree: DtTree, name: str) -> list[DtNode]:
    parent = tree.node(RESERVED_MEMORY)
    if parent is None:
        return []
    return [
        child
        for path in parent.children
        if (child := tree.node(path)) is not None and child.base_name == name
    ]


def _lines_to_add(tree: DtTree, pool: DtNode) -> str:
    label = tree.label_of(pool.path)
    ref = f"&{label}" if label else f"&{{{pool.path}}}"
    text = (
        "add this node at the top level of the tree (any node name will do):\n"
        "    virtio-msg-loopback {\n"
        f'        compatible = "{COMPATIBLE}";\n'
        f"        memory-region = <{ref}>;\n"
        "    };"
    )
    if tree.format == "dtb":
        text += "\n(in the tree's source; decompile a .dtb with: dtc -I dtb -O dts FILE)"
    return text


def _full_example() -> str:
    return (
        "add a pool and a loopback node that points at it (names are free):\n"
        "    reserved-memory {\n"
        "        #address-cells = <2>;\n"
        "        #size-cells = <2>;\n"
        "        ranges;\n"
        "        vmsg_pool: dma-pool@100000000 {\n"
        f'            compatible = "{POOL_COMPATIBLE}";\n'
        "            reg = <0x1 0x00000000 0x0 0x00400000>; /* 4 MiB */\n"
        "        };\n"
        "    };\n"
        "    virtio-msg-loopback {\n"
        f'        compatible = "{COMPATIBLE}";\n'
        "        memory-region = <&vmsg_pool>;\n"
        "    };"
    )
