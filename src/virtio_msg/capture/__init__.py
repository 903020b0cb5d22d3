"""Reading virtio-msg captures: frames, pairing, ``trace`` and the Wireshark dissector.

The writing side (pseudo-header, writer, channel taps) is
:mod:`virtio_msg.bus.capture`; this package reads what it wrote:
:mod:`~virtio_msg.capture.frames` (pcapng frames and their decoding),
:mod:`~virtio_msg.capture.pairing`, :mod:`~virtio_msg.capture.trace` and
:mod:`~virtio_msg.capture.dissector` (the shipped Lua dissector).
"""
