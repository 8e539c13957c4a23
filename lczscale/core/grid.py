"""Pure geometry: zones, windows, tiles and AOIs (odc-geo + numpy, no I/O).

The cube is a set of *zones*, each one CRS + affine + shape fixed for all time, so that a pixel's
position in its zone never depends on the AOI, the tile size or the data that happened to exist
when a run started. Default zones follow the TESSERA Zarr convention: one group per UTM zone
(``utm01`` … ``utm60``) at 10 m, in the *northern* EPSG (326NN) for both hemispheres, so southern
pixels simply have negative northings and the axis is continuous across the equator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from affine import Affine
from odc.geo import geom
from odc.geo.geobox import GeoBox, GeoboxTiles
from pyproj import Transformer

from lczscale.errors import ConfigError


class GridSpec(Protocol):
    """What the core needs to know of a grid: its zone lattice and its tile size.

    ``lczscale.config.GridSpec`` (validated YAML) is one; the core takes any object with
    these attributes, so it needs neither pydantic nor the configuration layer.
    """

    @property
    def kind(self) -> str:
        """``utm`` (60 UTM zones) or ``global`` (one EPSG:4326 zone)."""
        ...

    @property
    def tile_size(self) -> int:
        """Pixels a side of one tile (one stored chunk)."""
        ...

    @property
    def resolution(self) -> float:
        """Metres per pixel of the UTM zones."""
        ...

    @property
    def global_resolution(self) -> float:
        """Degrees per pixel of the global zone."""
        ...

    @property
    def global_top(self) -> float:
        """Latitude of the global zone's top edge."""
        ...

# Canonical extent of every UTM zone (metres, zone CRS 326NN). It spans 80°S..84°N (UTM's own
# limits) and the widest easting any pixel of a 6° band can have, snapped to 10 km.
UTM_X0, UTM_X1 = 160_000.0, 840_000.0
UTM_Y_TOP, UTM_Y_BOTTOM = 9_340_000.0, -8_890_000.0
UTM_LAT_MIN, UTM_LAT_MAX = -80.0, 84.0


