"""The main job with the devices in another process: ``virtio-msg run --socket``.

:func:`run_over_socket` gives the same report as
:func:`virtio_msg.compose.loopback.run_loopback`, but each bus serves a Unix
socket in a private temporary directory and its devices are served by a
backend process (``virtio-msg backend``) that connects to it: the bus waits
(bounded) for the devices to be added, exercises each one like the
in-process run, settles the events still on their way, and adds a
``channel`` entry to the bus report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from virtio_msg.bus.capture import BusCapture, CaptureWriter
from virtio_msg.bus.loopback import DeviceEntry, LoopbackBus
from virtio_msg.bus.socket import SocketServer
from virtio_msg.compose.config import RunConfig
from virtio_msg.compose.report import bus_report, combine
from virtio_msg.devices.catalog import CATALOG
from virtio_msg.errors import VirtioMsgError
from virtio_msg.spec import feature_names

BACKEND_COMMAND: Final = (sys.executable, "-m", "virtio_msg", "backend")
"""The backend process ``run --socket`` starts (followed by its arguments)."""
CHILD_EXIT_TIMEOUT: Final = 5.0
"""How long a backend process gets to exit after the bus closes, seconds."""


def _run_one_over_socket(
    config: RunConfig,
    start_timeout: float | None,
    capture: CaptureWriter | None = None,
    index: int = 0,
    socket_path: Path | None = None,
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    specs: list[str] = []
    for dev_num, type_name in config.devices:
        result: dict[str, Any] = {"dev_num": dev_num, "type": type_name, "ok": False}
        results.append(result)
        if type_name not in CATALOG:
            known = ", ".join(sorted(CATALOG))
            result["error"] = f"backend: unknown device type {type_name!r} (built-in: {known})"
        else:
            specs.append(f"{dev_num}:{type_name}")
    wanted = {int(s.split(":")[0]) for s in specs}
    tmp = Path(tempfile.mkdtemp(prefix="virtio-msg-"))  # mode 0700
    bus = LoopbackBus(config.params, size=config.size, base=config.base, name=config.name)
    if capture is not None:
        bus.capture = BusCapture(capture, index)
    added: set[int] = set()
    cv = threading.Condition()

    def on_added(entry: DeviceEntry) -> None:
        with cv:
            added.add(entry.dev_num)
            cv.notify_all()

    bus.on_added.append(on_added)
    server = SocketServer(bus, socket_path or tmp / "bus.sock")
    try:
        with tempfile.TemporaryFile() as errlog:
            return _serve_and_exercise(
                config, bus, server, results, specs, wanted, added, cv, errlog, start_timeout
            )
    finally:
        server.close()
        bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _serve_and_exercise(
    config: RunConfig,
    bus: LoopbackBus,
    server: SocketServer,
    results: list[dict[str, Any]],
    specs: list[str],
    wanted: set[int],
    added: set[int],
    cv: threading.Condition,
    errlog: Any,
    start_timeout: float | None,
) -> dict[str, Any]:
    child: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        if specs:
            child = subprocess.Popen(
                [
                    *BACKEND_COMMAND,
                    "--socket",
                    str(server.path),
                    "--quiet",
                    *specs,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errlog,
            )
            limit = start_timeout or max(20.0, 4 * config.params.timeout_ms / 1000)
            deadline = time.monotonic() + limit
            with cv:
                while not wanted <= added and child.poll() is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cv.wait(min(left, 0.1))
        for result in results:
            if "error" not in result:
                _exercise(bus, result, child, errlog)
        server.settle()  # events still on their way are counted, as in process
        report = bus_report(bus, config, results)
        report["channel"] = {
            "kind": "socket",
            "socket": str(server.path),
            "backend_pid": child.pid if child is not None else None,
            "disconnects": [list(d) for d in server.disconnects],
        }
        return report
    finally:
        server.close()  # the backend sees the bus go away and exits
        if child is not None:
            try:
                child.wait(CHILD_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(CHILD_EXIT_TIMEOUT)


def _exercise(
    bus: LoopbackBus,
    result: dict[str, Any],
    child: subprocess.Popen[bytes] | None,
    errlog: Any,
) -> None:
    """Fill in one device's result exactly as the in-process runner does."""
    entry = bus.device(result["dev_num"])
    if entry is None:
        errlog.seek(0)
        tail = errlog.read().decode(errors="replace").strip().splitlines()[-1:]
        why = tail[0] if tail else "no error output"
        if child is not None and child.poll() is not None:
            why = f"backend process exited with status {child.returncode}: {why}"
        result["error"] = f"backend did not add the device: {why}"
        return
    result["type"] = entry.type_name
    result["features"] = feature_names(entry.transport.negotiated_features, entry.device_id)
    if entry.error or entry.driver is None:
        result["error"] = entry.error or "no driver bound"
        return
    try:
        result["result"] = entry.driver.selftest()
        result["ok"] = True
    except VirtioMsgError as exc:
        result["error"] = str(exc)


def run_over_socket(
    configs: list[RunConfig],
    *,
    start_timeout: float | None = None,
    capture: CaptureWriter | None = None,
    socket_path: Path | None = None,
) -> dict[str, Any]:
    """``virtio-msg run --socket [PATH]``: each bus's devices served by a backend process.

    Same report as :func:`virtio_msg.compose.loopback.run_loopback` (each bus report
    gains a ``channel`` entry).  ``start_timeout`` bounds the wait for the
    backend to add its devices (default: 20 s or 4 x the request timeout).
    With ``capture``, every bus records its socket connection (bus instance =
    the bus's index), as ``bus --capture`` does.  ``socket_path`` puts the
    bus's socket there (one bus only; default: a private temporary directory,
    removed afterwards).
    """
    if socket_path is not None and len(configs) != 1:
        raise ValueError(
            f"--socket PATH names one bus's socket, and the tree describes {len(configs)} "
            "buses: give --socket without PATH"
        )
    return combine(
        [
            _run_one_over_socket(c, start_timeout, capture, i, socket_path)
            for i, c in enumerate(configs)
        ]
    )


__all__ = ["BACKEND_COMMAND", "CHILD_EXIT_TIMEOUT", "run_over_socket"]
