"""Messages of the newest virtio-msg draft (profile ``spec``).

Field names and order follow the reference tables exactly (virtio-msg spec
sections 3 and 4); each class lists its payload fields in wire order, then the
header fields ``dev_num`` and ``token``.  The table :data:`LAYOUTS` at the end
is the only place where ids and struct formats are declared.
"""

from __future__ import annotations

from typing import NamedTuple

from virtio_msg.spec import BusMsg, TransportMsg
from virtio_msg.wire._layout import Layout, Tail

# Fields named ``index`` or ``count`` (the reference tables' names) shadow the
# tuple methods of the same name; messages are never searched or counted as
# tuples, so the spec names win and mypy is told so on each such line.

# --- Transport requests and responses ---------------------------------------


class GetDeviceInfo(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_INFO request (no payload)."""

    dev_num: int = 0
    token: int = 0


class GetDeviceInfoResp(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_INFO response: identity and limits (44 bytes)."""

    device_id: int
    vendor_id: int
    device_uuid: bytes
    num_feature_blocks: int
    config_size: int
    max_virtqueues: int
    admin_vq_start: int
    admin_vq_count: int
    dev_num: int = 0
    token: int = 0


class GetDeviceFeatures(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_FEATURES request: a window of 32-bit feature blocks."""

    block_index: int
    num_blocks: int
    dev_num: int = 0
    token: int = 0


class GetDeviceFeaturesResp(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_FEATURES response: the offered blocks of the window."""

    block_index: int
    num_blocks: int
    features: tuple[int, ...]
    dev_num: int = 0
    token: int = 0


class SetDriverFeatures(NamedTuple):
    """VIRTIO_MSG_SET_DRIVER_FEATURES request: driver-selected blocks of a window."""

    block_index: int
    num_blocks: int
    features: tuple[int, ...]
    dev_num: int = 0
    token: int = 0


class SetDriverFeaturesResp(NamedTuple):
    """VIRTIO_MSG_SET_DRIVER_FEATURES response (empty)."""

    dev_num: int = 0
    token: int = 0


class GetConfig(NamedTuple):
    """VIRTIO_MSG_GET_CONFIG request: read ``length`` bytes at ``offset``."""

    offset: int
    length: int
    dev_num: int = 0
    token: int = 0


class GetConfigResp(NamedTuple):
    """VIRTIO_MSG_GET_CONFIG response: current generation and the bytes read."""

    generation: int
    offset: int
    length: int
    data: bytes
    dev_num: int = 0
    token: int = 0


class SetConfig(NamedTuple):
    """VIRTIO_MSG_SET_CONFIG request: write ``data`` at ``offset``, all or nothing."""

    generation: int
    offset: int
    length: int
    data: bytes
    dev_num: int = 0
    token: int = 0


class SetConfigResp(NamedTuple):
    """VIRTIO_MSG_SET_CONFIG response: ``length`` 0 means not applied; data optional."""

    generation: int
    offset: int
    length: int
    data: bytes
    dev_num: int = 0
    token: int = 0


class GetDeviceStatus(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_STATUS request (no payload)."""

    dev_num: int = 0
    token: int = 0


class GetDeviceStatusResp(NamedTuple):
    """VIRTIO_MSG_GET_DEVICE_STATUS response: the current status bits."""

    status: int
    dev_num: int = 0
    token: int = 0


class SetDeviceStatus(NamedTuple):
    """VIRTIO_MSG_SET_DEVICE_STATUS request: desired status (0 requests a reset)."""

    status: int
    dev_num: int = 0
    token: int = 0


class SetDeviceStatusResp(NamedTuple):
    """VIRTIO_MSG_SET_DEVICE_STATUS response: the status after processing."""

    status: int
    dev_num: int = 0
    token: int = 0


class GetVqueue(NamedTuple):
    """VIRTIO_MSG_GET_VQUEUE request."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class GetVqueueResp(NamedTuple):
    """VIRTIO_MSG_GET_VQUEUE response (all zero but ``index`` for an unavailable queue)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    max_size: int
    cur_size: int
    flags: int
    desc_addr: int
    driver_addr: int
    device_addr: int
    dev_num: int = 0
    token: int = 0


class SetVqueue(NamedTuple):
    """VIRTIO_MSG_SET_VQUEUE request: queue fields plus a state operation in ``flags``."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    flags: int
    size: int
    reserved: int
    desc_addr: int
    driver_addr: int
    device_addr: int
    dev_num: int = 0
    token: int = 0


class SetVqueueResp(NamedTuple):
    """VIRTIO_MSG_SET_VQUEUE response (empty; confirm with GET_VQUEUE)."""

    dev_num: int = 0
    token: int = 0


class ResetVqueue(NamedTuple):
    """VIRTIO_MSG_RESET_VQUEUE request (needs VIRTIO_F_RING_RESET)."""

    index: int  # type: ignore[assignment]  # spec name shadows tuple.index
    dev_num: int = 0
    token: int = 0


class ResetVqueueResp(NamedTuple):
    """VIRTIO_MSG_RESET_VQUEUE response (empty)."""

    dev_num: int = 0
    token: int = 0


class GetShm(NamedTuple):
    """VIRTIO_MSG_GET_SHM request."""

    shmid: int
    dev_num: int = 0
    token: int = 0


class GetShmResp(NamedTuple):
    """VIRTIO_MSG_GET_SHM response (length before address; length 0 = not provided)."""

    shmid: int
    reserved: int
    length: int
    address: int
    dev_num: int = 0
    token: int = 0


# --- Transport events -------------------------------------------------------------


class EventConfig(NamedTuple):
    """VIRTIO_MSG_EVENT_CONFIG (device to driver): config or async status change."""

    device_status: int
    generation: int
    offset: int
    length: int
    data: bytes
    dev_num: int = 0
    token: int = 0


class EventAvail(NamedTuple):
    """VIRTIO_MSG_EVENT_AVAIL (driver to device): buffers are available."""

    vq_index: int
    next_offset: int
    dev_num: int = 0
    token: int = 0


class EventUsed(NamedTuple):
    """VIRTIO_MSG_EVENT_USED (device to driver): buffers were used."""

    vq_index: int
    dev_num: int = 0
    token: int = 0


# --- Bus messages ------------------------------------------------------------------


class GetDevices(NamedTuple):
    """BUS_MSG_GET_DEVICES request: a window of device-number slots."""

    offset: int
    count: int  # type: ignore[assignment]  # spec name shadows tuple.count
    dev_num: int = 0
    token: int = 0


class GetDevicesResp(NamedTuple):
    """BUS_MSG_GET_DEVICES response: presence bitmap of ceil(count/8) bytes, LSB first."""

    offset: int
    next_offset: int
    count: int  # type: ignore[assignment]  # spec name shadows tuple.count
    bitmap: bytes
    dev_num: int = 0
    token: int = 0


class Ping(NamedTuple):
    """BUS_MSG_PING request."""

    data: int
    dev_num: int = 0
    token: int = 0


class PingResp(NamedTuple):
    """BUS_MSG_PING response: echoes ``data``."""

    data: int
    dev_num: int = 0
    token: int = 0


class EventDevice(NamedTuple):
    """BUS_MSG_EVENT_DEVICE: a device number was added or removed."""

    device_number: int
    device_bus_state: int
    dev_num: int = 0
    token: int = 0


_T = TransportMsg
_B = BusMsg

LAYOUTS: tuple[Layout, ...] = (
    Layout(GetDeviceInfo, "GET_DEVICE_INFO", _T.GET_DEVICE_INFO),
    Layout(
        GetDeviceInfoResp, "GET_DEVICE_INFO", _T.GET_DEVICE_INFO, response=True, fmt="<II16sIIIII"
    ),
    Layout(GetDeviceFeatures, "GET_DEVICE_FEATURES", _T.GET_DEVICE_FEATURES, fmt="<II"),
    Layout(
        GetDeviceFeaturesResp,
        "GET_DEVICE_FEATURES",
        _T.GET_DEVICE_FEATURES,
        response=True,
        fmt="<II",
        tail=Tail.U32_ARRAY,
        count_field="num_blocks",
    ),
    Layout(
        SetDriverFeatures,
        "SET_DRIVER_FEATURES",
        _T.SET_DRIVER_FEATURES,
        fmt="<II",
        tail=Tail.U32_ARRAY,
        count_field="num_blocks",
    ),
    Layout(SetDriverFeaturesResp, "SET_DRIVER_FEATURES", _T.SET_DRIVER_FEATURES, response=True),
    Layout(GetConfig, "GET_CONFIG", _T.GET_CONFIG, fmt="<II"),
    Layout(
        GetConfigResp,
        "GET_CONFIG",
        _T.GET_CONFIG,
        response=True,
        fmt="<III",
        tail=Tail.BYTES_EXACT,
        count_field="length",
    ),
    Layout(
        SetConfig,
        "SET_CONFIG",
        _T.SET_CONFIG,
        fmt="<III",
        tail=Tail.BYTES_EXACT,
        count_field="length",
    ),
    Layout(
        SetConfigResp,
        "SET_CONFIG",
        _T.SET_CONFIG,
        response=True,
        fmt="<III",
        tail=Tail.BYTES_OPTIONAL,
        count_field="length",
    ),
    Layout(GetDeviceStatus, "GET_DEVICE_STATUS", _T.GET_DEVICE_STATUS),
    Layout(GetDeviceStatusResp, "GET_DEVICE_STATUS", _T.GET_DEVICE_STATUS, response=True, fmt="<I"),
    Layout(SetDeviceStatus, "SET_DEVICE_STATUS", _T.SET_DEVICE_STATUS, fmt="<I"),
    Layout(SetDeviceStatusResp, "SET_DEVICE_STATUS", _T.SET_DEVICE_STATUS, response=True, fmt="<I"),
    Layout(GetVqueue, "GET_VQUEUE", _T.GET_VQUEUE, fmt="<I"),
    Layout(GetVqueueResp, "GET_VQUEUE", _T.GET_VQUEUE, response=True, fmt="<IIIIQQQ"),
    Layout(SetVqueue, "SET_VQUEUE", _T.SET_VQUEUE, fmt="<IIIIQQQ"),
    Layout(SetVqueueResp, "SET_VQUEUE", _T.SET_VQUEUE, response=True),
    Layout(ResetVqueue, "RESET_VQUEUE", _T.RESET_VQUEUE, fmt="<I"),
    Layout(ResetVqueueResp, "RESET_VQUEUE", _T.RESET_VQUEUE, response=True),
    Layout(GetShm, "GET_SHM", _T.GET_SHM, fmt="<I"),
    Layout(GetShmResp, "GET_SHM", _T.GET_SHM, response=True, fmt="<IIQQ"),
    Layout(
        EventConfig,
        "EVENT_CONFIG",
        _T.EVENT_CONFIG,
        fmt="<IIII",
        tail=Tail.BYTES_OPTIONAL,
        count_field="length",
    ),
    Layout(EventAvail, "EVENT_AVAIL", _T.EVENT_AVAIL, fmt="<II"),
    Layout(EventUsed, "EVENT_USED", _T.EVENT_USED, fmt="<I"),
    Layout(GetDevices, "GET_DEVICES", _B.GET_DEVICES, bus=True, fmt="<HH"),
    Layout(
        GetDevicesResp,
        "GET_DEVICES",
        _B.GET_DEVICES,
        bus=True,
        response=True,
        fmt="<HHH",
        tail=Tail.BITMAP,
        count_field="count",
    ),
    Layout(Ping, "PING", _B.PING, bus=True, fmt="<I"),
    Layout(PingResp, "PING", _B.PING, bus=True, response=True, fmt="<I"),
    Layout(EventDevice, "EVENT_DEVICE", _B.EVENT_DEVICE, bus=True, fmt="<HH"),
)
"""Every message of the ``spec`` profile, one row each."""

__all__ = [
    "LAYOUTS",
    "EventAvail",
    "EventConfig",
    "EventDevice",
    "EventUsed",
    "GetConfig",
    "GetConfigResp",
    "GetDeviceFeatures",
    "GetDeviceFeaturesResp",
    "GetDeviceInfo",
    "GetDeviceInfoResp",
    "GetDeviceStatus",
    "GetDeviceStatusResp",
    "GetDevices",
    "GetDevicesResp",
    "GetShm",
    "GetShmResp",
    "GetVqueue",
    "GetVqueueResp",
    "Ping",
    "PingResp",
    "ResetVqueue",
    "ResetVqueueResp",
    "SetConfig",
    "SetConfigResp",
    "SetDeviceStatus",
    "SetDeviceStatusResp",
    "SetDriverFeatures",
    "SetDriverFeaturesResp",
    "SetVqueue",
    "SetVqueueResp",
]