@dataclass(frozen=True, order=True)
class Window:
    """A rectangle of zone pixels: rows ``row:row+height``, columns ``col:col+width``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        """The first row after the window."""
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        """The first column after the window."""
        return self.col + self.width

    @property
    def size(self) -> int:
        """Pixels in the window."""
        return self.height * self.width

    def intersection(self, other: Window) -> Window | None:
        """The pixels both windows hold, or None when they do not meet."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """Slices selecting this window inside an array that holds ``outer``."""
        return (
            slice(self.row - outer.row, self.row_stop - outer.row),
            slice(self.col - outer.col, self.col_stop - outer.col),
        )


@dataclass(frozen=True)
class Zone:
    """One CRS + affine + shape; the unit a cube group and a source group share."""

    name: str
    crs: str
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    shape: tuple[int, int]  # (height, width)
    lon_band: tuple[float, float] = (-180.0, 180.0)  # longitudes this zone owns

    @property
    def affine(self) -> Affine:
        """Pixel → zone CRS coordinates of the pixel corners."""
        return Affine(*self.transform)

    @property
    def geobox(self) -> GeoBox:
        """The zone's whole pixel grid as an odc-geo GeoBox."""
        return GeoBox(self.shape, self.affine, self.crs)

    @property
    def full_window(self) -> Window:
        """The window of every pixel of the zone."""
        return Window(0, 0, self.shape[0], self.shape[1])

    def window_geobox(self, window: Window) -> GeoBox:
        """GeoBox of a window (which may extend past the zone's edge)."""
        aff = self.affine @ Affine.translation(window.col, window.row)
        return GeoBox((window.height, window.width), aff, self.crs)

    def pixel_offset(self, transform: Affine, res_tol: float = 1e-9) -> tuple[int, int]:
        """(row, col) of another grid's pixel (0, 0) in this zone; raises unless pixels align."""
        a = self.affine
        if abs(transform.a - a.a) > res_tol * abs(a.a) or abs(transform.e - a.e) > res_tol * abs(
            a.e
        ) or transform.b != 0 or transform.d != 0:
            raise ConfigError(
                f"grid {tuple(transform)[:6]} does not share zone {self.name}'s pixel size "
                f"{(a.a, a.e)}; lczscale never resamples embeddings — use a source on the "
                "zone's native grid"
            )
        col = (transform.c - a.c) / a.a
        row = (transform.f - a.f) / a.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise ConfigError(
                f"grid origin ({transform.c}, {transform.f}) is not on zone {self.name}'s pixel "
                f"lattice (offset {row:.4f}, {col:.4f} px); embeddings would need resampling"
            )
        return int(round(row)), int(round(col))

    def bounding_window(self, geometry: geom.Geometry) -> Window | None:
        """The zone pixels under a geometry's bounding box (None when outside the zone)."""
        if geometry.crs != self.crs:
            geometry = geometry.to_crs(self.crs)
        b = geometry.boundingbox
        inv = ~self.affine
        cols, rows = zip(
            *(inv @ (x, y) for x in (b.left, b.right) for y in (b.bottom, b.top)), strict=True
        )
        r0, c0 = math.floor(min(rows)), math.floor(min(cols))
        box = Window(r0, c0, math.ceil(max(rows)) - r0, math.ceil(max(cols)) - c0)
        return box.intersection(self.full_window)

    def lonlat(self, window: Window, step: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Longitude and latitude (float64, degrees) of every pixel centre of a window.

        Exact projection on a lattice of nodes every ``step`` zone pixels, bilinear in between:
        over 80 m the projection is linear to ~1e-10°, it costs 1/step² of the transforms, and
        because the nodes sit at fixed zone positions a pixel gets the same value in any window.
        """
        nodes = self.lonlat_nodes(window, step)
        return nodes.interpolate(nodes.lon), nodes.interpolate(nodes.lat)

    def lonlat_nodes(self, window: Window, step: int = 8) -> LonLatNodes:
        """The projected nodes around a window and each pixel's place between them, so that
        the per-pixel interpolation can also run elsewhere (e.g. on a GPU)."""
        a = self.affine
        rn = np.arange(window.row // step, (window.row_stop - 1) // step + 2) * step
        cn = np.arange(window.col // step, (window.col_stop - 1) // step + 2) * step
        xx, yy = np.meshgrid(a.c + a.a * (cn + 0.5), a.f + a.e * (rn + 0.5))
        if self.crs != "EPSG:4326":
            xx, yy = (np.asarray(v) for v in _to_lonlat(self.crs).transform(xx, yy))
        rows = np.arange(window.row, window.row_stop)
        cols = np.arange(window.col, window.col_stop)
        i, fy = (rows - rn[0]) // step, ((rows - rn[0]) % step / step)[:, None]
        j, fx = (cols - cn[0]) // step, ((cols - cn[0]) % step / step)[None, :]
        return LonLatNodes(xx, yy, i, fy, j, fx)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, as stored in a cube's layout attributes."""
        return {
            "name": self.name,
            "crs": self.crs,
            "transform": list(self.transform),
            "shape": list(self.shape),
            "lon_band": list(self.lon_band),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Zone:
        """The zone ``to_dict`` described."""
        return cls(
            name=d["name"],
            crs=d["crs"],
            transform=tuple(d["transform"]),
            shape=(int(d["shape"][0]), int(d["shape"][1])),
            lon_band=(float(d["lon_band"][0]), float(d["lon_band"][1])),
        )


@dataclass(frozen=True)
class LonLatNodes:
    """Projected lon/lat at nodes (rows × cols) and, per pixel row/column, the node before it
    (``i``, ``j``) and the fraction of the way to the next (``fy`` (h, 1), ``fx`` (1, w))."""

    lon: np.ndarray
    lat: np.ndarray
    i: np.ndarray
    fy: np.ndarray
    j: np.ndarray
    fx: np.ndarray

    def interpolate(self, v: np.ndarray) -> np.ndarray:
        """Bilinear values of node array ``v`` at every pixel, along columns on the node rows
        first: the same products and sums per pixel as from its four nodes, 1/step the work."""
        across = v[:, self.j] * (1 - self.fx) + v[:, self.j + 1] * self.fx
        out: np.ndarray = across[self.i] * (1 - self.fy) + across[self.i + 1] * self.fy
        return out


_TRANSFORMERS: dict[str, Transformer] = {}


def _to_lonlat(crs: str) -> Transformer:
    if crs not in _TRANSFORMERS:
        _TRANSFORMERS[crs] = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return _TRANSFORMERS[crs]


def utm_zone_number(lon: float) -> int:
    """UTM zone of a longitude, as TESSERA assigns it: floor((lon+180)/6)+1, clamped 1..60."""
    return min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))


