"""Composition: build buses, serve devices, probe and exercise them, report.

This is what the commands run, importable by library users: no argument
handling (that is :mod:`virtio_msg.cli`) and no protocol logic (that is in
the layers below).  :mod:`~virtio_msg.compose.config` says what a run is made
of, :mod:`~virtio_msg.compose.loopback` runs it in one process,
:mod:`~virtio_msg.compose.socket` with the devices in a backend process,
:mod:`~virtio_msg.compose.vhost` adds vhost-user devices,
:mod:`~virtio_msg.compose.console` joins a console port to byte streams, and
:mod:`~virtio_msg.compose.report` holds the report's format.
"""

from __future__ import annotations

from virtio_msg.compose.config import DEFAULT_DEVICES, RunConfig, from_tree, parse_device_specs
from virtio_msg.compose.loopback import run_loopback, run_one
from virtio_msg.compose.report import bus_report, combine, percentile
from virtio_msg.compose.socket import run_over_socket
from virtio_msg.compose.vhost import VhostSpec, assign_numbers, parse_vhost_spec, run_vhost_devices

__all__ = [
    "DEFAULT_DEVICES",
    "RunConfig",
    "VhostSpec",
    "assign_numbers",
    "bus_report",
    "combine",
    "from_tree",
    "parse_device_specs",
    "parse_vhost_spec",
    "percentile",
    "run_loopback",
    "run_one",
    "run_over_socket",
    "run_vhost_devices",
]
