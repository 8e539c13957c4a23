"""The synthetic world's LCZ labels written in every real label format the readers accept.

Each writer mirrors a real file byte-layout (names, dtypes, attributes, orientation), so the
tests of ``lczscale.io.labels.reader`` exercise the same code paths as real data:

- ``coarse/{city}_*.tif``: the city's 100 m map (``synth.coarse_labels``, mode of the 10 m truth)
  as the global map (uint8, palette, nodata 0), as a GeoClimate raster (int16, 101–107 for
  A–G), as float32 with nodata −1 and with NaN, as int32 with nodata −999 in 1-row strips (the
  layout of w2w's ``lcz_zaragoza.tif``), as an LCZ Generator 3-band int16 raster (``lcz``,
  ``lczFilter``, ``classProbability``, like lczexplore's ``rasterMD.tif``), and as a projected
  copy on a 100 m grid in the city's UTM zone;
- ``so2sat/training.h5`` + ``training_geo.h5``: 32×32 patches of the 10 m truth with the
  majority class one-hot, their world-file transforms and EPSG in So2Sat's convention (327NN
  with a 10 000 km false northing south of the equator);
- ``polygons/{city}_rsu_lcz.geojson`` (GeoClimate layout: compact JSON, ``crs`` member,
  ``LCZ_PRIMARY`` in 1–10 / 101–107), ``polygons/{city}_training_areas.kml`` (LCZ Generator
  style: one Folder per class, lon/lat Placemark Polygons) and ``.kmz`` (the same zipped, with
  the class also in ``ExtendedData``): homogeneous areas of the truth, traced along pixel edges
  so that burning them back reproduces the truth exactly.

The LCZ Generator template's exact folder names are not documented here [UNCONFIRMED]; the
folders are named "LCZ 1" … "LCZ 10", "LCZ A" … "LCZ G", which the reader parses like the other
usual spellings.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import h5py
import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.features import shapes
from rasterio.warp import reproject, transform_bounds

from lczscale.classes import LCZ_CLASS_NAMES, LCZ_LABELS
from lczscale.synth.cities import SynthCity, _rng
from lczscale.synth.global_lcz_map import (
    LCZ_COARSE_RES,
    _coarse_transform,
    _colormap,
    _write_lcz_tif,
    coarse_labels,
)

U8 = npt.NDArray[np.uint8]
PATCH = 32  # So2Sat patch side, pixels of 10 m
PATCH_KEEP = 0.75  # share of the truth's 32×32 blocks written as So2Sat patches
MIN_AREA_PX = 64  # smallest homogeneous area traced as a training polygon
AREA_KEEP = 0.7  # share of those areas kept (training areas never cover the whole city)
UTM_RES = 100.0  # metres: the projected copy's pixel
_PATCHES, _AREAS = 100, 101  # random-stream purposes (disjoint from synth's)


def so2sat_epsg(c: SynthCity) -> tuple[int, float]:
    """(EPSG, northing offset) So2Sat uses for a city: 326NN north, 327NN + 10 000 km south."""
    number = int(c.zone.name[3:])
    return (32700 + number, 10_000_000.0) if c.city.lat < 0 else (32600 + number, 0.0)


def write_label_formats(out: Path, world: Sequence[SynthCity], seed: int = 0) -> dict[str, Any]:
    """Write every label format for ``world`` under ``out``; returns what went where."""
    out = Path(out)
    for sub in ("coarse", "so2sat", "polygons"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"coarse": {}, "polygons": {}}
    for c in world:
        summary["coarse"][c.city.name] = write_coarse_variants(out / "coarse", c)
        summary["polygons"][c.city.name] = write_training_areas(out / "polygons", c, seed)
    summary["so2sat"] = write_so2sat(out / "so2sat", world, seed)
    return summary


# --------------------------------------------------------------------------------------------
# The coarse map in other encodings


def _profile(data: np.ndarray, transform: Affine, crs: str, **kw: Any) -> dict[str, Any]:
    return {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2],
            "count": 1 if data.ndim == 2 else data.shape[0], "dtype": data.dtype.name,
            "crs": crs, "transform": transform} | kw


def _write(path: Path, data: np.ndarray, profile: dict[str, Any],
           descriptions: Sequence[str] = (), tags: dict[str, str] | None = None) -> Path:
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data if data.ndim == 3 else data[None])
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


def write_coarse_variants(d: Path, c: SynthCity) -> dict[str, str]:
    """The city's 100 m map in each raster encoding (see the module docstring)."""
    data, r0, c0 = coarse_labels(c)
    t = _coarse_transform(r0, c0)
    name = c.city.name
    paths: dict[str, Path] = {}
    paths["global"] = d / f"{name}_global.tif"
    _write_lcz_tif(paths["global"], data, r0, c0)

    geo = np.where(data >= 11, data.astype(np.int16) + 90, data.astype(np.int16))
    paths["geoclimate"] = _write(
        d / f"{name}_geoclimate.tif", geo,
        _profile(geo, t, "EPSG:4326", tiled=True, blockxsize=256, blockysize=256,
                 compress="lzw"),
        ["LCZ_PRIMARY"],
    )
    for key, fill in (("float_m1", -1.0), ("float_nan", math.nan)):
        f = np.where(data > 0, data.astype(np.float32), np.float32(fill)).astype(np.float32)
        paths[key] = _write(d / f"{name}_{key}.tif", f,
                            _profile(f, t, "EPSG:4326", nodata=fill, compress="deflate"))

    i32 = np.where(data > 0, data.astype(np.int32), np.int32(-999)).astype(np.int32)
    paths["int32"] = _write(  # w2w's lcz_zaragoza.tif: striped rows, no compression
        d / f"{name}_int32.tif", i32,
        _profile(i32, t, "EPSG:4326", nodata=-999, tiled=False, blockysize=1,
                 interleave="band"),
        tags={"grid_mapping": "spatial_ref", "AREA_OR_POINT": "Area"},
    )
    gen = _generator_bands(c, data, r0, c0)
    paths["generator"] = _write(  # lczexplore's rasterMD.tif layout
        d / f"{name}_generator.tif", gen,
        _profile(gen, t, "EPSG:4326", tiled=True, blockxsize=256, blockysize=256,
                 compress="lzw", interleave="pixel"),
        ["lcz", "lczFilter", "classProbability"],
    )
    paths["utm"] = _write_utm_copy(d / f"{name}_utm.tif", c, data, t)
    return {k: str(p) for k, p in paths.items()}


