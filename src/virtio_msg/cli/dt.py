"""``virtio-msg dt check``, and the ``--dt`` option of ``run`` and ``bus``.

This module only parses arguments and prints; the work is in
:func:`~virtio_msg.dt.check.check_tree` and :func:`~virtio_msg.dt.loader.load_tree`.
:func:`add_parser` registers the ``dt`` command, :func:`add_dt_arguments`
adds ``--dt`` to the ``run`` and ``bus`` parsers, and their handlers turn the
parsed arguments into bus configurations with :func:`configs_from_args`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Final, TextIO

from virtio_msg.dt.binding import LoopbackConfig
from virtio_msg.dt.check import CheckReport, check_tree
from virtio_msg.dt.loader import LEGACY_POOL_NAME, load_default, load_tree

__all__ = [
    "SCHEMA_NOT_CHECKED",
    "add_dt_arguments",
    "add_parser",
    "configs_from_args",
    "format_report",
    "run_dt_check",
]

_log = logging.getLogger("virtio_msg.dt")
_LEGACY_HELP = (
    "accept a seed-era tree whose restricted-dma-pool is found only by this node name "
    f"(the seed kernel used {LEGACY_POOL_NAME!r}), with a warning; trees with a "
    "virtio,msg-loopback node never need it"
)


SCHEMA_NOT_CHECKED: Final = 3
"""``dt check``'s exit status for a tree without errors whose schema was not checked
(dtschema is not installed)."""


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Register ``dt`` (with ``dt check FILE``) on the main parser's subparsers; return it."""
    dt = subparsers.add_parser(
        "dt",
        help="device-tree configuration (the virtio,msg-loopback binding)",
        description="Device trees that describe loopback bus instances.",
    )
    dt_sub = dt.add_subparsers(dest="dt_command", metavar="COMMAND")
    check = dt_sub.add_parser(
        "check",
        help="validate a DTS or DTB against the binding",
        description=(
            "Validate FILE (DTS or DTB) against the virtio,msg-loopback binding with dtschema "
            "and the semantic checks (phandle, restricted-dma-pool, alignment, size, overlap, "
            "no-map). Exit status 0 when valid (one summary line per bus instance), 1 on any "
            "error, 3 when valid by the semantic checks but the schema was not checked "
            "because dtschema is not installed (install virtio-msg[dt])."
        ),
    )
    check.add_argument("file", metavar="FILE", help="device tree source (.dts) or blob (.dtb)")
    check.add_argument("--legacy-pool-name", metavar="NAME", help=_LEGACY_HELP)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--no-schema",
        action="store_true",
        help="skip dtschema validation (semantic checks only; needs no dtschema)",
    )
    check.set_defaults(func=run_dt_check)

    def _usage(_args: argparse.Namespace) -> int:
        dt.print_usage(sys.stderr)
        return 2

    dt.set_defaults(func=_usage)
    parser: argparse.ArgumentParser = dt
    return parser


def add_dt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dt FILE`` and ``--legacy-pool-name NAME`` to a ``run`` or ``bus`` parser."""
    parser.add_argument(
        "--dt",
        metavar="FILE",
        help="device tree (DTS or DTB) describing the loopback bus instances "
        "(default: the embedded tree, one bus with a 4 MiB pool at 0x100000000)",
    )
    parser.add_argument("--legacy-pool-name", metavar="NAME", help=_LEGACY_HELP)


def configs_from_args(args: argparse.Namespace) -> list[LoopbackConfig]:
    """Return the bus instances selected by ``--dt`` / ``--legacy-pool-name``.

    Without ``--dt`` the embedded default tree is used.  Raises
    :class:`~virtio_msg.dt.problems.DeviceTreeError` (a ``ConfigError``) whose
    message lists every problem; warnings, such as the legacy-pool warning, are
    logged to the ``virtio_msg.dt`` logger (stderr unless logging is configured).
    """
    path = getattr(args, "dt", None)
    legacy = getattr(args, "legacy_pool_name", None)
    if path is None:
        if legacy is not None:
            _log.warning("--legacy-pool-name %s ignored: it applies only with --dt", legacy)
        return load_default()
    return load_tree(path, legacy_pool_name=legacy)


def run_dt_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handle ``dt check``: print the report; return the exit status.

    0 when valid, 1 on any error, :data:`SCHEMA_NOT_CHECKED` (3) when no error
    was found but dtschema is not installed, so the schema was not checked.
    """
    out = out or sys.stdout
    report = check_tree(
        args.file,
        legacy_pool_name=args.legacy_pool_name,
        schema=not getattr(args, "no_schema", False),
    )
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(format_report(report), file=out)
    if not report.ok:
        return 1
    return SCHEMA_NOT_CHECKED if report.schema_missing else 0


def format_report(report: CheckReport) -> str:
    """Return the human-readable form of ``report``: problems with hints, then a summary."""
    lines: list[str] = []
    for problem in report.problems:
        lines.append(f"{report.source}: {problem}")
        hint = problem.hint.splitlines()
        if hint:
            lines.append(f"    hint: {hint[0]}")
            lines.extend(f"    {line}" for line in hint[1:])
    if report.ok:
        lines.extend(f"{report.source}: bus {i}: {s}" for i, s in enumerate(report.summaries))
        if report.schema_missing:
            lines.append(
                f"{report.source}: valid by the semantic checks; schema not checked "
                "(install virtio-msg[dt])"
            )
        elif not report.schema_checked:
            lines.append(f"{report.source}: note: schema validation skipped (--no-schema)")
    else:
        errors, warnings = len(report.errors), len(report.warnings)
        lines.append(f"{report.source}: invalid: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)
