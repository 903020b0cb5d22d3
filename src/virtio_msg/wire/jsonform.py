"""JSON form of messages, for ``virtio-msg decode`` / ``encode`` and traces.

One flat object per message: profile, name, msg_id, response, bus, dev_num,
token (null for linux-rfc1), msg_size, and ``fields`` named exactly as in the
profile's reference tables.  Integers stay numbers, byte strings become
lowercase hex, feature arrays lists of numbers.  :func:`from_json` is the
strict inverse and raises :class:`~virtio_msg.errors.EncodeError` naming the
key that is wrong.
"""

from __future__ import annotations

from typing import Any

from virtio_msg.errors import EncodeError
from virtio_msg.wire._layout import Layout, Tail
from virtio_msg.wire.codec import Codec, GenericMessage, Message

GENERIC_NAME = "IMPLEMENTATION_DEFINED"


def _jsonable(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(codec: Codec, msg: Message, *, msg_size: int | None = None) -> dict[str, object]:
    """Describe ``msg`` as a JSON-ready dict (``msg_size`` computed if not given)."""
    if msg_size is None:
        msg_size = len(codec.encode(msg))
    if isinstance(msg, GenericMessage):
        name, msg_id, response, bus = GENERIC_NAME, msg.msg_id, msg.response, msg.bus
        fields: dict[str, object] = {"payload": bytes(msg.payload).hex()}
    else:
        lay = codec.layout_for(msg)
        name, msg_id, response, bus = lay.name, lay.msg_id, lay.response, lay.bus
        fields = {
            lay.json_name(attr): _jsonable(value)
            for attr, value in zip(lay.payload_fields, msg, strict=False)
        }
    return {
        "profile": codec.profile.value,
        "name": name,
        "msg_id": msg_id,
        "response": response,
        "bus": bus,
        "dev_num": msg[-2],
        "token": msg[-1] if codec.has_token else None,
        "msg_size": msg_size,
        "fields": fields,
    }


def _get(obj: dict[str, Any], key: str, kind: type, default: object = None) -> Any:
    if key not in obj:
        if default is not None:
            return default
        raise EncodeError(f"missing key {key!r}")
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EncodeError(f"{key!r} must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise EncodeError(f"{key!r} must be true or false, got {value!r}")
    return value


def _hex(key: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"field {key!r} must be a hex string, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EncodeError(f"field {key!r} is not valid hex: {value!r}") from None


def _field_value(lay: Layout, attr: str, value: object) -> object:
    key = lay.json_name(attr)
    if attr == lay.tail_field:
        if lay.tail is Tail.U32_ARRAY:
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise EncodeError(f"field {key!r} must be a list of integers")
            return tuple(value)
        return _hex(key, value)
    if attr == "device_uuid":
        return _hex(key, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"field {key!r} must be an integer, got {value!r}")
    return value


def from_json(codec: Codec, obj: object) -> Message:
    """Build a message of ``codec``'s profile from its JSON form."""
    if not isinstance(obj, dict):
        raise EncodeError("a message must be a JSON object")
    response = _get(obj, "response", bool, False)
    bus = _get(obj, "bus", bool, False)
    dev_num = _get(obj, "dev_num", int, 0)
    token = obj.get("token")
    if token is None:
        token = 0
    elif isinstance(token, bool) or not isinstance(token, int):
        raise EncodeError(f"'token' must be an integer or null, got {token!r}")
    fields = obj.get("fields", {})
    if not isinstance(fields, dict):
        raise EncodeError("'fields' must be an object")
    name = obj.get("name")
    msg_id = obj.get("msg_id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, int)):
        raise EncodeError(f"'msg_id' must be an integer, got {msg_id!r}")
    if name == GENERIC_NAME or (name is None and isinstance(msg_id, int) and msg_id & 0x80):
        if msg_id is None:
            raise EncodeError("an IMPLEMENTATION_DEFINED message needs 'msg_id'")
        return GenericMessage(
            msg_id, response, bus, _hex("payload", fields.get("payload", "")), dev_num, token
        )
    lay: Layout | None = None
    if msg_id is not None:
        lay = codec.layout_by_id(msg_id, response=response, bus=bus)
        if lay is None:
            raise EncodeError(
                f"no {codec.profile.value} {'bus' if bus else 'transport'} "
                f"{'response' if response else 'request/event'} with msg_id {msg_id:#04x}"
            )
        if name is not None and name != lay.name:
            raise EncodeError(f"'name' {name!r} does not match msg_id {msg_id:#04x} ({lay.name})")
    elif isinstance(name, str):
        for cand in codec.layouts():
            if cand.name == name and cand.response == response and cand.bus == bus:
                lay = cand
                break
        if lay is None:
            raise EncodeError(f"unknown message name {name!r} for profile {codec.profile.value}")
    else:
        raise EncodeError("a message needs 'name' or 'msg_id'")
    wanted = {lay.json_name(a) for a in lay.payload_fields}
    unknown = set(fields) - wanted
    if unknown:
        raise EncodeError(f"{lay.name}: unknown field(s) {sorted(unknown)}")
    values: list[object] = []
    for attr in lay.payload_fields:
        key = lay.json_name(attr)
        if key not in fields:
            raise EncodeError(f"{lay.name}: missing field {key!r}")
        values.append(_field_value(lay, attr, fields[key]))
    msg: Message = lay.cls(*values, dev_num=dev_num, token=token)
    return msg


__all__ = ["GENERIC_NAME", "from_json", "to_json"]