def _cells(c: SynthCity, r0: int, c0: int, shape: tuple[int, int]) -> np.ndarray:
    """Index of the coarse cell holding each 10 m truth pixel's centre (−1 outside)."""
    lon, lat = c.zone.lonlat(c.window)
    col = np.floor((lon + 180.0) / LCZ_COARSE_RES).astype(np.int64) - c0
    row = np.floor((90.0 - lat) / LCZ_COARSE_RES).astype(np.int64) - r0
    inside = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
    return np.where(inside, row * shape[1] + col, -1)


def _generator_bands(c: SynthCity, filt: U8, r0: int, c0: int) -> np.ndarray:
    """(3, h, w) int16: ``lcz`` (the truth sampled at cell centres, unfiltered), ``lczFilter``
    (the mode map) and ``classProbability`` (% of 10 m pixels agreeing with the mode)."""
    h, w = filt.shape
    raw = np.zeros((h, w), dtype=np.uint8)
    reproject(
        c.truth, raw, src_transform=c.zone.window_geobox(c.window).affine, src_crs=c.zone.crs,
        src_nodata=0, dst_transform=_coarse_transform(r0, c0), dst_crs="EPSG:4326",
        dst_nodata=0, resampling=Resampling.nearest,
    )
    cell = _cells(c, r0, c0, (h, w)).ravel()
    ok = cell >= 0
    total = np.bincount(cell[ok], minlength=h * w)
    agree = np.bincount(cell[ok], weights=(c.truth.ravel() == filt.ravel()[np.maximum(cell, 0)])
                        [ok], minlength=h * w)
    prob = np.where(total > 0, np.rint(100 * agree / np.maximum(total, 1)), 0).reshape(h, w)
    prob[filt == 0] = 0
    raw[filt == 0] = 0
    return np.stack([raw, filt, prob]).astype(np.int16)


