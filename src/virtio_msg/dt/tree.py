"""Reading a device tree file (DTS or DTB) into a small, typed, read-only tree.

Strategy: one path for every input.  A DTS is compiled by ``dtc`` (Debian's
``device-tree-compiler``; ``-@`` so labels survive in ``/__symbols__`` and hints
can name them); a DTB, given or compiled, is parsed by the pure-Python ``fdt``
package from PyPI, so the embedded default tree loads with no Debian package at
all.  The untyped ``fdt`` objects are copied at once into :class:`DtTree`: nodes
by full path in document order, each property as its raw big-endian bytes,
phandles and labels indexed.  The rest of the package never sees ``fdt``.

The file is untrusted: every failure of ``dtc`` or ``fdt`` (which raises bare
``Exception`` and fails ``assert`` statements) becomes a :class:`~virtio_msg.dt.problems.Problem`
and then a :class:`~virtio_msg.dt.problems.DeviceTreeError` naming the file.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from virtio_msg.dt.problems import DeviceTreeError, Problem, Severity

__all__ = [
    "DTB_MAGIC",
    "DTC_TIMEOUT_S",
    "MAX_TREE_BYTES",
    "DtNode",
    "DtTree",
    "PropertyTypeError",
    "TreeFormat",
    "compile_dts",
    "detect_format",
    "parse_dtb",
    "parse_fdt",
    "prop_strings",
    "prop_u32s",
    "read_tree",
]

DTB_MAGIC: Final = b"\xd0\x0d\xfe\xed"
"""First four bytes of every flattened device tree."""
MAX_TREE_BYTES: Final = 4 * 1024 * 1024
"""Largest file accepted: QEMU pads its DTBs to 1 MiB; real trees are far smaller."""
DTC_TIMEOUT_S: Final = 60
"""dtc compiles a kernel-sized DTS in well under a second; this only stops a hang."""
_U32: Final = struct.Struct(">I")

TreeFormat = Literal["dts", "dtb"]

# dtc diagnostics: "file.dts:12.3-15.5: Warning (unit_address_vs_reg): /node@1: message"
# or, for a property, "... Warning (clocks_property): /pl011@9000000:clocks: message".
_DTC_DIAG: Final = re.compile(
    r"^(?P<loc>\S+): (?P<sev>ERROR|Warning) \((?P<check>[^)]+)\): "
    r"(?P<node>/[^:\s]*)(?::(?P<prop>[^:\s]+))?: (?P<msg>.*)$"
)
_DTC_FAILURE: Final = re.compile(r"error|fatal", re.IGNORECASE)


class PropertyTypeError(ValueError):
    """A property's bytes do not have the shape the binding requires."""


@dataclass(frozen=True, slots=True)
class DtNode:
    """One node: full ``path``, ``name`` (with unit address), raw ``props``, ``children`` paths."""

    path: str
    name: str
    parent: str | None
    props: Mapping[str, bytes]
    children: tuple[str, ...]

    @property
    def base_name(self) -> str:
        """The node name without its unit address (``vmsglb`` for ``vmsglb@100000000``)."""
        return self.name.split("@", 1)[0]

    def has(self, prop: str) -> bool:
        """Return whether the node has property ``prop`` (of any value, even empty)."""
        return prop in self.props

    def compatibles(self) -> list[str]:
        """Return the node's ``compatible`` strings; an empty list when absent or malformed."""
        raw = self.props.get("compatible")
        if raw is None:
            return []
        try:
            return prop_strings(raw)
        except PropertyTypeError:
            return []

    def is_enabled(self) -> bool:
        """DT status rule: no ``status``, "okay" or "ok" means enabled."""
        raw = self.props.get("status")
        if raw is None:
            return True
        try:
            values = prop_strings(raw)
        except PropertyTypeError:
            return False
        return len(values) == 1 and values[0] in ("okay", "ok")


