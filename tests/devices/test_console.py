"""virtio-console through the whole stack: ports, control, flow control, streams, errors."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

import virtio_msg.devices.console as DEV
import virtio_msg.drivers.console as DRV
from virtio_msg.bus import LoopbackBus, loopback_pair
from virtio_msg.compose import RunConfig, run_one
from virtio_msg.devices.catalog import CATALOG
from virtio_msg.devices.console import (
    ByteStream,
    ConsoleDevice,
    ControlEvent,
    EchoStream,
    PortSpec,
    rx_queue,
    tx_queue,
)
from virtio_msg.drivers import DRIVERS
from virtio_msg.drivers.console import (
    RX_BUFFER_SIZE,
    RX_BUFFERS,
    ConsoleDriver,
    ConsoleError,
    ConsolePort,
    WriteTimeout,
)
from virtio_msg.errors import TransportError
from virtio_msg.spec import DeviceId
from virtio_msg.streams import ExecStream, FdStream, PtyStream, TcpStream, make_stream
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile

PATTERN = bytes(range(256)) * 1024  # 256 KiB, every byte value, position-dependent


@dataclass
class Rig:
    bus: LoopbackBus
    dev: ConsoleDevice
    drv: ConsoleDriver

    def port(self, n: int = 0) -> ConsolePort:
        return self.drv.port(n)


Factory = Callable[..., Rig]


@pytest.fixture
def rig() -> Iterator[Factory]:
    made: list[tuple[LoopbackBus, ConsoleDevice]] = []

    def factory(
        ports: list[ByteStream | PortSpec] | None = None, *, profile: str = "spec",
        backend_view: str = "shared", driver: type[ConsoleDriver] = ConsoleDriver,
        timeout_ms: int = 3000, **opts: object,
    ) -> Rig:
        dev = ConsoleDevice(ports, **opts)  # type: ignore[arg-type]
        bus = LoopbackBus(BusParams(Profile(profile), timeout_ms=timeout_ms), size=1 << 20,
                          drivers={DeviceId.CONSOLE: driver})
        made.append((bus, dev))
        bus, backend, _ = loopback_pair(bus, backend_view=backend_view)
        backend.serve(0, dev)
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        return Rig(bus, dev, cast(ConsoleDriver, entry.driver))

    yield factory
    for bus, dev in made:
        bus.close()
        dev.close()


STACKS = [
    pytest.param("spec", "shared", id="spec-shared"),
    pytest.param("spec", "mapped", id="spec-mapped"),
    pytest.param("linux-rfc1", "shared", id="rfc1-shared"),
    pytest.param("linux-rfc1", "mapped", id="rfc1-mapped"),
]


def read_all(port: ConsolePort, n: int, chunk: int = 4096) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = port.read(min(chunk, n - len(out)))
        assert data, f"end of stream after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Bounded wait on device-side state that a stream thread changes."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- layout and constants ------------------------------------------------------------------------


def test_queue_numbering_follows_the_spec() -> None:
    assert [rx_queue(p) for p in range(3)] == [0, 4, 6]
    assert [tx_queue(p) for p in range(3)] == [1, 5, 7]
    assert (DEV.CONTROL_RX, DEV.CONTROL_TX) == (2, 3)


def test_driver_and_device_agree_on_the_wire_constants() -> None:
    assert DEV.CONFIG.format == DRV._CONFIG.format and DEV.CONFIG.size == 12
    assert DEV.CONTROL.format == DRV._CONTROL.format and DEV.CONTROL.size == 8
    assert DEV.RESIZE.format == DRV._RESIZE.format
    assert [e.value for e in ControlEvent] == list(range(8))
    assert (DRV._DEVICE_READY, DRV._DEVICE_ADD, DRV._PORT_READY, DRV._PORT_OPEN) == (0, 1, 3, 6)
    assert (DRV._CONSOLE_PORT, DRV._RESIZE_EVENT, DRV._PORT_NAME) == (4, 5, 7)
    assert (DEV.VIRTIO_CONSOLE_F_SIZE, DEV.VIRTIO_CONSOLE_F_MULTIPORT,
            DEV.VIRTIO_CONSOLE_F_EMERG_WRITE) == (0, 1, 2)


def test_config_space_layout() -> None:
    dev = ConsoleDevice([EchoStream(), EchoStream(), EchoStream()], size=(132, 43))
    assert DEV.CONFIG.unpack(bytes(dev.config)) == (132, 43, 3, 0)
    assert dev.num_queues == 8
    single = ConsoleDevice(multiport=False, size=None, emerg_write=False)
    assert single.num_queues == 2
    assert single.offered_features & 0b111 == 0


def test_device_argument_errors() -> None:
    with pytest.raises(ValueError):
        ConsoleDevice([EchoStream(), EchoStream()], multiport=False)
    with pytest.raises(ValueError):
        ConsoleDevice([EchoStream()] * 33)
    with pytest.raises(ValueError):
        ConsoleDevice(inbox_limit=0)


# --- data through the stack -----------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "view"), STACKS)
def test_echo_round_trip_through_the_stack(rig: Factory, profile: str, view: str) -> None:
    r = rig(profile=profile, backend_view=view)
    port = r.port(0)
    assert port.is_console and port.host_connected
    port.write(b"hello, console\n")
    assert port.readline() == b"hello, console\n"
    port.write(PATTERN[:50_000])
    assert read_all(port, 50_000) == PATTERN[:50_000]


def test_selftest_writes_a_line_and_reads_the_echo(rig: Factory) -> None:
    r = rig()
    assert r.drv.selftest() == {"ports": 1, "multiport": True, "echo": "29 bytes"}


def test_single_port_without_multiport(rig: Factory) -> None:
    r = rig(multiport=False)
    assert not r.drv.multiport and list(r.drv.ports) == [0]
    r.drv.write(b"abc")
    assert r.drv.read(10) == b"abc"
    with pytest.raises(ConsoleError):
        r.port(0).close()


class NoMultiport(ConsoleDriver):
    device_features = 1 << DEV.VIRTIO_CONSOLE_F_SIZE


def test_a_driver_without_multiport_gets_port_zero_only(rig: Factory) -> None:
    r = rig([EchoStream(), EchoStream()], driver=NoMultiport)
    assert not r.drv.multiport
    r.drv.write(b"xyz")
    assert r.drv.read() == b"xyz"
    assert r.drv.size() == (80, 25)
    assert r.dev.port_stats(1)["bytes-in"] == 0


def test_multiport_ports_names_and_console_flag(rig: Factory) -> None:
    r = rig([EchoStream(), PortSpec(EchoStream(), name="org.example.log"),
             PortSpec(EchoStream(), name="second")])
    ports = [r.port(i) for i in range(3)]
    assert [p.name for p in ports] == ["", "org.example.log", "second"]
    assert [p.is_console for p in ports] == [True, False, False]
    assert all(p.host_connected and p.guest_open for p in ports)
    for i, p in enumerate(ports):  # ports are independent streams
        p.write(f"port {i}\n".encode())
    assert [p.readline() for p in reversed(ports)] == [b"port 2\n", b"port 1\n", b"port 0\n"]


def test_console_flag_can_sit_on_another_port(rig: Factory) -> None:
    r = rig([EchoStream(), PortSpec(EchoStream(), console=True)])
    r.port(1)
    assert r.drv.console().id == 1


def test_read_with_nothing_to_read_times_out(rig: Factory) -> None:
    port = rig().port(0)
    with pytest.raises(TransportError) as info:
        port.read(10, timeout=0.05)
    assert info.value.kind == "timeout"
    assert port.read(0) == b""


# --- end of stream --------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "view"), STACKS)
def test_close_half_closes_and_every_byte_arrives_before_eof(
    rig: Factory, profile: str, view: str
) -> None:
    r = rig(profile=profile, backend_view=view, inbox_limit=4096)
    port = r.port(0)
    port.write(PATTERN[:20_000], timeout=3)
    out = bytearray()
    done = threading.Event()

    def closer() -> None:
        port.close()
        done.set()

    t = threading.Thread(target=closer)
    t.start()
    while data := port.read(1000):
        out += data
    t.join(5)
    assert done.is_set()
    assert bytes(out) == PATTERN[:20_000]
    assert port.at_eof and port.read(10) == b""
    assert r.dev.port_stats(0)["bytes-to-driver"] == 20_000


def test_writes_after_close_are_discarded_and_counted(rig: Factory) -> None:
    r = rig()
    port = r.port(0)
    port.close()
    assert port.read() == b""
    port.write(b"late")
    port.flush()
    assert r.dev.port_stats(0)["bytes-after-close"] == 4


# --- flow control: a slow reader loses nothing ----------------------------------------------------


@pytest.mark.parametrize(("profile", "view"), STACKS)
def test_slow_reader_loses_no_bytes_with_echo(rig: Factory, profile: str, view: str) -> None:
    limit = 4096
    r = rig(profile=profile, backend_view=view, inbox_limit=limit)
    port = r.port(0)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            port.write(PATTERN, timeout=30)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    got = read_all(port, len(PATTERN), chunk=97)  # small, odd reads: a slow consumer
    t.join(30)
    assert not errors and got == PATTERN
    stats = r.dev.port_stats(0)
    assert stats["inbox-high-water"] <= limit  # the device never buffered more
    assert stats["echo-stalls"] > 0  # ... because it pushed back on the driver
    assert stats["bytes-to-driver"] == len(PATTERN)


def test_a_reader_that_never_reads_stalls_the_writer_without_loss(rig: Factory) -> None:
    r = rig(inbox_limit=4096)
    port = r.port(0)
    with pytest.raises(WriteTimeout) as info:
        port.write(PATTERN, timeout=0.3)  # capacity is finite: this cannot finish
    written = info.value.written
    assert 0 < written < len(PATTERN)
    assert read_all(port, written) == PATTERN[:written]
    with pytest.raises(TransportError):
        port.read(1, timeout=0.05)  # exactly what was accepted, nothing more


def test_driver_holds_at_most_its_receive_buffers(rig: Factory) -> None:
    src_r, src_w = os.pipe()
    sink_r, sink_w = os.pipe()
    stream = FdStream(src_r, sink_w, close_fds=True)
    r = rig([stream], inbox_limit=8192)
    port = r.port(0)
    total = 1 << 20

    def produce() -> None:
        with os.fdopen(src_w, "wb") as f:
            f.write(PATTERN * 4)

    t = threading.Thread(target=produce)
    t.start()
    # Nobody reads: the driver's buffers fill, then the device's inbox, then the
    # stream's reader stops reading the pipe (it waits for room).
    wait_for(lambda: r.dev.port_stats(0)["stream-stalls"] > 0, "the stream reader to stall")
    assert r.dev.port_stats(0)["inbox"] <= 8192
    assert port.rxq.outstanding + len(port._chunks) <= RX_BUFFERS
    assert read_all(port, total, chunk=RX_BUFFER_SIZE // 2 + 1) == PATTERN * 4
    t.join(10)
    assert port.read() == b""  # the pipe's writer closed: end of stream
    os.close(sink_r)


# --- device-side streams -------------------------------------------------------------------------


def test_fd_stream_both_ways_with_eof_each_way(rig: Factory) -> None:
    src_r, src_w = os.pipe()
    sink_r, sink_w = os.pipe()
    r = rig([FdStream(src_r, sink_w, close_fds=True)])
    port = r.port(0)
    os.write(src_w, b"from the device side")
    assert read_all(port, 20) == b"from the device side"
    port.write(b"from the driver side")
    port.close()  # half-close: the stream's output fd is closed after the data
    received = b""
    while chunk := os.read(sink_r, 100):
        received += chunk
    assert received == b"from the driver side"
    os.close(src_w)
    assert port.read() == b""
    os.close(sink_r)


def test_tcp_stream_on_loopback(rig: Factory) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_no = server.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"greetings from tcp\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            got.append(data)

    t = threading.Thread(target=serve)
    t.start()
    r = rig([TcpStream.connect(port_no)])
    port = r.port(0)
    assert port.readline() == b"greetings from tcp\n"
    port.write(PATTERN[:100_000])
    port.close()
    assert port.read() == b""  # the server closed after our half-close
    t.join(10)
    server.close()
    assert got == [PATTERN[:100_000]]


def test_tcp_stream_connects_to_loopback_only() -> None:
    with pytest.raises(ValueError):
        TcpStream.connect(1, host="192.0.2.1")


def test_pty_stream(rig: Factory) -> None:
    stream = PtyStream()
    r = rig([stream])
    port = r.port(0)
    fd = os.open(stream.path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"typed on the terminal")
        assert read_all(port, 21) == b"typed on the terminal"
        port.write(b"shown on the terminal")
        received = b""
        while len(received) < 21:
            received += os.read(fd, 100)
        assert received == b"shown on the terminal"
    finally:
        os.close(fd)


def test_exec_stream_runs_a_program(rig: Factory) -> None:
    r = rig([ExecStream(["tr", "a-z", "A-Z"])])
    port = r.port(0)
    port.write(b"shout this\n")
    port.close()
    out = b""
    while data := port.read():
        out += data
    assert out == b"SHOUT THIS\n"


def test_output_to_a_consumer_that_went_away_is_discarded_not_stalled(rig: Factory) -> None:
    stream = ExecStream(["true"])
    r = rig([stream])
    port = r.port(0)
    assert port.read() == b""  # the program exited: end of stream
    port.write(PATTERN[:100_000], timeout=5)  # EPIPE: discarded, the driver is not stuck
    port.flush()
    wait_for(lambda: stream.dropped_output > 0, "the output to be discarded")


@pytest.mark.parametrize(
    ("spec", "kind"),
    [("echo", EchoStream), ("stdio", FdStream), ("pty", PtyStream), ("exec:cat", ExecStream)],
)
def test_make_stream(spec: str, kind: type[ByteStream]) -> None:
    stream = make_stream(spec)
    try:
        assert type(stream) is kind
        assert stream.describe()
    finally:
        if spec != "stdio":
            stream.close()


@pytest.mark.parametrize("spec", ["", "echo:x", "tcp:abc", "exec:", "file:/tmp/x", "pty:1"])
def test_make_stream_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        make_stream(spec)


# --- size, resize, emergency write ---------------------------------------------------------------


def test_resize_updates_config_and_sends_resize_to_the_console_port(rig: Factory) -> None:
    r = rig(size=(80, 25))
    assert r.drv.size() == (80, 25)
    r.dev.resize(120, 50)
    assert r.port(0).size == (120, 50)  # RESIZE control message {cols, rows}
    assert r.drv.size() == (120, 50)
    assert DEV.CONFIG.unpack(bytes(r.dev.config))[:2] == (120, 50)


def test_resize_without_multiport_arrives_as_a_config_change(rig: Factory) -> None:
    r = rig(driver=NoMultiport)
    assert r.drv.size() == (80, 25)
    r.dev.resize(100, 30)
    assert r.drv.size() == (100, 30)


def test_no_size_feature_means_no_size(rig: Factory) -> None:
    assert rig(size=None).drv.size() is None


def test_emergency_write_reaches_the_stream(rig: Factory) -> None:
    r = rig()
    r.drv.emergency_write(b"panic!")
    assert read_all(r.port(0), 6) == b"panic!"
    assert r.dev.port_stats(0)["emergency-bytes"] == 6
    assert DEV.CONFIG.unpack(bytes(r.dev.config))[3] == 0  # emerg_wr is not stored


def test_emergency_write_needs_the_feature(rig: Factory) -> None:
    r = rig(emerg_write=False)
    with pytest.raises(ConsoleError):
        r.drv.emergency_write(b"x")
    assert not r.drv.transport.set_config(8, struct.pack("<I", 0x41))


def test_config_writes_outside_emerg_wr_are_refused(rig: Factory) -> None:
    r = rig()
    assert not r.drv.transport.set_config(0, struct.pack("<HH", 1, 1))
    assert not r.drv.transport.set_config(4, struct.pack("<I", 9))
    assert DEV.CONFIG.unpack(bytes(r.dev.config)) == (80, 25, 1, 0)


# --- control error paths: counted, never raised, the device keeps working -------------------------


def raw_control(drv: ConsoleDriver, data: bytes) -> None:
    q = drv.vqs[DEV.CONTROL_TX]
    with drv.queue_lock:
        q.add((data,), (), None)
    drv.transport.notify(q)


@pytest.mark.parametrize(
    ("message", "counter"),
    [
        (b"\x00\x00\x00\x00", "control-short"),
        (DEV.CONTROL.pack(7, ControlEvent.PORT_OPEN, 1), "control-bad-id"),
        (DEV.CONTROL.pack(0xFFFFFFFF, ControlEvent.PORT_READY, 1), "control-bad-id"),
        (DEV.CONTROL.pack(0, ControlEvent.RESIZE, 0), "control-unexpected"),
        (DEV.CONTROL.pack(0, ControlEvent.DEVICE_ADD, 1), "control-unexpected"),
        (DEV.CONTROL.pack(0, 99, 1), "control-unexpected"),
    ],
)
def test_bad_control_messages_are_counted(rig: Factory, message: bytes, counter: str) -> None:
    r = rig()
    port = r.port(0)
    raw_control(r.drv, message)
    assert r.dev.stats[counter] == 1
    port.write(b"still fine")
    assert read_all(port, 10) == b"still fine"
    assert not r.drv.transport.broken


def test_control_message_larger_than_the_buffer_is_truncated(rig: Factory) -> None:
    r = rig([EchoStream(), PortSpec(EchoStream(), name="x" * 400)])
    r.port(1)
    assert r.dev.stats["control-truncated"] == 1
    assert r.drv.ports[1].name == "x" * (DRV.CONTROL_BUFFER_SIZE - 8)


def test_device_ready_zero_adds_no_ports(rig: Factory) -> None:
    r = rig()
    raw_control(r.drv, DEV.CONTROL.pack(0, ControlEvent.DEVICE_READY, 0))
    raw_control(r.drv, DEV.CONTROL.pack(0, ControlEvent.PORT_READY, 0))
    assert r.dev.port_stats(0)["bytes-in"] == 0


def test_driver_counts_bad_control_messages_from_the_device(rig: Factory) -> None:
    r = rig()
    r.port(0)
    for data in (b"\x01", DEV.CONTROL.pack(9, ControlEvent.PORT_OPEN, 1),
                 DEV.CONTROL.pack(0, 42, 0), DEV.CONTROL.pack(40, ControlEvent.DEVICE_ADD, 1)):
        r.drv._control(data)
    assert r.drv.stats == {"control-short": 1, "control-unknown-port": 1,
                           "control-unexpected": 1, "control-bad-add": 1}


def test_device_remove_ends_the_port(rig: Factory) -> None:
    r = rig()
    port = r.port(0)
    r.drv._control(DEV.CONTROL.pack(0, ControlEvent.DEVICE_REMOVE, 0))
    assert port.removed and 0 not in r.drv.ports
    assert port.read() == b""
    with pytest.raises(ConsoleError):
        port.write(b"x")


# --- lifecycle ------------------------------------------------------------------------------------


def test_undelivered_bytes_survive_a_device_reset(rig: Factory) -> None:
    src_r, src_w = os.pipe()
    sink_r, sink_w = os.pipe()
    r = rig([FdStream(src_r, sink_w, close_fds=True)], inbox_limit=8192)
    r.port(0)
    os.write(src_w, PATTERN[:60_000])  # more than the driver's buffers and the inbox hold
    wait_for(lambda: r.dev.port_stats(0)["stream-stalls"] > 0, "the inbox to fill")
    delivered = r.dev.port_stats(0)["bytes-to-driver"]  # taken by the old driver's buffers
    assert delivered == RX_BUFFERS * RX_BUFFER_SIZE
    transport = r.drv.transport
    transport.reset()  # the driver goes away without reading what it took
    fresh = ConsoleDriver(transport)
    fresh.probe()
    rest = read_all(fresh.port(0), 60_000 - delivered)
    assert rest == PATTERN[delivered:60_000]  # the device's own bytes were all kept
    for fd in (src_w, sink_r):
        os.close(fd)


def test_removing_the_device_wakes_a_reader(rig: Factory) -> None:
    r = rig()
    port = r.port(0)
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            port.read(10, timeout=5)
        except TransportError as exc:
            failures.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    r.bus.remove_device(0)
    t.join(5)
    assert not t.is_alive()
    assert failures and cast(TransportError, failures[0]).kind == "removed"


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_virtio_msg_run_echoes_through_the_console(
    monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    monkeypatch.setitem(CATALOG, "console", ConsoleDevice)
    monkeypatch.setitem(DRIVERS, DeviceId.CONSOLE, ConsoleDriver)
    report = run_one(RunConfig(params=BusParams(Profile(profile)), size=1 << 20,
                               devices=((0, "console"),)))
    (dev,) = report["devices"]
    assert dev["ok"], dev
    assert dev["result"] == {"ports": 1, "multiport": True, "echo": "29 bytes"}


# --- driver and device in different processes (socket channel) ------------------------------

CHILD_CONSOLE = """
import sys
from virtio_msg.bus.client import connect
from virtio_msg.devices.console import ConsoleDevice, EchoStream, PortSpec
client = connect(sys.argv[1], timeout=10)
dev = ConsoleDevice([EchoStream(), PortSpec(EchoStream(), name="second")], inbox_limit=4096)
client.serve(0, dev)
client.wait(60)
client.close()
"""


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_console_across_processes(tmp_path: Path, profile: str) -> None:
    from virtio_msg.bus.socket import SocketServer

    bus = LoopbackBus(BusParams(Profile(profile), timeout_ms=5000), size=1 << 20,
                      drivers={DeviceId.CONSOLE: ConsoleDriver})
    probed = threading.Event()
    bus.on_added.append(lambda entry: probed.set())
    server = SocketServer(bus, tmp_path / "bus.sock").start()
    child = subprocess.Popen([sys.executable, "-c", CHILD_CONSOLE, str(server.path)])
    try:
        assert probed.wait(30), "the device process did not come up"
        entry = bus.device(0)
        assert entry is not None and entry.error is None, entry and entry.error
        drv = cast(ConsoleDriver, entry.driver)
        second = drv.port(1)  # waits for the host's PORT_OPEN: the name came before it
        assert second.name == "second" and not second.is_console
        assert drv.selftest() == {"ports": 2, "multiport": True, "echo": "29 bytes"}
        writer = threading.Thread(target=second.write, args=(PATTERN,), kwargs={"timeout": 30})
        writer.start()
        assert read_all(second, len(PATTERN), chunk=97) == PATTERN  # slow reader, other process
        writer.join(30)
        second.close()
        assert second.read() == b""
    finally:
        server.close()
        bus.close()
        child.wait(30)
    assert child.returncode == 0
