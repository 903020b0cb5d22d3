"""The compiled bounce prototype (``benchmarks/native/_bounce.c``) does DmaPool's work.

``benchmarks/bench_pool.py --native`` compares it with DmaPool, so it must do
the same work: these tests build it with the system C compiler (skipped, with
the reason, when there is none) and drive it and a DmaPool with the same
operations on two regions with the same base, comparing every mapping,
returned byte, exception type and message, the pool's bytes and counters.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from virtio_msg.memory import (
    DmaDirection,
    DmaPool,
    EmptyMapping,
    Mapping,
    MappingTooLarge,
    PoolExhausted,
    Region,
    UnknownMapping,
)

LOADER = Path(__file__).resolve().parents[2] / "benchmarks" / "native" / "loader.py"
SLOT = 512
CAP = 16  # slots per mapping
SPAN = 48 * SLOT  # small enough for exhaustion to happen
DIRECTIONS = list(DmaDirection)


def _loader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("native_loader_t", LOADER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loader() -> ModuleType:
    return _loader()


@pytest.fixture(scope="module")
def bounce(loader: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    try:
        module: ModuleType = loader.load(tmp_path_factory.mktemp("native"))
    except loader.NativeUnavailable as exc:
        pytest.skip(f"the compiled prototype cannot be built here: {exc}")
    return module


def _pools(loader: ModuleType, bounce: ModuleType, ra: Region, rb: Region) -> tuple[DmaPool, Any]:
    py = DmaPool(ra, SLOT, CAP, pool_size=SPAN)
    c = loader.native_pool(bounce, rb, SLOT, CAP, pool_size=SPAN)
    return py, c


def _outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as exc:  # the comparison is of the exception itself
        text = re.sub(r"<memory at 0x[0-9a-f]+>", "<memory>", str(exc))
        return type(exc).__name__, text


def _same_mapping(a: Mapping, b: Mapping) -> None:
    assert type(a) is Mapping and type(b) is Mapping
    assert a[:5] == b[:5]
    assert (a.target is None) == (b.target is None)
    if a.target is not None and b.target is not None:
        assert bytes(a.target) == bytes(b.target)


def _data(rng: random.Random, kind: str, n: int) -> tuple[Any, Any]:
    """The same map argument twice (separate writable buffers for each pool)."""
    blob = rng.randbytes(min(max(n, 0), 1 << 16))
    if kind == "bytes":
        return blob, blob
    if kind == "bytearray":
        return bytearray(blob), bytearray(blob)
    if kind == "readonly":
        return memoryview(blob), memoryview(blob)
    if kind == "u16view":  # a non-byte format: both cast it to "B"
        return memoryview(bytearray(blob[: n & ~1])).cast("H"), memoryview(
            bytearray(blob[: n & ~1])).cast("H")
    return n, n  # an int length


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_pool_matches_dmapool_on_random_operations(
    loader: ModuleType, bounce: ModuleType, seed: int
) -> None:
    rng = random.Random(seed)
    with Region(1 << 20) as ra, Region(1 << 20) as rb:
        py, c = _pools(loader, bounce, ra, rb)
        live: list[tuple[Mapping, Mapping, Any, Any]] = []
        stale: list[tuple[Mapping, Mapping]] = []
        for _ in range(600):
            op = rng.random()
            if op < 0.45:  # map
                kind = rng.choice(["bytes", "bytes", "int", "bytearray", "readonly", "u16view"])
                n = rng.choice([rng.randrange(1, CAP * SLOT + 1), rng.randrange(1, 3 * SLOT),
                                SLOT, CAP * SLOT, CAP * SLOT + 1, 0, -rng.randrange(1, 9),
                                1 << 70, -(1 << 70)])
                if kind != "int" and (n < 0 or n > 4 * CAP * SLOT):
                    n = 0
                da, db = _data(rng, kind, n)
                direction = rng.choice(DIRECTIONS)
                a, b = _outcome(py.map, da, direction), _outcome(c.map, db, direction)
                assert a[0] == b[0], (a, b)
                if a[0] == "ok":
                    _same_mapping(a[1], b[1])
                    live.append((a[1], b[1], da, db))
                else:
                    assert a == b
            elif op < 0.6 and live:  # the device writes into a live mapping
                ma, _, _, _ = rng.choice(live)
                chunk = rng.randbytes(rng.randrange(1, ma.length + 1))
                at = ma.addr + rng.randrange(0, ma.length - len(chunk) + 1)
                ra.write(at, chunk)
                rb.write(at, chunk)
            elif op < 0.8 and live:  # unmap a live mapping, by mapping or by address
                ma, mb, da, db = live.pop(rng.randrange(len(live)))
                by_addr = rng.random() < 0.3
                a = _outcome(py.unmap, ma.addr if by_addr else ma)
                b = _outcome(c.unmap, mb.addr if by_addr else mb)
                assert a == b
                if isinstance(da, bytearray) or (isinstance(da, memoryview) and not da.readonly):
                    assert bytes(da) == bytes(db)  # copied back into writable originals alike
                stale.append((ma, mb))
            else:  # what must fail: stale mappings, unknown addresses, equal copies, junk
                choice = rng.randrange(4)
                if choice == 0 and stale:
                    ma, mb = rng.choice(stale)
                    args: tuple[Any, Any] = (ma, mb)
                elif choice == 1 and live:
                    ma, mb, _, _ = rng.choice(live)
                    args = (Mapping(*ma), Mapping(*mb))  # equal, but not the live object
                elif choice == 2:
                    addr = ra.base + rng.randrange(-SLOT, SPAN + SLOT)
                    args = (addr, addr)
                else:
                    junk = rng.choice(["0x100", 1.5, None, (1, 2)])
                    args = (junk, junk)
                a, b = _outcome(py.unmap, args[0]), _outcome(c.unmap, args[1])
                assert a == b
            assert ra.read(ra.base, SPAN) == rb.read(rb.base, SPAN)
            stats = py.stats()
            expected = {k: getattr(stats, k) for k in c.stats()}
            assert c.stats() == expected
            used = bytearray(SPAN // SLOT)
            for ma, _, _, _ in live:
                used[ma.slot : ma.slot + ma.nslots] = b"\1" * ma.nslots
            assert c.used_map() == bytes(used)
        assert py.stats().map_failures > 0 and stale  # exhaustion and unmaps were exercised
        py.check_consistency()
        c.close()
        py.close()


def test_compiled_pool_errors_match_dmapool_on_bad_sizes_and_double_unmap(
    loader: ModuleType, bounce: ModuleType
) -> None:
    with Region(1 << 20) as ra, Region(1 << 20) as rb:
        py, c = _pools(loader, bounce, ra, rb)
        for bad, exc in ((0, EmptyMapping), (-3, EmptyMapping), (b"", EmptyMapping),
                         (CAP * SLOT + 1, MappingTooLarge), (1 << 80, MappingTooLarge),
                         (False, EmptyMapping), ("text", TypeError), (1.0, TypeError)):
            a = _outcome(py.map, bad, DmaDirection.TO_DEVICE)
            b = _outcome(c.map, bad, DmaDirection.TO_DEVICE)
            assert a == b and a[0] == exc.__name__
        ma, mb = py.map(b"abc", DmaDirection.FROM_DEVICE), c.map(b"abc", DmaDirection.FROM_DEVICE)
        assert py.unmap(ma) == c.unmap(mb) == b"abc"
        for again in ((ma, mb), (ma.addr, mb.addr)):
            a, b = _outcome(py.unmap, again[0]), _outcome(c.unmap, again[1])
            assert a == b and a[0] == "UnknownMapping"
        with pytest.raises(PoolExhausted) as ea:
            for _ in range(SPAN // SLOT + 1):
                py.map(SLOT, DmaDirection.TO_DEVICE)
        with pytest.raises(PoolExhausted) as eb:
            for _ in range(SPAN // SLOT + 1):
                c.map(SLOT, DmaDirection.TO_DEVICE)
        assert str(ea.value) == str(eb.value)
        c.close()
        py.close()


def test_compiled_pool_rejects_bad_input_without_crashing(
    loader: ModuleType, bounce: ModuleType
) -> None:
    with Region(1 << 20) as region:
        c = loader.native_pool(bounce, region, SLOT, CAP, pool_size=SPAN)
        m = c.map(b"x" * 10, DmaDirection.BIDIRECTIONAL)
        with pytest.raises(ValueError, match="not enough values to unpack"):
            c.unmap(tuple.__new__(Mapping, (m.addr,)))
        with pytest.raises(TypeError, match="unhashable"):
            c.unmap(tuple.__new__(Mapping, ([], 1, 2, 3, 4, 5)))
        with pytest.raises(TypeError):
            c.map(b"x")
        assert c.unmap(m) == b"x" * 10
        c.close()
        c.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            c.map(b"x", DmaDirection.TO_DEVICE)
        with pytest.raises(ValueError, match="closed"):
            c.unmap(m)
        args = dict(view=bytearray(SPAN), base=0, slot_size=SLOT, max_segment_slots=CAP,
                    mapping_type=Mapping, to_device=DmaDirection.TO_DEVICE, empty=EmptyMapping,
                    too_large=MappingTooLarge, exhausted=PoolExhausted, unknown=UnknownMapping)
        for key, value, error in (("view", b"read-only", BufferError), ("view", 5, TypeError),
                                  ("view", bytearray(SLOT - 1), ValueError),
                                  ("slot_size", 3, ValueError), ("slot_size", 0, ValueError),
                                  ("max_segment_slots", 0, ValueError),
                                  ("base", -SLOT, OverflowError), ("base", 1 << 64, OverflowError),
                                  ("base", 1, ValueError), ("base", (1 << 64) - SLOT, ValueError),
                                  ("mapping_type", list, TypeError),
                                  ("mapping_type", 5, TypeError),
                                  ("unknown", 5, TypeError)):
            with pytest.raises(error):
                bounce.Pool(**{**args, key: value})


def test_compiled_pool_stays_consistent_under_threads(
    loader: ModuleType, bounce: ModuleType
) -> None:
    with Region(1 << 20) as region:
        c = loader.native_pool(bounce, region, SLOT, CAP, pool_size=SPAN)
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(2000):
                    blob = rng.randbytes(rng.randrange(1, 4 * SLOT))
                    m = c.map(blob, DmaDirection.BIDIRECTIONAL)
                    assert c.unmap(m) == blob  # nobody else wrote into this mapping's slots
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert c.used_map() == bytes(SPAN // SLOT)
        assert c.stats()["live_mappings"] == 0 and c.stats()["slots_used"] == 0
        c.close()


def test_compiled_pool_in_a_garbage_cycle_is_collected_without_a_crash(
    loader: ModuleType, bounce: ModuleType
) -> None:
    # A pool left open inside a reference cycle (a failed test's frame, say): the
    # collector must not clear the pool's exported view before the pool releases it.
    script = f"""