@dataclass(frozen=True, slots=True)
class DtTree:
    """A whole tree, read-only: ``nodes`` by path in document order, plus indexes.

    ``source`` names the file it came from; ``format`` is "dts" or "dtb";
    ``dtb`` holds the flattened bytes (compiled, for a DTS); ``warnings`` are
    what ``dtc`` reported while compiling.
    """

    source: str
    format: TreeFormat
    dtb: bytes
    nodes: Mapping[str, DtNode]
    phandles: Mapping[int, str]
    labels: Mapping[str, tuple[str, ...]]
    warnings: tuple[Problem, ...] = field(default=())

    def node(self, path: str) -> DtNode | None:
        """Return the node at ``path``, or ``None``."""
        return self.nodes.get(path)

    def walk(self) -> Iterator[DtNode]:
        """Yield every node in document order."""
        yield from self.nodes.values()

    def find_compatible(self, compatible: str) -> list[DtNode]:
        """Return every node whose compatible list contains ``compatible``, in document order."""
        return [n for n in self.nodes.values() if compatible in n.compatibles()]

    def by_phandle(self, phandle: int) -> DtNode | None:
        """Return the node whose ``phandle`` is ``phandle``, or ``None``."""
        path = self.phandles.get(phandle)
        return self.nodes.get(path) if path is not None else None

    def label_of(self, path: str) -> str | None:
        """Return the first label of the node at ``path`` (DTS input only), or ``None``."""
        labels = self.labels.get(path, ())
        return labels[0] if labels else None


def prop_u32s(raw: bytes) -> list[int]:
    """Decode a property as big-endian 32-bit cells; raise if its length is not 4·n, n ≥ 1."""
    if not raw or len(raw) % 4:
        raise PropertyTypeError(f"expected 32-bit cells, got {len(raw)} byte(s)")
    return [v for (v,) in _U32.iter_unpack(raw)]


def prop_strings(raw: bytes) -> list[str]:
    """Decode a property as a list of NUL-terminated printable strings; raise otherwise."""
    if not raw or raw[-1] != 0:
        raise PropertyTypeError("expected NUL-terminated string(s)")
    parts = raw[:-1].split(b"\0")
    try:
        strings = [p.decode("ascii") for p in parts]
    except UnicodeDecodeError:
        raise PropertyTypeError("expected ASCII string(s)") from None
    if any(not s or not s.isprintable() for s in strings):
        raise PropertyTypeError("expected non-empty printable string(s)")
    return strings


def detect_format(path: Path, head: bytes) -> TreeFormat:
    """Tell DTB from DTS: by the DTB magic first, then by the file extension."""
    if head.startswith(DTB_MAGIC):
        return "dtb"
    if path.suffix.lower() in (".dtb", ".dtbo"):
        return "dtb"  # claimed DTB without the magic: parse_dtb reports it
    return "dts"


