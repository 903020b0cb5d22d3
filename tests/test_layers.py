"""The one-way import rule (ARCHITECTURE 2), checked on the source.

Layers, bottom to top: spec/errors, wire, memory, virtqueue, transport,
devices/drivers, bus/vhost (the layer that does I/O), dt/exports, the
composition (compose/, streams, testing), and the command line (cli/).  A
module may import its own layer and the layers below it, never above.  Below
bus/ nothing performs I/O: no sockets, selectors, subprocesses or threads are
created there.  And no module imports itself through others: the package's
import graph has no cycle.
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
    "vhost": 6,
    "dt": 7,
    "exports": 7,
    "compose": 8,
    "capture": 8,
    "conformance": 8,
    "streams": 8,
    "testing": 8,
    "guest": 8,
    "cli": 9,
}
TOP = 9
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


def resolve(target: str, known: set[str]) -> str | None:
    """The package module an import target names (``a.b.Name`` -> ``a.b``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports (anywhere in its body).

    ``from pkg import name`` points at ``pkg.name`` when that is a module
    (a submodule import), else at ``pkg``.
    """
    known = {m for m, _ in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules():
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in known else node.module)
        edges = {
            found
            for target in targets
            if target.startswith("virtio_msg")
            and (found := resolve(target, known)) is not None
            and found != name
        }
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
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


def test_no_import_cycle_in_the_package() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles (each list imports itself through the others): {found}"


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_over_600_lines() -> None:
    long = {m: n for m, p in modules() if (n := len(p.read_text().splitlines())) >= 600}
    assert not long, f"modules at or over the 600-line guide: {long}"
