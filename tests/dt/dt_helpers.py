"""Helpers for the device-tree tests: writing trees to files, compiling them.

Trees are written as DTS and compiled by dtc (Debian ``device-tree-compiler``);
a test that needs dtc or dtschema skips with a reason when the tool is missing.
Each test module wraps these in its own small fixtures (a second conftest.py
would collide with the other test directories' under mypy).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

WriteDts = Callable[[str, str], Path]
CompileDtb = Callable[[Path], Path]

ROOT_TEMPLATE = """/dts-v1/;

/ {{
\tmodel = "test";
\tcompatible = "acme,test-board";
\t#address-cells = <2>;
\t#size-cells = <2>;
{body}
}};
"""


def need_dtc() -> str:
    """Return dtc's path, or skip the test when it is not installed."""
    dtc = shutil.which("dtc")
    if dtc is None:
        pytest.skip("dtc is not installed (Debian package device-tree-compiler)")
    return dtc


def need_dtschema() -> None:
    """Skip the test when dtschema is not installed."""
    pytest.importorskip("dtschema", reason="dtschema is not installed (pip install dtschema)")


def dts_writer(directory: Path) -> WriteDts:
    """Return ``write(body, name)``: a DTS file in ``directory`` whose root node holds ``body``."""
    need_dtc()

    def write(body: str, name: str) -> Path:
        path = directory / name
        path.write_text(ROOT_TEMPLATE.format(body=body), encoding="utf-8")
        return path

    return write


def dtb_compiler() -> CompileDtb:
    """Return ``compile(dts)``: the DTB that dtc makes of ``dts``, written beside it."""
    dtc = need_dtc()

    def compile_(dts: Path) -> Path:
        out = dts.with_suffix(".dtb")
        subprocess.run([dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(dts)], check=True)
        return out

    return compile_
