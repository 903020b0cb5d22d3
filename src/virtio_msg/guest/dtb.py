"""The guest's device tree: QEMU ``virt``'s own tree plus the loopback's pool and binding node.

QEMU dumps the tree it would give the guest (``-machine dumpdtb``, with the same
machine options as the boot); the pure-Python ``fdt`` package adds a
``restricted-dma-pool`` under ``/reserved-memory`` named ``vmsglb`` (the node
name the seed kernel looks up) and a ``virtio,msg-loopback`` binding node whose
``memory-region`` points at it.  The result is read back with the project's DT
loader, so a tree the backend would refuse is never booted.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fdt  # type: ignore[import-untyped]

from virtio_msg.dt.loader import load_tree
from virtio_msg.dt.tree import parse_fdt

VIRT_RAM_BASE = 0x4000_0000
"""Where RAM starts on QEMU's ``virt`` machine."""
DEFAULT_POOL_SIZE = 4 << 20
"""The 4 MiB pool observed working with the seed kernel."""
POOL_BASE = 0x1_0000_0000
"""The pool's bus address (``vmsglb@100000000``, inside a 4 GiB guest's RAM)."""


class GuestSetupError(RuntimeError):
    """The harness could not prepare the guest (a missing tool, a bad option)."""


@dataclass(frozen=True)
class MachineOptions:
    """The QEMU machine options the tree is dumped with and the guest is booted with."""

    qemu: str = "qemu-system-aarch64"
    cpu: str = "cortex-a57"
    memory_mib: int = 4096
    accel: str = "tcg"
    cpus: int = 2
    """Two vCPUs at least: the seed's transfer sleeps in atomic context (linux-rfc1.md
    section 5, defect 9), so on one CPU a task spinning on a lock that a kick holds
    (virtio_console's hvc path) never lets the kick's waiter, or the backend, run."""

    def args(self) -> list[str]:
        """The ``-M/-cpu/-smp/-m`` arguments (``-nic none``: the default NIC needs a ROM)."""
        return [
            "-M",
            f"virt,accel={self.accel}",
            "-cpu",
            self.cpu,
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mib),
            "-nic",
            "none",
        ]

    def pool_base(self, size: int = DEFAULT_POOL_SIZE) -> int:
        """The pool's base: 0x1_0000_0000, as observed working; it must lie inside guest RAM."""
        ram_end = VIRT_RAM_BASE + (self.memory_mib << 20)
        if POOL_BASE + size > ram_end:
            raise GuestSetupError(
                f"{self.memory_mib} MiB of guest RAM ends at {ram_end:#x}, below the pool at "
                f"{POOL_BASE:#x} (the kernel panics clearing a pool outside RAM)"
            )
        return POOL_BASE


def dump_virt_dtb(machine: MachineOptions, extra: Sequence[str] = (), timeout: float = 60) -> bytes:
    """QEMU's own ``virt`` tree for these options (``extra``: the devices the boot adds)."""
    with tempfile.TemporaryDirectory(prefix="vmsg-dtb-") as tmp:
        out = Path(tmp) / "virt.dtb"
        cmd = [
            machine.qemu,
            *machine.args(),
            *extra,
            "-machine",
            f"dumpdtb={out}",
            "-display",
            "none",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise GuestSetupError(f"{machine.qemu} not found (install qemu-system-arm)") from None
        except subprocess.TimeoutExpired:
            raise GuestSetupError(f"{machine.qemu} dumpdtb did not finish in {timeout} s") from None
        if not out.exists():
            raise GuestSetupError(f"{machine.qemu} dumpdtb failed: {proc.stderr.strip()[-300:]}")
        return out.read_bytes()


def _next_phandle(tree: fdt.FDT) -> int:
    used = [0]
    for _path, _nodes, props in tree.walk():
        for prop in props:
            if prop.name in ("phandle", "linux,phandle") and isinstance(prop, fdt.PropWords):
                used.extend(prop.data)
    return max(used) + 1


def add_loopback(
    base_dtb: bytes,
    pool_base: int,
    pool_size: int = DEFAULT_POOL_SIZE,
    *,
    profile: str = "linux-rfc1",
    devices: Sequence[str] = (),
) -> bytes:
    """``base_dtb`` with the ``vmsglb`` restricted-dma-pool and a binding node pointing at it."""
    if pool_base % 4096 or pool_size % 4096 or pool_size <= 0:
        raise GuestSetupError("the pool's base and size must be page aligned (4 KiB)")
    tree = parse_fdt(base_dtb)
    phandle = _next_phandle(tree)
    if not tree.exist_node("/reserved-memory"):
        rm = fdt.Node("reserved-memory")
        rm.append(fdt.PropWords("#address-cells", 2))
        rm.append(fdt.PropWords("#size-cells", 2))
        rm.append(fdt.Property("ranges"))
        tree.add_item(rm, "/")
    pool = fdt.Node(f"vmsglb@{pool_base:x}")
    pool.append(fdt.PropStrings("compatible", "restricted-dma-pool"))
    pool.append(
        fdt.PropWords(
            "reg", pool_base >> 32, pool_base & 0xFFFFFFFF, pool_size >> 32, pool_size & 0xFFFFFFFF
        )
    )
    pool.append(fdt.PropWords("phandle", phandle))
    tree.add_item(pool, "/reserved-memory")
    bus = fdt.Node("virtio-msg-loopback")
    bus.append(fdt.PropStrings("compatible", "virtio,msg-loopback"))
    bus.append(fdt.PropWords("memory-region", phandle))
    bus.append(fdt.PropStrings("virtio,msg-profile", profile))
    if devices:
        bus.append(fdt.PropStrings("virtio,devices", *devices))
    tree.add_item(bus, "/")
    out: bytes = tree.to_dtb(version=17)
    return out


def build_guest_dtb(
    machine: MachineOptions,
    *,
    extra: Sequence[str] = (),
    pool_size: int = DEFAULT_POOL_SIZE,
    devices: Sequence[str] = (),
) -> bytes:
    """The tree the guest boots with, checked by the project's DT loader."""
    dtb = add_loopback(
        dump_virt_dtb(machine, extra), machine.pool_base(pool_size), pool_size, devices=devices
    )
    with tempfile.NamedTemporaryFile(suffix=".dtb") as f:
        f.write(dtb)
        f.flush()
        configs = load_tree(f.name)
    if len(configs) != 1:
        raise GuestSetupError(f"the guest tree describes {len(configs)} loopback buses, not 1")
    return dtb
