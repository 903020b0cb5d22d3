"""The kernel channel inside a real guest: the loopback's hwrng next to QEMU's virtio-mmio rng.

Run: ``python benchmarks/bench_guest.py [--kernel IMAGE] [--seconds S] [--json]``

Boots ``IMAGE`` (default ``$VIRTIO_MSG_KERNEL``: an arm64 kernel with the
virtio-msg RFC series) with the ``virtio-msg guest`` harness, plus QEMU's own
virtio-rng on virtio-mmio (``-object rng-random,filename=/dev/urandom
-device virtio-rng-device``).  In the guest, ``virtio-msg backend --kernel``
serves an rng through the seed's loopback; each hwrng is made current in turn
and read from ``/dev/hwrng`` for S seconds in 32-byte reads (one virtqueue
request each: requests per second) and S seconds in 4 KiB reads (bytes per
second).  The baseline is the same guest's virtio-mmio rng, in the same boot,
so both see the same emulation and machine load.  Exit status 2 when no kernel
is given or the harness cannot start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from figures import Figure, emit, figure
from virtio_msg.guest import GuestSetupError, run_guest

MMIO_RNG = [
    "-object",
    "rng-random,filename=/dev/urandom,id=vmsgbench",
    "-device",
    "virtio-rng-device,rng=vmsgbench",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=Path, default=os.environ.get("VIRTIO_MSG_KERNEL"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per rng and read size")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the boot")
    parser.add_argument("--keep", type=Path, default=None, help="keep the guest's files here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.kernel is None:
        print("bench_guest: give --kernel IMAGE or set VIRTIO_MSG_KERNEL", file=sys.stderr)
        sys.exit(2)
    try:
        report = run_guest(
            args.kernel,
            ["rng"],
            timeout=args.timeout,
            keep=args.keep,
            qemu_extra=MMIO_RNG,
            bench=args.seconds,
        )
    except GuestSetupError as exc:
        print(f"bench_guest: {exc}", file=sys.stderr)
        sys.exit(2)
    by_via = {str(b["via"]): b for b in report.bench}
    if "loopback" not in by_via or "virtio-mmio" not in by_via:
        failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
        print(f"bench_guest: timings for {sorted(by_via)} only; {failed}", file=sys.stderr)
        sys.exit(1)
    lb, mmio = by_via["loopback"], by_via["virtio-mmio"]
    figures: list[Figure] = [
        figure(
            "guest hwrng 32-byte reads, kernel channel vs virtio-mmio",
            float(str(lb["reads_per_s"])),
            "requests/s",
            float(str(mmio["reads_per_s"])),
        ),
        figure(
            "guest hwrng 4 KiB reads, kernel channel vs virtio-mmio",
            float(str(lb["bytes_per_s"])) / 1e3,
            "kB/s",
            float(str(mmio["bytes_per_s"])) / 1e3,
        ),
    ]
    emit(figures, args.json)


if __name__ == "__main__":
    main()
