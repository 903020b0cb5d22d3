"""The socket file and who may connect: permissions, stale files, foreign users, fake buses."""

from __future__ import annotations

import array
import os
import shutil
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sockbus_helpers import WAIT, bus_harness, private_dir

from virtio_msg.bus import LoopbackBus
from virtio_msg.bus.client import connect
from virtio_msg.bus.protocol import Announcement
from virtio_msg.bus.socket import SocketServer, default_socket_path
from virtio_msg.errors import BusError
from virtio_msg.transport.params import BusParams


@pytest.fixture
def pdir() -> Iterator[Path]:
    d = private_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _server(path: Path) -> tuple[LoopbackBus, SocketServer]:
    bus = LoopbackBus(size=1 << 16)
    return bus, SocketServer(bus, path)


def test_socket_is_0600_in_a_0700_directory_it_creates(pdir: Path) -> None:
    path = pdir / "nested" / "bus.sock"
    bus, server = _server(path)
    with bus, server:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert not path.exists()  # removed on close


def test_directory_writable_by_others_is_refused(pdir: Path) -> None:
    os.chmod(pdir, 0o777)
    bus, server = _server(pdir / "bus.sock")
    with bus, pytest.raises(BusError, match="writable by others"):
        server.start()


def test_shared_tmp_is_refused() -> None:
    bus, server = _server(Path("/tmp/virtio-msg-test-public.sock"))
    with bus, pytest.raises(BusError, match="writable by others"):
        server.start()


def test_existing_file_that_is_not_a_socket_is_kept(pdir: Path) -> None:
    path = pdir / "bus.sock"
    path.write_text("precious")
    bus, server = _server(path)
    with bus, pytest.raises(BusError, match="not a socket"):
        server.start()
    assert path.read_text() == "precious"


def test_second_bus_on_a_live_socket_is_refused(pdir: Path) -> None:
    path = pdir / "bus.sock"
    bus1, server1 = _server(path)
    bus2, server2 = _server(path)
    with bus1, bus2, server1:
        with pytest.raises(BusError, match="already listening"):
            server2.start()
        with connect(path) as c:  # the first bus is untouched
            assert c.announcement.region_size == bus1.region.size


def test_stale_socket_of_a_dead_bus_is_replaced(pdir: Path) -> None:
    path = pdir / "bus.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    bus, server = _server(path)
    with bus, server, connect(path) as c:
        assert c.announcement.region_size == bus.region.size


def test_overlong_path_is_refused(pdir: Path) -> None:
    bus, server = _server(pdir / ("x" * 120))
    with bus, pytest.raises(BusError, match="too long"):
        server.start()


def test_default_path_prefers_the_runtime_dir(
    pdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(pdir))
    assert default_socket_path() == pdir / "virtio-msg" / "bus.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == Path(f"/tmp/virtio-msg-{os.geteuid()}/bus.sock")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_other_users_are_refused_even_if_the_file_is_reachable() -> None:
    with bus_harness() as h:
        os.chmod(h.dir, 0o711)  # defeat the first line of defence on purpose
        os.chmod(h.path, 0o666)
        pid = os.fork()  # the child only makes system calls, then _exit
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.settimeout(5)
                s.connect(str(h.path))
                code = 0 if s.recv(100) == b"" else 2  # hung up without ANNOUNCE
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert h.server.refused == 1 and h.server.channels() == []


# --- a fake bus: the backend library must validate what it is sent -----------------------------


def _fake_bus(send: Callable[[socket.socket], None]) -> Iterator[Path]:
    d = private_dir()
    path = d / "fake.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(str(path))
    lsock.listen(1)

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            send(conn)
            conn.settimeout(WAIT)
            conn.recv(100)  # until the backend hangs up
        except OSError:
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path
    finally:
        lsock.close()
        t.join(WAIT)
        shutil.rmtree(d, ignore_errors=True)


GOOD = Announcement.for_bus(BusParams(), 0x1000, 0x4000, 4)


def _memfd(size: int) -> int:
    fd = os.memfd_create("fake")
    os.ftruncate(fd, size)
    return fd


def _send(data: bytes, fds: list[int]) -> Callable[[socket.socket], None]:
    def send(conn: socket.socket) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        conn.sendmsg([data], anc)
        for fd in fds:
            os.close(fd)

    return send


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _send(GOOD.encode(), []), "0 file descriptors"),
        (lambda: _send(GOOD.encode(), [_memfd(0x4000), _memfd(0x4000)]), "2 file descriptors"),
        (lambda: _send(GOOD.encode(), [_memfd(0x8000)]), "holds 32768 bytes"),
        (lambda: _send(GOOD.encode(), [os.open("/", os.O_RDONLY)]), "not a regular file"),
        (lambda: _send(GOOD.encode()[:-2] + struct.pack("<H", 0), [_memfd(0x4000)]),
         "max_devices"),
        (lambda: _send(b"hello", [_memfd(0x4000)]), "invalid ANNOUNCE"),
        (lambda: (lambda conn: None), "no ANNOUNCE"),
        (lambda: (lambda conn: conn.close()), "closed the connection before ANNOUNCE"),
    ],
)
def test_backend_rejects_a_bad_announcement(
    make: Callable[[], Callable[[socket.socket], None]], message: str
) -> None:
    for path in _fake_bus(make()):
        with pytest.raises(BusError, match=message):
            connect(path, timeout=0.5)


def test_backend_refuses_a_region_above_its_limit() -> None:
    for path in _fake_bus(_send(GOOD.encode(), [_memfd(0x4000)])):
        with pytest.raises(BusError, match="exceeds this backend's limit"):
            connect(path, timeout=2, max_region_size=0x1000)


def test_backend_maps_a_good_announcement_from_any_bus() -> None:
    for path in _fake_bus(_send(GOOD.encode(), [_memfd(0x4000)])):
        with connect(path, timeout=2) as c:
            assert (c.region.base, c.region.size) == (0x1000, 0x4000)


def test_backend_cannot_shrink_a_sealable_region_under_the_bus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = os.memfd_create
    # What Region should do (MFD_ALLOW_SEALING); today's Region does not, see the docs.
    monkeypatch.setattr(os, "memfd_create", lambda name, flags=0: real(
        name, flags | os.MFD_ALLOW_SEALING))
    with bus_harness() as h:
        monkeypatch.undo()
        assert h.server.sealed
        with connect(h.path) as c, pytest.raises(PermissionError):
            os.ftruncate(c.region.fd, 0)  # would make the bus's own accesses SIGBUS
        assert h.bus.region.read(h.bus.region.base, 4) == bytes(4)


def test_sealing_is_applied_when_the_memfd_allows_it() -> None:
    from virtio_msg.bus.socket import _seal

    sealable = os.memfd_create("s", os.MFD_ALLOW_SEALING)
    plain = os.memfd_create("p")
    try:
        os.ftruncate(sealable, 4096)
        assert _seal(sealable)
        with pytest.raises(PermissionError):
            os.ftruncate(sealable, 0)
        assert not _seal(plain)
    finally:
        os.close(sealable)
        os.close(plain)
