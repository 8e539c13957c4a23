"""One picture across UTM zones: render any lon/lat box or Web-Mercator XYZ tile from the cube.

Each zone lives in its own CRS, so a view of a region that spans zones must reproject. For
every zone whose data the view touches, the renderer picks the pyramid level whose pixels are
just finer than the view's (``pyramid.level_for_resolution``), reads only the window under the
view from that level, and warps it with *nearest* (class codes must never be blended) onto the
view's grid. Zones are combined by the one stitching rule of ``io.cube.warp.zone_choice``
(the zone owning a pixel's longitude, else the first zone with a class), so a tile shows
what ``open_cube(crs=)`` and the exports give at zone edges. A tile therefore reads about one
tile's worth of pixels per zone at any zoom, whatever the size of the cube.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from affine import Affine
from odc.geo import geom
from odc.geo.geobox import GeoBox
from odc.geo.warp import rio_reproject

from lczscale import classes
from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError, NoDataError
from lczscale.io.cube import ledger
from lczscale.io.cube.pyramid import (
    data_sources,
    data_window,
    level_for_resolution,
    level_path,
    level_zone,
    pyramid_levels,
)
from lczscale.io.cube.store import cube_attrs, cube_zones, open_root, zone_group
from lczscale.io.cube.warp import owned, pixel_lons, zone_choice

TILE = 256
MERCATOR_HALF = math.pi * 6378137.0  # half the Web-Mercator world width, metres
MAX_ZOOM = 24
MAX_READ_PX = 4096 * 4096  # beyond this a view needs overviews (``lczscale pyramid``)


def tile_geobox(z: int, x: int, y: int, size: int = TILE) -> GeoBox:
    """The EPSG:3857 grid of XYZ tile z/x/y (the OSM/Google scheme, y down from the north)."""
    if not 0 <= z <= MAX_ZOOM:  # before ``1 << z``: z = 2^33 would take 1 GB and seconds
        raise NoDataError(f"tile {z}/{x}/{y} does not exist (zoom 0..{MAX_ZOOM})")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise NoDataError(f"tile {z}/{x}/{y} does not exist (at zoom {z}, x and y in "
                          f"0..{n - 1})")
    span = 2 * MERCATOR_HALF / n
    res = span / size
    return GeoBox((size, size), Affine(res, 0, -MERCATOR_HALF + x * span, 0, -res,
                                       MERCATOR_HALF - y * span), "EPSG:3857")


def lonlat_geobox(bbox: tuple[float, float, float, float], shape: tuple[int, int]) -> GeoBox:
    """An EPSG:4326 grid of ``shape`` (rows, cols) over a lon/lat box."""
    w, s, e, n = bbox
    if not (e > w and n > s):
        raise NoDataError(f"bbox {bbox} is empty: give MINLON,MINLAT,MAXLON,MAXLAT")
    return GeoBox(shape, Affine((e - w) / shape[1], 0, w, 0, -(n - s) / shape[0], n), "EPSG:4326")


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[float, float]:
    """Fractional XYZ tile coordinates of a point (the slippy-map formula)."""
    n = 1 << z
    lat = max(-85.05112878, min(85.05112878, lat))
    x = (lon + 180.0) / 360.0 * n
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return x, y


@dataclass
class _ZoneView:
    zone: Zone
    years: list[int]
    arrays: list[zarr.Array]  # level 0 … levels
    data: Window  # zone pixels that hold data (bounding box)
    data_lonlat: geom.Geometry


class CubeView:
    """A cube opened once for many renders (the web server keeps one)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.attrs = cube_attrs(url, storage_options)
        root = open_root(url, "r", storage_options)
        entries: dict[str, dict[str, Any]] | None = None
        self.zones: list[_ZoneView] = []
        for zone in cube_zones(url, storage_options):
            g = zone_group(root, zone.name, url)
            years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr]
            window = g.attrs.get("lczscale:data_window")
            if isinstance(window, list) and len(window) == 4:
                data: Window | None = Window(*(int(v) for v in window))
            else:  # no pyramid built yet: where the ledger (or the stored chunks) say
                if entries is None:
                    entries = ledger.read_all(url, storage_options)
                data = data_window(s.window for s in
                               data_sources(url, zone, years, entries, storage_options).values())
            if data is None or not years:
                continue
            arrays = []
            for k in range(pyramid_levels(g) + 1):
                arr = g[level_path(k)]
                assert isinstance(arr, zarr.Array)
                arrays.append(arr)
            extent = zone.window_geobox(data).extent.to_crs("EPSG:4326")
            self.zones.append(_ZoneView(zone, years, arrays, data, extent))
        if not self.zones:
            raise NoDataError(f"cube {url} holds no data yet: run `lczscale map` first")

    def missing_overviews(self) -> list[str]:
        """Zones whose data is larger than one tile but that have no pyramid yet."""
        return [zv.zone.name for zv in self.zones
                if len(zv.arrays) == 1 and max(zv.data.height, zv.data.width) > TILE]

    @property
    def years(self) -> list[int]:
        """Years held by any zone of the cube, ascending."""
        return sorted({y for z in self.zones for y in z.years})

    def bounds(self) -> tuple[float, float, float, float]:
        """Lon/lat box of all the data."""
        bb = [z.data_lonlat.boundingbox for z in self.zones]
        return (min(b.left for b in bb), min(b.bottom for b in bb),
                max(b.right for b in bb), max(b.top for b in bb))

    def render(self, dst: GeoBox, year: int | None = None) -> npt.NDArray[np.uint8]:
        """LCZ codes (0 = nodata) on grid ``dst`` (any CRS), nearest from every zone, zones
        combined by ``zone_choice``."""
        out = np.zeros(dst.shape, dtype=np.uint8)
        dst_ll = _clip_lonlat(dst)
        if dst_ll is None:
            return out
        warped: list[tuple[Zone, npt.NDArray[np.uint8]]] = []
        for zv in self.zones:
            got = self._warp_zone(zv, dst, dst_ll, year)
            if got is not None:
                warped.append((zv.zone, got))
        if not warped:
            return out
        if len(warped) == 1:
            return warped[0][1]
        lon = pixel_lons(dst)
        choice = zone_choice([w > 0 for _, w in warped], [owned(z, lon) for z, _ in warped])
        for k, (_, w) in enumerate(warped):
            np.copyto(out, w, where=choice == k)
        return out

    def _warp_zone(self, zv: _ZoneView, dst: GeoBox, dst_ll: geom.Geometry,
                   year: int | None) -> npt.NDArray[np.uint8] | None:
        """Zone ``zv``'s data under ``dst`` at the pyramid level just finer than ``dst``'s
        pixels, warped onto ``dst`` with nearest; None where it has none there."""
        t = _year_index(zv, year)
        if t is None:
            return None
        part = dst_ll & zv.data_lonlat
        if part.is_empty or part.area == 0:
            return None
        pb = part.boundingbox  # densified: parallels curve in the zone's projection
        step = max(pb.right - pb.left, pb.top - pb.bottom) / 32
        part_z = part.to_crs(zv.zone.crs, resolution=step or None)
        part_d = part.to_crs(dst.crs)
        frac = part_d.area / dst.extent.area if dst.extent.area else 1.0
        npx = dst.shape[0] * dst.shape[1]
        res = math.sqrt(part_z.area / max(frac * npx, 1e-9))
        k = level_for_resolution(zv.zone, len(zv.arrays) - 1, res)
        lz = level_zone(zv.zone, k)
        win = lz.bounding_window(part_z)
        if win is None:
            return None
        win = Window(win.row - 1, win.col - 1, win.height + 2, win.width + 2)
        win = win.intersection(lz.full_window)
        if win is None:
            return None
        if win.size > MAX_READ_PX:
            raise CubeError(
                f"a view of {win.height}x{win.width} px of zone {zv.zone.name} at level {k} "
                f"is too large to read for one picture; cube {self.url} has "
                f"{len(zv.arrays) - 1} overview levels: run `lczscale pyramid {self.url}`"
            )
        src = np.asarray(zv.arrays[k][t, win.row : win.row_stop, win.col : win.col_stop])
        if not src.any():
            return None
        warped = np.zeros(dst.shape, dtype=np.uint8)
        rio_reproject(src, warped, lz.window_geobox(win), dst, "nearest",
                      src_nodata=0, dst_nodata=0)
        return warped

    def tile(self, z: int, x: int, y: int, year: int | None = None) -> npt.NDArray[np.uint8]:
        """LCZ codes of XYZ tile z/x/y (256 × 256, EPSG:3857)."""
        return self.render(tile_geobox(z, x, y), year)

    def lonlat(self, bbox: tuple[float, float, float, float], shape: tuple[int, int],
               year: int | None = None) -> npt.NDArray[np.uint8]:
        """LCZ codes on a regular lon/lat grid (EPSG:4326)."""
        return self.render(lonlat_geobox(bbox, shape), year)

    def point(self, lon: float, lat: float, year: int | None = None) -> dict[str, Any]:
        """The 10 m class at a point: code, label, name, colour, zone and year (code 0 and
        no name where the cube has no data)."""
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise NoDataError(f"point ({lon}, {lat}) is not a lon/lat position")
        here = geom.point(lon, lat, "EPSG:4326")
        # zone_choice for one pixel: the owner of this longitude first, then in name order
        mine = np.array([lon])
        for zv in sorted(self.zones, key=lambda zv: not owned(zv.zone, mine)[0]):
            t = _year_index(zv, year)
            if t is None or not zv.data_lonlat.contains(here):
                continue
            px, py = here.to_crs(zv.zone.crs).coords[0]
            col, row = ~zv.zone.affine @ (px, py)
            r, c = math.floor(row), math.floor(col)
            if not (0 <= r < zv.zone.shape[0] and 0 <= c < zv.zone.shape[1]):
                continue
            code = int(zv.arrays[0][t, r, c])  # type: ignore[arg-type]
            if code:
                return describe(code) | {"lon": lon, "lat": lat, "zone": zv.zone.name,
                                         "year": zv.years[t], "row": r, "col": c}
        return describe(0) | {"lon": lon, "lat": lat}


