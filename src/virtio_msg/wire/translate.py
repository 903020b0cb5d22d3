"""Translation between the seed's linux-rfc1 messages and the newest draft's.

The transport engines speak one semantic model, the newest draft's message
classes; a bus running the ``linux-rfc1`` profile translates at its edge with
:class:`WireAdapter`.  The mapping is exact where the layouts agree and
explicit where they differ:

* DEVICE_INFO: ``num_feature_bits`` <-> ``num_feature_blocks`` (a bit count that
  is not a multiple of 32 cannot be represented and is refused); the seed has
  no UUID (nil) and 16-bit admin fields.
* SET_VQUEUE: the seed's request implies "enable", so it becomes ``flags`` =
  enable; a draft request that is not a plain one-shot enable has no seed
  equivalent and is refused.
* GET_VQUEUE: the seed has no ``flags``; a queue with a size is reported as
  enabled (SET_VQUEUE implied enable).
* GET_SHM: 32-bit length/address in the seed.
* The seed has no token: it is dropped on the way out and 0 on the way in.

``WireAdapter(..., kernel_compat=True)`` (``linux-rfc1`` only) also accepts the
real seed kernel's wrong ``msg_size`` values (:mod:`virtio_msg.wire.compat`);
the default stays strict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import virtio_msg.spec as C
from virtio_msg.errors import EncodeError, MalformedMessage
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S
from virtio_msg.wire.codec import Buffer, Codec, GenericMessage, Header, Message, Profile
from virtio_msg.wire.compat import kernel_frame

_U32 = 0xFFFFFFFF
_U16 = 0xFFFF


def _info_in(m: R.DeviceInfoResp) -> S.GetDeviceInfoResp:
    if m.num_feature_bits % 32:
        raise MalformedMessage(
            f"{m.num_feature_bits} is not a whole number of 32-bit feature blocks",
            "num_feature_bits",
        )
    return S.GetDeviceInfoResp(
        m.device_id,
        m.vendor_id,
        bytes(16),
        m.num_feature_bits // 32,
        m.config_size,
        m.max_vq_count,
        m.admin_vq_start_idx,
        m.admin_vq_count,
        dev_num=m.dev_num,
    )


def _info_out(m: S.GetDeviceInfoResp) -> R.DeviceInfoResp:
    if m.admin_vq_start > _U16 or m.admin_vq_count > _U16:
        raise EncodeError("admin virtqueue fields do not fit linux-rfc1's 16-bit fields")
    return R.DeviceInfoResp(
        m.device_id,
        m.vendor_id,
        m.num_feature_blocks * 32,
        m.config_size,
        m.max_virtqueues,
        m.admin_vq_start,
        m.admin_vq_count,
        dev_num=m.dev_num,
    )


def _set_vq_out(m: S.SetVqueue) -> R.SetVqueue:
    if m.flags != C.VQ_OP_ENABLE:
        raise EncodeError(
            f"SET_VQUEUE flags {m.flags:#x}: linux-rfc1 only has the one-shot enable form"
        )
    return R.SetVqueue(
        m.index, m.reserved, m.size, m.desc_addr, m.driver_addr, m.device_addr, dev_num=m.dev_num
    )


def _get_vq_resp_in(m: R.GetVqueueResp) -> S.GetVqueueResp:
    flags = C.VQ_ENABLED if m.size else 0
    return S.GetVqueueResp(
        m.index,
        m.max_size,
        m.size,
        flags,
        m.descriptor_addr,
        m.driver_addr,
        m.device_addr,
        dev_num=m.dev_num,
    )


def _shm_out(m: S.GetShmResp) -> R.GetShmResp:
    if m.length > _U32 or m.address > _U32:
        raise EncodeError("GET_SHM length/address do not fit linux-rfc1's 32-bit fields")
    return R.GetShmResp(m.shmid, m.length, m.address, dev_num=m.dev_num)


_Fn = Callable[[Any], Message]

# rfc1 class -> function building the draft message
_IN: dict[type, _Fn] = {
    R.DeviceInfo: lambda m: S.GetDeviceInfo(dev_num=m.dev_num),
    R.DeviceInfoResp: _info_in,
    R.GetDevFeatures: lambda m: S.GetDeviceFeatures(m.index, m.num, dev_num=m.dev_num),
    R.GetDevFeaturesResp: lambda m: S.GetDeviceFeaturesResp(
        m.index, m.num, m.features, dev_num=m.dev_num
    ),
    R.SetDrvFeatures: lambda m: S.SetDriverFeatures(m.index, m.num, m.features, dev_num=m.dev_num),
    R.SetDrvFeaturesResp: lambda m: S.SetDriverFeaturesResp(dev_num=m.dev_num),
    R.GetConfig: lambda m: S.GetConfig(m.offset, m.size, dev_num=m.dev_num),
    R.GetConfigResp: lambda m: S.GetConfigResp(
        m.generation, m.offset, m.size, m.config, dev_num=m.dev_num
    ),
    R.SetConfig: lambda m: S.SetConfig(m.generation, m.offset, m.size, m.config, dev_num=m.dev_num),
    R.SetConfigResp: lambda m: S.SetConfigResp(
        m.generation, m.offset, m.size, m.config, dev_num=m.dev_num
    ),
    R.GetDeviceStatus: lambda m: S.GetDeviceStatus(dev_num=m.dev_num),
    R.GetDeviceStatusResp: lambda m: S.GetDeviceStatusResp(m.status, dev_num=m.dev_num),
    R.SetDeviceStatus: lambda m: S.SetDeviceStatus(m.status, dev_num=m.dev_num),
    R.SetDeviceStatusResp: lambda m: S.SetDeviceStatusResp(m.status, dev_num=m.dev_num),
    R.GetVqueue: lambda m: S.GetVqueue(m.index, dev_num=m.dev_num),
    R.GetVqueueResp: _get_vq_resp_in,
    R.SetVqueue: lambda m: S.SetVqueue(
        m.index,
        C.VQ_OP_ENABLE,
        m.size,
        m.unused,
        m.descriptor_addr,
        m.driver_addr,
        m.device_addr,
        dev_num=m.dev_num,
    ),
    R.SetVqueueResp: lambda m: S.SetVqueueResp(dev_num=m.dev_num),
    R.ResetVqueue: lambda m: S.ResetVqueue(m.index, dev_num=m.dev_num),
    R.ResetVqueueResp: lambda m: S.ResetVqueueResp(dev_num=m.dev_num),
    R.GetShm: lambda m: S.GetShm(m.index, dev_num=m.dev_num),
    R.GetShmResp: lambda m: S.GetShmResp(m.index, 0, m.count, m.addr, dev_num=m.dev_num),
    R.EventConfig: lambda m: S.EventConfig(
        m.status, m.generation, m.offset, m.size, m.config, dev_num=m.dev_num
    ),
    R.EventAvail: lambda m: S.EventAvail(m.index, m.next_offset_wrap, dev_num=m.dev_num),
    R.EventUsed: lambda m: S.EventUsed(m.index, dev_num=m.dev_num),
    R.EventAvailResp: lambda m: m,  # no draft equivalent: the bus handles it
    R.BusGetDevices: lambda m: S.GetDevices(m.offset, m.num),
    R.BusGetDevicesResp: lambda m: S.GetDevicesResp(m.offset, m.next_offset, m.num, m.devices),
    R.BusPing: lambda m: S.Ping(m.data),
    R.BusPingResp: lambda m: S.PingResp(m.data),
    R.BusEventDevice: lambda m: S.EventDevice(m.event_dev_num, m.dev_state),
}

# draft class -> function building the rfc1 message
_OUT: dict[type, _Fn] = {
    S.GetDeviceInfo: lambda m: R.DeviceInfo(dev_num=m.dev_num),
    S.GetDeviceInfoResp: _info_out,
    S.GetDeviceFeatures: lambda m: R.GetDevFeatures(m.block_index, m.num_blocks, dev_num=m.dev_num),
    S.GetDeviceFeaturesResp: lambda m: R.GetDevFeaturesResp(
        m.block_index, m.num_blocks, m.features, dev_num=m.dev_num
    ),
    S.SetDriverFeatures: lambda m: R.SetDrvFeatures(
        m.block_index, m.num_blocks, m.features, dev_num=m.dev_num
    ),
    S.SetDriverFeaturesResp: lambda m: R.SetDrvFeaturesResp(dev_num=m.dev_num),
    S.GetConfig: lambda m: R.GetConfig(m.offset, m.length, dev_num=m.dev_num),
    S.GetConfigResp: lambda m: R.GetConfigResp(
        m.generation, m.offset, m.length, m.data, dev_num=m.dev_num
    ),
    S.SetConfig: lambda m: R.SetConfig(m.generation, m.offset, m.length, m.data, dev_num=m.dev_num),
    S.SetConfigResp: lambda m: R.SetConfigResp(
        m.generation, m.offset, m.length, m.data, dev_num=m.dev_num
    ),
    S.GetDeviceStatus: lambda m: R.GetDeviceStatus(dev_num=m.dev_num),
    S.GetDeviceStatusResp: lambda m: R.GetDeviceStatusResp(m.status, dev_num=m.dev_num),
    S.SetDeviceStatus: lambda m: R.SetDeviceStatus(m.status, dev_num=m.dev_num),
    S.SetDeviceStatusResp: lambda m: R.SetDeviceStatusResp(m.status, dev_num=m.dev_num),
    S.GetVqueue: lambda m: R.GetVqueue(m.index, dev_num=m.dev_num),
    S.GetVqueueResp: lambda m: R.GetVqueueResp(
        m.index,
        m.max_size,
        m.cur_size,
        m.desc_addr,
        m.driver_addr,
        m.device_addr,
        dev_num=m.dev_num,
    ),
    S.SetVqueue: _set_vq_out,
    S.SetVqueueResp: lambda m: R.SetVqueueResp(dev_num=m.dev_num),
    S.ResetVqueue: lambda m: R.ResetVqueue(m.index, dev_num=m.dev_num),
    S.ResetVqueueResp: lambda m: R.ResetVqueueResp(dev_num=m.dev_num),
    S.GetShm: lambda m: R.GetShm(m.shmid, dev_num=m.dev_num),
    S.GetShmResp: _shm_out,
    S.EventConfig: lambda m: R.EventConfig(
        m.device_status, m.generation, m.offset, m.length, m.data, dev_num=m.dev_num
    ),
    S.EventAvail: lambda m: R.EventAvail(m.vq_index, m.next_offset, dev_num=m.dev_num),
    S.EventUsed: lambda m: R.EventUsed(m.vq_index, dev_num=m.dev_num),
    R.EventAvailResp: lambda m: m,
    S.GetDevices: lambda m: R.BusGetDevices(m.offset, m.count),
    S.GetDevicesResp: lambda m: R.BusGetDevicesResp(m.offset, m.count, m.next_offset, m.bitmap),
    S.Ping: lambda m: R.BusPing(m.data),
    S.PingResp: lambda m: R.BusPingResp(m.data),
    S.EventDevice: lambda m: R.BusEventDevice(m.device_number, m.device_bus_state),
}


def to_draft(msg: Message) -> Message:
    """Translate a decoded linux-rfc1 message into the draft's class."""
    if type(msg) is GenericMessage:
        return msg
    return _IN[type(msg)](msg)


