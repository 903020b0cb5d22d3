"""Device-tree configuration of loopback bus instances (the ``virtio,msg-loopback`` binding).

A tree describes each bus instance with a node ``compatible = "virtio,msg-loopback"``
whose ``memory-region`` phandle points at a ``restricted-dma-pool`` node under
``/reserved-memory``; node names never matter.  The binding is documented in
``docs/bindings/virtio,msg-loopback.yaml`` and ``docs/device-tree.md``.

* :func:`load_tree` / :func:`load_default` -> one :class:`LoopbackConfig` per
  instance, or :class:`DeviceTreeError` (a ``ConfigError``) listing every error.
* :func:`check_tree` -> :class:`CheckReport`: dtschema validation plus the
  semantic checks, for ``virtio-msg dt check``.
* :mod:`virtio_msg.cli.dt` (above this package) parses ``dt check`` and ``--dt``.
"""

from __future__ import annotations

from virtio_msg.dt.binding import (
    BUILTIN_DEVICE_TYPES,
    COMPATIBLE,
    DEFAULT_DEVICES,
    DEFAULT_TIMEOUT_MS,
    POOL_COMPATIBLE,
    PROFILES,
    DeviceSpec,
    LoopbackConfig,
    min_pool_size,
)
from virtio_msg.dt.check import CheckReport, check_tree
from virtio_msg.dt.loader import LEGACY_POOL_NAME, default_tree_path, load_default, load_tree
from virtio_msg.dt.problems import DeviceTreeError, Problem

__all__ = [
    "BUILTIN_DEVICE_TYPES",
    "COMPATIBLE",
    "DEFAULT_DEVICES",
    "DEFAULT_TIMEOUT_MS",
    "LEGACY_POOL_NAME",
    "POOL_COMPATIBLE",
    "PROFILES",
    "CheckReport",
    "DeviceSpec",
    "DeviceTreeError",
    "LoopbackConfig",
    "Problem",
    "check_tree",
    "default_tree_path",
    "load_default",
    "load_tree",
    "min_pool_size",
]
