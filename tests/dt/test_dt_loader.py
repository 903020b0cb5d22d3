"""Loading trees into LoopbackConfig: valid trees, every invalid case, legacy trees."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from dt_helpers import CompileDtb, WriteDts, dtb_compiler, dts_writer

from virtio_msg.dt import (
    DEFAULT_DEVICES,
    DeviceSpec,
    DeviceTreeError,
    LoopbackConfig,
    default_tree_path,
    load_default,
    load_tree,
    min_pool_size,
)
from virtio_msg.errors import ConfigError
from virtio_msg.spec import DeviceId

MiB = 1024 * 1024


@pytest.fixture
def write_dts(tmp_path: Path) -> WriteDts:
    """Write a DTS whose root node holds the given body (skips without dtc)."""
    return dts_writer(tmp_path)


@pytest.fixture
def compile_dtb() -> CompileDtb:
    """Compile a DTS into a DTB beside it (skips without dtc)."""
    return dtb_compiler()


def reserved(*children: str, cells: tuple[int, int] = (2, 2)) -> str:
    """A /reserved-memory node with the given children."""
    body = "\n".join(children)
    return (
        f"reserved-memory {{\n#address-cells = <{cells[0]}>;\n#size-cells = <{cells[1]}>;\n"
        f"ranges;\n{body}\n}};"
    )


def pool(
    label: str, name: str, reg: str, extra: str = "", compat: str = "restricted-dma-pool"
) -> str:
    """A pool node ``label: name { compatible; reg; extra }``."""
    return f'{label}: {name} {{\ncompatible = "{compat}";\nreg = <{reg}>;\n{extra}\n}};'


def loop(name: str, target: str = "&pool0", extra: str = "") -> str:
    """A loopback node ``name`` whose memory-region is ``<target>``."""
    return (
        f'{name} {{\ncompatible = "virtio,msg-loopback";\nmemory-region = <{target}>;\n{extra}\n}};'
    )


POOL0 = pool("pool0", "dma-pool@100000000", "0x1 0x0 0x0 0x400000")


def load_errors(path: Path, **kwargs: str) -> str:
    """Load ``path`` expecting failure; return the error message."""
    with pytest.raises(DeviceTreeError) as info:
        load_tree(path, **kwargs)
    return str(info.value)


# --- the embedded default ----------------------------------------------------


def test_default_tree_is_the_seed_example_pool_with_all_devices() -> None:
    configs = load_default()
    assert configs == [
        LoopbackConfig(
            node_path="/virtio-msg-loopback",
            pool_path="/reserved-memory/dma-pool@100000000",
            base=0x1_0000_0000,
            size=4 * MiB,
            devices=DEFAULT_DEVICES,
        )
    ]
    (config,) = configs
    assert config.profile == "spec"
    assert config.max_msg_size is None
    assert config.effective_max_msg_size == 264
    assert config.timeout_ms == 5000
    assert config.transport_features == 0
    assert [(d.dev_num, d.type) for d in config.devices] == [
        (0, "rng"),
        (1, "blk"),
        (2, "console"),
        (3, "i2c"),
    ]
    assert [d.device_id for d in config.devices] == [
        DeviceId.ENTROPY,
        DeviceId.BLOCK,
        DeviceId.CONSOLE,
        DeviceId.I2C,
    ]


def test_default_tree_is_a_dtb_loaded_without_dtc(monkeypatch: pytest.MonkeyPatch) -> None:
    path = default_tree_path()
    assert path.suffix == ".dtb"
    assert path.read_bytes()[:4] == b"\xd0\x0d\xfe\xed"
    monkeypatch.setattr("virtio_msg.dt.tree.shutil.which", lambda _name: None)
    monkeypatch.setenv("PATH", "")
    assert load_default()[0].base == 0x1_0000_0000


def test_config_is_frozen() -> None:
    config = load_default()[0]
    with pytest.raises(AttributeError):
        config.base = 0  # type: ignore[misc]


# --- valid trees -------------------------------------------------------------


def test_node_names_never_matter(write_dts: WriteDts) -> None:
    # A pool and a loopback node with names nobody would guess, the bus node nested
    # under a bus: only compatible and the memory-region phandle count.
    body = (
        reserved(pool("banana", "x-ray@80000000", "0x0 0x80000000 0x0 0x200000"))
        + 'soc@0 {\ncompatible = "simple-bus";\n#address-cells = <1>;\n#size-cells = <1>;\n'
        "ranges = <0 0 0 0x10000000>;\n"
        + loop("zebra-crossing", "&banana", 'virtio,devices = "rng";')
        + "\n};"
    )
    (config,) = load_tree(write_dts(body, "odd.dts"))
    assert config.node_path == "/soc@0/zebra-crossing"
    assert config.pool_path == "/reserved-memory/x-ray@80000000"
    assert (config.base, config.size) == (0x8000_0000, 2 * MiB)
    assert config.devices == (DeviceSpec(0, "rng"),)


def test_two_instances_with_separate_pools(write_dts: WriteDts) -> None:
    body = (
        reserved(
            pool("pa", "alpha@100000000", "0x1 0x0 0x0 0x400000"),
            pool("pb", "beta@100400000", "0x1 0x00400000 0x0 0x100000"),
        )
        + loop("first", "&pa")
        + loop(
            "second",
            "&pb",
            'virtio,msg-profile = "linux-rfc1";\nvirtio,devices = "console", "rng";\n'
            "virtio,device-numbers = <9 4>;\nvirtio,timeout-ms = <250>;",
        )
    )
    first, second = load_tree(write_dts(body, "two.dts"))
    assert (first.node_path, first.base, first.size) == ("/first", 0x1_0000_0000, 4 * MiB)
    assert first.devices == DEFAULT_DEVICES
    assert (second.node_path, second.base, second.size) == ("/second", 0x1_0040_0000, MiB)
    assert second.profile == "linux-rfc1"
    assert second.effective_max_msg_size == 44
    assert second.devices == (DeviceSpec(9, "console"), DeviceSpec(4, "rng"))
    assert second.timeout_ms == 250


def test_dts_and_dtb_give_the_same_configs(write_dts: WriteDts, compile_dtb: CompileDtb) -> None:
    dts = write_dts(reserved(POOL0) + loop("lb", extra="virtio,max-msg-size = <1024>;"), "t.dts")
    dtb = compile_dtb(dts)
    from_dts = load_tree(dts)
    assert from_dts == load_tree(dtb)
    assert from_dts[0].max_msg_size == 1024


def test_format_is_detected_by_content(compile_dtb: CompileDtb, write_dts: WriteDts) -> None:
    dtb = compile_dtb(write_dts(reserved(POOL0) + loop("lb"), "c.dts"))
    disguised = dtb.with_name("tree.txt")
    shutil.copy(dtb, disguised)
    assert load_tree(disguised)[0].size == 4 * MiB


@pytest.mark.parametrize(
    ("cells", "reg", "base", "size"),
    [
        ((1, 1), "0x50000000 0x400000", 0x5000_0000, 4 * MiB),
        ((2, 1), "0x2 0x0 0x200000", 0x2_0000_0000, 2 * MiB),
        ((1, 2), "0x40000000 0x0 0x100000", 0x4000_0000, MiB),
        ((2, 2), "0xff 0xfff00000 0x0 0x100000", 0xFF_FFF0_0000, MiB),
    ],
)
def test_reg_is_decoded_with_the_parents_cell_counts(
    write_dts: WriteDts, cells: tuple[int, int], reg: str, base: int, size: int
) -> None:
    body = reserved(pool("pool0", "p", reg), cells=cells) + loop(
        "lb", extra='virtio,devices = "rng";'
    )
    (config,) = load_tree(write_dts(body, "cells.dts"))
    assert (config.base, config.size) == (base, size)


def test_optional_properties(write_dts: WriteDts) -> None:
    extra = (
        'virtio,msg-profile = "spec";\nvirtio,max-msg-size = <65535>;\n'
        "virtio,transport-features = <1>;\nvirtio,timeout-ms = <600000>;\n"
        'virtio,devices = "blk", "i2c";'
    )
    (config,) = load_tree(write_dts(reserved(POOL0) + loop("lb", extra=extra), "opt.dts"))
    assert config.max_msg_size == 65535
    assert config.transport_features == 1
    assert config.timeout_ms == 600000
    assert config.devices == (DeviceSpec(0, "blk"), DeviceSpec(1, "i2c"))


def test_disabled_nodes_are_skipped(write_dts: WriteDts) -> None:
    body = (
        reserved(POOL0, pool("p1", "q@200000000", "0x2 0x0 0x0 0x400000"))
        + loop("off", "&p1", 'status = "disabled";')
        + loop("on", extra='status = "okay";')
    )
    assert [c.node_path for c in load_tree(write_dts(body, "dis.dts"))] == ["/on"]


def test_more_specific_compatible_first_is_accepted(write_dts: WriteDts) -> None:
    body = reserved(POOL0) + (
        'lb {\ncompatible = "acme,board-loopback", "virtio,msg-loopback";\n'
        "memory-region = <&pool0>;\n};"
    )
    assert load_tree(write_dts(body, "spec.dts"))[0].node_path == "/lb"


def test_pool_just_large_enough_for_its_devices(write_dts: WriteDts) -> None:
    need = min_pool_size(2)
    assert need == (256 + 2 * 288) * 1024
    reg = f"0x1 0x0 0x0 {need:#x}"
    body = reserved(pool("pool0", "p@100000000", reg)) + loop(
        "lb", extra='virtio,devices = "rng", "blk";'
    )
    assert load_tree(write_dts(body, "fit.dts"))[0].size == need


# --- invalid trees: each case has its own message --------------------------------

INVALID = [
    # (case id, root body, expected fragment of the message)
    (
        "no-memory-region",
        reserved(POOL0) + 'lb { compatible = "virtio,msg-loopback"; };',
        "error: /lb: memory-region: is missing",
    ),
    (
        "phandle-dangling",
        reserved(POOL0) + loop("lb", "0x1234"),
        "phandle 0x1234 does not resolve to any node",
    ),
    (
        "two-regions",
        reserved(POOL0, pool("p1", "q@200000000", "0x2 0x0 0x0 0x400000"))
        + loop("lb", "&pool0 &p1"),
        "lists 2 regions; a loopback bus uses exactly one pool",
    ),
    (
        "not-restricted",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400000", compat="shared-dma-pool"))
        + loop("lb"),
        'points at a node with "shared-dma-pool", not a restricted-dma-pool',
    ),
    (
        "no-compatible",
        reserved("pool0: p@100000000 { reg = <0x1 0x0 0x0 0x400000>; };") + loop("lb"),
        "points at a node with no compatible, not a restricted-dma-pool",
    ),
    (
        "not-reserved",
        'pool0: p@100000000 { compatible = "restricted-dma-pool"; '
        "reg = <0x1 0x0 0x0 0x400000>; };" + loop("lb"),
        "is not a child of /reserved-memory",
    ),
    (
        "base-unaligned",
        reserved(pool("pool0", "p@100000800", "0x1 0x800 0x0 0x400000")) + loop("lb"),
        "pool base 0x100000800 is not page-aligned",
    ),
    (
        "size-unaligned",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400800")) + loop("lb"),
        "pool size 0x400800 is not a whole number of pages",
    ),
    (
        "too-large",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x1 0x0")) + loop("lb"),
        "is larger than the 1024 MiB the loopback maps",
    ),
    (
        "zero-size",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x0")) + loop("lb"),
        "reg has size 0",
    ),
    (
        "no-map",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400000", "no-map;")) + loop("lb"),
        "no-map is not allowed on a restricted-dma-pool",
    ),
    (
        "reusable",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400000", "reusable;")) + loop("lb"),
        "reusable is not allowed on a restricted-dma-pool",
    ),
    (
        "pool-disabled",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400000", 'status = "disabled";'))
        + loop("lb"),
        "the pool of /lb is disabled",
    ),
    (
        "two-ranges",
        reserved(pool("pool0", "p@100000000", "0x1 0x0 0x0 0x400000 0x2 0x0 0x0 0x1000"))
        + loop("lb"),
        "reg lists 2 ranges; a restricted pool is one contiguous range",
    ),
    (
        "size-only",
        reserved('pool0: p { compatible = "restricted-dma-pool"; size = <0x0 0x400000>; };')
        + loop("lb"),
        "the pool has no reg (a size-only pool is placed by the OS at boot)",
    ),
    (
        "cells-3",
        reserved(pool("pool0", "p@100000000", "0x0 0x1 0x0 0x0 0x400000"), cells=(3, 2))
        + loop("lb"),
        "#address-cells = [3] is not supported",
    ),
    (
        "overlap",
        reserved(POOL0, pool("p1", "q@100200000", "0x1 0x200000 0x0 0x400000"))
        + loop("a")
        + loop("b", "&p1"),
        "pool [0x100200000, 0x100600000) of /b overlaps pool /reserved-memory/dma-pool@100000000",
    ),
    (
        "shared-pool",
        reserved(POOL0) + loop("a") + loop("b"),
        "/b: memory-region: uses the pool /reserved-memory/dma-pool@100000000 of /a",
    ),
    (
        "bad-profile",
        reserved(POOL0) + loop("lb", extra='virtio,msg-profile = "fast";'),
        '"fast" is not a wire profile',
    ),
    (
        "msg-size-low",
        reserved(POOL0) + loop("lb", extra="virtio,max-msg-size = <51>;"),
        "virtio,max-msg-size: 51 is outside 52..65535",
    ),
    (
        "msg-size-high",
        reserved(POOL0) + loop("lb", extra="virtio,max-msg-size = <65536>;"),
        "virtio,max-msg-size: 65536 is outside 52..65535",
    ),
    (
        "msg-size-rfc1-low",
        reserved(POOL0)
        + loop("lb", extra='virtio,msg-profile = "linux-rfc1";virtio,max-msg-size = <43>;'),
        "43 is outside 44..65535",
    ),
    (
        "rfc1-features",
        reserved(POOL0)
        + loop("lb", extra='virtio,msg-profile = "linux-rfc1";virtio,transport-features = <1>;'),
        "the linux-rfc1 profile has no transport feature bits",
    ),
    (
        "timeout-zero",
        reserved(POOL0) + loop("lb", extra="virtio,timeout-ms = <0>;"),
        "virtio,timeout-ms: 0 is outside 1..600000",
    ),
    (
        "device-unknown",
        reserved(POOL0) + loop("lb", extra='virtio,devices = "rng", "gpu";'),
        '"gpu" is not a built-in device',
    ),
    (
        "numbers-count",
        reserved(POOL0)
        + loop("lb", extra='virtio,devices = "rng", "blk";virtio,device-numbers = <1>;'),
        "has 1 number(s) for 2 device(s)",
    ),
    (
        "numbers-dup",
        reserved(POOL0)
        + loop("lb", extra='virtio,devices = "rng", "blk";virtio,device-numbers = <5 5>;'),
        "device number 5 is used twice",
    ),
    (
        "numbers-u16",
        reserved(POOL0)
        + loop("lb", extra='virtio,devices = "rng";virtio,device-numbers = <0x10000>;'),
        "65536 does not fit dev_num (0..65535)",
    ),
    (
        "numbers-alone",
        reserved(POOL0) + loop("lb", extra="virtio,device-numbers = <1>;"),
        "virtio,device-numbers without virtio,devices",
    ),
    (
        "typo",
        reserved(POOL0) + loop("lb", extra="virtio,max-msg-sise = <64>;"),
        "virtio,max-msg-sise: unknown property of the binding",
    ),
    (
        "wrong-type",
        reserved(POOL0) + loop("lb", extra='virtio,max-msg-size = "bigger";'),
        "virtio,max-msg-size: expected 32-bit cells",
    ),
    ("no-loopback", reserved(POOL0), "error: /: no enabled virtio,msg-loopback node"),
]


@pytest.mark.parametrize(("case", "body", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_tree_names_the_node_and_the_problem(
    write_dts: WriteDts, case: str, body: str, expected: str
) -> None:
    message = load_errors(write_dts(body, f"{case}.dts"))
    assert expected in message
    assert "error(s) in the device tree" in message


def test_error_is_a_config_error_listing_every_problem(write_dts: WriteDts) -> None:
    body = reserved(pool("pool0", "p@100000800", "0x1 0x800 0x0 0x400000", "no-map;")) + loop(
        "lb", extra="virtio,timeout-ms = <0>;"
    )
    with pytest.raises(ConfigError) as info:
        load_tree(write_dts(body, "many.dts"))
    assert isinstance(info.value, DeviceTreeError)
    errors = [p for p in info.value.problems if p.is_error]
    assert {(p.node, p.prop) for p in errors} == {
        ("/reserved-memory/p@100000800", "no-map"),
        ("/reserved-memory/p@100000800", "reg"),
        ("/lb", "virtio,timeout-ms"),
    }
    assert all(p.hint for p in errors)
    assert "delete the line 'no-map;'" in str(info.value)


def test_typo_gets_a_suggestion(write_dts: WriteDts) -> None:
    message = load_errors(
        write_dts(reserved(POOL0) + loop("lb", extra="virtio,device = <1>;"), "t.dts")
    )
    assert "did you mean virtio,devices?" in message


def test_unknown_feature_bits_only_warn(
    write_dts: WriteDts, caplog: pytest.LogCaptureFixture
) -> None:
    body = reserved(POOL0) + loop("lb", extra="virtio,transport-features = <0x5>;")
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        (config,) = load_tree(write_dts(body, "feat.dts"))
    assert config.transport_features == 5
    assert "bits 0x4 are not defined by the spec" in caplog.text


# --- seed-era trees -----------------------------------------------------------

SEED_POOL = (
    "reserved-memory {\n#address-cells = <2>;\n#size-cells = <2>;\nranges;\n"
    'vmsglb@100000000 {\ncompatible = "restricted-dma-pool";\n'
    "reg = <0x00000001 0x00000000 0x0 0x00400000>; /* 4 MiB */\n};\n};"
)


def test_seed_tree_is_refused_with_the_lines_to_add(write_dts: WriteDts) -> None:
    message = load_errors(write_dts(SEED_POOL, "seed.dts"))
    assert "error: /reserved-memory/vmsglb@100000000: seed-era tree" in message
    assert 'compatible = "virtio,msg-loopback"' in message
    assert "memory-region = <&{/reserved-memory/vmsglb@100000000}>;" in message
    assert "--legacy-pool-name vmsglb" in message


def test_the_lines_to_add_make_the_seed_tree_valid(write_dts: WriteDts) -> None:
    with pytest.raises(DeviceTreeError) as info:
        load_tree(write_dts(SEED_POOL, "seed.dts"))
    hint = info.value.problems[0].hint
    snippet = hint[hint.index("virtio-msg-loopback {") : hint.index("};") + 2]
    (config,) = load_tree(write_dts(SEED_POOL + "\n" + snippet, "fixed.dts"))
    assert config.pool_path == "/reserved-memory/vmsglb@100000000"
    assert not config.legacy


def test_seed_tree_with_a_label_gets_a_label_reference(write_dts: WriteDts) -> None:
    labelled = SEED_POOL.replace("vmsglb@100000000 {", "seedpool: vmsglb@100000000 {")
    assert "memory-region = <&seedpool>;" in load_errors(write_dts(labelled, "label.dts"))


def test_seed_tree_accepted_with_legacy_opt_in(
    write_dts: WriteDts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        configs = load_tree(write_dts(SEED_POOL, "seed.dts"), legacy_pool_name="vmsglb")
    assert configs == [
        LoopbackConfig(
            node_path="/reserved-memory/vmsglb@100000000",
            pool_path="/reserved-memory/vmsglb@100000000",
            base=0x1_0000_0000,
            size=4 * MiB,
            legacy=True,
        )
    ]
    assert "legacy: pool found by its node name" in caplog.text


def test_legacy_opt_in_still_checks_the_pool(write_dts: WriteDts) -> None:
    bad = SEED_POOL.replace("/* 4 MiB */", "/* 4 MiB */\nno-map;")
    message = load_errors(write_dts(bad, "seednomap.dts"), legacy_pool_name="vmsglb")
    assert "no-map is not allowed" in message


def test_legacy_opt_in_with_the_wrong_name(write_dts: WriteDts) -> None:
    message = load_errors(write_dts(SEED_POOL, "seed.dts"), legacy_pool_name="other")
    assert 'no /reserved-memory child named "other"' in message


def test_legacy_opt_in_is_ignored_when_the_binding_is_used(
    write_dts: WriteDts, caplog: pytest.LogCaptureFixture
) -> None:
    body = reserved(POOL0) + loop("lb")
    with caplog.at_level(logging.WARNING, logger="virtio_msg.dt"):
        (config,) = load_tree(write_dts(body, "both.dts"), legacy_pool_name="vmsglb")
    assert not config.legacy
    assert "--legacy-pool-name vmsglb ignored" in caplog.text
