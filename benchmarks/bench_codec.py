"""Codec throughput per message kind, next to bare struct work on the same layout.

Run: ``python benchmarks/bench_codec.py [--profile spec|linux-rfc1] [--seconds S]``

It says up front how many measurements it makes and about how long they take,
and shows a rich progress bar with the time left on stderr (when stderr is a
terminal, or with ``--progress``).

For each message the codec's ``encode`` + ``decode`` is timed, and so is a bare
``struct.Struct.pack`` + ``unpack_from`` of the same bytes (header, fixed
payload and variable tail in one precompiled layout, checked to give exactly
the codec's bytes) in the same run.  The two are timed in turn, repeat after
repeat, and each keeps its best repeat, so a burst of load on the shared
machine hits both alike.  The ratio codec/bare is the figure to watch (target:
at most 3x).
"""

from __future__ import annotations

import argparse
import struct
import sys
import timeit
from typing import Any

from figures import emit, figure
from virtio_msg.testing import progress
from virtio_msg.wire import Codec, Message
from virtio_msg.wire import rfc1 as R
from virtio_msg.wire import spec as S

SPEC_SAMPLES: list[Message] = [
    S.GetDeviceInfo(dev_num=1, token=7),
    S.GetDeviceInfoResp(4, 0x4D565950, bytes(16), 2, 0, 1, 0, 0, dev_num=1, token=7),
    S.GetDeviceFeaturesResp(0, 2, (0x30000000, 0x103), dev_num=1, token=7),
    S.GetConfig(0, 8, dev_num=1, token=7),
    S.GetConfigResp(3, 0, 8, bytes(range(8)), dev_num=1, token=7),
    S.SetDeviceStatus(15, dev_num=1, token=7),
    S.GetVqueueResp(0, 256, 256, 1, 0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000, dev_num=1),
    S.SetVqueue(0, 1, 256, 0, 0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000, dev_num=1),
    S.EventAvail(0, 0, dev_num=1),
    S.EventUsed(0, dev_num=1),
    S.GetDevicesResp(0, 0, 16, b"\x25\x00"),
]
RFC1_SAMPLES: list[Message] = [
    R.DeviceInfo(dev_num=1),
    R.DeviceInfoResp(4, 0x4D565950, 64, 0, 1, 0, 0, dev_num=1),
    R.GetDevFeaturesResp(0, 2, (0x30000000, 0x103), dev_num=1),
    R.GetConfigResp(3, 0, 8, bytes(range(8)), dev_num=1),
    R.SetDeviceStatus(15, dev_num=1),
    R.SetVqueue(0, 0, 256, 0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000, dev_num=1),
    R.EventAvail(0, 0, dev_num=1),
    R.EventUsed(0, dev_num=1),
]


def bare_pair(codec: Codec, msg: Message) -> tuple[Any, Any]:
    """Bare struct pack and unpack of ``msg``'s exact bytes, in one precompiled layout.

    The layout is the header, the fixed payload and the variable tail (feature
    words as ``nI``, byte strings as ``ns``), so the bare side does the same
    byte work as the codec without any of its checks or objects.
    """
    lay = codec.layout_for(msg)
    hdr = "BBHHH" if codec.has_token else "BBHH"
    raw = codec.encode(msg)
    tail_fmt = ""
    tail_values: tuple[Any, ...] = ()
    if lay.tail_field is not None:
        tail = msg[lay.nfixed]
        if isinstance(tail, tuple):
            tail_fmt, tail_values = f"{len(tail)}I", tail
        else:
            tail_fmt, tail_values = f"{len(tail)}s", (tail,)
    full = struct.Struct("<" + hdr + lay.fmt.lstrip("<") + tail_fmt)
    head = (lay.type_bits, lay.msg_id, msg.dev_num) + ((msg.token,) if codec.has_token else ())
    values = head + (len(raw),) + tuple(msg[: lay.nfixed]) + tail_values
    # same bytes both ways: the bare side packs the codec's frame and parses it back
    if full.pack(*values) != raw or full.unpack_from(raw) != values:
        raise AssertionError(f"bare layout of {lay.name} does not match the codec's bytes")

    def pack() -> bytes:
        return full.pack(*values)

    def unpack() -> tuple[Any, ...]:
        return full.unpack_from(raw)

    return pack, unpack


AUTORANGE_SECONDS = 0.3
"""About what ``timeit.Timer.autorange`` takes before the timed repeats (for the estimate)."""


REPEATS = 5
"""Timed repeats per function; the functions of one message take turns."""


def measure(fns: list[Any], seconds: float) -> list[float]:
    """Seconds per call of each of ``fns``: best of REPEATS repeats, taken in turn.

    Each loop is sized (``timeit`` autorange, then scaled to ``seconds``) on
    its own; the repeats alternate between the functions, so load that comes
    and goes during the measurement reaches all of them.
    """
    timers = [timeit.Timer(fn) for fn in fns]
    loops = []
    for timer in timers:
        n, _ = timer.autorange()
        loops.append(max(n, int(n * seconds / 0.2 / REPEATS)))
    best = [float("inf")] * len(fns)
    for _ in range(REPEATS):
        for i, (timer, n) in enumerate(zip(timers, loops, strict=True)):
            best[i] = min(best[i], timer.timeit(n) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=["spec", "linux-rfc1"], default="spec")
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show the progress bar on stderr (default: when stderr is a terminal)",
    )
    args = parser.parse_args()
    codec = Codec(args.profile)
    samples = SPEC_SAMPLES if args.profile == "spec" else RFC1_SAMPLES
    figures = []
    ratios: list[float] = []
    steps = 2 * len(samples)  # the codec and the bare baseline for each message
    # autorange, then 5 repeats of at least its 0.2 s each (see measure)
    estimate = steps * (AUTORANGE_SECONDS + max(1.0, args.seconds))
    print(f"bench_codec: {steps} measurements ({len(samples)} messages, codec and bare), "
          f"about {estimate:.0f} s on an idle machine", file=sys.stderr, flush=True)
    with progress(args.progress) as bar:
        task = bar.add_task("measuring", total=steps, note="")
        for msg in samples:
            name = codec.layout_for(msg).name + (" resp" if codec.layout_for(msg).response else "")
            figures.append(_one(codec, msg, name, args.seconds, ratios, bar, task))
    ratios.sort()
    if not args.json:
        print(f"profile {args.profile}: encode+decode vs bare struct pack+unpack (ns per "
              f"message); median ratio {ratios[len(ratios) // 2]:.2f}, worst {ratios[-1]:.2f}")
    emit(figures, args.json)


def _one(
    codec: Codec, msg: Message, name: str, seconds: float, ratios: list[float],
    bar: Any, task: Any,
) -> dict[str, Any]:
    """Time ``msg`` through the codec and its bare baseline; advance ``bar`` twice."""
    raw = codec.encode(msg)
    pack, unpack = bare_pair(codec, msg)
    bar.update(task, note=f"{name}: codec and bare struct")
    codec_t, bare_t = measure([
        lambda m=msg, r=raw: (codec.encode(m), codec.decode(r)),
        lambda p=pack, u=unpack: (p(), u()),
    ], seconds)
    bar.update(task, advance=2, note="")
    ratio = codec_t / bare_t
    ratios.append(ratio)
    return figure(f"codec {codec.profile.value}: {name}", codec_t * 1e9, "ns",
                  bare_t * 1e9, ratio, "<= 3.0")


if __name__ == "__main__":
    main()
