"""Read throughput of every embedding source vs a raw zarr read of the same windows.

One synthetic world is written in every layout; each source then reads the same zone windows
(tile plus halo, as the mapper does) and we report MB/s of int8 codes delivered, next to a raw
``zarr`` read of the TESSERA store's ``embeddings`` array for the same windows, in the same
run. ``ratio`` = source MB/s ÷ raw zarr MB/s (target ≥ 0.8): what the source's checks,
masks, mosaicking and format cost over plain chunk decoding.

    python benchmarks/read_throughput.py [--size-km 4] [--window 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from common import emit

from lczscale.config import GridConfig
from lczscale.grid import Window, zone_by_name
from lczscale.io.sources import open_source
from lczscale.synth import write_world

LAYOUTS = ("tessera-zarr", "tessera-tiles", "aef-cogs", "aef-mosaic")


def windows(area: Window, size: int, halo: int) -> list[Window]:
    """Tile-plus-halo reads lying wholly inside ``area``: no padding in either measurement."""
    step, span = size, size + 2 * halo
    return [Window(r, c, span, span)
            for r in range(area.row, area.row_stop - span + 1, step)
            for c in range(area.col, area.col_stop - span + 1, step)]


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-km", type=float, default=4.0)
    ap.add_argument("--window", type=int, default=448)
    ap.add_argument("--halo", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="reuse/keep the world here (default: a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir or tmp)
        if not (root / "world.json").exists():
            write_world(root, cities=1, size_km=a.size_km, seed=0, years=(2024,),
                        truth_cube=False, layouts=LAYOUTS, shard_size=1024)
        world = json.loads((root / "world.json").read_text())
        city = world["cities"][0]
        zone_window = Window(*city["window"])
        utm = zone_by_name(city["zone"], GridConfig())
        tiles = windows(zone_window, a.window, a.halo)

        emb = zarr.open_group(str(root / "embeddings.zarr"), mode="r")[city["zone"]]["embeddings"]
        store_origin = world["zones"][city["zone"]]["window"]

        def raw() -> int:
            n = 0
            for w in tiles:
                r0, c0 = w.row - store_origin[0], w.col - store_origin[1]
                n += np.asarray(emb[0, :, r0:r0 + w.height, c0:c0 + w.width]).nbytes
            return n

        raw_bytes = raw()
        raw_s = timed(raw, a.repeat)
        raw_mbps = raw_bytes / raw_s / 1e6
        emit({"name": "read_raw_zarr", "mb_per_s": round(raw_mbps, 1), "bytes": raw_bytes,
              "windows": len(tiles), "window": a.window, "halo": a.halo})
        paths = {"tessera-zarr": root / "embeddings.zarr", "tessera-tiles": root / "tiles",
                 "aef-cogs": root / "aef", "aef-mosaic": root / "aef-mosaic.zarr"}
        for layout, path in paths.items():
            source = open_source(str(path), layout)
            if "utm" in source.grid_kinds:
                zone, reads = utm, tiles
            else:  # the mosaic: the same area on the global lattice
                zone = zone_by_name("global", GridConfig(kind="global"))
                box = zone.bounding_window(utm.window_geobox(zone_window).extent)
                assert box is not None
                reads = windows(box, a.window, a.halo)

            def read(source=source, zone=zone, reads=reads) -> int:  # type: ignore[no-untyped-def]
                return sum(source.read(zone, w, 2024).codes.nbytes for w in reads)

            nbytes = read()
            seconds = timed(read, a.repeat)
            mbps = nbytes / seconds / 1e6
            emit({"name": "read_source", "layout": layout, "store": "local",
                  "mb_per_s": round(mbps, 1), "bytes": nbytes, "windows": len(reads),
                  "raw_zarr_mb_per_s": round(raw_mbps, 1), "ratio": round(mbps / raw_mbps, 3),
                  "window": a.window, "halo": a.halo, "size_km": a.size_km})


if __name__ == "__main__":
    main()
