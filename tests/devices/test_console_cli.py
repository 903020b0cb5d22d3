"""``virtio-msg console``: stdin to a driver-side console, what the device side sends to stdout."""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import threading

import pytest

from virtio_msg.cli import main
from virtio_msg.cli.console import add_parser as add_console_parser
from virtio_msg.cli.console import cmd_console
from virtio_msg.compose.console import run_console
from virtio_msg.devices.console import ByteStream
from virtio_msg.streams import ExecStream, TcpStream
from virtio_msg.transport import BusParams
from virtio_msg.wire import Profile


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virtio-msg")
    add_console_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_echo_by_default_prints_exactly_what_was_typed(profile: str) -> None:
    typed = b"hello\nworld\n\x00\xff binary too\n"
    out, err = io.BytesIO(), io.BytesIO()
    rc = run_console(io.BytesIO(typed), out, params=BusParams(Profile(profile)), stderr=err)
    assert (rc, out.getvalue(), err.getvalue()) == (0, typed, b"")


def test_large_input_is_echoed_without_loss() -> None:
    data = os.urandom(300_000)
    out = io.BytesIO()
    assert run_console(io.BytesIO(data), out, stderr=io.BytesIO()) == 0
    assert out.getvalue() == data


def test_empty_input_ends_cleanly() -> None:
    out = io.BytesIO()
    assert run_console(io.BytesIO(b""), out, stderr=io.BytesIO()) == 0
    assert out.getvalue() == b""


def test_a_program_as_the_device_side() -> None:
    out = io.BytesIO()
    rc = run_console(io.BytesIO(b"make me loud\n"), out, stream=ExecStream(["tr", "a-z", "A-Z"]),
                     stderr=io.BytesIO())
    assert (rc, out.getvalue()) == (0, b"MAKE ME LOUD\n")


def test_a_tcp_peer_as_the_device_side() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(data[::-1])

    t = threading.Thread(target=serve)
    t.start()
    out = io.BytesIO()
    stream = TcpStream.connect(server.getsockname()[1])
    rc = run_console(io.BytesIO(b"abc"), out, stream=stream, stderr=io.BytesIO())
    t.join(10)
    server.close()
    assert (rc, out.getvalue()) == (0, b"cba")


class Sink(ByteStream):
    """Takes output and never ends the stream."""

    def send(self, data: bytes) -> int:
        return len(data)


def test_a_device_side_that_never_ends_is_reported_within_the_timeout() -> None:
    err = io.BytesIO()
    rc = run_console(io.BytesIO(b"x"), io.BytesIO(), stream=Sink(),
                     params=BusParams(timeout_ms=200), stderr=err)
    assert rc == 1
    assert b"did not end the stream" in err.getvalue()


def test_parser_options() -> None:
    args = parser().parse_args(["console", "--exec", "cat -n", "--profile", "linux-rfc1"])
    assert args.exec_cmd == "cat -n" and args.profile == "linux-rfc1"
    assert args.func is cmd_console
    args = parser().parse_args(["console"])
    assert (args.exec_cmd, args.tcp, args.pty, args.timeout_ms) == (None, None, False, 5000)
    with pytest.raises(SystemExit):
        parser().parse_args(["console", "--tcp", "1", "--pty"])


def test_handler_with_a_missing_program_fails_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser().parse_args(["console", "--exec", "/nonexistent/program"])
    assert cmd_console(args) == 1
    assert capsys.readouterr().err.startswith("error: cannot open the device-side stream")


def test_handler_rejects_a_bad_message_size() -> None:
    assert main(["console", "--max-size", "7"]) == 2


@pytest.mark.parametrize("extra", [[], ["--exec", "cat"]])
def test_as_a_process_with_stdin_piped(extra: list[str]) -> None:
    data = b"".join(b"line %d\n" % i for i in range(2000))
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_msg", "console", *extra],
        input=data, capture_output=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
