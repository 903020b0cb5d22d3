"""Messages of the seed's Linux RFC v1 layout (profile ``linux-rfc1``).

The seed kernel (6-byte header, no token, 44-byte buffers) names and lays out
its payloads differently from the newest draft: DEVICE_INFO carries
``num_feature_bits`` and 16-bit admin fields, SET_VQUEUE has no flags (it
implies enable), GET_SHM is 32-bit.  Field names follow the reference tables
of ``linux-rfc1.md`` section 1.3 exactly, so that decoded JSON matches them.
"""

from __future__ import annotations

from typing import NamedTuple

from virtio_msg.spec import BusMsg, TransportMsg
from virtio_msg.wire._layout import Layout, Tail

# Fields named ``index`` or ``count`` (the reference tables' names) shadow the
# tuple methods of the same name; messages are never searched or counted as
# tuples, so the spec names win and mypy is told so on each such line.


class DeviceInfo(NamedTuple):
    """DEVICE_INFO request (no payload)."""

    dev_num: int = 0
    token: int = 0


class DeviceInfoResp(NamedTuple):
    """DEVICE_INFO response (24 bytes)."""

    device_id: int
    vendor_id: int
    num_feature_bits: int
    config_size: int
    max_vq_count: int
    admin_vq_start_idx: int
    admin_vq_count: int
    dev_num: int = 0
    token: int = 0


class GetDevFeatures(NamedTuple):
    """GET_DEV_FEATURES request (the kernel always asks index 0, num 2)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    num: int
    dev_num: int = 0
    token: int = 0


class GetDevFeaturesResp(NamedTuple):
    """GET_DEV_FEATURES response: ``num`` le32 feature words."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    num: int
    features: tuple[int, ...]
    dev_num: int = 0
    token: int = 0


class SetDrvFeatures(NamedTuple):
    """SET_DRV_FEATURES request."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    num: int
    features: tuple[int, ...]
    dev_num: int = 0
    token: int = 0


class SetDrvFeaturesResp(NamedTuple):
    """SET_DRV_FEATURES response (contents ignored by the kernel)."""

    dev_num: int = 0
    token: int = 0


class GetConfig(NamedTuple):
    """GET_CONFIG request."""

    offset: int
    size: int
    dev_num: int = 0
    token: int = 0


class GetConfigResp(NamedTuple):
    """GET_CONFIG response."""

    generation: int
    offset: int
    size: int
    config: bytes
    dev_num: int = 0
    token: int = 0


class SetConfig(NamedTuple):
    """SET_CONFIG request."""

    generation: int
    offset: int
    size: int
    config: bytes
    dev_num: int = 0
    token: int = 0


class SetConfigResp(NamedTuple):
    """SET_CONFIG response (same layout as the request; ignored by the kernel)."""

    generation: int
    offset: int
    size: int
    config: bytes
    dev_num: int = 0
    token: int = 0


class GetDeviceStatus(NamedTuple):
    """GET_DEVICE_STATUS request."""

    dev_num: int = 0
    token: int = 0


class GetDeviceStatusResp(NamedTuple):
    """GET_DEVICE_STATUS response."""

    status: int
    dev_num: int = 0
    token: int = 0


class SetDeviceStatus(NamedTuple):
    """SET_DEVICE_STATUS request (0 resets, one-shot)."""

    status: int
    dev_num: int = 0
    token: int = 0


class SetDeviceStatusResp(NamedTuple):
    """SET_DEVICE_STATUS response (ignored by the kernel)."""

    status: int
    dev_num: int = 0
    token: int = 0


class GetVqueue(NamedTuple):
    """GET_VQUEUE request."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class GetVqueueResp(NamedTuple):
    """GET_VQUEUE response (36 bytes; no flags)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    max_size: int
    size: int
    descriptor_addr: int
    driver_addr: int
    device_addr: int
    dev_num: int = 0
    token: int = 0


class SetVqueue(NamedTuple):
    """SET_VQUEUE request (36 bytes; implies enable)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    unused: int
    size: int
    descriptor_addr: int
    driver_addr: int
    device_addr: int
    dev_num: int = 0
    token: int = 0