def _write_utm_copy(path: Path, c: SynthCity, data: U8, t: Affine) -> Path:
    """The 100 m map warped (nearest) onto a 100 m grid in the zone CRS, on the zone lattice."""
    a = c.zone.affine
    h, w = data.shape
    left, bottom, right, top = transform_bounds(
        "EPSG:4326", c.zone.crs, t.c, t.f + h * t.e, t.c + w * t.a, t.f
    )
    x0 = a.c + math.floor((left - a.c) / UTM_RES) * UTM_RES
    y0 = a.f - math.floor((a.f - top) / UTM_RES) * UTM_RES
    width = math.ceil((right - x0) / UTM_RES)
    height = math.ceil((y0 - bottom) / UTM_RES)
    ut = Affine(UTM_RES, 0.0, x0, 0.0, -UTM_RES, y0)
    dst = np.zeros((height, width), dtype=np.uint8)
    reproject(data, dst, src_transform=t, src_crs="EPSG:4326", src_nodata=0, dst_transform=ut,
              dst_crs=c.zone.crs, dst_nodata=0, resampling=Resampling.nearest)
    _write(path, dst, _profile(dst, ut, c.zone.crs, nodata=0, tiled=True, blockxsize=256,
                               blockysize=256, compress="deflate"), ["LCZ_Filter"])
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, _colormap())
    return path


# --------------------------------------------------------------------------------------------
# So2Sat LCZ42


def so2sat_patches(c: SynthCity, seed: int) -> list[tuple[int, int, int]]:
    """(row, col, class) of the city's So2Sat patches: window-relative 32×32 blocks (a random
    ``PATCH_KEEP`` of them), each labelled with its majority class (ties → lower code)."""
    rng = _rng(seed, c.site, _PATCHES)
    out = []
    h, w = c.truth.shape
    for r in range(0, h - PATCH + 1, PATCH):
        for q in range(0, w - PATCH + 1, PATCH):
            keep = rng.random() < PATCH_KEEP
            block = c.truth[r : r + PATCH, q : q + PATCH]
            counts = np.bincount(block.ravel(), minlength=18)
            counts[0] = 0
            if keep and counts.any():
                out.append((r, q, int(counts.argmax())))
    return out


def write_so2sat(d: Path, world: Sequence[SynthCity], seed: int) -> dict[str, Any]:
    """``training.h5`` and ``training_geo.h5`` for all cities, in So2Sat's layout."""
    rows: list[tuple[SynthCity, int, int, int]] = [
        (c, r, q, k) for c in world for r, q, k in so2sat_patches(c, seed)
    ]
    n = len(rows)
    label = np.zeros((n, 17), dtype=np.float64)
    tfw = np.zeros((n, 6), dtype=np.float64)
    coord = np.zeros((n, 6), dtype=np.float64)
    epsg = np.zeros((n, 1), dtype=np.int64)
    city = np.array([c.city.name.encode() for c, *_ in rows], dtype="S")
    for i, (c, r, q, k) in enumerate(rows):
        code, dy = so2sat_epsg(c)
        a = c.zone.affine
        x0 = a.c + (c.window.col + q) * a.a
        y0 = a.f + (c.window.row + r) * a.e + dy
        label[i, k - 1] = 1.0
        tfw[i] = [a.a, 0.0, 0.0, a.e, x0, y0]  # world-file order A, D, B, E, C, F
        half = PATCH / 2
        coord[i] = [x0 + half * a.a, y0 + half * a.e, r + half, q + half, r + half, q + half]
        epsg[i, 0] = code
    h5, geo = d / "training.h5", d / "training_geo.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("sen1", shape=(n, PATCH, PATCH, 8), dtype="<f8")  # zeros (fill value)
        f.create_dataset("sen2", shape=(n, PATCH, PATCH, 10), dtype="<f8")
        f.create_dataset("label", data=label)
    with h5py.File(geo, "w") as f:
        f.create_dataset("coord", data=coord)
        f.create_dataset("epsg", data=epsg)
        f.create_dataset("tfw", data=tfw)
        f.create_dataset("city", data=city)
    patches: dict[str, list[list[int]]] = {}
    for c, r, q, k in rows:
        patches.setdefault(c.city.name, []).append([r, q, k])
    return {"h5": str(h5), "geo": str(geo), "patches": patches}


# --------------------------------------------------------------------------------------------
# Training-area polygons


