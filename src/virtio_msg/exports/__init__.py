"""Driver-side exports: a disk the drivers reach through virtio-msg, served to other tools.

:mod:`virtio_msg.exports.nbd` serves a virtio-blk driver's disk as an NBD
export on a Unix socket (for qemu-img, qemu-io, nbdinfo); its protocol
numbers are in :mod:`virtio_msg.exports.nbd_protocol`.  Exports sit above
``bus/``: they use sockets and threads.
"""