class SetVqueueResp(NamedTuple):
    """SET_VQUEUE response (ignored by the kernel)."""

    dev_num: int = 0
    token: int = 0


class ResetVqueue(NamedTuple):
    """RESET_VQUEUE request."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class ResetVqueueResp(NamedTuple):
    """RESET_VQUEUE response (ignored by the kernel)."""

    dev_num: int = 0
    token: int = 0


class GetShm(NamedTuple):
    """GET_SHM request (defined, never sent by the seed kernel)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class GetShmResp(NamedTuple):
    """GET_SHM response (32-bit fields)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    count: int  # type: ignore[assignment]  # spec name shadows tuple.count
    addr: int
    dev_num: int = 0
    token: int = 0


class EventConfig(NamedTuple):
    """EVENT_CONFIG (device to driver)."""

    status: int
    generation: int
    offset: int
    size: int
    config: bytes
    dev_num: int = 0
    token: int = 0


class EventAvail(NamedTuple):
    """EVENT_AVAIL (driver to device); bits 0-30 offset, bit 31 wrap."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    next_offset_wrap: int
    dev_num: int = 0
    token: int = 0


class EventAvailResp(NamedTuple):
    """The seed's acknowledgement of EVENT_AVAIL (a response with msg_id 0x41).

    The seed loopback waits for a response to every message, kicks included
    (linux-rfc1.md section 4.1), so a seed-style backend answers EVENT_AVAIL.
    Only this profile has it; the newest draft makes EVENT_AVAIL one-way.
    """

    dev_num: int = 0
    token: int = 0


class EventUsed(NamedTuple):
    """EVENT_USED (device to driver)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class BusGetDevices(NamedTuple):
    """BUS_GET_DEVICES request."""

    offset: int
    num: int
    dev_num: int = 0
    token: int = 0


class BusGetDevicesResp(NamedTuple):
    """BUS_GET_DEVICES response: ``devices`` bitmap of ceil(num/8) bytes."""

    offset: int
    num: int
    next_offset: int
    devices: bytes
    dev_num: int = 0
    token: int = 0


class BusPing(NamedTuple):
    """BUS_PING request."""

    data: int
    dev_num: int = 0
    token: int = 0


class BusPingResp(NamedTuple):
    """BUS_PING response."""

    data: int
    dev_num: int = 0
    token: int = 0


class BusEventDevice(NamedTuple):
    """BUS_EVENT_DEVICE; the payload's ``dev_num`` is ``event_dev_num`` in Python."""

    event_dev_num: int
    dev_state: int
    dev_num: int = 0
    token: int = 0


_T = TransportMsg
_B = BusMsg

