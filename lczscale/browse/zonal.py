"""Zonal statistics: per polygon, year and LCZ class, the area in km² and the share of the
polygon, with its nodata share and mean confidence (``lczscale zonal``, ``ds.lcz.zonal``).

How pixels are counted, so that numbers from different cubes and zones can be compared:

- on the cube's own grid, never resampled; a pixel is in a polygon when its *centre* is
  (rasterio ``all_touched=False``, as label polygons are burnt in ``io.labels``);
- a pixel's area is its area on the grid: the affine's pixel size in a projected zone (UTM
  grid area, within ~0.1 % of the ground), and in a geographic zone the exact area of each
  row's pixels on the CRS's ellipsoid (pixels in degrees shrink towards the poles);
- a zone counts only the pixels it owns, those whose centre longitude lies in its band (the
  6° band ``zones_for_aoi`` gives a zone when mapping, and the rule the stitched views use,
  ``warp.owned``), so a polygon across a zone edge is counted once, never twice;
- only the blocks (chunks) under a polygon are read, never a whole zone.

Shares are of the polygon's pixels inside the cube's zones (``polygon_km2``): the classes'
areas plus the nodata area (lcz 0: not mapped, no input, or a year the zone lacks) make it up,
so per polygon and year ``share`` summed over its classes plus ``nodata_share`` is 1.
Confidence is reported in the cube's own units: the blended probability of the chosen class
× 255 (0–255; divide by 255 for a probability), averaged by area over classified pixels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
from affine import Affine
from odc.geo import geom
from pyproj import CRS, Proj, Transformer
from rasterio.features import rasterize

from lczscale import classes
from lczscale.core.grid import UTM_LAT_MAX, UTM_LAT_MIN, Window, Zone, tiles_for_geometry
from lczscale.errors import ConfigError, NoDataError
from lczscale.io import zarr_calls
from lczscale.io.cube.store import cube_grid, cube_zones, open_root, zone_group
from lczscale.io.cube.warp import owned

COLUMNS = ["polygon", "year", "lcz", "lcz_code", "lcz_name", "area_km2", "share",
           "class_mean_confidence", "nodata_share", "mean_confidence", "polygon_km2"]
ID_COLUMNS = ("id", "ID", "Id", "fid", "FID")  # taken as the polygon id when unique
DENSIFY_M = 100.0  # vertex spacing before reprojecting: straight edges bend in another CRS
DENSIFY_DEG = 0.001
BAND_MARGIN_DEG = 0.05  # a zone's part of a polygon reaches this far past its band
DATASET_BLOCK = 2048
N = 18  # lcz 0 (nodata) and classes 1-17

# (year, window) -> (lcz, confidence or None) uint8 arrays of the window
Reader = Callable[[int, Window], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class ZoneData:
    """One grid to count on: its zone (CRS, affine, shape and the longitudes it owns), its
    years, how to read a year's window and the block side it is read in (its chunk)."""

    zone: Zone
    years: tuple[int, ...]
    read: Reader
    block: int
    confidence: bool = True  # whether ``read`` gives the confidence

    @property
    def banded(self) -> bool:
        """Whether the zone owns a longitude band only (a UTM zone), not the whole globe."""
        return tuple(self.zone.lon_band) != (-180.0, 180.0)


def cube_zone_data(url: str, storage_options: dict[str, Any] | None = None) -> list[ZoneData]:
    """Every zone of a cube, read in its tiles (one chunk each) from one opened group."""
    tile = cube_grid(url, storage_options).tile_size
    root = open_root(url, "r", storage_options)
    out = []
    for zone in cube_zones(url, storage_options):
        g = zone_group(root, zone.name, url)
        years = tuple(int(v) for v in g["time"][:])  # type: ignore[union-attr, index]
        out.append(ZoneData(zone, years, _group_reader(g["lcz"], g["confidence"], years), tile))
    return out


def _group_reader(lcz: Any, conf: Any, years: tuple[int, ...]) -> Reader:
    def read(year: int, w: Window) -> tuple[np.ndarray, np.ndarray | None]:
        sel = (years.index(year), slice(w.row, w.row_stop), slice(w.col, w.col_stop))
        return (np.asarray(zarr_calls.getitem(lcz, sel)),
                np.asarray(zarr_calls.getitem(conf, sel)))

    return read


