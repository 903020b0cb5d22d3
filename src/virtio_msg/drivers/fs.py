"""virtio-fs driver: the mount tag, FUSE_INIT, and LOOKUP/GETATTR through a FUSE server.

A virtio-fs device (device id 26) carries FUSE requests: each is one buffer
out (``fuse_in_header`` plus the opcode's body) and one buffer in for the
reply (``fuse_out_header`` plus its body), on a request queue; queue 0 is
the high-priority queue (FORGET, INTERRUPT), set up but unused here.  This
driver does the session start (``FUSE_INIT``, protocol 7.x) and the two
read-only requests a file system check needs, ``LOOKUP`` and ``GETATTR``;
it mounts nothing.  Replies come from the device side (virtiofsd) and are
untrusted: a wrong length, an unknown ``unique``, a bad error value or a
short body raises :class:`~virtio_msg.errors.TransportError` naming it.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import ClassVar, Final

from virtio_msg.drivers.base import Driver
from virtio_msg.errors import TransportError
from virtio_msg.spec import DeviceId

FUSE_LOOKUP: Final = 1
FUSE_GETATTR: Final = 3
FUSE_INIT: Final = 26
OPCODE_NAMES: Final = {FUSE_LOOKUP: "LOOKUP", FUSE_GETATTR: "GETATTR", FUSE_INIT: "INIT"}
FUSE_KERNEL_VERSION: Final = 7
FUSE_KERNEL_MINOR_VERSION: Final = 31
"""The protocol minor this driver offers (Linux 5.9's; virtiofsd answers with its own)."""
FUSE_ROOT_ID: Final = 1
"""Node id of the file system's root."""
REPLY_BUFFER: Final = 4096
"""Device-writable bytes posted for each reply (every reply used here is far smaller)."""
TAG_SIZE: Final = 36
"""``struct virtio_fs_config``: tag[36] (NUL-padded UTF-8), then num_request_queues."""
PROBE_NAME: Final = ".virtio-msg-probe"
"""Name the self-test looks up in the root (absent: ENOENT is a complete round trip too)."""

_IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ext, pad
_OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
_INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (then flags2, unused)
_INIT_IN_SIZE = 64
_INIT_OUT = struct.Struct("<IIIIHHI")  # major, minor, max_readahead, flags, bg, cong, max_write
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino, size, blocks, a/m/ctime(+nsec), mode, ...
_ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid, generation, entry/attr valid (+nsec)
_ATTR_OUT = struct.Struct("<QII")  # attr_valid, attr_valid_nsec, dummy


@dataclass(frozen=True)
class FsAttr:
    """The parts of a ``fuse_attr`` a check needs."""

    ino: int
    size: int
    mode: int
    nlink: int
    uid: int
    gid: int

    @property
    def kind(self) -> str:
        """``dir``, ``file``, ``link`` or ``other``."""
        if stat.S_ISDIR(self.mode):
            return "dir"
        if stat.S_ISREG(self.mode):
            return "file"
        return "link" if stat.S_ISLNK(self.mode) else "other"


@dataclass(frozen=True)
class FsInit:
    """What the FUSE server answered to ``FUSE_INIT``."""

    major: int
    minor: int
    max_write: int


class FuseError(TransportError):
    """The FUSE server answered a request with an errno (``errno`` holds it)."""

    def __init__(self, opcode: int, code: int) -> None:
        """``code`` is the positive errno of the reply."""
        name = OPCODE_NAMES.get(opcode, str(opcode))
        super().__init__("protocol", f"FUSE {name} failed: {os.strerror(code)} (errno {code})")
        self.errno = code


def _attr(data: bytes, offset: int) -> FsAttr:
    f = _ATTR.unpack_from(data, offset)
    return FsAttr(ino=f[0], size=f[1], mode=f[9], nlink=f[10], uid=f[11], gid=f[12])


class FsDriver(Driver):
    """Driver for virtio-fs (device id 26): the tag, one request queue, FUSE requests."""

    device_id: ClassVar[int] = DeviceId.FS
    name: ClassVar[str] = "fs"

    def setup(self) -> None:
        """Read the tag and the request-queue count; set up hiprio and one request queue."""
        config = self.transport.get_config(0, TAG_SIZE + 4)
        raw_tag = config[:TAG_SIZE].split(b"\0", 1)[0]
        try:
            self.tag = raw_tag.decode("utf-8")
        except UnicodeDecodeError:
            raise TransportError("protocol", f"virtio-fs tag {raw_tag!r} is not UTF-8") from None
        (self.num_request_queues,) = struct.unpack_from("<I", config, TAG_SIZE)
        if self.num_request_queues < 1:
            raise TransportError("protocol", "virtio-fs device has no request queue")
        self.hiprio, self.requests = self.transport.find_vqs(2)
        self._unique = itertools.count(1)
        self._lock = threading.Lock()
        self.session: FsInit | None = None

    def request(self, opcode: int, nodeid: int, body: bytes) -> bytes:
        """Send one FUSE request; return the reply's body (after ``fuse_out_header``).

        Raises :class:`FuseError` when the server answers with an errno, and
        TransportError for a reply that does not fit the request.
        """
        with self._lock:
            unique = next(self._unique)
            header = _IN_HEADER.pack(_IN_HEADER.size + len(body), opcode, unique, nodeid,
                                     os.getuid(), os.getgid(), os.getpid(), 0, 0)
            token = object()
            self.transport.check()
            self.requests.add([header + body], [REPLY_BUFFER], token)
            self.transport.notify(self.requests)
            done: list[tuple[object, bytes]] = self.transport.wait_until(self.requests.get_used)
        replies = [data for tok, data in done if tok is token]
        if not replies:
            raise TransportError("protocol", "virtio-fs device completed an unknown buffer")
        return check_reply(opcode, unique, replies[0])

    def init(self) -> FsInit:
        """``FUSE_INIT``: start the session (protocol 7); what the server supports."""
        body = _INIT_IN.pack(FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 0, 0)
        reply = self.request(FUSE_INIT, 0, body.ljust(_INIT_IN_SIZE, b"\0"))
        _need(reply, _INIT_OUT.size, FUSE_INIT)
        major, minor, _readahead, _flags, _bg, _cong, max_write = _INIT_OUT.unpack_from(reply)
        if major != FUSE_KERNEL_VERSION:
            raise TransportError(
                "protocol", f"FUSE server speaks protocol {major}.{minor}, not 7.x"
            )
        self.session = FsInit(major, minor, max_write)
        return self.session

    def getattr(self, nodeid: int = FUSE_ROOT_ID) -> FsAttr:
        """``FUSE_GETATTR`` of ``nodeid`` (default the root)."""
        reply = self.request(FUSE_GETATTR, nodeid, bytes(16))  # flags 0, dummy, fh 0
        _need(reply, _ATTR_OUT.size + _ATTR.size, FUSE_GETATTR)
        return _attr(reply, _ATTR_OUT.size)

    def lookup(self, name: str, parent: int = FUSE_ROOT_ID) -> tuple[int, FsAttr]:
        """``FUSE_LOOKUP`` of ``name`` in ``parent``: its node id and attributes."""
        raw = name.encode()
        if not raw or b"/" in raw or b"\0" in raw:
            raise ValueError(f"not a file name: {name!r}")
        reply = self.request(FUSE_LOOKUP, parent, raw + b"\0")
        _need(reply, _ENTRY_OUT.size + _ATTR.size, FUSE_LOOKUP)
        nodeid = _ENTRY_OUT.unpack_from(reply)[0]
        return nodeid, _attr(reply, _ENTRY_OUT.size)

    def selftest(self) -> dict[str, object]:
        """INIT, GETATTR of the root, LOOKUP of :data:`PROBE_NAME` (ENOENT counts)."""
        session = self.session or self.init()
        root = self.getattr()
        if root.kind != "dir":
            raise TransportError("protocol", f"the file system's root is a {root.kind}, not a dir")
        try:
            nodeid, attr = self.lookup(PROBE_NAME)
            found = f"{attr.kind} (node {nodeid})"
        except FuseError as exc:
            if exc.errno != errno.ENOENT:
                raise
            found = "ENOENT"
        return {
            "tag": self.tag,
            "fuse": f"{session.major}.{session.minor}",
            "root": f"dir {stat.S_IMODE(root.mode):04o}",
            "lookup": found,
        }


def check_reply(opcode: int, unique: int, data: bytes) -> bytes:
    """Validate one FUSE reply to request ``unique``; return its body.

    Raises :class:`FuseError` for an errno reply and TransportError for a
    reply whose header does not fit: short, wrong length, wrong ``unique``, or
    an error value outside -4095..0.
    """
    name = OPCODE_NAMES.get(opcode, str(opcode))
    if len(data) < _OUT_HEADER.size:
        raise TransportError("protocol", f"FUSE {name} reply of {len(data)} bytes has no header")
    length, error, got = _OUT_HEADER.unpack_from(data)
    if length != len(data):
        raise TransportError(
            "protocol", f"FUSE {name} reply says {length} bytes, the device wrote {len(data)}"
        )
    if got != unique:
        raise TransportError("protocol", f"FUSE {name} reply for request {got}, not {unique}")
    if error > 0 or error < -4095:
        raise TransportError("protocol", f"FUSE {name} reply carries error {error}")
    if error:
        raise FuseError(opcode, -error)
    return data[_OUT_HEADER.size :]


def _need(reply: bytes, size: int, opcode: int) -> None:
    if len(reply) < size:
        name = OPCODE_NAMES.get(opcode, str(opcode))
        raise TransportError(
            "protocol", f"FUSE {name} reply body is {len(reply)} bytes, {size} expected"
        )


__all__ = ["FsAttr", "FsDriver", "FsInit", "FuseError", "check_reply"]