LAYOUTS: tuple[Layout, ...] = (
    Layout(DeviceInfo, "DEVICE_INFO", _T.GET_DEVICE_INFO),
    Layout(DeviceInfoResp, "DEVICE_INFO", _T.GET_DEVICE_INFO, response=True, fmt="<IIIIIHH"),
    Layout(GetDevFeatures, "GET_DEV_FEATURES", _T.GET_DEVICE_FEATURES, fmt="<II"),
    Layout(
        GetDevFeaturesResp,
        "GET_DEV_FEATURES",
        _T.GET_DEVICE_FEATURES,
        response=True,
        fmt="<II",
        tail=Tail.U32_ARRAY,
        count_field="num",
    ),
    Layout(
        SetDrvFeatures,
        "SET_DRV_FEATURES",
        _T.SET_DRIVER_FEATURES,
        fmt="<II",
        tail=Tail.U32_ARRAY,
        count_field="num",
    ),
    Layout(SetDrvFeaturesResp, "SET_DRV_FEATURES", _T.SET_DRIVER_FEATURES, response=True),
    Layout(GetConfig, "GET_CONFIG", _T.GET_CONFIG, fmt="<II"),
    Layout(
        GetConfigResp,
        "GET_CONFIG",
        _T.GET_CONFIG,
        response=True,
        fmt="<III",
        tail=Tail.BYTES_EXACT,
        count_field="size",
    ),
    Layout(
        SetConfig,
        "SET_CONFIG",
        _T.SET_CONFIG,
        fmt="<III",
        tail=Tail.BYTES_EXACT,
        count_field="size",
    ),
    Layout(
        SetConfigResp,
        "SET_CONFIG",
        _T.SET_CONFIG,
        response=True,
        fmt="<III",
        tail=Tail.BYTES_OPTIONAL,
        count_field="size",
    ),
    Layout(GetDeviceStatus, "GET_DEVICE_STATUS", _T.GET_DEVICE_STATUS),
    Layout(GetDeviceStatusResp, "GET_DEVICE_STATUS", _T.GET_DEVICE_STATUS, response=True, fmt="<I"),
    Layout(SetDeviceStatus, "SET_DEVICE_STATUS", _T.SET_DEVICE_STATUS, fmt="<I"),
    Layout(SetDeviceStatusResp, "SET_DEVICE_STATUS", _T.SET_DEVICE_STATUS, response=True, fmt="<I"),
    Layout(GetVqueue, "GET_VQUEUE", _T.GET_VQUEUE, fmt="<I"),
    Layout(GetVqueueResp, "GET_VQUEUE", _T.GET_VQUEUE, response=True, fmt="<IIIQQQ"),
    Layout(SetVqueue, "SET_VQUEUE", _T.SET_VQUEUE, fmt="<IIIQQQ"),
    Layout(SetVqueueResp, "SET_VQUEUE", _T.SET_VQUEUE, response=True),
    Layout(ResetVqueue, "RESET_VQUEUE", _T.RESET_VQUEUE, fmt="<I"),
    Layout(ResetVqueueResp, "RESET_VQUEUE", _T.RESET_VQUEUE, response=True),
    Layout(GetShm, "GET_SHM", _T.GET_SHM, fmt="<I"),
    Layout(GetShmResp, "GET_SHM", _T.GET_SHM, response=True, fmt="<III"),
    Layout(
        EventConfig,
        "EVENT_CONFIG",
        _T.EVENT_CONFIG,
        fmt="<IIII",
        tail=Tail.BYTES_OPTIONAL,
        count_field="size",
    ),
    Layout(EventAvail, "EVENT_AVAIL", _T.EVENT_AVAIL, fmt="<II"),
    Layout(EventAvailResp, "EVENT_AVAIL", _T.EVENT_AVAIL, response=True),
    Layout(EventUsed, "EVENT_USED", _T.EVENT_USED, fmt="<I"),
    Layout(BusGetDevices, "BUS_GET_DEVICES", _B.GET_DEVICES, bus=True, fmt="<HH"),
    Layout(
        BusGetDevicesResp,
        "BUS_GET_DEVICES",
        _B.GET_DEVICES,
        bus=True,
        response=True,
        fmt="<HHH",
        tail=Tail.BITMAP,
        count_field="num",
    ),
    Layout(BusPing, "BUS_PING", _B.PING, bus=True, fmt="<I"),
    Layout(BusPingResp, "BUS_PING", _B.PING, bus=True, response=True, fmt="<I"),
    Layout(
        BusEventDevice,
        "BUS_EVENT_DEVICE",
        _B.EVENT_DEVICE,
        bus=True,
        fmt="<HH",
        json_names=(("event_dev_num", "dev_num"),),
    ),
)
"""Every message of the ``linux-rfc1`` profile, one row each."""

__all__ = [
    "LAYOUTS",
    "BusEventDevice",
    "BusGetDevices",
    "BusGetDevicesResp",
    "BusPing",
    "BusPingResp",
    "DeviceInfo",
    "DeviceInfoResp",
    "EventAvail",
    "EventAvailResp",
    "EventConfig",
    "EventUsed",
    "GetConfig",
    "GetConfigResp",
    "GetDevFeatures",
    "GetDevFeaturesResp",
    "GetDeviceStatus",
    "GetDeviceStatusResp",
    "GetShm",
    "GetShmResp",
    "GetVqueue",
    "GetVqueueResp",
    "ResetVqueue",
    "ResetVqueueResp",
    "SetConfig",
    "SetConfigResp",
    "SetDeviceStatus",
    "SetDeviceStatusResp",
    "SetDrvFeatures",
    "SetDrvFeaturesResp",
    "SetVqueue",
    "SetVqueueResp",
]