def describe(code: int) -> dict[str, Any]:
    """Label, name and colour of a class code (0 = nodata)."""
    if not 1 <= code <= len(classes.LCZ_CODES):
        return {"code": 0, "label": None, "name": None, "color": None}
    i = code - 1
    return {"code": code, "label": classes.LCZ_LABELS[i], "name": classes.LCZ_CLASS_NAMES[i],
            "color": classes.LCZ_PALETTE[i]}


def rgba(codes: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """(h, w, 4) colours of the official palette; nodata transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for i, (r, g, b) in enumerate(classes.palette_rgb(), start=1):
        lut[i] = (r, g, b, 255)
    return lut[np.asarray(codes, dtype=np.uint8)]


def png(codes: npt.ArrayLike) -> bytes:
    """A palette PNG of class codes: index = code, palette = LCZ colours, 0 transparent.
    Indexed PNG keeps tiles small and their colours exact (no filtering, no alpha blending)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(codes, dtype=np.uint8), mode="P")
    pal = [0, 0, 0]
    for rgb in classes.palette_rgb():
        pal.extend(rgb)
    img.putpalette(pal + [0, 0, 0] * (256 - len(pal) // 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0, optimize=False)
    return buf.getvalue()


def _year_index(zv: _ZoneView, year: int | None) -> int | None:
    if year is None:
        return len(zv.years) - 1
    return zv.years.index(year) if year in zv.years else None


def _clip_lonlat(dst: GeoBox) -> geom.Geometry | None:
    """The view's footprint in lon/lat (Web-Mercator beyond ±85° has none)."""
    ext = dst.extent
    if str(dst.crs) == "EPSG:3857":
        b = ext.boundingbox
        lim = MERCATOR_HALF
        box = geom.box(max(b.left, -lim), max(b.bottom, -lim), min(b.right, lim),
                       min(b.top, lim), "EPSG:3857")
        if box.is_empty or box.area == 0:
            return None
        return box.to_crs("EPSG:4326")
    return ext.to_crs("EPSG:4326")


def check_year(view: CubeView, year: int | None) -> None:
    """Refuse a year the cube does not hold, naming the ones it does (None: any year)."""
    if year is not None and year not in view.years:
        raise CubeError(f"cube {view.url} has no year {year} (years: {view.years})")
