"""Agreement of a cube with the global 100 m LCZ map, pixel for pixel on that map's lattice.

``lczscale eval CUBE --truth MAP.tif --at 100m``: the cube's 10 m map is reduced to the global
map's own cells by majority (``lczscale.browse.global_grid``: each 10 m pixel in the cell
holding its centre, counted in the zone owning it) and compared with the reference raster's own
pixels, read by window — nothing is resampled, so a disagreement is a disagreement of the maps,
not of two grids. A reference that is not on the lattice is refused (one line naming its pixel
size and origin) rather than warped. Cells count where both have a class.

The reference band is chosen as ``--labels`` chooses it (``lczFilter`` / ``LCZ_Filter`` of a
multi-band file, the band the global map recommends); the cube's side is the plain majority,
without the global map's Gaussian mode filter, so that the score measures the 10 m map itself.
Scores are those of the 10 m evaluation (``lcz_metrics``), with cluster-bootstrap intervals over
blocks of ``block_cells`` × ``block_cells`` cells (10 × 10 ≈ 1 km), because neighbouring cells
are not independent. Only the processing blocks under stored chunks of the cube are read, so a
whole-world reference costs the cube's area, not the world's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window as Win

from lczscale.browse.global_grid import (
    BLOCK_CELLS,
    GRID_NAME,
    PIXEL_DEG,
    Cells,
    CubeCells,
    cells_of_bbox,
    cells_of_raster,
    majority_cells,
)
from lczscale.errors import CubeError, SourceError
from lczscale.io.cube.store import cube_attrs
from lczscale.io.labels.encoding import check_convention, decode, nodata_values
from lczscale.io.labels.raster import RasterLabels
from lczscale.io.shards import stored_chunks
from lczscale.io.stores import filesystem, is_remote
from lczscale.studies.lcz_metrics import N, cluster_bootstrap, confusion, lcz_accuracies, scores

BOOTSTRAP = 200
UNIT_CELLS = 10  # bootstrap unit: 10 × 10 cells, ~1 km, as the 10 m evaluation's blocks
_KEY = 1 << 22  # unit rows and columns, offset to be ≥ 0, fit in 22 bits


def _open(path: str) -> DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if is_remote(path):
                return rasterio.open(path, opener=filesystem(path)[0])
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise SourceError(f"cannot read reference raster {path}: {exc}") from exc


def mapped_blocks(cube: CubeCells, region: Cells, side: int = BLOCK_CELLS) -> list[Cells]:
    """The blocks of ``region`` under any stored chunk of the cube's year (a chunk's lon/lat
    bounds from its corners, padded by a cell for its curved edges)."""
    wanted: set[tuple[int, int]] = set()
    for zy in cube.zones:
        found = list(stored_chunks(zy.lcz, (zy.t,)))
        if not found:
            continue
        bh, bw = (zy.lcz.shards or zy.lcz.chunks)[-2:]
        rc = np.asarray(found, dtype=np.int64)
        rows = np.stack([rc[:, 0], rc[:, 0], rc[:, 0] + 1, rc[:, 0] + 1]) * bh
        cols = np.stack([rc[:, 1], rc[:, 1] + 1, rc[:, 1], rc[:, 1] + 1]) * bw
        a = zy.zone.affine
        x, y = a.c + a.a * cols, a.f + a.e * rows
        if zy.zone.crs != "EPSG:4326":
            x, y = Transformer.from_crs(zy.zone.crs, "EPSG:4326", always_xy=True).transform(x, y)
        c0 = np.floor(np.min(x, axis=0) / PIXEL_DEG).astype(np.int64) - 1 - region.col
        c1 = np.floor(np.max(x, axis=0) / PIXEL_DEG).astype(np.int64) + 1 - region.col
        r0 = np.floor(-np.max(y, axis=0) / PIXEL_DEG).astype(np.int64) - 1 - region.row
        r1 = np.floor(-np.min(y, axis=0) / PIXEL_DEG).astype(np.int64) + 1 - region.row
        keep = (c1 >= 0) & (c0 < region.width) & (r1 >= 0) & (r0 < region.height)
        for a0, a1, b0, b1 in zip(r0[keep], r1[keep], c0[keep], c1[keep], strict=True):
            for br in range(max(0, int(a0)) // side, min(region.height - 1, int(a1)) // side + 1):
                for bc in range(max(0, int(b0)) // side,
                                min(region.width - 1, int(b1)) // side + 1):
                    wanted.add((br, bc))
    return [b for b in region.blocks(side)
            if ((b.row - region.row) // side, (b.col - region.col) // side) in wanted]


class _Reference:
    """The reference raster's band, nodata and encoding (as ``--labels`` reads it), by window."""

    def __init__(self, path: str) -> None:
        labels = RasterLabels(path)  # band choice, nodata and encoding checks of the label layer
        self.path, self.band, self.convention = path, labels.band, labels.convention
        self.where = f"reference {path} band {self.band}"
        self.nodata = nodata_values(labels.dtype, labels.declared_nodata, self.where)
        self.ds = _open(path)
        self.cells = cells_of_raster(self.ds.crs, self.ds.transform,
                                     (self.ds.height, self.ds.width), f"reference {path}")

    def read(self, block: Cells) -> np.ndarray:
        """uint8 classes (0 = none) of the reference's pixels of ``block``."""
        out = np.zeros((block.height, block.width), dtype=np.uint8)
        sub = block.intersection(self.cells)
        if sub is None:
            return out
        win = Win(sub.col - self.cells.col, sub.row - self.cells.row, sub.width, sub.height)
        codes, seen = decode(self.ds.read(self.band, window=win), self.nodata, self.where)
        check_convention(seen, self.convention, self.where)
        out[sub.row - block.row:sub.row - block.row + sub.height,
            sub.col - block.col:sub.col - block.col + sub.width] = codes
        return out