def utm_zone(number: int, resolution: float = 10.0) -> Zone:
    """The canonical zone grid ``utmNN`` (EPSG:326NN, both hemispheres, fixed extent)."""
    if not 1 <= number <= 60:
        raise ConfigError(f"UTM zone number must be 1..60, got {number}")
    width = int(round((UTM_X1 - UTM_X0) / resolution))
    height = int(round((UTM_Y_TOP - UTM_Y_BOTTOM) / resolution))
    west = -180.0 + 6.0 * (number - 1)
    return Zone(
        name=f"utm{number:02d}",
        crs=f"EPSG:{32600 + number}",
        transform=(resolution, 0.0, UTM_X0, 0.0, -resolution, UTM_Y_TOP),
        shape=(height, width),
        lon_band=(west, west + 6.0),
    )


def global_zone(resolution: float, top: float = 90.0) -> Zone:
    """The single EPSG:4326 zone covering the globe from ``top`` down to -90°, origin -180°."""
    width = int(math.ceil(360.0 / resolution - 1e-9))
    height = int(math.ceil((top + 90.0) / resolution - 1e-9))
    return Zone(
        name="global",
        crs="EPSG:4326",
        transform=(resolution, 0.0, -180.0, 0.0, -resolution, top),
        shape=(height, width),
    )


def zone_by_name(name: str, cfg: GridSpec) -> Zone:
    """Resolve a zone group name (``utm32``, ``global``) under a grid config."""
    if name == "global":
        return global_zone(cfg.global_resolution, cfg.global_top)
    if name.startswith("utm") and name[3:].isdigit():
        return utm_zone(int(name[3:]), cfg.resolution)
    raise ConfigError(f"unknown zone name {name!r}: expected 'utm01'..'utm60' or 'global'")


# --------------------------------------------------------------------------------------------
# Areas of interest


