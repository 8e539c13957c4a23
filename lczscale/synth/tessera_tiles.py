"""The synthetic world as TESSERA NPY tiles, in the local layout of ``geotessera download
--format npy`` (shared/reference/data-formats.md §1.3, §1.6), under ``out/tiles/``.

Every 0.1° tile that overlaps a city is written whole, on its own UTM rectangle (the bounding
rectangle of its box, snapped to the 10 m zone lattice, so its pixels are the zone's). City
pixels carry exactly the codes and scales of the Zarr store (``synth.quantise`` masked like
``synth._write_city_year``), so both layouts of one world give the same windows. Elsewhere NPY
has no sentinel: water is landmask 0 and land without data is "NoData 0" — codes 0, scale 0,
as in v1's clipped coastlines (geotessera issue #266); water pixels also hold codes 0, scale 0.

A tile is mostly no data, so the two .npy files are written through ``numpy.lib.format``
memory maps: the same bytes ``numpy.save`` writes, but the untouched zeros stay holes in a
sparse file, so a 1 km city does not cost a 110 MB dense tile per year on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio

from lczscale.core.grid import Window, utm_zone
from lczscale.errors import ConfigError
from lczscale.io.sources.tessera_tiles import (
    BANDS,
    EMBEDDINGS_DIR,
    LANDMASKS_DIR,
    MANIFEST_FILE,
    METADATA_FILE,
    canonical,
    tile_footprint,
    tile_name,
)
from lczscale.synth.cities import SynthCity, quantise

VERSION, VERSION_PATH, VARIANT = "1.0", "v1", "synthetic"  # as the Zarr store's attributes
DATASET_PATH = f"{VERSION_PATH}-{VARIANT}"  # geotessera's generic npy/ directory name


def _tiles_of(world: Sequence[SynthCity]) -> dict[tuple[int, int], list[int]]:
    """Tile (lon, lat in hundredths) → indices of the cities it overlaps."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(world):
        minlon, minlat, maxlon, maxlat = c.bbox_lonlat
        for bx in range(int(np.floor(minlon * 10)), int(np.floor(maxlon * 10)) + 1):
            for by in range(int(np.floor(minlat * 10)), int(np.floor(maxlat * 10)) + 1):
                key = (bx * 10 + 5, by * 10 + 5)
                epsg, _, _ = tile_footprint(*key)
                if epsg % 100 != int(c.zone.name[3:]):
                    raise ConfigError(
                        f"city {c.city.name} reaches tile {tile_name(*key)} of UTM zone "
                        f"{epsg % 100}, but its pixels are on {c.zone.name}: NPY tiles cannot "
                        "hold it without resampling; choose a smaller size_km"
                    )
                if _window(key).intersection(c.window) is not None:
                    out.setdefault(key, []).append(i)
    return dict(sorted(out.items()))


def _window(key: tuple[int, int]) -> Window:
    """The tile's rectangle in pixels of its (canonical) zone."""
    epsg, transform, (h, w) = tile_footprint(*key)
    row, col = utm_zone(epsg % 100).pixel_offset(canonical(transform, epsg))
    return Window(row, col, h, w)


