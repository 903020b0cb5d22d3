"""NBD export of the driver-side virtio-blk disk: qemu-img/qemu-io, and the protocol's error paths.

The qemu tests drive the real tools (Debian's qemu-utils) against an export
whose every byte crosses the loopback bus and the restricted pool.  The
protocol tests use a small hand-written client, mostly against an in-memory
target, to reach every refusal the server makes.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import virtio_msg.exports.nbd_protocol as N
from virtio_msg.drivers.blk import BlkDriver
from virtio_msg.exports.nbd import NbdServer, blk_disk, nbd_uri

MiB = 1 << 20
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
needs_qemu = pytest.mark.skipif(
    QEMU_IMG is None or QEMU_IO is None,
    reason="qemu-img/qemu-io not installed (Debian package qemu-utils; .ci/run installs it)",
)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="vmnbd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class MemTarget:
    """An in-memory BlockTarget that records what it was asked."""

    def __init__(self, size: int = MiB, *, read_only: bool = False, fail: bool = False) -> None:
        self.data = bytearray(size)
        self.read_only = read_only
        self.supports_discard = True
        self.fail = fail
        self.calls: list[str] = []

    @property
    def size(self) -> int:
        return len(self.data)

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if self.fail:
            raise OSError(5, "simulated failure")

    def read(self, offset: int, length: int) -> bytes:
        self._maybe_fail("read")
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._maybe_fail("write")
        self.data[offset : offset + len(data)] = data

    def flush(self) -> None:
        self._maybe_fail("flush")

    def discard_range(self, offset: int, length: int) -> None:
        self._maybe_fail("trim")

    def zero_range(self, offset: int, length: int, *, unmap: bool = False) -> None:
        self._maybe_fail(f"zero unmap={unmap}")
        self.data[offset : offset + length] = bytes(length)


class Client:
    """The smallest NBD client: fixed newstyle, simple replies."""

    def __init__(self, path: Path, flags: int = 3) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.greeting = self.recv(18)
        self.sock.sendall(struct.pack(">I", flags))
        self.cookie = 0

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise EOFError(f"closed after {len(buf)} of {n} bytes")
            buf += part
        return buf

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def option(self, opt: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", N.IHAVEOPT, opt, len(data)) + data)

    def reply(self) -> tuple[int, int, bytes]:
        magic, opt, kind, length = struct.unpack(">QIII", self.recv(20))
        assert magic == N.OPTION_REPLY_MAGIC
        return opt, kind, self.recv(length)

    def go(self, name: bytes = b"", infos: tuple[int, ...] = ()) -> tuple[int, int]:
        wanted = struct.pack(f">H{len(infos)}H", len(infos), *infos)
        data = struct.pack(">I", len(name)) + name + wanted
        self.option(N.NBD_OPT_GO, data)
        size = flags = -1
        while True:
            _opt, kind, body = self.reply()
            if kind == N.NBD_REP_ACK:
                return size, flags
            assert kind == N.NBD_REP_INFO, hex(kind)
            if struct.unpack_from(">H", body)[0] == N.NBD_INFO_EXPORT:
                _, size, flags = struct.unpack(">HQH", body)

    def cmd(
        self, cmd: int, offset: int = 0, length: int = 0, *, flags: int = 0, data: bytes = b"",
        read: bool = False,
    ) -> tuple[int, bytes]:
        self.cookie += 1
        req = struct.pack(">IHHQQI", N.REQUEST_MAGIC, flags, cmd, self.cookie, offset, length)
        self.sock.sendall(req + data)
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == N.SIMPLE_REPLY_MAGIC and cookie == self.cookie
        payload = self.recv(length) if read and not error else b""
        return error, payload

    def close(self) -> None:
        self.sock.close()


Serve = Callable[..., NbdServer]


@pytest.fixture
def serve(sock_dir: Path) -> Iterator[Serve]:
    servers: list[NbdServer] = []

    def start(target: object, **opts: object) -> NbdServer:
        srv = NbdServer(target, sock_dir / f"s{len(servers)}.sock", **opts)  # type: ignore[arg-type]
        servers.append(srv)
        return srv.start()

    yield start
    for srv in servers:
        srv.close()


# --- qemu-img / qemu-io through virtio-msg -------------------------------------------------------


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@needs_qemu
def test_qemu_img_convert_round_trip(tmp_path: Path, sock_dir: Path) -> None:
    src = tmp_path / "src.img"
    payload = bytearray(random.Random(7).randbytes(6 * MiB))
    payload[MiB : 2 * MiB] = bytes(MiB)  # a zero run: qemu-img sends WRITE_ZEROES for it
    src.write_bytes(payload)
    image = tmp_path / "disk.img"
    with blk_disk(image, size=6 * MiB) as disk:
        image.write_bytes(b"\xff" * (6 * MiB))  # the zero run must really be written
        sock = sock_dir / "disk.sock"
        with NbdServer(disk, sock).start() as srv:
            uri = nbd_uri(sock)
            r = run(str(QEMU_IMG), "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri)
            assert r.returncode == 0, r.stderr
            assert image.read_bytes() == payload  # written through virtio-blk into the image
            out = tmp_path / "out.img"
            r = run(
                str(QEMU_IMG), "convert", "-f", "raw", "-O", "raw", f"nbd:unix:{sock}", str(out)
            )
            assert r.returncode == 0, r.stderr
            assert out.read_bytes() == payload
            r = run(str(QEMU_IMG), "info", "--output=json", uri)
            assert r.returncode == 0 and '"virtual-size": 6291456' in r.stdout
            # qemu-img sends DISC and hangs up without waiting: wait for the server to
            # finish each session before reading its counters.
            assert srv.wait_sessions(3, timeout=60)
            assert srv.clients == 3  # sequential clients on one server
            assert srv.commands["WRITE"] > 0 and srv.commands["READ"] > 0
            assert srv.commands["DISC"] == 3
            assert not any(k.startswith("error") for k in srv.commands)
        assert disk.transport.pool.stats().live_mappings == 0


@needs_qemu
def test_qemu_io_unaligned_writes_zeroes_discard_and_flush(tmp_path: Path, sock_dir: Path) -> None:
    image = tmp_path / "disk.img"
    with blk_disk(image, size=4 * MiB) as disk:
        sock = sock_dir / "io.sock"
        with NbdServer(disk, sock).start() as srv:
            image.write_bytes(b"\x5a" * (4 * MiB))
            r = run(
                str(QEMU_IO), "-f", "raw",
                "-c", "write -P 0xab 1001 70001",
                "-c", "read -P 0xab 1001 70001",
                "-c", "write -z 262144 131072",
                "-c", "discard 1m 1m",
                "-c", "flush",
                nbd_uri(sock),
            )
            assert r.returncode == 0, r.stderr + r.stdout
            assert "Pattern verification failed" not in r.stdout
            data = image.read_bytes()
            assert data[1001 : 1001 + 70001] == b"\xab" * 70001
            assert data[1000:1001] == b"\x5a" and data[71002:71003] == b"\x5a"
            assert data[262144 : 262144 + 131072] == bytes(131072)
            assert srv.wait_sessions(1, timeout=60)  # qemu-io, too, hangs up after DISC
            assert srv.commands["WRITE_ZEROES"] == 1 and srv.commands["TRIM"] == 1
            assert srv.commands["FLUSH"] >= 1


@needs_qemu
def test_read_only_export_refuses_writes_from_qemu_io(tmp_path: Path, sock_dir: Path) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(b"\x42" * MiB)
    with blk_disk(image, read_only=True) as disk:
        sock = sock_dir / "ro.sock"
        with NbdServer(disk, sock).start():
            r = run(str(QEMU_IO), "-r", "-f", "raw", "-c", "read -P 0x42 0 64k", nbd_uri(sock))
            assert r.returncode == 0 and "read 65536/65536" in r.stdout, r.stderr
            # The export says READ_ONLY: qemu refuses to open it for writing at all.
            r = run(str(QEMU_IO), "-f", "raw", "-c", "write -P 1 0 4k", nbd_uri(sock))
            assert r.returncode != 0 and "Permission denied" in r.stderr
    assert image.read_bytes() == b"\x42" * MiB


BACKEND = """
import sys
from virtio_msg.bus.client import connect
from virtio_msg.devices.blk import BlkDevice
with connect(sys.argv[1]) as client, BlkDevice(sys.argv[2], size=int(sys.argv[3])) as dev:
    client.serve(0, dev)
    print("serving", flush=True)
    client.wait()
