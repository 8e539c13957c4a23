"""Read throughput of every embedding source vs a raw zarr read of the same windows, per store.

One synthetic world is written in every layout; each source then reads the same zone windows
(tile plus halo, as the mapper does) and we report MB/s of int8 codes delivered, next to a raw
``zarr`` read of the TESSERA store's ``embeddings`` array for the same windows from the same
store, in the same run. ``ratio`` = source MB/s ÷ raw zarr MB/s (target ≥ 0.8): what the
source's checks, masks, mosaicking and format cost over plain chunk decoding. Stores: local
files, and S3 served by moto on loopback (the world uploaded there; real network hops and
request overheads, no real network bandwidth limit).

    python benchmarks/read_throughput.py [--quick] [--no-s3]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from common import LAYOUTS, YEAR, main_stores, record, shared_world, workdir

from lczscale.config import GridConfig
from lczscale.core.grid import Window, zone_by_name
from lczscale.io.sources.registry import open_source
from lczscale.io.stores import open_store

PATHS = {"tessera-zarr": "embeddings.zarr", "tessera-tiles": "tiles", "aef-cogs": "aef",
         "aef-mosaic": "aef-mosaic.zarr"}


def windows(area: Window, size: int, halo: int) -> list[Window]:
    """Tile-plus-halo reads lying wholly inside ``area``: no padding in either measurement."""
    step, span = size, size + 2 * halo
    return [Window(r, c, span, span)
            for r in range(area.row, area.row_stop - span + 1, step)
            for c in range(area.col, area.col_stop - span + 1, step)]


def timed(fn: Callable[[], int], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stores(world: dict[str, Any], s3: bool) -> Iterator[tuple[str, str]]:
    """(store name, root URL of the world's layouts): local files and, with ``s3``, a moto S3
    server on loopback holding a copy (up while the caller measures it)."""
    yield "local", world["dir"]
    if not s3:
        return
    from tests.servers import environment, s3_server

    with tempfile.TemporaryDirectory(dir=workdir()) as logs, s3_server(Path(logs)) as server, \
            environment(server.env):
        server.create_bucket("bench")
        for path in PATHS.values():
            server.upload(Path(world["dir"]) / path, "bench", f"world/{path}")
        yield "s3-loopback", "s3://bench/world"


def measure(world: dict[str, Any], root: str, store: str, size: int, halo: int,
            repeat: int) -> list[dict[str, Any]]:
    city = world["cities"][0]
    zone_window = Window(*city["window"])
    utm = zone_by_name(city["zone"], GridConfig())
    tiles = windows(zone_window, size, halo)
    group = zarr.open_group(open_store(f"{root}/{PATHS['tessera-zarr']}"), mode="r")
    emb = group[city["zone"]]["embeddings"]  # type: ignore[index]
    assert isinstance(emb, zarr.Array)
    origin = world["zones"][city["zone"]]["window"]

    def raw() -> int:
        n = 0
        for w in tiles:
            r0, c0 = w.row - origin[0], w.col - origin[1]
            n += np.asarray(emb[0, :, r0:r0 + w.height, c0:c0 + w.width]).nbytes
        return n

    raw_bytes = raw()
    raw_s = timed(raw, repeat)
    raw_mbps = raw_bytes / raw_s / 1e6
    common = {"store": store, "window": size, "halo": halo, "windows": len(tiles),
              "repeat": repeat, "size_km": world.get("size_km")}
    lines = [record("read_raw_zarr", mb_per_s=round(raw_mbps, 1),
                    mpx_per_s=round(sum(w.size for w in tiles) / raw_s / 1e6, 3),
                    bytes=raw_bytes, **common)]
    for layout in LAYOUTS:
        try:
            source = open_source(f"{root}/{PATHS[layout]}", layout)
            if "utm" in source.grid_kinds:
                zone, reads = utm, tiles
            else:  # the mosaic: the same area on the global lattice
                zone = zone_by_name("global", GridConfig(kind="global"))
                box = zone.bounding_window(utm.window_geobox(zone_window).extent)
                assert box is not None
                reads = windows(box, size, halo)

            def read(source: Any = source, zone: Any = zone, reads: Any = reads) -> int:
                return sum(source.read(zone, w, YEAR).codes.nbytes for w in reads)

            nbytes = read()
            seconds = timed(read, repeat)
            mbps = nbytes / seconds / 1e6
        except Exception as exc:  # reported, not hidden: a layout that cannot be read here
            lines.append(record("read_source", layout=layout, **common,
                                error=f"{type(exc).__name__}: {exc}"[:300]))
            continue
        lines.append(record("read_source", layout=layout, mb_per_s=round(mbps, 1),
                            mpx_per_s=round(sum(w.size for w in reads) / seconds / 1e6, 3),
                            bytes=nbytes, raw_zarr_mb_per_s=round(raw_mbps, 1),
                            ratio=round(mbps / raw_mbps, 3), **common | {"windows": len(reads)}))
    return lines


def run(quick: bool, s3: bool = True) -> list[dict[str, Any]]:
    size_km = 4.0 if quick else 12.0
    world = shared_world(size_km) | {"size_km": size_km}
    size, halo = (128, 32) if quick else (448, 48)
    lines: list[dict[str, Any]] = []
    for store, root in stores(world, s3):
        repeat = (1 if store != "local" else 2) if quick else 3
        lines += measure(world, root, store, size, halo, repeat)
    return lines


if __name__ == "__main__":
    main_stores(run, __doc__)