@dataclass(frozen=True)
class Aoi:
    """An area of interest in EPSG:4326 (lon/lat)."""

    geometry: geom.Geometry

    @classmethod
    def from_bbox(cls, bbox: tuple[float, float, float, float]) -> Aoi:
        """A lon/lat box; MINLON > MAXLON means the box crosses the antimeridian (RFC 7946)."""
        minlon, minlat, maxlon, maxlat = bbox
        if not (minlon != maxlon and minlat < maxlat):
            raise ConfigError(
                f"bbox {bbox} is empty: give MINLON,MINLAT,MAXLON,MAXLAT with minlat < maxlat "
                "and minlon ≠ maxlon (MINLON > MAXLON for a box across the antimeridian)"
            )
        if minlon > maxlon and 360 - (minlon - maxlon) > 180:
            raise ConfigError(
                f"bbox {bbox} has MINLON > MAXLON, which means a box across the antimeridian "
                f"{360 - (minlon - maxlon):.0f}° wide; if you swapped the longitudes, give "
                f"{maxlon},{minlat},{minlon},{maxlat}"
            )
        if minlon > maxlon:
            east = geom.box(minlon, minlat, 180.0, maxlat, "EPSG:4326")
            west = geom.box(-180.0, minlat, maxlon, maxlat, "EPSG:4326")
            return cls(geom.unary_union([east, west]))  # type: ignore[arg-type]
        return cls(geom.box(minlon, minlat, maxlon, maxlat, "EPSG:4326"))

    @classmethod
    def from_geojson(cls, path_or_text: str) -> Aoi:
        """A GeoJSON file or string: Feature, FeatureCollection or bare geometry (lon/lat)."""
        text = path_or_text
        if not path_or_text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"AOI is not valid GeoJSON: {exc}") from exc
        if doc.get("type") == "FeatureCollection":
            geoms = [geom.Geometry(f["geometry"], "EPSG:4326") for f in doc["features"]]
            if not geoms:
                raise ConfigError("AOI FeatureCollection has no features")
            return cls(geom.unary_union(geoms)).checked()  # type: ignore[arg-type]
        if doc.get("type") == "Feature":
            doc = doc["geometry"]
        return cls(geom.Geometry(doc, "EPSG:4326")).checked()

    def checked(self) -> Aoi:
        """Refuse a polygon that jumps across the antimeridian instead of being split there."""
        b = self.geometry.boundingbox
        shape = self.geometry.geom
        parts = list(shape.geoms) if hasattr(shape, "geoms") else [shape]
        if any(p.bounds[2] - p.bounds[0] > 180 for p in parts):
            raise ConfigError(
                f"an AOI polygon spans {b.right - b.left:.1f}° of longitude: it probably crosses "
                "the antimeridian without being split; split it at ±180° (RFC 7946 §3.1.9) "
                "or give --bbox with MINLON > MAXLON"
            )
        return self

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat) of the AOI."""
        b = self.geometry.boundingbox
        return (b.left, b.bottom, b.right, b.top)


def zones_for_aoi(aoi: Aoi, cfg: GridSpec) -> list[tuple[Zone, geom.Geometry]]:
    """The zones an AOI touches, each with the part of the AOI it owns, in the zone's CRS.

    A UTM zone owns exactly its 6° longitude band, so no pixel of the AOI is mapped twice.
    """
    if cfg.kind == "global":
        zone = global_zone(cfg.global_resolution, cfg.global_top)
        return [(zone, aoi.geometry)]
    minlon, minlat, maxlon, maxlat = aoi.bbox
    if minlat < UTM_LAT_MIN or maxlat > UTM_LAT_MAX:
        raise ConfigError(
            f"AOI latitudes {minlat:.3f}..{maxlat:.3f} leave the UTM grid ({UTM_LAT_MIN}..."
            f"{UTM_LAT_MAX}); use grid.kind='global' for polar regions"
        )
    out = []
    for number in range(utm_zone_number(minlon), utm_zone_number(maxlon) + 1):
        zone = utm_zone(number, cfg.resolution)
        band = geom.box(zone.lon_band[0], minlat - 1, zone.lon_band[1], maxlat + 1, "EPSG:4326")
        part = aoi.geometry & band
        if part.is_empty or part.area == 0:
            continue
        out.append((zone, part.to_crs(zone.crs)))
    return out


def tile_window(zone: Zone, tile: tuple[int, int], tile_size: int) -> Window:
    """The core window of tile (ty, tx): one output chunk, clipped at the zone's edge."""
    ty, tx = tile
    row, col = ty * tile_size, tx * tile_size
    return Window(
        row, col, min(tile_size, zone.shape[0] - row), min(tile_size, zone.shape[1] - col)
    )


def tiles_for_geometry(zone: Zone, geometry: geom.Geometry, tile_size: int) -> Iterator[Window]:
    """Core windows of all tiles of a zone that intersect a geometry (in any CRS)."""
    tiles = GeoboxTiles(zone.geobox, (tile_size, tile_size))
    if geometry.crs != zone.crs:
        geometry = geometry.to_crs(zone.crs)
    for ty, tx in sorted(tiles.tiles(geometry)):
        yield tile_window(zone, (ty, tx), tile_size)
