"""Small LCZ cubes written through the cube API, with ledger entries, in a few milliseconds:
for tests of what reads a finished cube (pyramid, views, web map, STAC), not of mapping."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lczscale.config import CubeConfig, GridConfig
from lczscale.grid import Window, Zone, utm_zone
from lczscale.io import ledger
from lczscale.io.cube import create_cube, write_tile

TILE = 256
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
    create_cube(url, list(zmap.values()), [year], GridConfig(tile_size=TILE), CubeConfig(),
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
