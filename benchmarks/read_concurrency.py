"""Concurrent band reads per worker: the read-ahead's curve at 1, 2, 4 and 8 reads in flight.

One tile's read window of the synthetic TESSERA Zarr store (the world's city, tile plus halo)
is read in row bands by the tile runner's own reader (``TileRunner._read_bands``, the code a
map runs) with ``inference.read_concurrency`` = N band reads in flight, into a ``TileInput``
that holds everything (no model waiting on it), from local files and from S3 served by moto on
loopback. Per N: Mpx/s and MB/s of int8 codes delivered, and the speed-up over one reader.

On this two-core machine moto (a Python server) shares the cores with the readers, so the curve
is a lower bound of what a real object store gives: there each request waits on the network,
not on a CPU, and concurrent readers scale until the network or the store's request rate is
the limit. ``benchmarks/README.md`` turns the per-reader rate into the readers a GPU needs.

    python benchmarks/read_concurrency.py [--quick] [--no-s3]
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from common import YEAR, main_stores, random_model, record, shared_world, workdir
from read_throughput import PATHS, stores

from lczscale.config import GridConfig, InferenceConfig, ModelConfig, StitchConfig
from lczscale.core.grid import Window
from lczscale.core.tiling import TileTask
from lczscale.execute.tile import MapContext, TileRunner
from lczscale.infer.tile_input import TileInput
from lczscale.io.sources.registry import open_source

CONCURRENCY = (1, 2, 4, 8)
SMALL = ModelConfig(widths=(8, 16), convs_per_block=1)


def read_once(runner: TileRunner, task: TileTask) -> float:
    """Seconds for the runner's reader to put every band of ``task``'s read window."""
    zone = runner.zone(task.zone)
    tile = TileInput(task.read, torch.device("cpu"), ahead=None)
    t0 = time.perf_counter()
    runner._read_bands(zone, task, tile)  # the reader thread's loop, here in this thread
    seconds = time.perf_counter() - t0
    tile.wait(task.read.height, land=False)  # raises what the reader failed with, if anything
    return seconds


def measure(world: dict[str, Any], root: str, store: str, band_rows: int, repeat: int
            ) -> list[dict[str, Any]]:
    city = world["cities"][0]
    url = f"{root}/{PATHS['tessera-zarr']}"
    source = open_source(url, "tessera-zarr")
    model = random_model(workdir() / "model-read-concurrency", url, SMALL, "tessera-zarr")
    area = Window(*city["window"])
    task = TileTask(city["zone"], YEAR, area, area)  # one read window: the whole city
    lines: list[dict[str, Any]] = []
    base = None
    for n in CONCURRENCY:
        ctx = MapContext(source_url=url, source=source, model_dir=model, cube_url="unused",
                         grid=GridConfig(), stitch=StitchConfig(), device="cpu", threads=1,
                         provenance_hash="", inference=InferenceConfig(
                             band_rows=band_rows, read_concurrency=n))
        runner = TileRunner(ctx)
        read_once(runner, task)  # warm: metadata, connections
        seconds = min(read_once(runner, task) for _ in range(repeat))
        mpx = area.size / seconds / 1e6
        base = base or mpx
        lines.append(record(
            "read_concurrency", store=store, layout="tessera-zarr", concurrency=n,
            band_rows=band_rows, window=[area.height, area.width], bands=-(-area.height //
                                                                          band_rows),
            repeat=repeat, seconds=round(seconds, 4), mpx_per_s=round(mpx, 3),
            mb_per_s=round(area.size * source.dimensions / seconds / 1e6, 1),
            speedup=round(mpx / base, 3), cpu_count=os.cpu_count()))
    return lines


def run(quick: bool, s3: bool = True) -> list[dict[str, Any]]:
    """One curve per store."""
    size_km = 4.0 if quick else 12.0
    world = shared_world(size_km) | {"size_km": size_km}
    band_rows = 32 if quick else 64
    lines: list[dict[str, Any]] = []
    for store, root in stores(world, s3):
        lines += measure(world, root, store, band_rows, 1 if quick else 3)
    return lines


if __name__ == "__main__":
    main_stores(run, __doc__)