def dataset_zone_data(ds: Any) -> ZoneData:
    """A Dataset from ``open_cube`` (one zone, maybe a bbox of it, or zones stitched onto one
    grid) as a grid to count on. A native zone owns its band (from ``lczscale:zone``); a
    stitched view has already taken every pixel from its owner, so it owns all it shows."""
    if "spatial_ref" in ds.data_vars:
        ds = ds.set_coords("spatial_ref")
    box = ds.odc.geobox if "lcz" in ds.data_vars else None
    if box is None:
        raise ConfigError("zonal needs a georeferenced Dataset with an 'lcz' variable, as "
                          "lczscale.open_cube returns (or xr.open_zarr(..., decode_coords='all'))")
    crs = CRS.from_user_input(box.crs)
    name = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt()
    band = (-180.0, 180.0)
    info = ds.attrs.get("lczscale:zone")
    if isinstance(info, dict) and "lczscale:stitched_zones" not in ds.attrs:
        band = (float(info["lon_band"][0]), float(info["lon_band"][1]))
    zone = Zone(str(info["name"]) if isinstance(info, dict) else "dataset", name,
                tuple(box.affine)[:6], tuple(box.shape), band)  # type: ignore[arg-type]
    _check_area_scale(zone)
    if "time" in ds.dims:
        years = tuple(int(v) for v in ds["time"].values)
    elif "time" in ds.coords:
        years = (int(ds["time"].values),)
    else:
        raise ConfigError("zonal needs the Dataset's 'time' (years) coordinate; select years "
                          "with ds.sel(time=[...]) rather than dropping it")

    def read(year: int, w: Window) -> tuple[np.ndarray, np.ndarray | None]:
        sel = {"y": slice(w.row, w.row_stop), "x": slice(w.col, w.col_stop)}
        if "time" in ds.dims:
            sel["time"] = years.index(year)  # type: ignore[assignment]
        lcz = np.asarray(ds["lcz"].isel(sel).transpose("y", "x").values)
        conf = (np.asarray(ds["confidence"].isel(sel).transpose("y", "x").values)
                if "confidence" in ds.data_vars else None)
        return lcz, conf

    return ZoneData(zone, years, read, DATASET_BLOCK, "confidence" in ds.data_vars)


def _check_area_scale(zone: Zone) -> None:
    """Refuse a projected grid whose pixels' ground area is far from their grid area (Web
    Mercator's are 2× at 45°): areas count on the grid, which is right for UTM zones (within
    ~0.2 %) and equal-area CRSs, not for those."""
    crs = CRS.from_user_input(zone.crs)
    if crs.is_geographic:
        return
    h, w = zone.shape
    r, c = np.meshgrid([0.5, h / 2, h - 0.5], [0.5, w / 2, w - 0.5])
    a = zone.affine
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        a.c + a.a * c, a.f + a.e * r)
    ground = 1 / np.asarray(Proj(crs).get_factors(lon, lat).areal_scale)  # per grid m²
    worst = float(ground.flat[np.argmax(np.abs(ground - 1))])
    if abs(worst - 1) > 0.01:
        raise ConfigError(f"a pixel of this {crs.name} grid covers {worst:.2f}× its grid area "
                          "on the ground, so zonal areas "
                          "would be wrong; count on the cube's own zones "
                          "(open_cube(..., zone=...)), EPSG:4326 or an equal-area CRS")


# -- polygons ----------------------------------------------------------------------------


def polygon_ids(gdf: Any, id_field: str | None) -> list[Any]:
    """The polygons' ids: ``id_field``'s values, else a unique id-like column, else the row
    index; ConfigError for a missing field or repeated ids (rows would merge)."""
    if id_field is not None:
        if id_field not in gdf.columns:
            cols = [c for c in gdf.columns if c != gdf.geometry.name]
            raise ConfigError(f"the polygons have no field {id_field!r} (fields: {cols}); give "
                              "--id-field one of those, or leave it out to number the rows")
        ids = list(gdf[id_field])
        if len(set(ids)) != len(ids):
            raise ConfigError(f"field {id_field!r} repeats ids, so rows of different polygons "
                              "would merge; give --id-field a field with a unique value per "
                              "polygon, or leave it out to number the rows")
        return ids
    for name in ID_COLUMNS:
        if name in gdf.columns and gdf[name].is_unique and gdf[name].notna().all():
            return list(gdf[name])
    return list(gdf.index)


def _polygonal(g: Any, where: str) -> Any:
    """The polygons of a geometry (invalid rings repaired); None for an empty one."""
    if g is None or g.is_empty:
        return None
    if not g.is_valid:
        g = shapely.make_valid(g)
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        raise ConfigError(f"{where} is a {g.geom_type}, not a polygon; zonal statistics "
                          "need areas (Polygon or MultiPolygon)")
    return shapely.unary_union(parts)


