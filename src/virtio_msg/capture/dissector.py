"""The Wireshark Lua dissector shipped in the package: where it is, installing it, its tables.

The dissector (``virtio_msg/data/virtio_msg.lua``) is hand-written Lua around
one generated block: the message tables of both wire profiles and of the
socket channel's own messages, produced by :func:`lua_tables` from the same
:class:`~virtio_msg.wire._layout.Layout` rows the codec uses, so field names,
widths and variable tails cannot drift from ``decode``.  A test checks that
the shipped block equals :func:`lua_tables`; ``python -m
virtio_msg.capture.dissector`` rewrites it after a layout change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Final

from virtio_msg.capture.frames import CHANNEL_MESSAGES
from virtio_msg.wire import Codec, Profile
from virtio_msg.wire._layout import Layout, Tail, _split_codes

SCRIPT_NAME: Final = "virtio_msg.lua"
BEGIN: Final = "-- BEGIN GENERATED TABLES (python -m virtio_msg.capture.dissector)"
END: Final = "-- END GENERATED TABLES"
_TAILS: Final = {
    Tail.U32_ARRAY: "u32-array",
    Tail.BYTES_EXACT: "bytes-exact",
    Tail.BYTES_OPTIONAL: "bytes-optional",
    Tail.BITMAP: "bitmap",
}
_INT_CODES: Final = {"B": "u8", "H": "u16", "I": "u32", "Q": "u64"}


def script_path() -> Path:
    """Path of the dissector inside the installed package."""
    return Path(str(resources.files("virtio_msg") / "data" / SCRIPT_NAME))


def plugin_dir() -> Path:
    """The user's Wireshark Lua plugin folder (asks tshark, else the usual Linux place)."""
    tshark = shutil.which("tshark")
    if tshark:
        try:
            out = subprocess.run(
                [tshark, "-G", "folders"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "Personal Lua Plugins" and value.strip():
                return Path(value.strip())
    return Path(os.path.expanduser("~/.local/lib/wireshark/plugins"))


def install(directory: Path | None = None) -> Path:
    """Copy the dissector into ``directory`` (default: :func:`plugin_dir`); return the copy."""
    target_dir = directory or plugin_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / SCRIPT_NAME
    shutil.copyfile(script_path(), target)
    return target


def _field_types(lay: Layout) -> list[tuple[str, str]]:
    out = []
    for attr, code in zip(lay.payload_fields, _split_codes(lay.fmt), strict=False):
        kind = f"b{code[:-1]}" if code.endswith("s") else _INT_CODES[code]
        out.append((lay.json_name(attr), kind))
    return out


def _lua_message(key: int, name: str, fields: list[tuple[str, str]], tail: str) -> str:
    body = ", ".join(f'{{"{n}", "{k}"}}' for n, k in fields)
    return f'    [0x{key:03x}] = {{name = "{name}", fields = {{{body}}}{tail}}},'


def lua_tables() -> str:
    """The generated block of the dissector (between the BEGIN and END markers)."""
    lines = [BEGIN, "local MESSAGES = {"]
    for profile in Profile:
        lines.append(f'  ["{profile.value}"] = {{')
        for lay in sorted(Codec(profile).layouts(), key=lambda x: x.key):
            tail = ""
            if lay.tail is not Tail.NONE:
                count = lay.payload_fields.index(lay.count_field or "") + 1
                tail_name = lay.json_name(lay.payload_fields[-1])
                tail = f', tail = {{"{tail_name}", "{_TAILS[lay.tail]}", {count}}}'
            lines.append(_lua_message(lay.key, lay.name, _field_types(lay), tail))
        lines.append("  },")
    lines.append("}")
    lines.append("local CHANNEL_MESSAGES = {")
    for (msg_id, response), (name, layout, names) in sorted(CHANNEL_MESSAGES.items()):
        codes = _split_codes(layout.format)
        fields = [(n, _INT_CODES[c]) for n, c in zip(names, codes, strict=True)]
        lines.append(_lua_message((0x300 if response else 0x200) | msg_id, name, fields, ""))
    lines.append("}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def shipped_tables(text: str) -> str:
    """The generated block as it stands in a dissector's source."""
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n", text, re.S)
    if m is None:
        raise ValueError("the dissector has no generated block")
    return m.group(0)


def regenerate(path: Path) -> bool:
    """Rewrite the generated block of ``path``; True if it changed."""
    text = path.read_text()
    old = shipped_tables(text)
    new = lua_tables()
    if old == new:
        return False
    path.write_text(text.replace(old, new))
    return True


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    changed = regenerate(Path(__file__).parent.parent / "data" / SCRIPT_NAME)
    print("updated" if changed else "up to date", file=sys.stderr)