def training_areas(c: SynthCity, seed: int) -> list[tuple[shapely.Polygon, int]]:
    """Homogeneous areas of the truth (4-connected, ≥ ``MIN_AREA_PX``), a random ``AREA_KEEP``
    of them, as (polygon in the zone CRS along pixel edges, class)."""
    rng = _rng(seed, c.site, _AREAS)
    transform = c.zone.window_geobox(c.window).affine
    out = []
    for geom, value in shapes(c.truth, mask=c.truth > 0, transform=transform):
        poly = shapely.geometry.shape(geom)
        keep = rng.random() < AREA_KEEP
        if keep and poly.area >= MIN_AREA_PX * abs(transform.a * transform.e):
            out.append((poly, int(value)))
    return out


def _geoclimate(code: int) -> int:
    return code + 90 if code >= 11 else code


def write_training_areas(d: Path, c: SynthCity, seed: int) -> dict[str, Any]:
    """Write a city's LCZ Generator-style training areas (GeoJSON, KML, KMZ)."""
    areas = training_areas(c, seed)
    name = c.city.name
    code, dy = so2sat_epsg(c)  # GeoClimate, like So2Sat, uses 327NN south of the equator
    features = []
    for i, (poly, k) in enumerate(areas, start=1):
        moved = shapely.transform(poly, lambda xy: xy + np.array([0.0, dy]))
        features.append({
            "type": "Feature",
            "geometry": shapely.geometry.mapping(moved),
            "properties": {
                "ID_RSU": i, "LCZ_PRIMARY": _geoclimate(k),
                "LCZ_SECONDARY": _geoclimate(k % 17 + 1), "MIN_DISTANCE": 0.5,
                "LCZ_UNIQUENESS_VALUE": 1.0, "LCZ_EQUALITY_VALUE": 0.0,
            },
        })
    doc = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}"}},
           "features": features}
    gj = d / f"{name}_rsu_lcz.geojson"
    gj.write_text(json.dumps(doc, separators=(",", ":")))
    tr = Transformer.from_crs(c.zone.crs, "EPSG:4326", always_xy=True)
    lonlat = [(shapely.transform(p, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))),
               k) for p, k in areas]
    kml = d / f"{name}_training_areas.kml"
    kml.write_text(_kml(name, lonlat, extended=False))
    kmz = d / f"{name}_training_areas.kmz"
    with zipfile.ZipFile(kmz, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("doc.kml", _kml(name, lonlat, extended=True))
    pixels = int(sum(round(p.area / 100.0) for p, _ in areas))
    return {"geojson": str(gj), "kml": str(kml), "kmz": str(kmz), "polygons": len(areas),
            "pixels": pixels}


def _coords(ring: Any) -> str:
    return " ".join(f"{x!r},{y!r},0" for x, y in ring.coords)


def _placemark(i: int, poly: shapely.Polygon, k: int, extended: bool) -> str:
    inner = "".join(
        f"<innerBoundaryIs><LinearRing><coordinates>{_coords(r)}</coordinates></LinearRing>"
        "</innerBoundaryIs>" for r in poly.interiors
    )
    ext = (f'<ExtendedData><SchemaData schemaUrl="#ta"><SimpleData name="LCZ">'
           f"{LCZ_LABELS[k - 1]}</SimpleData></SchemaData></ExtendedData>" if extended else "")
    return (
        f"<Placemark><name>TA {i}</name><styleUrl>#lcz{LCZ_LABELS[k - 1]}</styleUrl>{ext}"
        f"<Polygon><tessellate>1</tessellate><outerBoundaryIs><LinearRing><coordinates>"
        f"{_coords(poly.exterior)}</coordinates></LinearRing></outerBoundaryIs>{inner}</Polygon>"
        "</Placemark>"
    )


def _kml(city: str, areas: Sequence[tuple[shapely.Polygon, int]], extended: bool) -> str:
    folders = []
    for k in range(1, 18):
        marks = "".join(_placemark(i, p, kk, extended)
                        for i, (p, kk) in enumerate(areas, start=1) if kk == k)
        folders.append(
            f"<Folder><name>LCZ {LCZ_LABELS[k - 1]}</name>"
            f"<description>{escape(LCZ_CLASS_NAMES[k - 1])}</description>{marks}</Folder>"
        )
    schema = ('<Schema name="ta" id="ta"><SimpleField name="LCZ" type="string"/></Schema>'
              if extended else "")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<kml xmlns="http://www.opengis.net/kml/2.2"><Document>'
        f"<name>{escape(city)} training areas</name>{schema}{''.join(folders)}"
        "</Document></kml>\n"
    )
