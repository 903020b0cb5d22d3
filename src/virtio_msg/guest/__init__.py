"""``virtio-msg guest``: boot a Linux kernel under QEMU with the seed's loopback and judge it.

The harness builds a device tree (QEMU ``virt``'s own tree plus the loopback's
restricted DMA pool and binding node, :mod:`.dtb`) and an initramfs (busybox,
Python from Debian's arm64 packages and this project, :mod:`.initramfs`), boots
``qemu-system-aarch64`` bounded by a timeout, and reads the verdict of the
checks the guest ran with the kernel's own drivers (:mod:`.inguest`) from the
serial console (:mod:`.boot`).
"""

from virtio_msg.guest.boot import Check, GuestReport, run_guest
from virtio_msg.guest.dtb import GuestSetupError

__all__ = ["Check", "GuestReport", "GuestSetupError", "run_guest"]