def _to_crs(g: Any, src: CRS, dst: CRS) -> Any:
    """``g`` densified in its own CRS (its edges are straight there) and reprojected."""
    if src.equals(dst):
        return g
    step = DENSIFY_DEG if src.is_geographic else DENSIFY_M / _unit_metres(src)
    tr = Transformer.from_crs(src, dst, always_xy=True)
    out = shapely.transform(shapely.segmentize(g, step),
                            lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    if not np.isfinite(shapely.bounds(out)).all():
        raise ConfigError(f"a polygon does not project into {dst.name}: is the polygons' CRS "
                          f"({src.name}) the one their coordinates are in?")
    return out


def _unit_metres(crs: CRS) -> float:
    return float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0


def _zone_part(g: Any, lonlat: Any, src: CRS, zd: ZoneData) -> Any:
    """The part of a polygon (``g`` in ``src``, ``lonlat`` in lon/lat) a zone may own, in the
    zone's CRS: for a banded zone the polygon cut to the band (plus a margin: ownership is
    decided per pixel centre) within the UTM latitudes; else the whole polygon."""
    zcrs = CRS.from_user_input(zd.zone.crs)
    if not zd.banded:
        return _to_crs(g, src, zcrs)
    lo, hi = zd.zone.lon_band
    bot, top = (UTM_LAT_MIN, UTM_LAT_MAX) if not zcrs.is_geographic else (-90.0, 90.0)
    part = shapely.clip_by_rect(lonlat, lo - BAND_MARGIN_DEG, bot, hi + BAND_MARGIN_DEG, top)
    if part.is_empty:
        return part
    return _to_crs(shapely.segmentize(part, DENSIFY_DEG), CRS.from_epsg(4326), zcrs)


# -- counting ----------------------------------------------------------------------------


def zonal_table(gdf: Any, zones: Sequence[ZoneData], year: int | Sequence[int] | None = None,
                id_field: str | None = None) -> pd.DataFrame:
    """The zonal statistics of a GeoDataFrame's polygons (any CRS) on ``zones``: one row per
    polygon, year and class present (columns ``COLUMNS``; see the module's docstring); a
    polygon-year with no classified pixel gets one row of lcz 0 with area and share 0."""
    years = _years(zones, year)
    if gdf.crs is None:
        raise ConfigError("the polygons have no CRS; set it (gdf.set_crs('EPSG:4326')) or "
                          "write the file with one")
    if len(gdf) == 0:
        raise ConfigError("there are no polygons to count (the table or file is empty)")
    src = CRS.from_user_input(gdf.crs)
    ids = polygon_ids(gdf, id_field)
    shapes = [_polygonal(g, f"polygon {i!r}") for i, g in zip(ids, gdf.geometry, strict=True)]
    lonlat = [None if g is None else _lonlat(g, src, i) for i, g in zip(ids, shapes, strict=True)]
    area = np.zeros((len(shapes), len(years), N))  # m²
    conf = np.zeros_like(area)  # confidence × m²
    for zd in zones:
        _count_zone(zd, shapes, lonlat, src, years, area, conf)
    if not area.any():
        names = sorted(z.zone.name for z in zones)
        raise NoDataError(f"no polygon overlaps the cube's zones {names}: are the polygons in "
                          f"the cube's region, and is their CRS ({src.name}) right?")
    if not all(z.confidence for z in zones):
        conf[:] = np.nan
    return _rows(ids, years, area, conf)


def _lonlat(g: Any, src: CRS, pid: Any) -> Any:
    """The polygon in lon/lat; ConfigError when it jumps across the antimeridian."""
    out = _to_crs(g, src, CRS.from_epsg(4326))
    if any(p.bounds[2] - p.bounds[0] > 180 for p in shapely.get_parts(out)):
        raise ConfigError(f"polygon {pid!r} spans more than 180° of longitude: it probably "
                          "crosses the antimeridian without being split; split it at ±180° "
                          "(RFC 7946 §3.1.9)")
    return out


def _years(zones: Sequence[ZoneData], year: int | Sequence[int] | None) -> list[int]:
    have = sorted({y for z in zones for y in z.years})
    if year is None:
        return have
    want = [int(year)] if isinstance(year, int | np.integer) else [int(y) for y in year]
    missing = [y for y in want if y not in have]
    if missing:
        raise NoDataError(f"the cube has no year {missing[0]} (years: {have}); ask for one of "
                          "those (--year), or for none to count every year")
    return list(dict.fromkeys(want))


def _count_zone(zd: ZoneData, shapes: Sequence[Any], lonlat: Sequence[Any], src: CRS,
                years: list[int], area: np.ndarray, conf: np.ndarray) -> None:
    """Add the pixels ``zd`` owns under each polygon to ``area`` and ``conf``, block by
    block, each block read once per year whatever number of polygons it holds."""
    zone = zd.zone
    pad = 2 * max(abs(zone.affine.a), abs(zone.affine.e))
    blocks: dict[Window, list[tuple[int, Any]]] = defaultdict(list)
    for i, s in enumerate(shapes):
        part = None if s is None else _zone_part(s, lonlat[i], src, zd)
        if part is None or part.is_empty:
            continue
        near = geom.Geometry(part.buffer(pad), zone.crs)
        for block in tiles_for_geometry(zone, near, zd.block):
            blocks[block].append((i, part))
    for block, members in sorted(blocks.items()):
        held: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        mine: list[np.ndarray | None] = []  # the block's ownership mask, made on first need
        pixel = _pixel_area(zone, block)
        for i, part in members:
            hit = _burn(part, zone, block)
            if hit is None:
                continue
            sub, inside = hit
            sl = sub.relative_to(block)
            if not mine:
                mine.append(_owned_mask(zd, block))
            if mine[0] is not None:
                inside &= mine[0][sl]
            if not inside.any():
                continue
            px = pixel if np.ndim(pixel) == 0 else np.broadcast_to(
                pixel[sl[0], None], inside.shape)[inside]
            for k, year in enumerate(years):
                if year not in zd.years:  # the zone was never made for that year: nodata
                    area[i, k, 0] += _weigh(np.zeros(int(inside.sum()), np.uint8), px)
                    continue
                if year not in held:
                    held[year] = zd.read(year, block)
                lcz, c = held[year]
                codes = lcz[sl][inside]
                area[i, k] += _weigh(codes, px)
                if c is not None:
                    conf[i, k] += _weigh(codes, px * c[sl][inside].astype(np.float64))


def _weigh(codes: np.ndarray, px: Any) -> np.ndarray:
    """The sum of ``px`` (m² per pixel: one number, or one per pixel) for each code 0-17."""
    if np.ndim(px) == 0:  # one pixel size: exact counts × area
        return np.bincount(codes, minlength=N)[:N] * float(px)
    return np.bincount(codes, weights=px, minlength=N)[:N]


def _burn(part: Any, zone: Zone, block: Window) -> tuple[Window, np.ndarray] | None:
    """The polygon's pixel-centre mask on the smallest window of ``block`` it covers."""
    inv = ~zone.affine
    x0, y0, x1, y1 = part.bounds
    cols, rows = zip(*(inv @ (x, y) for x in (x0, x1) for y in (y0, y1)), strict=True)
    r0, c0 = math.floor(min(rows)), math.floor(min(cols))
    box = Window(r0, c0, math.ceil(max(rows)) - r0 + 1, math.ceil(max(cols)) - c0 + 1)
    sub = box.intersection(block)
    if sub is None:
        return None
    a = zone.window_geobox(sub).affine
    gx = [a.c + a.a * v for v in (-1, sub.width + 1)]
    gy = [a.f + a.e * v for v in (-1, sub.height + 1)]
    clipped = shapely.clip_by_rect(part, min(gx), min(gy), max(gx), max(gy))
    if clipped.is_empty:
        return None
    mask = rasterize([(clipped, 1)], out_shape=(sub.height, sub.width), transform=a, fill=0,
                     all_touched=False, dtype="uint8").astype(bool)
    return sub, mask


def _owned_mask(zd: ZoneData, block: Window) -> np.ndarray | None:
    """Where the block's pixel centres lie in the zone's band; None when all do (or the zone
    owns every longitude)."""
    if not zd.banded:
        return None
    lo, hi = zd.zone.lon_band
    t = np.linspace(0.0, 1.0, 9)  # the block's outline: its edges bend a little in lon/lat
    rows = np.concatenate([t * block.height, t * 0, t * block.height, t * 0 + block.height])
    cols = np.concatenate([t * 0, t * block.width, t * 0 + block.width, t * block.width])
    a = zd.zone.window_geobox(block).affine
    x, y = a.c + a.a * cols + a.b * rows, a.f + a.d * cols + a.e * rows
    lon, _ = Transformer.from_crs(zd.zone.crs, "EPSG:4326", always_xy=True).transform(x, y)
    if np.min(lon) >= lo + 0.01 and np.max(lon) < hi - 0.01:  # well inside: no pixel to test
        return None
    lon, _ = zd.zone.lonlat(block)
    return np.asarray(owned(zd.zone, lon))


def _pixel_area(zone: Zone, block: Window) -> Any:
    """m² of a pixel: one number in a projected zone, one per row ((h,) array) in a
    geographic one (the ellipsoidal area between the row's edges)."""
    a: Affine = zone.affine
    crs = CRS.from_user_input(zone.crs)
    if not crs.is_geographic:
        return abs(a.a * a.e) * _unit_metres(crs) ** 2
    edges = np.clip(a.f + a.e * np.arange(block.row, block.row_stop + 1), -90.0, 90.0)
    ell = crs.ellipsoid
    assert ell is not None
    q = _authalic(np.radians(edges), ell.semi_major_metre, 1 / ell.inverse_flattening)
    area: np.ndarray = np.abs(np.diff(q)) * math.radians(abs(a.a))
    return area


def _authalic(lat: np.ndarray, a: float, f: float) -> np.ndarray:
    """Area on the ellipsoid between the equator and ``lat`` (radians), per radian of
    longitude (the closed form of the ellipsoidal zone)."""
    e2 = f * (2 - f)
    e = math.sqrt(e2)
    s = np.sin(lat)
    out: np.ndarray = a * a * (1 - e2) * (
        s / (2 * (1 - e2 * s * s)) + np.log((1 + e * s) / (1 - e * s)) / (4 * e))
    return out


def _rows(ids: Sequence[Any], years: list[int], area: np.ndarray,
          conf: np.ndarray) -> pd.DataFrame:
    rows = []
    labels = ["nodata", *classes.LCZ_LABELS]
    names = ["nodata", *classes.LCZ_CLASS_NAMES]
    for i, pid in enumerate(ids):
        for k, year in enumerate(years):
            total = area[i, k].sum()
            if total == 0:
                continue
            valid = area[i, k, 1:].sum()
            common = {"nodata_share": area[i, k, 0] / total, "polygon_km2": total / 1e6,
                      "mean_confidence": conf[i, k, 1:].sum() / valid if valid else math.nan}
            present = [c for c in range(1, N) if area[i, k, c] > 0] or [0]
            for c in present:
                rows.append({
                    "polygon": pid, "year": year, "lcz": c, "lcz_code": labels[c],
                    "lcz_name": names[c], "area_km2": area[i, k, c] / 1e6 if c else 0.0,
                    "share": area[i, k, c] / total if c else 0.0,
                    "class_mean_confidence": conf[i, k, c] / area[i, k, c] if c else math.nan,
                    **common,
                })
    return pd.DataFrame(rows, columns=COLUMNS)


# -- files -------------------------------------------------------------------------------

POLYGON_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".geoparquet")
TABLE_SUFFIXES = (".csv", ".parquet")