def _npy_values(c: SynthCity, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Zarr store's codes and scales of a city, with NPY's "NoData 0" where not valid."""
    codes, scale = quantise(emb)
    invalid = ~c.valid
    codes[:, invalid] = 0
    scale[invalid] = 0.0
    return codes, scale


def _write_landmask(path: Path, key: tuple[int, int], world: Sequence[SynthCity],
                    cities: list[int]) -> None:
    epsg, transform, (h, w) = tile_footprint(*key)
    land = np.ones((h, w), dtype=np.uint8)
    tile = _window(key)
    for i in cities:
        c = world[i]
        inner = tile.intersection(c.window)
        assert inner is not None
        view = land[inner.relative_to(tile)]
        view[c.water[inner.relative_to(c.window)]] = 0
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8",
               "crs": f"EPSG:{epsg}", "transform": transform, "compress": "deflate",
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(land, 1)


def _write_tile_year(folder: Path, key: tuple[int, int], world: Sequence[SynthCity],
                     cities: list[int], values: dict[int, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[Path, Path]:
    name, tile = tile_name(*key), _window(key)
    folder.mkdir(parents=True, exist_ok=True)
    grid, scales = folder / f"{name}.npy", folder / f"{name}_scales.npy"
    q = np.lib.format.open_memmap(grid, mode="w+", dtype=np.int8,
                                  shape=(tile.height, tile.width, BANDS))
    s = np.lib.format.open_memmap(scales, mode="w+", dtype=np.float32,
                                  shape=(tile.height, tile.width))
    for i in cities:
        inner = tile.intersection(world[i].window)
        assert inner is not None
        dst, src = inner.relative_to(tile), inner.relative_to(world[i].window)
        codes, scale = values[i]
        q[dst] = np.moveaxis(codes[(slice(None), *src)], 0, -1)
        s[dst] = scale[src]
    q.flush()
    s.flush()
    del q, s
    return grid, scales


def _manifest(rows: list[dict[str, Any]]) -> pa.Table:
    """The §1.5 columns of geotessera's manifest.parquet."""
    schema = pa.schema([
        ("version", pa.string()), ("variant", pa.string()), ("lon", pa.float64()),
        ("lat", pa.float64()), ("year", pa.int32()), ("grid_size", pa.int64()),
        ("scales_size", pa.int64()), ("grid_path", pa.string()), ("scales_path", pa.string()),
        ("grid_mtime", pa.timestamp("us", tz="UTC")),
        ("scales_mtime", pa.timestamp("us", tz="UTC")),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _row(key: tuple[int, int], year: int, grid: Path, scales: Path) -> dict[str, Any]:
    g, s = grid.stat(), scales.stat()
    return {
        "version": VERSION, "variant": VARIANT, "lon": key[0] / 100, "lat": key[1] / 100,
        "year": year, "grid_size": g.st_size, "scales_size": s.st_size,
        "grid_path": grid.resolve().as_uri(), "scales_path": scales.resolve().as_uri(),
        "grid_mtime": datetime.fromtimestamp(g.st_mtime, tz=UTC),
        "scales_mtime": datetime.fromtimestamp(s.st_mtime, tz=UTC),
    }


def write_tessera_tiles(
    out: Path,
    world: Sequence[SynthCity],
    years: Sequence[int],
    render: Callable[[SynthCity, int], np.ndarray],
    seed: int,
) -> dict[str, Any]:
    """Write ``out/tiles/`` (tiles, landmasks, ``tessera_metadata.json``, ``manifest.parquet``)
    and return what was written, for ``world.json``."""
    root = Path(out) / "tiles"
    tiles = _tiles_of(world)
    (root / LANDMASKS_DIR).mkdir(parents=True, exist_ok=True)
    for key, cities in tiles.items():
        _write_landmask(root / LANDMASKS_DIR / f"{tile_name(*key)}.tiff", key, world, cities)
    used = sorted({i for cities in tiles.values() for i in cities})
    rows = []
    for year in years:  # one year at a time: codes of every city, not their float embeddings
        values = {i: _npy_values(world[i], render(world[i], year)) for i in used}
        for key, cities in tiles.items():
            folder = root / EMBEDDINGS_DIR / str(year) / tile_name(*key)
            rows.append(_row(key, year, *_write_tile_year(folder, key, world, cities, values)))
    pq.write_table(_manifest(rows), root / MANIFEST_FILE)
    metadata = {
        "dataset_version": VERSION,
        "dataset_version_path": VERSION_PATH,
        "dataset_variant": VARIANT,
        "dataset_path": DATASET_PATH,
        "embeddings_subdir": EMBEDDINGS_DIR,
        "s3_embeddings_subdir": f"{EMBEDDINGS_DIR}.{VARIANT}",
        "source_url_prefix": f"lczscale-synth://npy/{DATASET_PATH}/",
        "generated_at": datetime.now(UTC).isoformat(),
        "format": "npy",
        "years": [int(y) for y in years],
        "tile_count": len(rows),
        "lczscale_seed": seed,
    }
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return {"path": str(root.resolve()), "tiles": [tile_name(*k) for k in tiles],
            "years": [int(y) for y in years], "tile_count": len(rows)}
