"""Short versions of the fuzz campaign (docs/reliability.md), run in CI.

Each harness in ``fuzz/`` is run briefly: the codec and virtqueue targets
under atheris (coverage-guided, a bounded number of runs, in a subprocess so
a crash is a failed exit status) and directly on seeded random inputs; the
socket flood (a hostile backend against the bus) and the hostile bus (against
the backend library) with a few thousand hostile frames per profile while the
good devices keep serving.  The long runs are commands, not tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _atheris(target: str, runs: int, tmp_path: Path, corpus: bool = False) -> None:
    pytest.importorskip("atheris")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    folders = [str(tmp_path / "corpus")] if corpus else []
    proc = subprocess.run(
        [sys.executable, str(FUZZ / target), f"-runs={runs}", "-max_len=1024", "-seed=1",
         f"-artifact_prefix={tmp_path}/", *folders],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {runs} runs" in proc.stderr


def test_codec_fuzz_arbitrary_bytes_only_raise_malformed(tmp_path: Path) -> None:
    _atheris("fuzz_codec.py", 10_000, tmp_path, corpus=True)  # seeded with kernel-shaped frames
    assert len(list((tmp_path / "corpus").iterdir())) > len(_load("fuzz_codec").SEEDS)


def test_codec_fuzz_on_seeded_random_and_mutated_valid_inputs() -> None:
    codec = _load("fuzz_codec")
    rnd = random.Random(16)
    valid = [
        bytes.fromhex("00070300010008000000"),
        bytes.fromhex("0107030001000c00000000000f000000"),
    ]
    for _ in range(1500):
        codec.one_input(rnd.randbytes(rnd.randrange(0, 80)))
        data = bytearray(rnd.choice(valid))
        data[rnd.randrange(len(data))] = rnd.getrandbits(8)
        codec.one_input(bytes(data))


def test_codec_fuzz_kernel_compat_on_mutated_and_truncated_kernel_frames() -> None:
    """Kernel-shaped frames (44 bytes, the seed's wrong msg_size) cut and mutated."""
    codec = _load("fuzz_codec")
    rnd = random.Random(16)
    for seed in codec.SEEDS:
        for length in range(len(seed) + 1):
            codec.one_input(seed[:length])  # every truncation, the short-count case included
    for _ in range(1500):
        data = bytearray(rnd.choice(codec.SEEDS))
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(6, len(data))] = rnd.getrandbits(8)  # keep the seed header
        codec.one_input(bytes(data))


def test_virtqueue_fuzz_hostile_driver_stays_in_region(tmp_path: Path) -> None:
    _atheris("fuzz_virtqueue.py", 3_000, tmp_path)


def test_virtqueue_fuzz_on_seeded_random_rings() -> None:
    vq = _load("fuzz_virtqueue")
    rnd = random.Random(16)
    for _ in range(200):
        vq.one_input(rnd.randbytes(rnd.randrange(0, 600)))


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_socket_flood_every_frame_counted_and_the_good_backend_keeps_working(
    profile: str,
) -> None:
    flood = _load("socket_flood")
    level = logging.getLogger("virtio_msg").level
    summary = flood.run(profile, 3000, seed=16, check_every=250)
    assert summary["accounted"] == 3000  # every hostile frame reached the channel's counters
    assert summary["connected"]  # limits raised: the flood is survived, not cut off
    assert summary["good_reads"] == 3000 // 250 + 1
    assert summary["channel_malformed"] > 0 and summary["bus_dropped"]
    assert logging.getLogger("virtio_msg").level == level  # later tests still see warnings


@pytest.mark.parametrize("profile", ["spec", "linux-rfc1"])
def test_dev_21_hostile_bus_backend_counts_every_frame_drops_the_bad_and_keeps_serving(
    profile: str,
) -> None:
    hostile = _load("hostile_bus")
    level = logging.getLogger("virtio_msg").level
    summary = hostile.run(profile, 3000, seed=16, check_every=250)
    assert summary["errors"] == [] and summary["connected"]  # no crash, not cut off
    assert summary["counted_once"]  # every datagram from the bus counted exactly once
    assert summary["must_drop"] <= summary["dropped"] <= 3000  # bad frames dropped, counted
    assert summary["good_discarded"] == 0 and summary["checks"] == 3000 // 250
    assert summary["cycles"] > 0 and summary["pings"] > 0  # its own ADD/REMOVE/PING worked
    assert summary["victim_after"]  # the attacked device works after reset and probe
    assert summary["fds_end"] <= summary["fds_start"]
    assert summary["ok"]
    assert logging.getLogger("virtio_msg").level == level