def zonal_stats(cube: str, polygons: Any, year: int | Sequence[int] | None = None,
                id_field: str | None = None,
                storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The zonal statistics of ``polygons`` (a GeoDataFrame or a GeoJSON, GeoPackage or
    GeoParquet file) on every zone of the cube at ``cube`` (see ``zonal_table``)."""
    gdf = polygons if hasattr(polygons, "geometry") else read_polygons(str(polygons))
    return zonal_table(gdf, cube_zone_data(cube, storage_options), year, id_field)


def read_polygons(path: str) -> Any:
    """A GeoJSON, GeoPackage or GeoParquet file as a GeoDataFrame; ConfigError naming the
    file and what to give instead when it is none of those or cannot be read."""
    import geopandas as gpd

    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in POLYGON_SUFFIXES:
        raise ConfigError(f"--polygons {path} is not a GeoJSON (.geojson), GeoPackage (.gpkg) "
                          "or GeoParquet (.parquet) file; convert it (e.g. with ogr2ogr)")
    try:
        if suffix in (".parquet", ".geoparquet"):
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except Exception as exc:  # pyogrio and pyarrow raise their own errors; all mean unreadable
        why = " ".join(str(exc).split())[:200]
        raise ConfigError(f"cannot read polygons from {path} ({why}); give a valid "
                          f"{suffix[1:]} file with polygon geometries") from None


def check_table_path(out: str) -> str:
    """The format of ``--out`` (``csv`` or ``parquet``) from its suffix; ConfigError else."""
    suffix = "." + out.rsplit(".", 1)[-1].lower() if "." in out else ""
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"--out {out} must end in .csv or .parquet (the table's format); "
                          f"e.g. --out {out.rsplit('.', 1)[0] if suffix else out}.csv")
    return suffix[1:]


def write_table(df: pd.DataFrame, out: str) -> str:
    """Write the table as CSV or Parquet, by ``out``'s suffix; returns ``out``."""
    if check_table_path(out) == "csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    return out
