"""A deterministic synthetic world written in the real on-disk formats (demo, tests, benchmarks).

``write_world`` produces, for a few real city sites:

- ``embeddings.zarr`` — a TESSERA Zarr v3 store in the ``geoemb:`` convention (one ``utmNN``
  group per zone, int8 codes + per-pixel float32 scales, NaN = water, +inf = no data yet);
- ``lcz_coarse/{city}.tif`` (+ ``lcz_coarse.tif`` or ``lcz_coarse.vrt``) — 100 m labels in the
  format of the global LCZ map (EPSG:4326, 0.000898315284120° pixels, 1..17, 0 = nodata,
  embedded palette), made the way the global map's ``LCZ_Filter`` band is: majority vote of
  the 10 m truth per cell, then a Gaussian-weighted majority filter;
- ``truth.zarr`` — the 10 m truth as an lczscale cube, to score maps against;
- ``world.json`` — what was written where.

The content is built to be *honest* (see ``synth_layout``): classes are neighbourhood mixtures
of materials, and compact/open classes share roof materials, so per-pixel shortcuts fail.
Every random draw comes from ``SeedSequence(seed, spawn_key=(site, purpose, ...))``: a city is
identical whatever other cities are generated with it.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt
import rasterio
import zarr
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from lczscale.config import CubeConfig, GridConfig
from lczscale.core.grid import Window, Zone, utm_zone, utm_zone_number
from lczscale.errors import ConfigError
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.products.counts import gaussian_mode_filter
from lczscale.synth.layout import (
    BANDS,
    MATERIALS,
    OBJECT_TABLE,
    WorldSpace,
    edge_mix,
    lcz_layout,
    render_embedding,
    render_materials,
    smooth_noise,
    year_drift,
)

__all__ = [
    "LCZ_COARSE_RES",
    "LCZ_PALETTE",
    "MATERIALS",
    "SITES",
    "City",
    "SynthCity",
    "city_window",
    "coarse_labels",
    "make_world",
    "quantise",
    "write_world",
]

BUILD_VERSION = "lczscale-synth-0.1"
LCZ_COARSE_RES = 0.000898315284120  # degrees: the Demuzere et al. (2022) global map's pixel
MAX_COARSE_PIXELS = 20_000_000
NODATA_STRIP_FRACTION = 0.03
COARSE_FILTER_SIGMA = 1.0  # cells: the global LCZ map's Gaussian post-classification filter
REFERENCE_ERROR_RATE = 0.10  # cells of the coarse reference misclassified (real map: ~0.23)
INNER_CHUNK = 32  # TESSERA's inner chunk (1, 128, 32, 32)

# The "official" palette embedded in the global LCZ GeoTIFF (Demuzere readme), classes 1..17.
LCZ_PALETTE: dict[int, str] = dict(
    enumerate(
        [
            "#910613", "#D9081C", "#FF0A22", "#C54F1E", "#FF6628", "#FF985E", "#FDED3F",
            "#BBBBBB", "#FFCBAB", "#565656", "#006A18", "#00A926", "#628432", "#B5DA7F",
            "#000000", "#FCF7B1", "#656BFA",
        ],
        start=1,
    )
)

ZARR_CONVENTIONS = [
    {
        "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
        "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
        "name": "geoemb:",
        "description": (
            "Geoembeddings convention for geospatial embedding arrays with model provenance"
        ),
    },
    {
        "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
        "name": "spatial:",
        "description": "Spatial coordinate information",
    },
    {
        "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
        "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
        "name": "proj:",
        "description": "Coordinate reference system information for geospatial data",
    },
]

ROOT_ATTRS: dict[str, Any] = {
    "zarr_conventions": ZARR_CONVENTIONS,
    "geoemb:type": "pixel",
    "geoemb:dimensions": BANDS,
    "geoemb:model": "https://geotessera.org/model/1.0",
    "geoemb:source_data": [
        "https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
        "https://sentinel.esa.int/web/sentinel/missions/sentinel-2",
    ],
    "geoemb:data_type": "int8",
    "geoemb:gsd": 10.0,
    "geoemb:spatial_layout": "utm_zones",
    "geoemb:build_version": BUILD_VERSION,
    "geoemb:quantization": {
        "method": "per_pixel_scale",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": {"type": "array", "array_name": "scales", "nodata": "+inf"},
    },
    "lczscale:synthetic": True,
    "tessera:dataset_version": "1.0",
    "tessera:dataset_variant": "synthetic",
}

# Embedding layouts ``write_world`` can write: name → "module:function". A writer is called as
# ``writer(out_dir, world, years, render, seed)`` where ``render(city, year)`` gives the float32
# (128, H, W) embedding; it returns what it wrote (paths, indexes) for ``world.json``.
LAYOUT_WRITERS: dict[str, str] = {
    "tessera-zarr": "lczscale.synth.world:_create_store",  # written inline (embeddings.zarr)
    "tessera-tiles": "lczscale.synth.tessera_tiles:write_tessera_tiles",  # tiles/
    "aef-cogs": "lczscale.synth.aef:write_aef_cogs",  # aef/ (COGs + aef_index.parquet …)
    "aef-mosaic": "lczscale.synth.aef:write_aef_mosaic",  # aef-mosaic.zarr
    # the 2026 dClimate TESSERA v1.1 build: NaN scale = not embedded, water embedded like land
    "tessera-icechunk": "lczscale.synth.dclimate:write_tessera_icechunk",  # dclimate.icechunk/
    "tessera-dclimate-zarr": "lczscale.synth.dclimate:write_tessera_plain_zarr",  # dclimate.zarr
}
LAYOUT_PRODUCTS = ("tiles", "aef", "aef-mosaic.zarr", "dclimate.icechunk", "dclimate.registry",
                   "dclimate.zarr")

# Purposes of the random streams (spawn keys); never reorder, or every world changes.
_SPACE, _LAYOUT, _MATERIALS, _MIX, _STRIP, _YEAR, _PIXELS, _REFERENCE = range(8)


@functools.cache
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


@dataclass(frozen=True)
class City:
    """A site: name and centre (degrees)."""

    name: str
    lon: float
    lat: float


SITES: tuple[City, ...] = (
    City("zurich", 8.54, 47.37),  # utm32
    City("basel", 7.59, 47.56),  # utm32, same zone as Zurich
    City("nairobi", 36.82, -1.29),  # utm37, south: negative northings
    City("london", -0.12, 51.51),  # utm30
    City("paris", 2.35, 48.86),  # utm31
    City("bogota", -74.08, 4.71),  # utm18
)


@dataclass
class SynthCity:
    """One synthetic city on its zone's canonical 10 m grid."""

    city: City
    site: int  # index in SITES; seeds depend on it, not on the list a city came in
    zone: Zone
    window: Window  # zone pixels
    truth: npt.NDArray[np.uint8]  # (H, W) LCZ 1..17
    material: npt.NDArray[np.uint8]  # (H, W) index into MATERIALS
    mix_other: npt.NDArray[np.uint8]  # (H, W) neighbouring material of edge pixels
    mix_share: npt.NDArray[np.float32]  # (H, W) its sub-pixel share; 0 = pure pixel
    objects: npt.NDArray[np.uint32]  # (H, W) building / parcel key
    water: npt.NDArray[np.bool_]  # (H, W) truth is water: scale NaN in the store
    nodata: npt.NDArray[np.bool_]  # (H, W) land without data yet: scale +inf in the store
    embeddings: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    seed: int = 0  # the world's seed: the coarse reference's errors are drawn from it

    @property
    def bbox_lonlat(self) -> tuple[float, float, float, float]:
        """(minlon, minlat, maxlon, maxlat) of the window."""
        w, a = self.window, self.zone.affine
        t = np.linspace(0.0, 1.0, 33)
        rows = np.concatenate([t, t, np.zeros_like(t), np.ones_like(t)]) * w.height + w.row
        cols = np.concatenate([np.zeros_like(t), np.ones_like(t), t, t]) * w.width + w.col
        lon, lat = _transformer(self.zone.crs, "EPSG:4326").transform(
            a.c + a.a * cols, a.f + a.e * rows
        )
        return (float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat)))

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        """Pixels whose embedding is stored (finite scale)."""
        return ~(self.water | self.nodata)


