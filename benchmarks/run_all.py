"""Run every benchmark with ``--json`` and print all their figures in one table.

Run: ``python benchmarks/run_all.py [--quick] [--only NAME,...] [--native] [--json]``

Each benchmark runs in its own process (``nice``-d, so shared machines stay
usable); its JSON lines are collected and printed as one table with the load
average next to every figure, or, with ``--json``, as JSON lines again.
``--quick`` passes each benchmark small sizes (seconds, not minutes; noisier
figures); ``--native`` also times the compiled pool prototype (``bench_pool.py
--native``).  A benchmark that fails or is skipped (vhost-user blk needs
qemu-storage-daemon) is reported and the others still run; the exit status is 1
if any failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from figures import Figure, emit

HERE = Path(__file__).resolve().parent
# name -> (script, arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "codec": ("bench_codec.py", ["--seconds", "0.05"]),
    "bus": ("bench_bus.py", ["--requests", "10000"]),
    "scale": ("bench_scale.py", ["--requests", "3000", "--rounds", "3"]),
    "pool": ("bench_pool.py", ["--rounds", "3", "--budget", "0.01"]),
    "virtqueue": ("bench_virtqueue.py", ["--rounds", "3", "--budget", "0.01"]),
    "packed": ("bench_packed.py", ["--rounds", "2", "--loops", "5", "--ops", "128"]),
    "blk": ("bench_blk.py", ["--size-mib", "8", "--ops", "500", "--repeat", "1"]),
    "socket": ("bench_socket.py", ["--requests", "1000", "--rounds", "3"]),
    "opcount": ("opcount.py", []),
    "vhost-blk": ("bench_vhost_blk.py", ["--size-mib", "8", "--ops", "500", "--repeat", "1"]),
}


def run_one(script: str, extra: list[str], timeout: float) -> tuple[list[Figure], str]:
    """The figures one benchmark printed, and an error text ("" if it succeeded)."""
    cmd = [sys.executable, str(HERE / script), "--json", *extra]
    if shutil.which("nice"):
        cmd = ["nice", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    figures = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                figures.append(json.loads(line))
            except json.JSONDecodeError:
                return figures, f"not JSON: {line[:80]}"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return figures, tail
    return figures, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast pass")
    parser.add_argument("--only", default="", help=f"comma-separated, of {', '.join(BENCHMARKS)}")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument(
        "--native", action="store_true",
        help="pool: also time the compiled prototype (built with the C compiler)",
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    figures: list[Figure] = []
    failed = []
    for name in names:
        script, quick = BENCHMARKS[name]
        extra = quick if args.quick else []
        if args.native and name == "pool":
            extra = [*extra, "--native"]
        got, error = run_one(script, extra, args.timeout)
        figures += got
        if error:
            failed.append(name)
            print(f"{name}: FAILED: {error}", file=sys.stderr)
    emit(figures, args.json)
    if not args.json:
        met = [f for f in figures if f["met"] is not None]
        print(f"targets met: {sum(f['met'] for f in met)} of {len(met)}"
              + (f"; failed: {', '.join(failed)}" if failed else "")
              )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
