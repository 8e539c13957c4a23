"""What an evaluation scores against, read on the cube's own grid, window by window.

A reference is either an lczscale cube (read where its chunks are stored, on its zones) or any
label file ``--labels`` takes (LCZ rasters such as the global map or LCZ Generator output,
GeoJSON / KML / KMZ training areas, So2Sat patches), warped onto the evaluated cube's zones by
the label sources' nearest rule (``lczscale.io.labels``). A label file is read over its own
extent, cut into the cube's chunks so memory stays bounded for a continent, and scored only
where the cube has chunks for the year (where the map was made, not over the rest of a global
map); each zone keeps only the pixels whose centres lie in the longitudes it owns, so a reference
across a UTM zone edge is scored once, not twice.

It also says which *unit* each pixel belongs to, for the bootstrap intervals: the polygon or
patch of a unit-based source, else a square block of ``block_m`` on the zone lattice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import zarr
from pyproj import CRS
from rasterio.warp import transform_bounds

from lczscale.core.grid import Aoi, Window, Zone, zones_for_aoi
from lczscale.errors import CubeError
from lczscale.io.cube.store import cube_grid, cube_zones, open_root, read_window
from lczscale.io.cube.warp import owned
from lczscale.io.labels.protocol import LabelSource
from lczscale.io.labels.reader import cached_source, detect_kind
from lczscale.io.shards import stored_chunks

Bbox = tuple[float, float, float, float]
BBOX_DENSIFY_DEG = 0.01  # vertex spacing of a lon/lat box before projecting it (edges bend)
M_PER_DEGREE = 111_320.0  # metres per degree of latitude, for zones in a geographic CRS
_BLOCK_KEY = 1 << 21  # block rows and columns fit in 21 bits (2M blocks = 2000 km at 1 km)


def cell_factor(zone: Zone, cell_m: float) -> int:
    """Zone pixels per side of a ``cell_m`` cell (10 for 100 m on 10 m UTM zones; the global
    zone's degrees count as 111 320 m, so its nominal 10 m gives 10 too)."""
    crs = CRS.from_user_input(zone.crs)
    size = abs(zone.affine.a)
    metres = size * M_PER_DEGREE if crs.is_geographic else size * float(
        crs.axis_info[0].unit_conversion_factor)
    return max(1, round(cell_m / metres))


def _parts(url: str, aoi: Aoi, zones: list[Zone] | None) -> dict[str, tuple[Zone, list[Window]]]:
    """Per zone name, the zone and the windows under a lon/lat AOI (one per part of an AOI split
    at the antimeridian); ``zones`` limits them to those zones (with their stored extent)."""
    dense = Aoi(aoi.geometry.segmented(BBOX_DENSIFY_DEG))
    by_name = None if zones is None else {z.name: z for z in zones}
    out: dict[str, tuple[Zone, list[Window]]] = {}
    for grid_zone, part in zones_for_aoi(dense, cube_grid(url)):
        zone = grid_zone if by_name is None else by_name.get(grid_zone.name)
        if zone is None:
            continue
        gtype = part.geom.geom_type
        pieces = list(part.geoms) if gtype.startswith("Multi") or gtype == "GeometryCollection" \
            else [part]
        wins = [w for g in pieces if (w := zone.bounding_window(g)) is not None]
        if wins:
            out[zone.name] = (zone, wins)
    return out


def inside(zone: Zone, window: Window, bbox: Bbox | None, own_band: bool) -> npt.NDArray[np.bool_]:
    """Pixels of a window whose centres lie in the lon/lat bbox (MINLON > MAXLON: across ±180°;
    None: no bbox) and, with ``own_band``, in the longitudes the zone owns."""
    lon, lat = zone.lonlat(window)
    keep = owned(zone, lon) if own_band else np.ones(lon.shape, dtype=bool)
    if bbox is None:
        return np.asarray(keep)
    minlon, minlat, maxlon, maxlat = bbox
    keep &= (lat >= minlat) & (lat <= maxlat)
    if minlon <= maxlon:
        return np.asarray(keep & (lon >= minlon) & (lon <= maxlon))
    return np.asarray(keep & ((lon >= minlon) | (lon <= maxlon)))


def _split(window: Window, side: int) -> Iterator[Window]:
    """A window cut on the zone's lattice of ``side`` px squares (the cube's chunks)."""
    for r in range((window.row // side) * side, window.row_stop, side):
        for c in range((window.col // side) * side, window.col_stop, side):
            piece = window.intersection(Window(r, c, side, side))
            if piece is not None:
                yield piece


@dataclass
class Reference:
    """A reference opened for scoring a cube: ``zones()`` gives (zone, windows, year) to read,
    ``read`` the labels of a window, ``units`` the bootstrap unit of each pixel."""

    path: str
    cube_url: str
    year: int | None = None
    block_m: float = 1000.0
    is_cube: bool = field(init=False)
    source: LabelSource | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.is_cube = detect_kind(self.path) == "cube"
        if not self.is_cube:
            self.source = cached_source(self.path)

    @property
    def unit_kind(self) -> str:
        """What a bootstrap unit is for this reference."""
        if self.source is not None and self.source.kind in ("geojson", "kml", "kmz"):
            return "polygons"
        if self.source is not None and self.source.kind == "so2sat":
            return "patches"
        return f"blocks of {self.block_m:g} m"

    def zones(self, bbox: Bbox | None) -> list[tuple[Zone, list[Window], int | None]]:
        """Every (zone, windows, reference year) to score: the windows lie in the zone and, with
        a bbox, under it. The year is None for label files (they have none)."""
        if self.is_cube:
            return self._cube_zones(bbox)
        assert self.source is not None
        src = self.source
        lonlat = src.bounds if CRS.from_user_input(src.crs).is_geographic else transform_bounds(
            src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        parts = _parts(self.cube_url, Aoi.from_bbox(tuple(lonlat)), None)  # type: ignore[arg-type]
        limits = None if bbox is None else _parts(self.cube_url, Aoi.from_bbox(bbox), None)
        out: list[tuple[Zone, list[Window], int | None]] = []
        for name, (zone, wins) in sorted(parts.items()):
            if limits is not None:
                if name not in limits:
                    continue
                wins = [w for a in wins for b in limits[name][1] if (w := a.intersection(b))]
            mapped = self._mapped_chunks(name)
            if mapped is None:
                continue
            side, chunks = mapped
            cut = sorted({p for w in wins if (z := w.intersection(zone.full_window))
                          for p in _split(z, side) if (p.row // side, p.col // side) in chunks})
            if cut:
                out.append((zone, cut, None))
        return out

    def _mapped_chunks(self, zone_name: str) -> tuple[int, set[tuple[int, int]]] | None:
        """The chunk side and the stored (row, col) chunks of the evaluated cube's ``lcz`` in a
        zone for the year scored (``year``, else the zone's latest); None when it has none. A
        label file is scored where the map was made, not over the rest of its extent."""
        root = open_root(self.cube_url, "r", None)
        if zone_name not in root:
            return None
        g = root[zone_name]
        years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr, call-overload]
        year = years[-1] if self.year is None else self.year
        if year not in years:
            return None
        arr = g["lcz"]  # type: ignore[index]
        assert isinstance(arr, zarr.Array)
        side = int((arr.shards or arr.chunks)[-1])
        return side, set(stored_chunks(arr, (years.index(year),)))

    def _cube_zones(self, bbox: Bbox | None) -> list[tuple[Zone, list[Window], int | None]]:
        zones = cube_zones(self.path)
        limits = None if bbox is None else _parts(self.path, Aoi.from_bbox(bbox), zones)
        out: list[tuple[Zone, list[Window], int | None]] = []
        for zone in zones:
            if limits is not None and zone.name not in limits:
                continue
            g = open_root(self.path, "r", None)[zone.name]
            years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr, call-overload]
            year = years[-1] if self.year is None else self.year
            if year not in years:
                raise CubeError(f"reference {self.path} has no year {year} (years: {years})")
            arr = g["lcz"]  # type: ignore[index]
            assert isinstance(arr, zarr.Array)
            bh, bw = (arr.shards or arr.chunks)[1:]
            wins = []
            for r, c in stored_chunks(arr, (years.index(year),)):
                stored = Window(r * bh, c * bw, bh, bw)
                stored = stored.intersection(zone.full_window) or stored
                if limits is None:
                    wins.append(stored)
                else:
                    wins.extend(w for lim in limits[zone.name][1]
                                if (w := stored.intersection(lim)) is not None)
            out.append((zone, sorted(set(wins)), year))
        return out

    def read(self, zone: Zone, window: Window, year: int | None) -> npt.NDArray[np.uint8]:
        """uint8 reference classes of a window (0 = unlabelled)."""
        if self.is_cube:
            assert year is not None
            return read_window(self.path, zone, year, window)
        assert self.source is not None
        return self.source.read(zone, window)

    def units(self, zone: Zone, zone_index: int, window: Window) -> npt.NDArray[np.int64]:
        """int64 unit key of every pixel: a polygon's or patch's number (≥ 1), or a negative key
        of the ``block_m`` block holding the pixel (its zone, block row and column)."""
        got = None if self.source is None else self.source.units(zone, window)
        if got is not None:
            return got.astype(np.int64)
        side = cell_factor(zone, self.block_m)
        rows = (np.arange(window.row, window.row_stop) // side)[:, None]
        cols = (np.arange(window.col, window.col_stop) // side)[None, :]
        return np.asarray(-((zone_index * _BLOCK_KEY + rows) * _BLOCK_KEY + cols + 1),
                          dtype=np.int64)