import gc, importlib.util
spec = importlib.util.spec_from_file_location("loader", {str(LOADER)!r})
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
spec = importlib.util.spec_from_file_location("_bounce", {bounce.__file__!r})
bounce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bounce)
from virtio_msg.memory import DmaDirection, Region
for _ in range(3):
    region = Region(1 << 20)
    pool = loader.native_pool(bounce, region, pool_size=1 << 16)
    mapping = pool.map(bytearray(100), DmaDirection.BIDIRECTIONAL)
    cycle = [pool, mapping, region]
    cycle.append(cycle)
    region.close()
    del pool, mapping, region, cycle
    assert gc.collect() > 0
print("collected")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "collected"


def test_bench_pool_native_prints_compiled_figures_as_json(bounce: ModuleType) -> None:
    bench = LOADER.parent.parent / "bench_pool.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--native", "--json", "--rounds", "1", "--budget", "0.001"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    names = {f["name"] for f in figures}
    for size in (4, 64, 256):
        for label in ("to-device", "bidirectional"):
            assert f"pool bounce {size} KiB {label}" in names
            assert f"pool bounce {size} KiB {label} (compiled prototype)" in names
    keys = {"name", "value", "unit", "baseline", "ratio", "target", "met", "loadavg"}
    assert all(set(f) == keys and f["ratio"] > 0 for f in figures)


def test_bench_blk_pool_reads_through_both_pools(bounce: ModuleType) -> None:
    # The blk benchmark checks itself that both stacks read the image's bytes and
    # that the compiled pool carried the reads; here it runs on a tiny image.
    done = subprocess.run(
        [sys.executable, "-m", "native.bench_blk_pool", "--size-mib", "1", "--ops", "20",
         "--repeat", "1", "--json"],
        cwd=LOADER.parent.parent, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    names = [json.loads(line)["name"] for line in done.stdout.splitlines()]
    assert names == [f"blk {w} inprocess ({pool})" for w in ("seq-read-64k", "rand-read-4k-qd1")
                     for pool in ("DmaPool", "compiled pool prototype")]