def read_tree(path: str | Path) -> DtTree:
    """Read a DTS or DTB file into a :class:`DtTree`; raise :class:`DeviceTreeError` if unusable."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_TREE_BYTES:
            raise DeviceTreeError(
                source,
                [
                    Problem(
                        "/",
                        f"file is {size} bytes, larger than the {MAX_TREE_BYTES} accepted",
                        "give the tree itself, not an image that contains it",
                        source="read",
                    )
                ],
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DeviceTreeError(
            source,
            [Problem("/", f"cannot read the file: {exc.strerror or exc}", source="read")],
        ) from None
    fmt = detect_format(path, data[:4])
    warnings: tuple[Problem, ...] = ()
    if fmt == "dts":
        data, warnings = compile_dts(path)
    return parse_dtb(data, source=source, fmt=fmt, warnings=warnings)


def compile_dts(path: Path) -> tuple[bytes, tuple[Problem, ...]]:
    """Compile the DTS at ``path`` with ``dtc``; return the DTB and dtc's warnings.

    Raise :class:`DeviceTreeError` when dtc is missing (with the package to
    install) or rejects the source (with each of its messages).
    """
    source = str(path)
    dtc = shutil.which("dtc")
    if dtc is None:
        raise DeviceTreeError(
            source,
            [
                Problem(
                    "/",
                    "reading a DTS needs the device tree compiler 'dtc', which is not installed",
                    "install it (Debian/Ubuntu: apt-get install device-tree-compiler; "
                    "Fedora: dnf install dtc), or give a compiled .dtb instead",
                    source="read",
                )
            ],
        )
    cmd = [dtc, "-@", "-I", "dts", "-O", "dtb", "-i", str(path.parent), str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=DTC_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeviceTreeError(
            source, [Problem("/", f"running dtc failed: {exc}", source="read")]
        ) from None
    diagnostics = _dtc_diagnostics(done.stderr.decode("utf-8", "replace"))
    if done.returncode != 0 or not done.stdout:
        errors = [p for p in diagnostics if p.is_error] or [
            Problem("/", f"dtc failed with exit status {done.returncode}", source="read")
        ]
        hint = (
            "fix the source at the location dtc names; "
            "run the C preprocessor first if it uses #include"
        )
        errors = [p if p.hint else _with_hint(p, hint) for p in errors]
        raise DeviceTreeError(source, errors)
    return done.stdout, tuple(p for p in diagnostics if not p.is_error)


def _with_hint(problem: Problem, hint: str) -> Problem:
    return Problem(
        problem.node, problem.message, hint, problem.severity, problem.prop, problem.source
    )


def _dtc_diagnostics(stderr: str) -> list[Problem]:
    problems: list[Problem] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith("ERROR: Input tree has errors"):
            continue
        match = _DTC_DIAG.match(line)
        if match:
            severity: Severity = "error" if match["sev"] == "ERROR" else "warning"
            message = f"{match['msg']} (dtc {match['check']} at {match['loc']})"
            problems.append(
                Problem(
                    match["node"], message, severity=severity, prop=match["prop"], source="read"
                )
            )
        else:
            severity = "error" if _DTC_FAILURE.search(line) else "warning"
            problems.append(Problem("/", f"dtc: {line}", severity=severity, source="read"))
    return problems


def parse_fdt(data: bytes) -> Any:
    """``fdt.parse_dtb(data)``, its ``/memreserve/`` list this blob's own.

    ``fdt`` 0.3.3 gives every ``FDT()`` the same default ``entries`` list, so each
    parse appends its memory reservations to one list shared by every tree parsed
    in the process: after a malformed blob (whose header points the reservation
    block into the structure block) every later tree, written back with
    ``to_dtb``, carries garbage ``/memreserve/`` entries, one of which can reserve
    all of RAM.  The shared list is emptied before and after the parse, and the
    tree gets a copy of what this blob holds.  Exceptions are ``fdt``'s own.
    """
    import fdt  # type: ignore[import-untyped]

    shared = fdt.FDT().entries  # the default list (a fresh one once fdt is fixed)
    shared.clear()
    try:
        parsed = fdt.parse_dtb(data)
        parsed.entries = list(parsed.entries)
        return parsed
    finally:
        shared.clear()


def parse_dtb(
    data: bytes,
    *,
    source: str = "<dtb>",
    fmt: TreeFormat = "dtb",
    warnings: tuple[Problem, ...] = (),
) -> DtTree:
    """Parse flattened-tree bytes with the ``fdt`` package into a :class:`DtTree`.

    Raise :class:`DeviceTreeError` when the bytes are not a well-formed DTB.
    """
    try:
        import fdt  # noqa: F401 - availability check
    except ImportError:  # pragma: no cover - fdt is a runtime dependency
        raise DeviceTreeError(
            source,
            [
                Problem(
                    "/",
                    "the Python package 'fdt' is not installed",
                    "pip install fdt",
                    source="read",
                )
            ],
        ) from None
    if not data.startswith(DTB_MAGIC):
        raise DeviceTreeError(
            source,
            [
                Problem(
                    "/",
                    "not a flattened device tree: the DTB magic 0xd00dfeed is missing",
                    "give a .dtb produced by dtc, or a .dts source",
                    source="read",
                )
            ],
        )
    try:
        parsed = parse_fdt(bytes(data))
        root = parsed.root
        if root is None:
            raise ValueError("the structure block holds no root node")
        return _build_tree(root, source=source, fmt=fmt, dtb=bytes(data), warnings=warnings)
    except DeviceTreeError:
        raise
    except Exception as exc:  # fdt raises bare Exception, AssertionError, struct.error, ...
        hint = "recompile the tree with dtc (dtc -I dtb -O dtb -o fixed.dtb FILE)"
        if "Unknown Tag: 4" in str(exc):
            hint = (
                "the DTB holds FDT_NOP tags (left by in-place editing); "
                "rewrite it with dtc -I dtb -O dtb -o fixed.dtb FILE"
            )
        raise DeviceTreeError(
            source,
            [Problem("/", f"malformed DTB: {exc or type(exc).__name__}", hint, source="read")],
        ) from None


def _raw_value(prop: Any) -> bytes:
    """Rebuild a property's raw bytes from fdt's guessed type (the guess is lossless)."""
    import fdt

    if isinstance(prop, fdt.PropStrings):
        return b"".join(s.encode("ascii") + b"\0" for s in prop.data)
    if isinstance(prop, fdt.PropWords):
        return b"".join(_U32.pack(w) for w in prop.data)
    if isinstance(prop, fdt.PropBytes):
        return bytes(prop.data)
    return b""


def _build_tree(
    root: Any, *, source: str, fmt: TreeFormat, dtb: bytes, warnings: tuple[Problem, ...]
) -> DtTree:
    nodes: dict[str, DtNode] = {}
    problems: list[Problem] = []
    # Iterative walk: a hostile DTB may nest deeper than Python's recursion limit.
    stack: list[tuple[Any, str, str | None]] = [(root, "/", None)]
    order: list[tuple[Any, str, str | None]] = []
    while stack:
        item, path, parent = stack.pop()
        order.append((item, path, parent))
        prefix = "" if path == "/" else path
        stack.extend((child, f"{prefix}/{child.name}", path) for child in reversed(item.nodes))
    for item, path, parent in order:
        prefix = "" if path == "/" else path
        props = {p.name: _raw_value(p) for p in item.props}
        children = tuple(f"{prefix}/{child.name}" for child in item.nodes)
        name = "/" if path == "/" else str(item.name)
        nodes[path] = DtNode(path, name, parent, props, children)
    phandles: dict[int, str] = {}
    for node in nodes.values():
        for key in ("phandle", "linux,phandle"):
            raw = node.props.get(key)
            if raw is None:
                continue
            if len(raw) != 4:
                problems.append(
                    Problem(node.path, "phandle is not one 32-bit cell", prop=key, source="read")
                )
                break
            (value,) = _U32.unpack(raw)
            other = phandles.get(value)
            if other is not None and other != node.path:
                problems.append(
                    Problem(
                        node.path,
                        f"phandle {value:#x} is also used by {other}",
                        "every phandle must be unique; let dtc assign them from labels",
                        prop=key,
                        source="read",
                    )
                )
            phandles.setdefault(value, node.path)
            break
    if problems:
        raise DeviceTreeError(source, problems)
    return DtTree(
        source=source,
        format=fmt,
        dtb=dtb,
        nodes=nodes,
        phandles=phandles,
        labels=_labels(nodes),
        warnings=warnings,
    )


def _labels(nodes: Mapping[str, DtNode]) -> dict[str, tuple[str, ...]]:
    """Read ``/__symbols__`` (label = "/path") into path -> labels; junk entries are skipped."""
    symbols = nodes.get("/__symbols__")
    labels: dict[str, list[str]] = {}
    if symbols is None:
        return {}
    for label, raw in symbols.props.items():
        try:
            values = prop_strings(raw)
        except PropertyTypeError:
            continue
        if len(values) == 1 and values[0] in nodes:
            labels.setdefault(values[0], []).append(label)
    return {path: tuple(names) for path, names in labels.items()}
