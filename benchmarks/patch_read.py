"""Time per ``TesseraZarrSource.read`` with zarr's default codec pipeline vs its fused one.

A streamed training step reads one 128 px window per patch (the 64 px blocks under a 64 px
patch), so the time of one small read bounds streamed throughput once the chunk cache misses;
the mapper's tile-plus-halo reads are larger (512 px here). Both kinds are read through the
same source class, opened twice on the same store: once as it opens itself (the fused pipeline,
``lczscale.io.zarr_calls.fused_reads``) and once with that switch off (zarr's default
``BatchedCodecPipeline``). The two alternate, ``repeat`` rounds each, so a noisy machine
slows both alike; the line gives the median ms per read of each and default ÷ fused. The
values read are checked equal.

    python benchmarks/patch_read.py [--quick]
    python benchmarks/run.py --only patch_read [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any
from unittest import mock

import numpy as np
from common import YEAR, emit, record, shared_world

from lczscale.config import GridConfig
from lczscale.core.grid import Window, zone_by_name
from lczscale.io import zarr_calls
from lczscale.io.sources.registry import open_source

KINDS = {"patch": (128, 64), "tile": (512, 32)}  # window side, alignment (px)


def windows(area: Window, side: int, align: int, count: int, seed: int) -> list[Window]:
    """``count`` aligned windows of ``side`` px wholly inside ``area``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        r = area.row + int(rng.integers(0, area.height - side - align)) // align * align
        c = area.col + int(rng.integers(0, area.width - side - align)) // align * align
        out.append(Window(r + (-area.row) % align, c + (-area.col) % align, side, side))
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    world = shared_world(6.0, ("tessera-zarr",))  # 600 px: room for 512 px windows
    city = world["cities"][0]
    area, zone = Window(*city["window"]), zone_by_name(city["zone"], GridConfig())
    url = f"{world['dir']}/embeddings.zarr"
    fused = open_source(url, "tessera-zarr")
    with mock.patch.object(zarr_calls, "fused_reads", contextlib.nullcontext):
        default = open_source(url, "tessera-zarr")
        default.read(zone, Window(area.row, area.col, 1, 1), YEAR)  # arrays opened here
    fused.read(zone, Window(area.row, area.col, 1, 1), YEAR)
    pipelines = {name: type(s._zone_info[zone.name][2].async_array.codec_pipeline).__name__
                 for name, s in (("default", default), ("fused", fused))}
    repeat = 3 if quick else 5
    lines = []
    for kind, (side, align) in KINDS.items():
        reads = windows(area, side, align, 20 if kind == "patch" else 4, seed=len(kind))
        for w in reads[:2]:
            a, b = default.read(zone, w, YEAR), fused.read(zone, w, YEAR)
            assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
        times: dict[str, list[float]] = {"default": [], "fused": []}
        for _ in range(repeat):
            for name, source in (("default", default), ("fused", fused)):
                t = time.perf_counter()
                for w in reads:
                    source.read(zone, w, YEAR)
                times[name].append((time.perf_counter() - t) / len(reads) * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        lines.append(record(
            "patch_read", window=kind, side_px=side, reads=len(reads), repeat=repeat,
            size_km=world.get("size_km"), pipelines=pipelines,
            ms_per_read_default=round(ms["default"], 2), ms_per_read_fused=round(ms["fused"], 2),
            speedup=round(ms["default"] / ms["fused"], 3),
            source="tessera-zarr (synthetic, local)"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, not 5")
    for line in run(ap.parse_args().quick):
        emit(line)


if __name__ == "__main__":
    main()
