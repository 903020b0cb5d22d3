"""Validating a DTB against the binding with dtschema's ``dt-validate``.

Strategy: dtschema is the reference validator of dt-schema bindings, so ``dt
check`` runs it rather than re-implementing JSON-schema rules.  It runs as a
child process of the *same* interpreter (``dtschema.dtb_validate.main``), which
keeps its module globals, stderr chatter and any crash out of our process.  The
validation is limited (``-l``) to the schemas that concern a loopback bus: the
binding shipped in ``virtio_msg/data/`` and dtschema's own reserved-memory
schemas (which cover ``restricted-dma-pool``); nodes of other bindings, which
dtschema alone cannot type, are not validated.

``dt-validate`` exits 0 even when it finds errors (peers.md §16.5), so the
result is read only from its ``--json-output`` file: a list of diagnostics with
``level``, ``node``, ``property_path``, ``schema`` and ``message``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "SCHEMA_LIMIT",
    "VALIDATE_TIMEOUT_S",
    "SchemaDiagnostic",
    "SchemaUnavailable",
    "binding_path",
    "dtschema_available",
    "validate_dtb",
]

SCHEMA_LIMIT: Final = "virtio,msg-loopback.yaml:/reserved-memory/"
"""``dt-validate -l``: schema ``$id`` substrings to apply (the binding, reserved memory)."""
VALIDATE_TIMEOUT_S: Final = 120
"""dt-validate takes about a second here; this only stops a hang."""
_RUNNER: Final = (
    "import sys; sys.argv[0] = 'dt-validate'; from dtschema.dtb_validate import main; main()"
)


class SchemaUnavailable(RuntimeError):
    """dtschema is not installed, or could not run; the message says which and how to fix it."""


class SchemaMissing(SchemaUnavailable):
    """dtschema is not installed: the schema was not checked (not a fault of the tree)."""


@dataclass(frozen=True, slots=True)
class SchemaDiagnostic:
    """One diagnostic of ``dt-validate``: node path, first property, schema ``$id``, message."""

    node: str
    prop: str | None
    schema: str
    message: str
    level: str


def binding_path() -> Path:
    """Return the binding YAML shipped with the package (a copy of the one in docs/bindings)."""
    return Path(__file__).resolve().parent.parent / "data" / "virtio,msg-loopback.yaml"


def dtschema_available() -> bool:
    """Return whether this interpreter can import the ``dtschema`` package."""
    return importlib.util.find_spec("dtschema") is not None


def validate_dtb(dtb: bytes, *, schema: Path | None = None) -> list[SchemaDiagnostic]:
    """Validate flattened-tree bytes against ``schema`` (default: the shipped binding).

    Return every diagnostic dt-validate reports; raise :class:`SchemaUnavailable`
    when dtschema is missing or fails to produce its JSON report.
    """
    if not dtschema_available():
        raise SchemaMissing(
            "dtschema is not installed: schema validation needs it "
            "(pip install 'virtio-msg[dt]', or pip install dtschema)"
        )
    schema = schema or binding_path()
    with tempfile.TemporaryDirectory(prefix="virtio-msg-dt-") as tmp:
        dtb_file = Path(tmp) / "tree.dtb"
        out_file = Path(tmp) / "report.json"
        dtb_file.write_bytes(dtb)
        cmd = [
            sys.executable,
            "-c",
            _RUNNER,
            "-l",
            SCHEMA_LIMIT,
            "-s",
            str(schema),
            "--json-output",
            str(out_file),
            str(dtb_file),
        ]
        try:
            done = subprocess.run(
                cmd, capture_output=True, timeout=VALIDATE_TIMEOUT_S, check=False, cwd=tmp
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SchemaUnavailable(f"running dt-validate failed: {exc}") from None
        stderr = done.stderr.decode("utf-8", "replace")
        if "ignoring" in stderr and schema.name in stderr:
            raise SchemaUnavailable(f"dtschema refused the binding {schema}: {_tail(stderr)}")
        try:
            report = json.loads(out_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SchemaUnavailable(
                f"dt-validate (exit status {done.returncode}) wrote no report: {_tail(stderr)}"
            ) from None
    if not isinstance(report, list):
        raise SchemaUnavailable("dt-validate wrote a report that is not a list")
    return [d for item in report if (d := _diagnostic(item)) is not None]


def _diagnostic(item: object) -> SchemaDiagnostic | None:
    if not isinstance(item, dict):
        return None
    path = item.get("property_path")
    prop = path[0] if isinstance(path, list) and path and isinstance(path[0], str) else None
    return SchemaDiagnostic(
        node=str(item.get("node") or "/"),
        prop=prop,
        schema=str(item.get("schema") or ""),
        message=str(item.get("message") or "schema violation"),
        level=str(item.get("level") or "error"),
    )


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"