# --------------------------------------------------------------------------------------------
# Building the world in memory


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sites(cities: int, seed: int) -> tuple[City, ...]:
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if not 1 <= cities <= len(SITES):
        raise ConfigError(f"cities must be 1..{len(SITES)} (the built-in SITES), got {cities}")
    return SITES[:cities]


def _size_px(size_km: float) -> int:
    n = round(size_km * 100)
    if n < 32:
        raise ConfigError(f"size_km={size_km} gives a {n} px window; use size_km >= 0.32")
    return n


def city_window(city: City, n: int) -> tuple[Zone, Window]:
    """The city's zone and its n×n window, centred on the city, on the zone's pixel lattice."""
    zone = utm_zone(utm_zone_number(city.lon))
    x, y = _transformer("EPSG:4326", zone.crs).transform(city.lon, city.lat)
    col, row = ~zone.affine @ (x, y)
    return zone, Window(round(row - n / 2), round(col - n / 2), n, n)


def _build_city(site: int, n: int, seed: int, strip: bool) -> SynthCity:
    """Layout, materials and masks of one city (no embeddings yet)."""
    city = SITES[site]
    zone, window = city_window(city, n)
    truth = lcz_layout(n, _rng(seed, site, _LAYOUT))
    material, objects = render_materials(truth, _rng(seed, site, _MATERIALS))
    other, share = edge_mix(material, _rng(seed, site, _MIX))
    water = truth == 17
    nodata = np.zeros_like(water)
    if strip:  # a swath not processed yet: TESSERA marks such land +inf
        width = max(1, round(NODATA_STRIP_FRACTION * n))
        c0 = int(_rng(seed, site, _STRIP).integers(n // 2, n - width))
        nodata[:, c0 : c0 + width] = True
        nodata &= ~water
    return SynthCity(city, site, zone, window, truth, material, other, share, objects, water,
                     nodata, seed=seed)


def _render(c: SynthCity, seed: int, year: int, space: WorldSpace) -> npt.NDArray[np.float32]:
    """Float32 (128, H, W) embedding of a city in a year."""
    yrng = _rng(seed, 1_000_000 + year, _YEAR)  # one drift per world and year, all cities
    drift = year_drift(yrng)
    phenology = yrng.uniform(0.0, 0.35, OBJECT_TABLE).astype(np.float32)
    return render_embedding(space, c.material, c.mix_other, c.mix_share, c.objects, drift,
                            phenology, _rng(seed, c.site, _PIXELS, year))


def make_world(
    cities: int = 2, size_km: float = 4.0, seed: int = 0, years: tuple[int, ...] = (2023, 2024)
) -> list[SynthCity]:
    """The first ``cities`` SITES as in-memory SynthCities with float embeddings for ``years``.

    The first city carries the no-data strip. Memory: 512 B per pixel and year (float32 x 128).
    """
    n = _size_px(size_km)
    space = WorldSpace.make(_rng(seed, _SPACE))
    world = []
    for i, _ in enumerate(_sites(cities, seed)):
        c = _build_city(i, n, seed, strip=(i == 0))
        c.embeddings = {int(y): _render(c, seed, int(y), space) for y in years}
        world.append(c)
    return world


def quantise(
    emb: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """TESSERA-style int8 codes and per-pixel scale: scale = max|v|/127, codes = round(v/scale).

    De-quantised ``codes * scale`` is within ``scale / 2`` of ``v`` in every band.
    """
    return quantise_per_pixel(emb)


# --------------------------------------------------------------------------------------------
# TESSERA Zarr v3 store


@dataclass(frozen=True)
class _ZoneGrid:
    """A zone group's grid: the bounding window of its cities, in canonical zone pixels."""

    zone: Zone
    window: Window

    @property
    def transform(self) -> list[float]:
        a = self.zone.affine @ Affine.translation(self.window.col, self.window.row)
        return [a.a, a.b, a.c, a.d, a.e, a.f]

    @property
    def bbox(self) -> list[float]:
        t = self.transform
        return [t[2], t[5] + t[4] * self.window.height, t[2] + t[0] * self.window.width, t[5]]


def _zone_grids(world: Sequence[SynthCity]) -> dict[str, _ZoneGrid]:
    out: dict[str, _ZoneGrid] = {}
    for c in world:
        w = c.window
        if c.zone.name in out:
            o = out[c.zone.name].window
            r0, c0 = min(o.row, w.row), min(o.col, w.col)
            r1, c1 = max(o.row_stop, w.row_stop), max(o.col_stop, w.col_stop)
            w = Window(r0, c0, r1 - r0, c1 - c0)
        out[c.zone.name] = _ZoneGrid(c.zone, w)
    return dict(sorted(out.items()))


def _create_store(
    path: Path, grids: dict[str, _ZoneGrid], years: Sequence[int], shard: int,
    scales_fill: float,
) -> zarr.Group:
    if shard % INNER_CHUNK:
        raise ConfigError(f"shard_size must be a multiple of {INNER_CHUNK}, got {shard}")
    comp = BloscCodec(cname="zstd", clevel=3)
    config: ArrayConfigParams = {"write_empty_chunks": False}
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(ROOT_ATTRS)
    t = len(years)
    for name, g in grids.items():
        h, w = g.window.height, g.window.width
        grp = root.create_group(name)
        grp.attrs.update(
            {
                "zarr_conventions": ZARR_CONVENTIONS[1:],
                "proj:code": g.zone.crs,
                "spatial:dimensions": ["y", "x"],
                "spatial:transform": g.transform,
                "spatial:shape": [h, w],
                "spatial:bbox": g.bbox,
                "spatial:registration": "pixel",
            }
        )
        grp.create_array(
            "embeddings", shape=(t, BANDS, h, w), chunks=(1, BANDS, INNER_CHUNK, INNER_CHUNK),
            shards=(1, BANDS, shard, shard), dtype="int8", fill_value=0, compressors=comp,
            dimension_names=["time", "band", "y", "x"], config=config,
        )
        inner = math.gcd(shard, 256)
        grp.create_array(
            "scales", shape=(t, h, w), chunks=(1, inner, inner), shards=(1, shard, shard),
            dtype="float32", fill_value=scales_fill, compressors=comp,
            dimension_names=["time", "y", "x"], config=config,
        )
        tr = g.transform
        coords = {
            "time": np.asarray(years, dtype=np.int32),
            "band": np.arange(BANDS, dtype=np.int32),
            "x": tr[2] + (np.arange(w) + 0.5) * tr[0],
            "y": tr[5] + (np.arange(h) + 0.5) * tr[4],
        }
        for dim, values in coords.items():
            arr = grp.create_array(dim, shape=values.shape, dtype=values.dtype, fill_value=0,
                                   compressors=comp, dimension_names=[dim])
            arr[:] = values
    return root


def _write_city_year(
    root: zarr.Group, grid: _ZoneGrid, c: SynthCity, t: int, emb: npt.NDArray[np.float32]
) -> None:
    codes, scale = quantise(emb)
    invalid = ~c.valid
    codes[:, invalid] = 0
    scale[c.water] = np.nan
    scale[c.nodata] = np.inf
    (rs, cs) = c.window.relative_to(grid.window)
    grp = root[grid.zone.name]
    grp["embeddings"][t, :, rs, cs] = codes  # type: ignore[index]
    grp["scales"][t, rs, cs] = scale  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Coarse 100 m labels in the global LCZ map's format


def _coarse_grid(bbox: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(row0, col0, height, width) on the global map's lattice (origin -180, 90) covering bbox."""
    minlon, minlat, maxlon, maxlat = bbox
    c0 = math.floor((minlon + 180.0) / LCZ_COARSE_RES)
    c1 = math.ceil((maxlon + 180.0) / LCZ_COARSE_RES)
    r0 = math.floor((90.0 - maxlat) / LCZ_COARSE_RES)
    r1 = math.ceil((90.0 - minlat) / LCZ_COARSE_RES)
    return r0, c0, r1 - r0, c1 - c0


def _coarse_transform(row0: int, col0: int) -> Affine:
    return Affine(
        LCZ_COARSE_RES, 0.0, -180.0 + col0 * LCZ_COARSE_RES,
        0.0, -LCZ_COARSE_RES, 90.0 - row0 * LCZ_COARSE_RES,
    )


def _rgba(hex_colour: str) -> tuple[int, int, int, int]:
    v = hex_colour.lstrip("#")
    return (int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16), 255)


def _colormap() -> dict[int, tuple[int, int, int, int]]:
    cmap = {0: (0, 0, 0, 0)}
    cmap.update({k: _rgba(v) for k, v in LCZ_PALETTE.items()})
    return cmap


def _write_lcz_tif(path: Path, data: npt.NDArray[np.uint8], row0: int, col0: int) -> None:
    profile = {
        "driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": "uint8", "crs": "EPSG:4326", "transform": _coarse_transform(row0, col0),
        "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
        "compress": "deflate", "interleave": "band",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.write_colormap(1, _colormap())
        dst.set_band_description(1, "LCZ_Filter")


def coarse_labels(c: SynthCity) -> tuple[npt.NDArray[np.uint8], int, int]:
    """The city's 100 m reference, made as the global LCZ map's recommended ``LCZ_Filter`` band
    is, with (row0, col0).

    The mode of the 10 m truth in each cell (``coarse_mode``) stands for what a perfect 100 m
    classifier would say; the real map's random forest is wrong on about a quarter of its cells
    (reported OA ≈ 0.77), mostly between neighbouring types and in patches, so
    ``REFERENCE_ERROR_RATE`` of the cells, in patches, take the type they are most often
    confused with (``reference_errors``); then the Gaussian-weighted majority filter (σ = 1
    cell). Like the real product it loses features under ~200 m.
    """
    mode, row0, col0 = coarse_mode(c)
    noisy = reference_errors(mode, _rng(c.seed, c.site, _REFERENCE))
    return gaussian_mode_filter(noisy, sigma=COARSE_FILTER_SIGMA), row0, col0


# The LCZ type a 100 m classifier most often takes each type for: the next denser or sparser
# type of the same family (compact ↔ compact, open → sparser, trees ↔ scattered trees, …).
CONFUSED_WITH = np.array([0, 2, 3, 2, 5, 6, 9, 3, 10, 6, 8, 12, 11, 14, 13, 16, 15, 17],
                         dtype=np.uint8)


def reference_errors(
    mode: npt.NDArray[np.uint8], rng: np.random.Generator, rate: float | None = None
) -> npt.NDArray[np.uint8]:
    """``mode`` with ``rate`` of its labelled cells, in patches of a few cells (a smooth random
    field above its quantile), relabelled as the type they are most often confused with."""
    rate = REFERENCE_ERROR_RATE if rate is None else rate
    field_ = smooth_noise(rng, mode.shape, 1.0)
    labelled = mode > 0
    if rate <= 0 or not labelled.any():
        return mode.copy()
    wrong = labelled & (field_ > np.quantile(field_[labelled], 1.0 - rate))
    return np.where(wrong, CONFUSED_WITH[mode], mode).astype(np.uint8)


def coarse_mode(c: SynthCity) -> tuple[npt.NDArray[np.uint8], int, int]:
    """The city's truth as 100 m EPSG:4326 labels (mode of 10 m pixels), with (row0, col0)."""
    row0, col0, h, w = _coarse_grid(c.bbox_lonlat)
    dst = np.zeros((h, w), dtype=np.uint8)
    reproject(
        c.truth, dst,
        src_transform=c.zone.window_geobox(c.window).affine, src_crs=c.zone.crs, src_nodata=0,
        dst_transform=_coarse_transform(row0, col0), dst_crs="EPSG:4326", dst_nodata=0,
        resampling=Resampling.mode,
    )
    return dst, row0, col0


def _write_vrt(path: Path, parts: Sequence[tuple[Path, int, int, int, int]],
               grid: tuple[int, int, int, int]) -> None:
    """A GDAL VRT mosaic of per-city GeoTIFFs on the same lattice (no pixels copied)."""
    row0, col0, h, w = grid
    t = _coarse_transform(row0, col0)
    wkt = CRS.from_epsg(4326).to_wkt()
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
        for _, (r, g, b, a) in sorted(_colormap().items())
    )
    sources = "".join(
        f"""
    <ComplexSource>
      <SourceFilename relativeToVRT="1">{escape(p.relative_to(path.parent).as_posix())}\
</SourceFilename>
      <SourceBand>1</SourceBand>
      <SourceProperties RasterXSize="{pw}" RasterYSize="{ph}" DataType="Byte" \
BlockXSize="256" BlockYSize="256"/>
      <SrcRect xOff="0" yOff="0" xSize="{pw}" ySize="{ph}"/>
      <DstRect xOff="{pc - col0}" yOff="{pr - row0}" xSize="{pw}" ySize="{ph}"/>
      <NODATA>0</NODATA>
    </ComplexSource>"""
        for p, pr, pc, ph, pw in parts
    )
    path.write_text(
        f"""<VRTDataset rasterXSize="{w}" rasterYSize="{h}">
  <SRS dataAxisToSRSAxisMapping="2,1">{escape(wkt)}</SRS>
  <GeoTransform>{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <Description>LCZ_Filter</Description>
    <NoDataValue>0</NoDataValue>
    <ColorInterp>Palette</ColorInterp>
    <ColorTable>{entries}</ColorTable>{sources}
  </VRTRasterBand>
</VRTDataset>
"""
    )


def _write_coarse(out: Path, world: Sequence[SynthCity]) -> tuple[Path, list[Path]]:
    """Per-city GeoTIFFs, plus one mosaic: a GeoTIFF when small, else a VRT over the parts."""
    (out / "lcz_coarse").mkdir(parents=True, exist_ok=True)
    parts = []
    for c in world:
        data, r0, c0 = coarse_labels(c)
        p = out / "lcz_coarse" / f"{c.city.name}.tif"
        _write_lcz_tif(p, data, r0, c0)
        parts.append((p, r0, c0, data.shape[0], data.shape[1], data))
    r0 = min(p[1] for p in parts)
    c0 = min(p[2] for p in parts)
    h = max(p[1] + p[3] for p in parts) - r0
    w = max(p[2] + p[4] for p in parts) - c0
    if h * w <= MAX_COARSE_PIXELS:
        mosaic = np.zeros((h, w), dtype=np.uint8)
        for _, pr, pc, ph, pw, data in parts:
            view = mosaic[pr - r0 : pr - r0 + ph, pc - c0 : pc - c0 + pw]
            np.copyto(view, data, where=data > 0)
        path = out / "lcz_coarse.tif"
        _write_lcz_tif(path, mosaic, r0, c0)
    else:  # cities on different continents: a mosaic GeoTIFF would be gigapixels of nodata
        path = out / "lcz_coarse.vrt"
        _write_vrt(path, [p[:5] for p in parts], (r0, c0, h, w))
    return path, [p[0] for p in parts]


# --------------------------------------------------------------------------------------------
# Truth cube


def _write_truth(out_dir: Path, world: Sequence[SynthCity], seed: int, size_km: float,
                 year: int) -> Path:
    """The 10 m truth as an lczscale cube (through the cube API), one write per city."""
    from lczscale.io.cube.store import create_cube, write_tile

    url = str(out_dir / "truth.zarr")
    zones = sorted({c.zone.name: c.zone for c in world}.items())
    create_cube(
        url,
        [z for _, z in zones],
        [year],
        GridConfig.model_validate({"tile_size": 512}),
        CubeConfig.model_validate({}),
        {
            "lczscale:product": "synthetic truth",
            "lczscale:synth": {"seed": seed, "cities": len(world), "size_km": size_km},
        },
    )
    for c in world:
        confidence = np.where(c.truth > 0, 255, 0).astype(np.uint8)
        write_tile(url, c.zone, year, c.window, c.truth, confidence)
    return out_dir / "truth.zarr"


# --------------------------------------------------------------------------------------------
# The whole world on disk


def write_world(
    out_dir: str | Path,
    cities: int = 2,
    size_km: float = 4.0,
    seed: int = 0,
    years: Sequence[int] = (2023, 2024),
    *,
    shard_size: int = 1024,
    scales_fill: float = float("inf"),
    truth_cube: bool = True,
    overwrite: bool = False,
    layouts: Sequence[str] = ("tessera-zarr",),
) -> dict[str, Any]:
    """Write embeddings, coarse labels, truth and ``world.json`` under ``out_dir``.

    ``shard_size`` is the TESSERA shard edge S (real stores use 4096). ``scales_fill`` is the
    scales array's fill value: +inf (default, as real TESSERA stores: unwritten land is "no
    data yet"); NaN is the alternative convention. Either way all-water or never-written
    ``embeddings`` chunks are not stored, which is what planning lists. Returns the summary
    also saved as ``world.json``.

    ``layouts`` chooses the embedding layouts written (same world, same pixels): see
    ``LAYOUT_WRITERS``; ``tessera-zarr`` is ``embeddings.zarr``.
    """
    unknown = [name for name in layouts if name not in LAYOUT_WRITERS]
    if unknown:
        raise ConfigError(
            f"unknown layout(s) {unknown}; choose from {', '.join(LAYOUT_WRITERS)}"
        )
    out = Path(out_dir)
    years = sorted(int(y) for y in years)
    if not years:
        raise ConfigError("years is empty: give at least one year, e.g. (2024,)")
    products = ["embeddings.zarr", "lcz_coarse", "lcz_coarse.tif", "lcz_coarse.vrt",
                "truth.zarr", "world.json", *LAYOUT_PRODUCTS]
    existing = [p for p in products if (out / p).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds {existing}; pass overwrite=True (CLI: --overwrite) or choose "
            "another directory"
        )
    for p in existing:
        target = out / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)

    n = _size_px(size_km)
    space = WorldSpace.make(_rng(seed, _SPACE))
    world = [_build_city(i, n, seed, strip=(i == 0)) for i, _ in enumerate(_sites(cities, seed))]
    grids = _zone_grids(world)
    written: dict[str, Any] = {}
    if "tessera-zarr" in layouts:
        root = _create_store(out / "embeddings.zarr", grids, years, shard_size, scales_fill)
        for c in world:
            for t, year in enumerate(years):  # one year at a time keeps memory at 512 B/px
                _write_city_year(root, grids[c.zone.name], c, t, _render(c, seed, year, space))
        with warnings.catch_warnings():  # TESSERA consolidates too; zarr warns: not in v3 spec
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(str(out / "embeddings.zarr"))
        written["tessera-zarr"] = str((out / "embeddings.zarr").resolve())

    def render(c: SynthCity, year: int) -> npt.NDArray[np.float32]:
        return _render(c, seed, year, space)

    for name in layouts:
        if name != "tessera-zarr":
            module, func = LAYOUT_WRITERS[name].split(":")
            writer = getattr(importlib.import_module(module), func)
            written[name] = writer(out, world, years, render, seed)

    coarse, coarse_parts = _write_coarse(out, world)
    truth = _write_truth(out, world, seed, size_km, years[-1]) if truth_cube else None

    hist = np.bincount(np.concatenate([c.truth.ravel() for c in world]), minlength=18)
    summary: dict[str, Any] = {
        "root": str(out.resolve()),
        "embeddings": written.get("tessera-zarr"),
        "layouts": written,
        "coarse_labels": str(coarse.resolve()),
        "coarse_per_city": {c.city.name: str(p.resolve()) for c, p in zip(world, coarse_parts,
                                                                           strict=True)},
        "truth": str(truth.resolve()) if truth else None,
        "seed": seed,
        "size_km": size_km,
        "years": years,
        "shard_size": shard_size,
        "zones": {
            name: {
                "crs": g.zone.crs,
                "window": [g.window.row, g.window.col, g.window.height, g.window.width],
                "transform": g.transform,
            }
            for name, g in grids.items()
        },
        "cities": [
            {
                "name": c.city.name,
                "lon": c.city.lon,
                "lat": c.city.lat,
                "zone": c.zone.name,
                "window": [c.window.row, c.window.col, c.window.height, c.window.width],
                "bbox_lonlat": list(c.bbox_lonlat),
                "nodata_fraction": float(c.nodata.mean()),
                "water_fraction": float(c.water.mean()),
            }
            for c in world
        ],
        "class_histogram": {str(k): int(v) for k, v in enumerate(hist) if k and v},
        "materials": list(MATERIALS),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2))
    return summary
