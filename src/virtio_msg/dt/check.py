"""``dt check``: everything known about a tree, as one report.

Strategy: three sources of problems, one list.  Reading (dtc's errors and
warnings, a malformed DTB), the schema (dtschema's ``dt-validate`` against the
binding, see :mod:`virtio_msg.dt.schema`) and the semantic checks of the binding
(:func:`virtio_msg.dt.loader.analyze`: phandle resolves, target is a
restricted-dma-pool, page alignment, size for the devices, no overlap, no
``no-map``, legacy trees).  Schema diagnostics on the loopback nodes, their
pools and ``/reserved-memory`` are errors; on any other node they are warnings
(that node belongs to another binding).  A schema diagnostic that repeats a
semantic error on the same node and property is dropped: the semantic message
says the same thing with a hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from virtio_msg.dt.binding import (
    BINDING_DOC,
    COMPATIBLE,
    POOL_FORBIDDEN_PROPERTIES,
    PROP_MEMORY_REGION,
    LoopbackConfig,
)
from virtio_msg.dt.loader import analyze
from virtio_msg.dt.pool import RESERVED_MEMORY
from virtio_msg.dt.problems import (
    ERROR,
    WARNING,
    DeviceTreeError,
    Problem,
    Severity,
    errors_of,
)
from virtio_msg.dt.schema import SchemaDiagnostic, SchemaMissing, SchemaUnavailable, validate_dtb
from virtio_msg.dt.tree import DtTree, PropertyTypeError, prop_u32s, read_tree

__all__ = ["CheckReport", "check_tree"]

_FALSE_SCHEMA: Final = "False schema does not allow True"
"""dtschema's wording when a forbidden property (no-map, reusable on a pool) is present."""
_UNEXPECTED: Final = re.compile(r"^((?:'[^']+'(?:, )?)+) (?:does|do) not match any of the regexes")
"""dtschema's wording for a property that additionalProperties: false rejects."""


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The result of checking one tree.

    ``problems`` holds every error and warning in tree order; ``configs`` the
    bus instances :func:`~virtio_msg.dt.loader.load_tree` would return (empty
    when there is any error); ``schema_checked`` tells whether dtschema ran and
    ``schema_missing`` whether it could not because dtschema is not installed
    (a warning: a missing tool says nothing about the tree).
    """

    source: str
    format: str | None
    problems: tuple[Problem, ...]
    configs: tuple[LoopbackConfig, ...] = field(default=())
    schema_checked: bool = False
    schema_missing: bool = False

    @property
    def ok(self) -> bool:
        """True when no problem is an error."""
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity "error"."""
        return errors_of(self.problems)

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity "warning"."""
        return [p for p in self.problems if not p.is_error]

    @property
    def summaries(self) -> list[str]:
        """One line per bus instance (empty when the tree has errors)."""
        return [c.summary() for c in self.configs]

    def to_json(self) -> dict[str, object]:
        """Return the report as plain JSON-ready data (``dt check --json``)."""
        return {
            "file": self.source,
            "format": self.format,
            "valid": self.ok,
            "schema_checked": self.schema_checked,
            "schema_missing": self.schema_missing,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.to_json() for p in self.problems],
            "instances": [c.to_json() for c in self.configs],
        }


def check_tree(
    path: str | Path, *, legacy_pool_name: str | None = None, schema: bool = True
) -> CheckReport:
    """Check the DTS or DTB at ``path`` against the binding; never raises for a bad tree.

    ``schema=False`` skips dtschema (semantic checks only).  Without dtschema
    installed, "schema not checked" is a warning with the fix (``schema_missing``);
    a dtschema that is installed but fails to run is an error.
    """
    source = str(path)
    try:
        tree = read_tree(path)
    except DeviceTreeError as exc:
        return CheckReport(source, None, exc.problems)
    configs, problems = analyze(tree, legacy_pool_name=legacy_pool_name)
    problems = list(tree.warnings) + problems
    checked = missing = False
    if schema:
        try:
            diagnostics = validate_dtb(tree.dtb)
            checked = True
        except SchemaMissing as exc:
            missing = True
            problems.append(
                Problem(
                    "/",
                    f"schema not checked (install virtio-msg[dt]): {exc}",
                    "the semantic checks ran; pass --no-schema to skip the schema on purpose",
                    "warning",
                    source="schema",
                )
            )
        except SchemaUnavailable as exc:
            problems.append(
                Problem(
                    "/",
                    f"schema validation did not run: {exc}",
                    "install dtschema, or pass --no-schema to run only the semantic checks",
                    source="schema",
                )
            )
        else:
            problems.extend(_schema_problems(tree, diagnostics, problems))
    problems = _in_tree_order(tree, problems)
    ok = not errors_of(problems)
    return CheckReport(
        source, tree.format, tuple(problems), tuple(configs) if ok else (), checked, missing
    )


def _relevant_nodes(tree: DtTree) -> set[str]:
    """Paths whose schema errors are ours: loopback nodes, their pools, /reserved-memory."""
    paths = {RESERVED_MEMORY}
    for node in tree.find_compatible(COMPATIBLE):
        paths.add(node.path)
        raw = node.props.get(PROP_MEMORY_REGION)
        try:
            handles = prop_u32s(raw) if raw is not None else []
        except PropertyTypeError:
            handles = []
        for handle in handles:
            target = tree.by_phandle(handle)
            if target is not None:
                paths.add(target.path)
    # Legacy trees: the seed's pool is ours too.
    reserved = tree.node(RESERVED_MEMORY)
    if reserved is not None:
        paths.update(reserved.children)
    return paths


def _schema_problems(
    tree: DtTree, diagnostics: list[SchemaDiagnostic], semantic: list[Problem]
) -> list[Problem]:
    relevant = _relevant_nodes(tree)
    covered = {(p.node, p.prop) for p in semantic if p.is_error}
    nodes_with_errors = {p.node for p in semantic if p.is_error}
    found: list[Problem] = []
    for diag in (one for each in diagnostics for one in _split_unexpected(each)):
        if diag.prop is not None and (diag.node, diag.prop) in covered:
            continue
        if diag.prop is None and diag.message == _FALSE_SCHEMA and diag.node in nodes_with_errors:
            continue
        ours = diag.node in relevant
        severity: Severity = ERROR if ours and diag.level == "error" else WARNING
        if "virtio,msg-loopback" in diag.schema:
            hint = f"see the binding, {BINDING_DOC}"
        elif "reserved-memory" in diag.schema:
            hint = f"see dtschema's {diag.schema.rsplit('/schemas/', 1)[-1]}"
        else:
            hint = ""
        message = diag.message
        if diag.message == _FALSE_SCHEMA:
            node = tree.node(diag.node)
            present = [p for p in POOL_FORBIDDEN_PROPERTIES if node is not None and node.has(p)]
            what = ", ".join(present) or "a property"
            message = f"{what}: forbidden on this node by its schema ({_FALSE_SCHEMA})"
        found.append(Problem(diag.node, message, hint, severity, diag.prop, source="schema"))
    return found


def _split_unexpected(diag: SchemaDiagnostic) -> list[SchemaDiagnostic]:
    """Turn "'a', 'b' do not match any of the regexes" into one diagnostic per property."""
    match = _UNEXPECTED.match(diag.message)
    if diag.prop is not None or match is None:
        return [diag]
    names = re.findall(r"'([^']+)'", match[1])
    return [
        SchemaDiagnostic(
            diag.node,
            name,
            diag.schema,
            "not allowed by the schema (additionalProperties: false)",
            diag.level,
        )
        for name in names
    ]


def _in_tree_order(tree: DtTree, problems: list[Problem]) -> list[Problem]:
    order = {path: i for i, path in enumerate(tree.nodes)}
    return sorted(problems, key=lambda p: order.get(p.node, -1))