def to_rfc1(msg: Message) -> Message:
    """Translate a draft message into linux-rfc1's class (EncodeError if impossible)."""
    if type(msg) is GenericMessage:
        return msg._replace(token=0)
    try:
        fn = _OUT[type(msg)]
    except KeyError:
        raise EncodeError(f"{type(msg).__name__} is not a draft message") from None
    return fn(msg)


class WireAdapter:
    """Encode and decode draft message objects on a bus of either profile.

    The engines only ever see :mod:`virtio_msg.wire.spec` classes; this object
    owns the byte-level codec of the bus and translates for ``linux-rfc1``.
    """

    __slots__ = ("codec", "decode", "encode", "kernel_compat", "rfc1")

    def __init__(
        self,
        profile: Profile | str = Profile.SPEC,
        max_size: int | None = None,
        *,
        kernel_compat: bool = False,
    ) -> None:
        """Create the codec for ``profile`` with the bus's maximum message size.

        ``kernel_compat`` (``linux-rfc1`` only; ValueError otherwise) decodes
        the seed kernel's SET_DRV_FEATURES / SET_CONFIG despite their wrong
        ``msg_size`` (:func:`virtio_msg.wire.compat.kernel_frame`).
        """
        self.codec = Codec(profile, max_size)
        self.rfc1 = self.codec.profile is Profile.LINUX_RFC1
        if kernel_compat and not self.rfc1:
            raise ValueError("kernel compatibility exists only for the linux-rfc1 profile")
        self.kernel_compat = kernel_compat
        self.encode: Callable[[Message], bytes]
        """Encode a draft message in the bus's profile."""
        self.decode: Callable[[Buffer], Message]
        """Decode bytes of the bus's profile into a draft message."""
        if self.rfc1:
            self.encode = self._encode_rfc1
            self.decode = self._decode_kernel if kernel_compat else self._decode_rfc1
        else:  # no translation: the codec's own methods, no extra call per message
            self.encode = self.codec.encode
            self.decode = self.codec.decode

    @property
    def max_size(self) -> int:
        """The bus's maximum message size."""
        return self.codec.max_size

    @property
    def header_size(self) -> int:
        """Header size of the bus's profile (8 or 6)."""
        return self.codec.header_size

    def _encode_rfc1(self, msg: Message) -> bytes:
        return self.codec.encode(to_rfc1(msg))

    def _decode_rfc1(self, data: Buffer) -> Message:
        return to_draft(self.codec.decode(data))

    def _decode_kernel(self, data: Buffer) -> Message:
        return to_draft(self.codec.decode(kernel_frame(data)))

    def decode_header(self, data: Buffer) -> Header:
        """Validate and return the header (see :meth:`Codec.decode_header`)."""
        return self.codec.decode_header(data)


__all__ = ["WireAdapter", "to_draft", "to_rfc1"]
