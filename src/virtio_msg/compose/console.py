"""A driver-side console port joined to byte streams: ``virtio-msg console``'s composition.

:func:`run_console` builds a loopback bus in this process with a backend
serving one :class:`~virtio_msg.devices.console.ConsoleDevice` whose port is
connected to a device-side stream (echo by default; the streams are in
:mod:`virtio_msg.streams`), then joins the *driver-side* port to the given
input and output: a reader thread copies the port to the output while the
calling thread copies input to the port.  At end of input the port is closed
(PORT_OPEN 0); the device half-closes its stream, and the function returns
when the device reports end of stream -- so every byte the backend sends
before that is delivered, with no timing involved.
:func:`run_console_listening` does the same with the device in another
process, over the socket channel.  Every wait is bounded by the bus timeout.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import BinaryIO, Final

from virtio_msg.bus import DeviceEntry, LoopbackBus, loopback_pair
from virtio_msg.bus.socket import SocketServer
from virtio_msg.devices.console import ByteStream, ConsoleDevice, EchoStream
from virtio_msg.drivers.console import ConsoleDriver, ConsolePort
from virtio_msg.errors import TransportError, VirtioMsgError
from virtio_msg.spec import DeviceId
from virtio_msg.transport.params import BusParams

READ_SLICE: Final = 0.25
"""Seconds per wait of the output thread, so it notices a stop request."""
HOW_TO_END: Final = "type and press Enter; Ctrl-D ends the input, Ctrl-C quits"
"""The second half of the start line (``announce``)."""


def _announce(errors: BinaryIO, side: str) -> None:
    errors.write(f"console ready, device side {side}: {HOW_TO_END}\n".encode())
    errors.flush()


def _read_some(stdin: BinaryIO) -> bytes:
    read1 = getattr(stdin, "read1", None)
    if read1 is not None:
        data: bytes = read1(4096)  # whatever is there: a line from a terminal
        return data
    return stdin.read(4096)


def run_console(
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    stream: ByteStream | None = None,
    params: BusParams | None = None,
    stderr: BinaryIO | None = None,
    announce: bool = False,
) -> int:
    """Join ``stdin``/``stdout`` to a console port whose device side is ``stream``.

    Returns 0 when the device side ended the stream after end of input, 1 on
    an error or if it did not within the timeout.  With ``announce``, one line
    on ``stderr`` says that the console is ready and how to end it.
    """
    params = params or BusParams()
    errors = stderr if stderr is not None else sys.stderr.buffer
    stream = stream or EchoStream()
    limit = params.timeout_ms / 1000
    bus = LoopbackBus(params, drivers={DeviceId.CONSOLE: ConsoleDriver}, name="console")
    device = ConsoleDevice([stream])
    try:
        bus, backend, _channel = loopback_pair(bus)
        backend.serve(0, device)
        entry = bus.device(0)
        if entry is None or not isinstance(entry.driver, ConsoleDriver):
            why = entry.error if entry is not None else "device vanished"
            errors.write(f"error: console did not start: {why}\n".encode())
            return 1
        port = entry.driver.console(limit)
        path = getattr(stream, "path", None)
        if path:
            errors.write(f"device side: {stream.describe()} (attach to {path})\n".encode())
            errors.flush()
        if announce:
            _announce(errors, stream.describe())
        return _pump(port, stdin, stdout, errors, limit)
    except VirtioMsgError as exc:
        errors.write(f"error: {exc}\n".encode())
        return 1
    finally:
        bus.close()
        device.close()


def run_console_listening(
    stdin: BinaryIO,
    stdout: BinaryIO,
    path: Path,
    *,
    params: BusParams | None = None,
    wait_ms: int = 60000,
    stderr: BinaryIO | None = None,
    announce: bool = False,
) -> int:
    """Like :func:`run_console`, with the device side in another process.

    The bus serves a Unix socket at ``path``; the first console device a
    backend adds is joined to ``stdin``/``stdout``.  Waiting for it is bounded
    by ``wait_ms``.
    """
    params = params or BusParams()
    errors = stderr if stderr is not None else sys.stderr.buffer
    limit = params.timeout_ms / 1000
    bus = LoopbackBus(params, drivers={DeviceId.CONSOLE: ConsoleDriver}, name="console")
    ready = threading.Event()
    found: list[ConsoleDriver] = []

    def added(entry: DeviceEntry) -> None:
        if isinstance(entry.driver, ConsoleDriver) and not found:
            found.append(entry.driver)
            ready.set()

    bus.on_added.append(added)
    server = SocketServer(bus, path)
    try:
        server.start()
        errors.write(f"waiting for a backend with a console at {server.path}\n".encode())
        errors.flush()
        if not ready.wait(wait_ms / 1000):
            errors.write(f"error: no console device added within {wait_ms} ms\n".encode())
            return 1
        port = found[0].console(limit)
        if announce:
            _announce(errors, f"from the backend at {server.path}")
        return _pump(port, stdin, stdout, errors, limit)
    except VirtioMsgError as exc:
        errors.write(f"error: {exc}\n".encode())
        return 1
    finally:
        server.close()
        bus.close()


def _pump(port: ConsolePort, stdin: BinaryIO, stdout: BinaryIO, errors: BinaryIO,
          limit: float) -> int:
    stop = threading.Event()
    finished = threading.Event()
    failure: list[str] = []

    def output() -> None:
        try:
            while not stop.is_set():
                try:
                    data = port.read(4096, READ_SLICE)
                except TransportError as exc:
                    if exc.kind == "timeout":
                        continue  # nothing yet; look at the stop flag again
                    raise
                if not data:
                    finished.set()  # the device side ended the stream
                    return
                stdout.write(data)
                stdout.flush()
        except (VirtioMsgError, OSError) as exc:
            failure.append(str(exc))

    reader = threading.Thread(target=output, name="console-output", daemon=True)
    reader.start()
    try:
        while True:
            data = _read_some(stdin)
            if not data:
                break
            port.write(data, limit)
        port.close()  # end of input: the device side finishes, then ends the stream
    except (VirtioMsgError, OSError) as exc:
        failure.append(str(exc))
    except BaseException:  # Ctrl-C: stop the output thread now, not after the timeout
        stop.set()
        raise
    finally:
        if not stop.is_set():
            reader.join(timeout=limit)  # the rest of what the device side sends
        stop.set()
        reader.join(timeout=limit)  # it sees the stop flag within READ_SLICE
    if failure:
        errors.write(f"error: {failure[0]}\n".encode())
        return 1
    if not finished.is_set():
        errors.write(b"error: the device side did not end the stream in time\n")
        return 1
    return 0


__all__ = ["READ_SLICE", "run_console", "run_console_listening"]
