"""Small LCZ cubes written through the cube API in milliseconds, for tests of what reads a
finished cube (pyramid, views, web map, STAC, queries, export), not of mapping.

- ``make_cube`` / ``write``: random blocky tiles of 256 px with ledger entries.
- ``build`` with ``Region``s: every zone pixel's class is a pure function of its zone position
  (``codes``), constant over 4 × 4 blocks of the zone lattice (so nearest sampling is
  unambiguous away from block edges), drawn from a per-zone range of classes (so a stitched
  view shows which zone a pixel came from), with some nodata blocks; a test can compute what
  any pixel must hold without reading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from odc.geo import geom

from lczscale.config import CubeConfig, GridConfig
from lczscale.core.grid import Window, Zone, tiles_for_geometry, utm_zone
from lczscale.io.cube import ledger
from lczscale.io.cube.store import create_cube, write_tile

TILE = 256
GRID = GridConfig(tile_size=TILE)
PROVENANCE = {"model_hash": "f" * 64, "source": {"dataset": "synthetic-tessera", "kind": "tessera"},
              "year": 2024, "lczscale_version": "0.1.0"}


def blocky(shape: tuple[int, int], seed: int, block: int = 8, nodata: float = 0.1) -> np.ndarray:
    """Classes constant over block × block squares (so nearest sampling is unambiguous),
    with some nodata blocks."""
    rng = np.random.default_rng(seed)
    h, w = -(-shape[0] // block), -(-shape[1] // block)
    codes = rng.integers(1, 18, size=(h, w)).astype(np.uint8)
    codes[rng.random((h, w)) < nodata] = 0
    return np.kron(codes, np.ones((block, block), dtype=np.uint8))[: shape[0], : shape[1]]


def make_cube(path: Path, tiles: dict[str, list[tuple[int, int]]], year: int = 2024,
              seed: int = 0, zones: dict[str, Zone] | None = None) -> str:
    """A cube with the given (tile row, tile col) of each zone written and recorded as done."""
    url = str(path)
    zmap = zones or {name: utm_zone(int(name[3:])) for name in tiles}
    create_cube(url, list(zmap.values()), [year], GRID, CubeConfig(),
                {"lczscale:provenance": PROVENANCE, "lczscale:provenance_hash": "p" * 64})
    for i, (name, cells) in enumerate(sorted(tiles.items())):
        for j, (tr, tc) in enumerate(cells):
            write(url, zmap[name], year, tr, tc, seed * 1000 + i * 100 + j)
    return url


def write(url: str, zone: Zone, year: int, tr: int, tc: int, seed: int) -> np.ndarray:
    core = Window(tr * TILE, tc * TILE, TILE, TILE)
    lcz = blocky((TILE, TILE), seed)
    write_tile(url, zone, year, core, lcz, np.where(lcz > 0, 200, 0).astype(np.uint8))
    ledger.record(url, f"{zone.name}/{year}/{core.row}_{core.col}", {
        "zone": zone.name, "year": year, "core": [core.row, core.col, TILE, TILE],
        "provenance_hash": "p" * 64, "finished_at": time.time()})
    return lcz


# -- regions whose classes follow from position -------------------------------------------

BLOCK = 4
YEARS = (2023, 2024)


@dataclass(frozen=True)
class Region:
    zone: Zone
    bbox: tuple[float, float, float, float]  # lon/lat area whose tiles are written
    classes: tuple[int, int]  # lowest, highest class code used in this zone


def codes(region: Region, rows: np.ndarray, cols: np.ndarray, year: int = 2024) -> np.ndarray:
    """The class (uint8) at zone pixels (rows, cols), broadcast together: pass
    ``rows[:, None], cols[None, :]`` for a window, equal shapes for scattered points."""
    br = np.asarray(rows, dtype=np.int64) // BLOCK
    bc = np.asarray(cols, dtype=np.int64) // BLOCK
    h = (br * 7919 + bc * 104729 + year * 31) % 1009
    lo, hi = region.classes
    out = (lo + h % (hi - lo + 1)).astype(np.uint8)
    out[h % 17 == 0] = 0  # nodata blocks
    return out


def build(path: Path, regions: list[Region], years: tuple[int, ...] = YEARS) -> str:
    """A cube holding every tile of each region's zone that its bbox touches, for ``years``."""
    url = str(path)
    zones = list({r.zone.name: r.zone for r in regions}.values())
    create_cube(url, zones, list(years), GRID, CubeConfig(), {"title": "query/export test"})
    for region in regions:
        area = geom.box(*region.bbox, "EPSG:4326")
        for core in tiles_for_geometry(region.zone, area, GRID.tile_size):
            for year in years:
                lcz = codes(region, np.arange(core.row, core.row_stop)[:, None],
                            np.arange(core.col, core.col_stop)[None, :], year)
                conf = np.where(lcz > 0, 100 + lcz, 0).astype(np.uint8)
                write_tile(url, region.zone, year, core, lcz, conf)
    return url


# Around 6°E, the border of UTM 31 and 32, near Basel; and Nairobi (UTM 37, south).
WEST = Region(utm_zone(31), (5.97, 47.50, 6.0, 47.52), (1, 8))
EAST = Region(utm_zone(32), (6.0, 47.50, 6.03, 47.52), (9, 17))
SOUTH = Region(utm_zone(37), (36.80, -1.30, 36.82, -1.28), (1, 17))
