"""The pixel lattice of the global 100 m LCZ map, and the cube's 10 m map reduced onto it.

The global LCZ map (Demuzere et al. 2022, ESSD 14:3835, doi:10.5194/essd-14-3835-2022) was
made in Google Earth Engine and exported in EPSG:4326 at Earth Engine's "100 m":
``PIXEL_DEG`` = 100 m / (2π · 6378137 m / 360°) = 0.0008983152841195215° (its readme: EPSG:4326,
0.000898°, 389,620 × 155,995 px). Earth Engine snaps such exports to a lattice whose nodes are
integer multiples of the pixel size from lon 0°, lat 0°, so pixel edges lie at k · PIXEL_DEG.

Evidence: the LCZ Generator GeoTIFF of Sydney shipped by orbisgis/lczexplore
(``inst/extdata/rasterMD.tif``, LCZ Generator output, made in Earth Engine like the global map)
has exactly this pixel size, and its origin (150.45433536075805, -33.53051629504526) lies 167485
and -37326 pixels from (0, 0) (``tests/unit/test_global_grid.py`` checks the file). The global
map's own header origin could not be read offline: the lattice is inferred from the Earth
Engine export grid. ``cells_of_raster`` refuses a raster that is not on it, so a wrong inference
shows up as an error, never as a silently shifted comparison.

Reduction (``CubeCells``): each 10 m pixel belongs to the global cell holding its centre — lon/lat
from ``Zone.lonlat``, then column ``floor(lon / r)`` and row ``floor(-lat / r)`` (rows count
southward from the equator) — and the cells' class counts give the majority (ties → lowest
code, nodata never votes; ``products.counts.majority``) and the shares in 1/255
(``products.cells.fractions_255``). That is exact: the 10 m map is not resampled, and the cube's
own 100 m products (on the UTM lattice) are not resampled a second time. A pixel counts only in
the zone that owns its longitude (``warp.owned``), so a cell over a UTM zone edge sums each
pixel once. Regions are processed in blocks of ``BLOCK_CELLS`` cells, reading only the zone
windows under each block, in strips of ``STRIP_ROWS`` rows, so memory does not grow with the
bbox.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from affine import Affine
from pyproj import CRS, Transformer

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError, NoDataError
from lczscale.io import zarr_calls
from lczscale.io.cube.store import cube_zones, open_root, zone_group
from lczscale.io.cube.warp import owned
from lczscale.products.cells import fractions_255
from lczscale.products.counts import N_CODES, majority

GRID_NAME = "global-lcz-map"
PIXEL_DEG = 0.0008983152841195215  # Earth Engine's 100 m in EPSG:4326 (rasterMD.tif's a, -e)
BLOCK_CELLS = 512  # cells a side of one processing block (~46 km: ~21 M 10 m pixels read)
STRIP_ROWS = 256  # zone rows whose lon/lat are held at once (~5 MB per 1000 columns)
PAD_PX = 2  # zone pixels read beyond a block's projected outline
_ALIGN_TOL = 1e-6  # pixels: how far a raster's origin may sit from a lattice node


@dataclass(frozen=True)
class Cells:
    """A rectangle of global-map cells: columns ``col`` … (west edge ``col · r``), rows ``row`` …
    (north edge ``-row · r``; rows count southward from the equator)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def affine(self) -> Affine:
        """Pixel → lon/lat of the rectangle's cells (a GeoTIFF's transform)."""
        return Affine(PIXEL_DEG, 0.0, self.col * PIXEL_DEG, 0.0, -PIXEL_DEG, -self.row * PIXEL_DEG)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        r = PIXEL_DEG
        return (self.col * r, -(self.row + self.height) * r, (self.col + self.width) * r,
                -self.row * r)

    def intersection(self, other: Cells) -> Cells | None:
        """The cells both hold, or None."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1 = min(self.row + self.height, other.row + other.height)
        c1 = min(self.col + self.width, other.col + other.width)
        return Cells(r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None

    def blocks(self, side: int = BLOCK_CELLS) -> Iterator[Cells]:
        """The rectangle cut into blocks of at most ``side`` × ``side`` cells, row-major."""
        for r in range(self.row, self.row + self.height, side):
            for c in range(self.col, self.col + self.width, side):
                yield Cells(r, c, min(side, self.row + self.height - r),
                            min(side, self.col + self.width - c))


def cells_of_bbox(bbox: tuple[float, float, float, float]) -> Cells:
    """The cells covering a lon/lat bbox, snapped outward to the lattice."""
    minlon, minlat, maxlon, maxlat = bbox
    if minlon > maxlon:
        raise ConfigError(f"bbox {bbox} crosses the antimeridian; the global LCZ map's lattice "
                          "is not periodic there: export each side separately")
    col0, col1 = math.floor(minlon / PIXEL_DEG), math.ceil(maxlon / PIXEL_DEG)
    row0, row1 = math.floor(-maxlat / PIXEL_DEG), math.ceil(-minlat / PIXEL_DEG)
    return Cells(row0, col0, max(1, row1 - row0), max(1, col1 - col0))


def cells_of_raster(crs: Any, transform: Affine, shape: tuple[int, int], what: str) -> Cells:
    """The cells a raster holds, when it lies on the lattice; ConfigError (one line, with its
    pixel size and origin) when it does not, since comparing it would need resampling."""
    a = transform
    size_ok = (abs(a.a - PIXEL_DEG) <= 1e-9 * PIXEL_DEG and abs(a.e + PIXEL_DEG) <= 1e-9
               * PIXEL_DEG and a.b == 0 and a.d == 0)
    col, row = a.c / PIXEL_DEG, -a.f / PIXEL_DEG
    geographic = crs is not None and CRS.from_user_input(crs).equals(
        CRS.from_epsg(4326), ignore_axis_order=True)
    if not (geographic and size_ok and abs(col - round(col)) <= _ALIGN_TOL
            and abs(row - round(row)) <= _ALIGN_TOL):
        raise ConfigError(
            f"{what} is not on the global LCZ map's lattice: CRS {crs}, pixel size "
            f"({a.a!r}, {a.e!r}), origin ({a.c!r}, {a.f!r}) = ({col:.6f}, {-row:.6f}) px from "
            f"(0, 0); it needs EPSG:4326, pixel size {PIXEL_DEG!r}° and an origin on whole "
            "multiples of it (compare other grids with `eval --at 10m`)")
    return Cells(int(round(row)), int(round(col)), shape[0], shape[1])


@dataclass(frozen=True)
class ZoneYear:
    """One zone of a cube holding the year counted: its ``lcz`` array and time index."""

    zone: Zone
    lcz: zarr.Array
    t: int


def _zone_window(zone: Zone, box: tuple[float, float, float, float]) -> Window | None:
    """Zone pixels under a lon/lat box: its outline densified (edges bend in UTM), projected,
    padded by ``PAD_PX`` and clipped to the zone."""
    lon0, lat0, lon1, lat1 = box
    t = np.linspace(0.0, 1.0, 33)
    lons = np.concatenate([lon0 + (lon1 - lon0) * t, np.full(33, lon1),
                           lon0 + (lon1 - lon0) * t, np.full(33, lon0)])
    lats = np.concatenate([np.full(33, lat0), lat0 + (lat1 - lat0) * t, np.full(33, lat1),
                           lat0 + (lat1 - lat0) * t])
    x, y = lons, lats
    if CRS.from_user_input(zone.crs) != CRS.from_epsg(4326):
        x, y = Transformer.from_crs("EPSG:4326", zone.crs, always_xy=True).transform(lons, lats)
    a = zone.affine
    cols, rows = (np.asarray(x) - a.c) / a.a, (np.asarray(y) - a.f) / a.e
    r0, c0 = math.floor(rows.min()) - PAD_PX, math.floor(cols.min()) - PAD_PX
    r1, c1 = math.ceil(rows.max()) + PAD_PX, math.ceil(cols.max()) + PAD_PX
    return Window(r0, c0, r1 - r0, c1 - c0).intersection(zone.full_window)


class CubeCells:
    """A cube's 10 m ``lcz`` of one year, counted per global-map cell across its zones."""

    def __init__(self, url: str, year: int | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        root = open_root(url, "r", storage_options)
        zones = cube_zones(url, storage_options)
        groups = [(z, zone_group(root, z.name, url)) for z in zones]
        years = {z.name: [int(v) for v in g["time"][:]] for z, g in groups}  # type: ignore
        every = sorted({y for ys in years.values() for y in ys})
        if not every:
            raise NoDataError(f"cube {url} has no year; run `lczscale map` first")
        self.year = every[-1] if year is None else year
        if self.year not in every:
            raise NoDataError(f"cube {url} has no year {self.year} (years: {every})")
        self.zones: list[ZoneYear] = []
        for z, g in groups:
            if self.year in years[z.name]:
                arr = g["lcz"]
                assert isinstance(arr, zarr.Array)
                self.zones.append(ZoneYear(z, arr, years[z.name].index(self.year)))

    def counts(self, cells: Cells) -> np.ndarray:
        """(height, width, 18) int64 counts of codes 0–17 (0 stays 0: nodata does not count)
        of the 10 m pixels whose centres lie in each cell, each in the zone owning it."""
        h, w = cells.height, cells.width
        out = np.zeros(h * w * N_CODES, dtype=np.int64)
        west, south, east, north = cells.bounds
        for zy in self.zones:
            lo, hi = zy.zone.lon_band
            if hi <= west or lo >= east:
                continue
            win = _zone_window(zy.zone, (max(west, lo), south, min(east, hi), north))
            if win is None:
                continue
            lcz = np.asarray(zarr_calls.getitem(
                zy.lcz, (zy.t, slice(win.row, win.row_stop), slice(win.col, win.col_stop))))
            for r in range(0, win.height, STRIP_ROWS):
                codes = lcz[r:r + STRIP_ROWS]
                if not codes.any():
                    continue
                strip = Window(win.row + r, win.col, codes.shape[0], win.width)
                lon, lat = zy.zone.lonlat(strip)
                gi = np.floor(lon / PIXEL_DEG).astype(np.int64) - cells.col
                gj = np.floor(-lat / PIXEL_DEG).astype(np.int64) - cells.row
                keep = (codes > 0) & owned(zy.zone, lon) & (gi >= 0) & (gi < w) & (gj >= 0) \
                    & (gj < h)
                idx = (gj[keep] * w + gi[keep]) * N_CODES + codes[keep]
                out += np.bincount(idx, minlength=out.size)
        return out.reshape(h, w, N_CODES)


def majority_cells(counts: np.ndarray) -> np.ndarray:
    """(h, w) uint8 majority class of (h, w, 18) counts (ties → lowest code, 0 = none)."""
    h, w = counts.shape[:2]
    return majority(counts.reshape(-1, N_CODES)).reshape(h, w)


def fraction_cells(counts: np.ndarray) -> np.ndarray:
    """(17, h, w) uint8 class shares in 1/255 of (h, w, 18) counts (each classified cell sums
    to 255 by largest remainder; a cell without a class is all 0)."""
    return np.ascontiguousarray(np.moveaxis(fractions_255(counts), -1, 0))
