"""The one-way import rule (ARCHITECTURE 2), checked on the source.

Layers, bottom to top: spec/errors, wire, memory, virtqueue, transport,
devices/drivers, bus, dt, and the top-level composition modules (runner, cli,
testing and the command modules).  A module may import its own layer and the
layers below it, never above.  Below bus/ nothing performs I/O: no sockets,
selectors, subprocesses or threads are created there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import virtio_msg

ROOT = Path(virtio_msg.__file__).parent
LAYERS = {
    "spec": 0,
    "errors": 0,
    "wire": 1,
    "memory": 2,
    "virtqueue": 3,
    "transport": 4,
    "devices": 5,
    "drivers": 5,
    "bus": 6,
    "dt": 7,
}
TOP = 8
IO_MODULES = {"socket", "selectors", "subprocess", "multiprocessing", "asyncio"}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "virtio_msg":
        raise ValueError(module)
    if len(parts) == 1:
        return TOP
    return LAYERS.get(parts[1], TOP)


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out.append((name, path))
    return out


def imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "virtio_msg":  # from virtio_msg import spec -> virtio_msg.spec
                found += [(f"virtio_msg.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def threads_started(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "Thread"
    ]


@pytest.mark.parametrize("name,path", modules(), ids=[m for m, _ in modules()])
def test_imports_flow_downward_only(name: str, path: Path) -> None:
    mine = layer_of(name)
    bad = [
        f"line {line}: {target} (layer {layer_of(target)})"
        for target, line in imports(path)
        if target.startswith("virtio_msg") and layer_of(target) > mine
    ]
    assert not bad, f"{name} (layer {mine}) imports upward: {bad}"


@pytest.mark.parametrize(
    "name,path",
    [(m, p) for m, p in modules() if layer_of(m) < LAYERS["bus"]],
    ids=[m for m, p in modules() if layer_of(m) < LAYERS["bus"]],
)
def test_no_io_below_bus(name: str, path: Path) -> None:
    bad = [f"line {line}: {t}" for t, line in imports(path) if t.split(".")[0] in IO_MODULES]
    bad += [f"line {line}: creates a thread" for line in threads_started(path)]
    assert not bad, f"{name} is below bus/ but does I/O: {bad}"


def test_the_rule_is_checked_on_real_modules() -> None:
    names = {m for m, _ in modules()}
    assert {"virtio_msg.wire.codec", "virtio_msg.bus.loopback", "virtio_msg.cli"} <= names
    assert layer_of("virtio_msg.wire.codec") < layer_of("virtio_msg.memory.region")
