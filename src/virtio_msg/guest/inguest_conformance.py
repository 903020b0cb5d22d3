"""The driver conformance suite inside the guest: the kernel's own virtio-msg transport judged.

Run by :mod:`virtio_msg.guest.inguest` after its device checks (``--conformance``),
once the checks' backend has REMOVEd its devices: ``virtio-msg conformance
driver --kernel --json`` serves the suite's device models behind the kernel
channel, so the Linux transport driver and the kernel's virtio drivers are what
is checked against the DRV- requirements.  Its report is printed on the console
as one ``VMSG-CONFORMANCE {json}`` line and summed up as the ``conformance``
check.  The run is bounded; a tool that fails to start or prints no report is
a failed check quoting its last output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def summarize(report: dict[str, Any]) -> tuple[bool, str]:
    """(ok, one-line detail) for a conformance report: counts and the failed scenarios."""
    counts = report.get("counts", {})
    failed = [
        f"{r.get('scenario')} [{','.join(r.get('ids', []))}] ({r.get('target')})"
        for r in report.get("results", [])
        if r.get("outcome") == "fail"
    ]
    detail = (
        f"{report.get('suite')} conformance ({report.get('profile')}): "
        f"{counts.get('pass', 0)} passed, {counts.get('fail', 0)} failed, "
        f"{counts.get('lenient', 0)} lenient, {counts.get('skip', 0)} skipped"
    )
    if failed:
        detail += "; failed: " + "; ".join(failed[:12]) + (" ..." if len(failed) > 12 else "")
    return bool(report.get("ok")) and not failed, detail


def run_conformance(types: Sequence[str], timeout: float) -> tuple[bool, str, dict[str, Any]]:
    """Run the driver suite behind the kernel channel; (ok, detail, report or {})."""
    cmd = [
        sys.executable, "-m", "virtio_msg", "conformance", "driver", "--kernel", "--json",
        "--types", ",".join(types),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"conformance driver --kernel gave no report within {timeout:.0f} s", {}
    report: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                continue
            break
    if not report:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-300:]
        return False, f"conformance driver --kernel exited {proc.returncode}: {tail}", {}
    ok, detail = summarize(report)
    return ok, detail, report