def _score(cube: CubeCells, ref: _Reference, region: Cells, unit: int,
           units: bool) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
    """The (18, 18) confusion (rows = reference) of the cells where both have a class, and
    with ``units`` the (unit, matrix cell, cells) rows of the bootstrap's ``unit``² blocks."""
    cm = np.zeros((N, N), dtype=np.int64)
    rows: list[tuple[np.ndarray, ...]] = []
    for block in mapped_blocks(cube, region):
        pred = majority_cells(cube.counts(block))
        if not pred.any():
            continue
        truth = ref.read(block)
        both = (pred > 0) & (truth > 0)
        if not both.any():
            continue
        cm += confusion(pred[both], truth[both])
        if units:
            r = (np.arange(block.row, block.row + block.height) // unit + _KEY // 2)[:, None]
            c = (np.arange(block.col, block.col + block.width) // unit + _KEY // 2)[None, :]
            keys = np.broadcast_to(r * _KEY + c, both.shape)[both]
            idx = truth[both].astype(np.int64) * N + pred[both]
            uk, inv = np.unique(keys, return_inverse=True)
            comb, counts = np.unique(inv.astype(np.int64) * N * N + idx, return_counts=True)
            rows.append((uk[comb // (N * N)], comb % (N * N), counts))
    return cm, rows


def evaluate_100m(
    cube_url: str,
    truth_path: str,
    year: int | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    bootstrap: int = BOOTSTRAP,
    block_m: float = 1000.0,
) -> dict[str, Any]:
    """Scores of the cube's 100 m majority against ``truth_path`` on the global LCZ map's
    lattice, over ``bbox`` (lon/lat; default the cube's mapped area). ``bootstrap`` replicates
    (0: none) over blocks of ``block_m`` (rounded to whole cells) give ``ci`` / ``f1_ci``."""
    cube_attrs(cube_url)
    unit = max(1, round(block_m / 100.0))
    ref = _Reference(truth_path)
    try:
        cube = CubeCells(cube_url, year)
        region = ref.cells if bbox is None else ref.cells.intersection(cells_of_bbox(bbox))
        if region is None:
            raise CubeError(f"bbox {tuple(bbox or ())} lies outside reference {truth_path}")
        cm, rows = _score(cube, ref, region, unit, bootstrap > 0)
    finally:
        ref.ds.close()
    if cm.sum() == 0:
        raise CubeError(f"no 100 m cell of the global LCZ map's lattice has a class in both cube "
                        f"{cube_url} ({cube.year}) and reference {truth_path}"
                        + (f" inside bbox {tuple(bbox)}" if bbox is not None else ""))
    s = scores(cm)
    out: dict[str, Any] = {
        "cube": cube_url, "truth": truth_path, "year": cube.year, "at": "100m",
        "grid": GRID_NAME, "pixel_deg": PIXEL_DEG, "reference_band": ref.band,
        "bbox": None if bbox is None else list(bbox), "cells": s.pop("pixels"),
    } | s | lcz_accuracies(cm)
    out["confusion"] = cm[1:, :].tolist()
    if bootstrap:
        units, cells, counts = (np.concatenate(p) for p in zip(*rows, strict=True))
        dense = np.unique(units, return_inverse=True)[1].astype(np.int64)
        out |= cluster_bootstrap(dense, cells, counts, replicates=bootstrap)
        out["ci_units"] = f"blocks of {unit}x{unit} cells (~{unit * 100} m)"
    return out