"""


@needs_qemu
def test_qemu_img_through_a_device_in_another_process(tmp_path: Path, sock_dir: Path) -> None:
    pytest.importorskip("virtio_msg.bus.socket", reason="socket channel not in this tree")
    from virtio_msg.bus import LoopbackBus
    from virtio_msg.bus.socket import SocketServer
    from virtio_msg.drivers import DRIVERS
    from virtio_msg.spec import DeviceId

    src = tmp_path / "src.img"
    payload = random.Random(11).randbytes(3 * MiB)
    src.write_bytes(payload)
    image = tmp_path / "disk.img"
    bus = LoopbackBus(size=2 * MiB, drivers={**DRIVERS, DeviceId.BLOCK: BlkDriver})
    server = SocketServer(bus, sock_dir / "bus.sock").start()
    proc = subprocess.Popen(
        [sys.executable, "-c", BACKEND, str(sock_dir / "bus.sock"), str(image), str(3 * MiB)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        entry = bus.device(0)
        assert entry is not None and isinstance(entry.driver, BlkDriver)
        with NbdServer(entry.driver, sock_dir / "nbd.sock").start() as srv:
            uri = nbd_uri(srv.path)
            r = run(str(QEMU_IMG), "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri)
            assert r.returncode == 0, r.stderr
            out = tmp_path / "out.img"
            r = run(str(QEMU_IMG), "convert", "-f", "raw", "-O", "raw", uri, str(out))
            assert r.returncode == 0, r.stderr
        assert out.read_bytes() == payload
        assert image.read_bytes() == payload  # written by the other process
    finally:
        server.close()
        bus.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- handshake -----------------------------------------------------------------------------------


def test_greeting_is_fixed_newstyle_with_no_zeroes(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    assert c.greeting == struct.pack(">QQH", N.NBDMAGIC, N.IHAVEOPT, 3)
    assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600


def test_client_without_fixed_newstyle_is_disconnected(serve: Serve) -> None:
    srv = serve(MemTarget())
    assert Client(Path(srv.path), flags=0).closed()
    assert srv.wait(0) is False and srv.rejected["client-flags"] == 1


@pytest.mark.parametrize("opt", [N.NBD_OPT_STARTTLS, N.NBD_OPT_STRUCTURED_REPLY, 9, 10, 11, 99])
def test_unsupported_options_get_err_unsup_and_negotiation_goes_on(serve: Serve, opt: int) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.option(opt)
    assert c.reply() == (opt, N.NBD_REP_ERR_UNSUP, b"option not supported")
    assert c.go() == (MiB, N.NBD_FLAG_HAS_FLAGS | 4 | 8 | 32 | 64)


def test_list_names_the_export(serve: Serve) -> None:
    srv = serve(MemTarget(), export_name="disk0")
    c = Client(Path(srv.path))
    c.option(N.NBD_OPT_LIST)
    assert c.reply() == (N.NBD_OPT_LIST, N.NBD_REP_SERVER, b"\0\0\0\x05disk0")
    assert c.reply()[1] == N.NBD_REP_ACK
    c.option(N.NBD_OPT_LIST, b"junk")
    assert c.reply()[1] == N.NBD_REP_ERR_INVALID


def test_go_answers_the_information_asked(serve: Serve) -> None:
    srv = serve(MemTarget(), export_name="disk0", description="test disk")
    c = Client(Path(srv.path))
    c.option(N.NBD_OPT_INFO, b"\0\0\0\x05disk0" + struct.pack(">HHHH", 3, 1, 2, 3))
    infos = {}
    while (r := c.reply())[1] != N.NBD_REP_ACK:
        infos[struct.unpack_from(">H", r[2])[0]] = r[2][2:]
    assert infos[N.NBD_INFO_NAME] == b"disk0" and infos[N.NBD_INFO_DESCRIPTION] == b"test disk"
    assert struct.unpack(">III", infos[N.NBD_INFO_BLOCK_SIZE]) == (1, 4096, N.DEFAULT_MAX_REQUEST)
    assert c.go(b"disk0")[0] == MiB  # INFO does not end negotiation; GO does


def test_unknown_export_is_refused(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.option(N.NBD_OPT_GO, b"\0\0\0\x04nope\0\0")
    assert c.reply()[1] == N.NBD_REP_ERR_UNKNOWN
    c.option(N.NBD_OPT_EXPORT_NAME, b"nope")  # no error reply exists: the server hangs up
    assert c.closed()


@pytest.mark.parametrize(
    "data",
    [b"", b"\0\0\0\x09abc\0\0", b"\0\0\0\0\0\x02\0\x01", b"\0\0\0\0\0\0\0"],
    ids=["empty", "name-past-end", "missing-infos", "trailing-byte"],
)
def test_malformed_go_is_err_invalid(serve: Serve, data: bytes) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.option(N.NBD_OPT_GO, data)
    assert c.reply()[1] == N.NBD_REP_ERR_INVALID
    assert c.go()[0] == MiB


def test_over_long_option_is_too_big_and_huge_one_disconnects(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.option(99, bytes(N.MAX_OPTION_LENGTH + 1))
    assert c.reply()[1] == N.NBD_REP_ERR_TOO_BIG
    c.sock.sendall(struct.pack(">QII", N.IHAVEOPT, 99, N.MAX_DRAIN + 1))
    assert c.closed()


def test_endless_negotiation_is_cut_off(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    for _ in range(N.MAX_OPTIONS):
        c.option(N.NBD_OPT_LIST)
    for _ in range(N.MAX_OPTIONS):
        assert c.reply()[1] == N.NBD_REP_SERVER
        assert c.reply()[1] == N.NBD_REP_ACK
    assert c.closed() and srv.rejected["too-many-options"] == 1


@pytest.mark.parametrize(("flags", "tail"), [(3, 0), (1, 124)])
def test_export_name_reply_honours_no_zeroes(serve: Serve, flags: int, tail: int) -> None:
    srv = serve(MemTarget(read_only=True))
    c = Client(Path(srv.path), flags=flags)
    c.option(N.NBD_OPT_EXPORT_NAME, b"")
    size, tflags = struct.unpack(">QH", c.recv(10))
    assert size == MiB and tflags & N.NBD_FLAG_READ_ONLY
    assert c.recv(tail) == bytes(tail)
    assert c.cmd(N.NBD_CMD_READ, 0, 4, read=True) == (0, bytes(4))


def test_abort_is_acknowledged_then_closed(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.option(N.NBD_OPT_ABORT)
    assert c.reply()[1] == N.NBD_REP_ACK and c.closed()


def test_bad_option_magic_disconnects(serve: Serve) -> None:
    srv = serve(MemTarget())
    c = Client(Path(srv.path))
    c.sock.sendall(struct.pack(">QII", 0x1234, N.NBD_OPT_GO, 0))
    assert c.closed() and srv.rejected["option-magic"] == 1


# --- transmission --------------------------------------------------------------------------------


def session(serve: Serve, target: MemTarget, **opts: object) -> tuple[NbdServer, Client]:
    srv = serve(target, **opts)
    c = Client(Path(srv.path))
    c.go()
    return srv, c


def test_read_write_flush_trim_zeroes(serve: Serve) -> None:
    t = MemTarget()
    srv, c = session(serve, t)
    assert c.cmd(N.NBD_CMD_WRITE, 100, 5, data=b"hello") == (0, b"")
    assert c.cmd(N.NBD_CMD_READ, 98, 9, read=True) == (0, b"\0\0hello\0\0")
    assert c.cmd(N.NBD_CMD_WRITE, 0, 1, flags=N.NBD_CMD_FLAG_FUA, data=b"x")[0] == 0
    assert c.cmd(N.NBD_CMD_FLUSH)[0] == 0
    assert c.cmd(N.NBD_CMD_TRIM, 0, 4096)[0] == 0
    assert c.cmd(N.NBD_CMD_WRITE_ZEROES, 100, 2)[0] == 0
    assert c.cmd(N.NBD_CMD_WRITE_ZEROES, 100, 2, flags=N.NBD_CMD_FLAG_NO_HOLE)[0] == 0
    assert t.data[100:105] == b"\0\0llo"
    assert t.calls == [
        "write", "read", "write", "flush", "flush", "trim", "zero unmap=True", "zero unmap=False",
    ]
    c.sock.sendall(struct.pack(">IHHQQI", N.REQUEST_MAGIC, 0, N.NBD_CMD_DISC, 9, 0, 0))
    assert c.closed() and srv.commands["DISC"] == 1

def test_a_client_that_hangs_up_after_disc_is_counted_once_its_session_ends(
    serve: Serve,
) -> None:
    """Like qemu-img: DISC then close at once, never waiting for the server."""
    srv, c = session(serve, MemTarget())
    c.sock.sendall(struct.pack(">IHHQQI", N.REQUEST_MAGIC, 0, N.NBD_CMD_DISC, 1, 0, 0))
    c.close()
    assert srv.wait_sessions(1, timeout=10)
    assert srv.sessions_ended == 1 and srv.commands["DISC"] == 1
    assert not srv.wait_sessions(2, timeout=0)



@pytest.mark.parametrize(
    ("cmd", "offset", "length", "flags", "error"),
    [
        (5, 0, 512, 0, N.NBD_EINVAL),  # CACHE: not offered
        (7, 0, 512, 0, N.NBD_EINVAL),  # BLOCK_STATUS: needs structured replies
        (200, 0, 0, 0, N.NBD_EINVAL),  # unknown command
        (N.NBD_CMD_READ, 0, 512, N.NBD_CMD_FLAG_FUA, N.NBD_EINVAL),  # flag not for READ
        (N.NBD_CMD_READ, 0, 512, 1 << 10, N.NBD_EINVAL),  # unknown flag
        (N.NBD_CMD_READ, MiB - 1, 2, 0, N.NBD_EINVAL),  # past the end
        (N.NBD_CMD_READ, 0, 0, 0, N.NBD_EINVAL),  # empty read
        (N.NBD_CMD_READ, 0, N.DEFAULT_MAX_REQUEST + 1, 0, N.NBD_EINVAL),  # too large
        (N.NBD_CMD_TRIM, MiB, 1, 0, N.NBD_EINVAL),
        (N.NBD_CMD_WRITE_ZEROES, MiB - 1, 2, 0, N.NBD_ENOSPC),
        (N.NBD_CMD_WRITE_ZEROES, 0, 1, 1 << 4, N.NBD_EINVAL),  # FAST_ZERO not offered
    ],
)
def test_bad_commands_get_the_protocol_error(
    serve: Serve, cmd: int, offset: int, length: int, flags: int, error: int
) -> None:
    t = MemTarget()
    _srv, c = session(serve, t)
    assert c.cmd(cmd, offset, length, flags=flags) == (error, b"")
    assert c.cmd(N.NBD_CMD_READ, 0, 8, read=True) == (0, bytes(8))  # the session goes on
    assert t.calls == ["read"]


def test_write_past_the_end_is_enospc_and_payload_is_consumed(serve: Serve) -> None:
    t = MemTarget()
    _srv, c = session(serve, t)
    assert c.cmd(N.NBD_CMD_WRITE, MiB - 2, 4, data=b"abcd") == (N.NBD_ENOSPC, b"")
    assert c.cmd(N.NBD_CMD_READ, MiB - 4, 4, read=True) == (0, bytes(4))


def test_writes_on_a_read_only_export_are_eperm(serve: Serve) -> None:
    t = MemTarget(read_only=True)
    _srv, c = session(serve, t)
    assert c.cmd(N.NBD_CMD_WRITE, 0, 3, data=b"abc") == (N.NBD_EPERM, b"")
    assert c.cmd(N.NBD_CMD_TRIM, 0, 512) == (N.NBD_EPERM, b"")
    assert c.cmd(N.NBD_CMD_WRITE_ZEROES, 0, 512) == (N.NBD_EPERM, b"")
    assert c.cmd(N.NBD_CMD_FLUSH)[0] == 0 and "write" not in t.calls


def test_target_failure_is_eio(serve: Serve) -> None:
    _srv, c = session(serve, MemTarget(fail=True))
    assert c.cmd(N.NBD_CMD_READ, 0, 512) == (N.NBD_EIO, b"")
    assert c.cmd(N.NBD_CMD_WRITE, 0, 2, data=b"ab") == (N.NBD_EIO, b"")


def test_oversized_write_disconnects_without_buffering(serve: Serve) -> None:
    srv, c = session(serve, MemTarget(), max_request=4096)
    c.sock.sendall(struct.pack(">IHHQQI", N.REQUEST_MAGIC, 0, N.NBD_CMD_WRITE, 1, 0, 4097))
    assert c.closed() and srv.rejected["write-too-large"] == 1


def test_bad_request_magic_disconnects_and_next_client_is_served(serve: Serve) -> None:
    srv, c = session(serve, MemTarget())
    c.sock.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, N.NBD_CMD_READ, 1, 0, 512))
    assert c.closed()
    c2 = Client(Path(srv.path))
    c2.go()
    assert c2.cmd(N.NBD_CMD_READ, 0, 2, read=True) == (0, b"\0\0")
    assert srv.clients == 2


def test_server_stops_after_max_clients(serve: Serve) -> None:
    srv = serve(MemTarget(), max_clients=2)
    for _ in range(2):
        c = Client(Path(srv.path))
        c.option(N.NBD_OPT_ABORT)
        c.reply()
        c.close()
    assert srv.wait(10)


def test_close_ends_a_connected_session(serve: Serve) -> None:
    srv, c = session(serve, MemTarget())
    srv.close()
    assert c.closed() and not os.path.exists(srv.path)


def test_socket_path_rules(sock_dir: Path) -> None:
    target = MemTarget()
    regular = sock_dir / "file"
    regular.write_text("not a socket")
    with pytest.raises(ValueError, match="not a socket"):
        NbdServer(target, regular)
    stale = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    with NbdServer(target, stale) as srv:
        with pytest.raises(ValueError, match="another server"):
            NbdServer(target, stale)
        assert srv.path == str(stale)


def test_the_real_driver_is_a_block_target(sock_dir: Path) -> None:
    with blk_disk(size=MiB) as disk, NbdServer(disk, sock_dir / "r.sock").start() as srv:
        assert isinstance(disk, BlkDriver)
        c = Client(Path(srv.path))
        size, flags = c.go()
        assert size == MiB and flags & N.NBD_FLAG_SEND_TRIM
        assert c.cmd(N.NBD_CMD_WRITE, 513, 3, data=b"abc") == (0, b"")
        assert c.cmd(N.NBD_CMD_READ, 512, 5, read=True) == (0, b"\0abc\0")
        assert c.cmd(N.NBD_CMD_READ, MiB, 1) == (N.NBD_EINVAL, b"")
