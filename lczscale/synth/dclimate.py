"""The synthetic world in the three 2026 dClimate TESSERA v1.1 formats.

Specified in /work/notes/dclimate-spec.md (distilled from dClimate/tessera-embeddings,
geotessera 0.11.0 and avsm/geotessera's transcoder).

Two layout writers with the ``synth.LAYOUT_WRITERS`` signature
``writer(out, world, years, render, seed)``:

- ``write_tessera_icechunk`` — ``out/dclimate.icechunk``, a local Icechunk repository laid out
  as ``s3://tessera-embeddings/v1.1/dclimate.icechunk`` (spec §1–§3), plus, by default, its
  tile registry ``out/dclimate.registry/parts/zone=<ZONE>/year=<YEAR>/<run_id>.parquet``
  (spec §5);
- ``write_tessera_plain_zarr`` — ``out/dclimate.zarr``, the Source Cooperative plain Zarr v3
  copy ``tessera/zarr/v1.1-dclimate`` (spec §4).

Facts of the formats (spec section in brackets):

- Icechunk groups are UTM zone + hemisphere, ``f"{zone:02d}{N|S}"`` [§1]. N is EPSG:326NN with
  transform ``[10,0,163840,0,-10,9338880]``, shape ``[933888,67584]``; S is true southern UTM
  EPSG:327NN (false northing 10,000,000) with ``f = 10014720``, shape ``[890880,67584]`` [§1,
  §2]. S reaches 14,720 m NORTH of the equator, so S rows 0..1471 are the same ground as N rows
  932416..933887 [§1]. Here groups exist only where cities lie, but each has the real full
  extent (unwritten shards cost nothing: ``write_empty_chunks=False``).
- Eight arrays per group, dims ``(time, northing, easting[, band|month])``, 10 m pixels, time
  always the nine slots 2017..2025 [§3]: ``embeddings`` int8 fill 0, ``scales`` float32 fill NaN
  with the PCodec serializer (``numcodecs.pcodec``) and no compressor, three ``*_obs_count``
  uint16 fill 0, three ``*_month_covered`` int8 (attr ``{"dtype": "bool"}``) fill 0; inner
  chunks (1,256,256[,128|,12]) in shards (1,2048,2048[,128|,12]); zstd for all but scales.
  Coordinates: ``time`` int64 ns of Jan 1 with CF attrs and ``bounds: time_bnds``; ``time_bnds``
  (9,2) half-open year bounds; ``northing`` (descending) / ``easting`` pixel CENTRES float64;
  ``band`` int64 0..127; ``month`` int16 1..12 [§3].
- Root attrs are the ``geoemb:`` set of spec §2 (model 1.1, scale nodata ``"NaN"``,
  ``checkpoint_id``, ``optical_min_obs`` 15); group attrs ``crs``, ``years_complete``,
  ``proj:*``, ``spatial:*`` with the CORNER-origin transform (ADR 024), the v0.1 proj/spatial
  ``zarr_conventions`` and ``runs`` keyed by ``str(year)`` [§2].
- Semantics: a NaN scale means "not embedded" (codes 0); there is no water marker — water is
  embedded like land [§3, §7]. Here a city's ``water`` pixels get their real codes and finite
  scale; its ``nodata`` swath is not embedded (scale NaN, codes 0, ``s2_obs_count`` < 15 =
  refused by the depth rule). Obs counts and month flags are a deterministic hash of the
  pixel's position in the canonical zone, so a pixel holds the same values in N and S.
- Registry rows: one per 2048-px shard written for the zone-year, 23 declared columns, zstd,
  parquet key-value metadata ``{zone, year, run_id}``, tile ``chunk_<sy>_<sx>`` [§5].
- Plain copy: one group ``utmNN`` per zone in EPSG:326NN (southern y negative), N ∪ S on one
  grid from the N top-left centre (163845, 9338875), height/width rounded UP to 4096
  (1,826,816 × 69,632); ``embeddings`` (time, band, y, x), the rest (time, y, x[, month]);
  chunks 32 / shards 4096 on y/x, Blosc zstd 3 everywhere (scales too), coords ``x``/``y``
  float64 centres, ``time`` int32 years, ``band`` int32, ``month``/``time_bnds`` copied; root
  attrs = source root + ``geotessera:*``/``geoemb:landmask``; group attrs carry the source
  group attrs under ``geotessera:source_groups`` [§4].

Equator-crossing cities (``equator_city`` builds one): any SynthCity whose window crosses
northing 0 is written into every hemisphere group whose extent it touches: its rows north of
the equator into ``NNN``, its rows south of it into ``NNS``, and its rows 0..14,720 m north of
the equator ALSO into ``NNS`` (as the real store holds them). The plain copy holds the union.

Memory is bounded by one city-year: each city is rendered once per year and only its window
is written (zarr reads, modifies and rewrites the shards it touches).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import icechunk
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from affine import Affine
from pyproj import CRS, Transformer
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError
from lczscale.io.sources.dclimate_registry import SCHEMA
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.synth.layout import BANDS
from lczscale.synth.world import BUILD_VERSION, SynthCity

try:  # zarr >= 3.1 ships the numcodecs bridge; its v3 name is "numcodecs.pcodec"
    from zarr.codecs.numcodecs import PCodec
except ImportError:  # pragma: no cover - older zarr: numcodecs' own v3 wrapper
    from numcodecs.zarr3 import PCodec  # type: ignore[no-redef]

__all__ = [
    "ICECHUNK_DIR",
    "PLAIN_DIR",
    "PRODUCTS",
    "REGISTRY_DIR",
    "REGISTRY_SCHEMA",
    "TIME_YEARS",
    "HemisphereGroup",
    "equator_city",
    "equator_row",
    "hemisphere_groups",
    "shard_bbox_wgs84",
    "write_tessera_icechunk",
    "write_tessera_plain_zarr",
]

ICECHUNK_DIR, REGISTRY_DIR, PLAIN_DIR = "dclimate.icechunk", "dclimate.registry", "dclimate.zarr"
PRODUCTS = (ICECHUNK_DIR, REGISTRY_DIR, PLAIN_DIR)  # what these writers put under ``out``

TIME_YEARS: tuple[int, ...] = tuple(range(2017, 2026))  # the nine time slots of every group
PIXEL_M = 10.0
CHUNK_PX, SHARD_PX = 256, 2048  # icechunk inner chunk and shard edge (PITCH_M = 20,480 m)
PLAIN_INNER, PLAIN_SHARD = 32, 4096  # transcode defaults (inner_chunk, shard_size)
FALSE_NORTHING = 10_000_000.0
OPTICAL_MIN_OBS = 15
MONTHS = 12
# Group extents (edges, metres, the group's own CRS) — pinned constants, identical for all zones.
N_TRANSFORM = (PIXEL_M, 0.0, 163_840.0, 0.0, -PIXEL_M, 9_338_880.0)
N_SHAPE = (933_888, 67_584)
S_TRANSFORM = (PIXEL_M, 0.0, 163_840.0, 0.0, -PIXEL_M, 10_014_720.0)
S_SHAPE = (890_880, 67_584)

ASSEMBLED_AT = "2026-06-01T00:00:00+00:00"  # default run time: deterministic, so writers agree
CHECKPOINT_ID = "tessera_v1_1_aws_encoder"
CODE_COMMIT = "0000000000000000000000000000000000000000"  # no real pipeline commit: synthetic
OBS_ARRAYS = ("s2_obs_count", "s1_asc_obs_count", "s1_desc_obs_count")
MONTH_ARRAYS = ("s2_month_covered", "s1_asc_month_covered", "s1_desc_month_covered")
TIME_ATTRS = {"units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian"}

GEOEMB_CONVENTION: dict[str, Any] = {
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": (
        "Geoembeddings convention for geospatial embedding arrays with model provenance"
    ),
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/"
    "refs/tags/v1/schema.json",
}
PROJ_CONVENTION: dict[str, Any] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION: dict[str, Any] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/"
    "schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

ROOT_ATTRS: dict[str, Any] = {
    "geoemb:type": "pixel",
    "geoemb:dimensions": BANDS,
    "geoemb:model": "https://geotessera.org/model/1.1",
    "geoemb:source_data": ["s3://sentinel-cogs", "https://datapool.asf.alaska.edu/RTC/OPERA-S1"],
    "geoemb:data_type": "int8",
    "geoemb:build_version": BUILD_VERSION,
    "geoemb:quantization": {
        "method": "per_pixel_scale",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": {"type": "array", "array_name": "scales", "nodata": "NaN"},
    },
    "checkpoint_id": CHECKPOINT_ID,
    "geoemb:gsd": PIXEL_M,
    "geoemb:spatial_layout": "utm_zones",
    "zarr_conventions": [GEOEMB_CONVENTION],
    "optical_min_obs": OPTICAL_MIN_OBS,
}

# the registry's declared 23 columns (dClimate registry.py), one definition for reader and writer
REGISTRY_SCHEMA = SCHEMA

Render = Callable[[SynthCity, int], np.ndarray]


# --------------------------------------------------------------------------------------------
# Grids


@dataclass(frozen=True)
class HemisphereGroup:
    """One Icechunk zone group (``37N``, ``37S``) and where it lies on the canonical zone."""

    number: int
    hemisphere: str  # "N" or "S"

    @property
    def name(self) -> str:
        return f"{self.number:02d}{self.hemisphere}"

    @property
    def crs(self) -> str:
        return f"EPSG:{(32600 if self.hemisphere == 'N' else 32700) + self.number}"

    @property
    def transform(self) -> tuple[float, ...]:
        """Corner-origin affine (a, b, c, d, e, f) in the group's own CRS."""
        return N_TRANSFORM if self.hemisphere == "N" else S_TRANSFORM

    @property
    def shape(self) -> tuple[int, int]:
        return N_SHAPE if self.hemisphere == "N" else S_SHAPE

    @property
    def bbox(self) -> list[float]:
        t, (h, w) = self.transform, self.shape
        return [t[2], t[5] + t[4] * h, t[2] + t[0] * w, t[5]]

    def northern_affine(self) -> Affine:
        """The transform in the northern frame (EPSG:326NN): S northings minus 10,000,000."""
        t = self.transform
        shift = 0.0 if self.hemisphere == "N" else FALSE_NORTHING
        return Affine(t[0], t[1], t[2], t[3], t[4], t[5] - shift)

    def window(self, zone: Zone) -> Window:
        """The group's extent in canonical zone pixels (raises unless on the zone's lattice)."""
        row, col = zone.pixel_offset(self.northern_affine())
        return Window(row, col, *self.shape)


def _zone_number(zone: Zone) -> int:
    return int(zone.name.removeprefix("utm"))


def hemisphere_groups(world: Sequence[SynthCity]) -> dict[str, HemisphereGroup]:
    """The zone groups the world's cities touch (a city may touch N and S), sorted by name."""
    out: dict[str, HemisphereGroup] = {}
    for c in world:
        for g in _groups_of(c):
            out[g.name] = g
    return dict(sorted(out.items()))


def _groups_of(c: SynthCity) -> list[HemisphereGroup]:
    n = _zone_number(c.zone)
    groups = [HemisphereGroup(n, h) for h in "NS"]
    return [g for g in groups if g.window(c.zone).intersection(c.window) is not None]


def equator_row(zone: Zone) -> int:
    """Canonical zone row whose top edge is the equator (northing 0)."""
    row = -zone.affine.f / zone.affine.e
    if abs(row - round(row)) > 1e-9:
        raise ConfigError(f"zone {zone.name}: the equator is not a pixel edge")
    return int(round(row))


def equator_city(c: SynthCity, rows_north: int) -> SynthCity:
    """A copy of ``c`` moved (same pixels, same zone) so that ``rows_north`` of its rows lie
    north of the equator and the rest south: a city crossing northing 0, for tests."""
    w = c.window
    return dataclasses.replace(
        c, window=Window(equator_row(c.zone) - rows_north, w.col, w.height, w.width)
    )


@dataclass(frozen=True)
class _PlainGrid:
    """The plain copy's ``utmNN`` grid: N ∪ S in EPSG:326NN, rounded up to whole shards."""

    zone: Zone
    window: Window  # canonical zone pixels, padded to shards
    data: Window  # the part N or S covers (never padding)

    @classmethod
    def of(cls, zone: Zone, shard: int = PLAIN_SHARD) -> _PlainGrid:
        n = _zone_number(zone)
        parts = [HemisphereGroup(n, h).window(zone) for h in "NS"]
        r0, c0 = min(p.row for p in parts), min(p.col for p in parts)
        r1, c1 = max(p.row_stop for p in parts), max(p.col_stop for p in parts)
        if sorted(parts)[0].row_stop < sorted(parts)[1].row:  # pragma: no cover - pinned
            raise ConfigError(f"{zone.name}: N and S extents leave a gap")
        h, w = r1 - r0, c1 - c0
        padded = Window(r0, c0, -(-h // shard) * shard, -(-w // shard) * shard)
        return cls(zone, padded, Window(r0, c0, h, w))

    @property
    def transform(self) -> list[float]:
        a = self.zone.affine @ Affine.translation(self.window.col, self.window.row)
        return [a.a, a.b, a.c, a.d, a.e, a.f]

    @property
    def bbox(self) -> list[float]:
        t = self.transform
        return [t[2], t[5] + t[4] * self.window.height, t[2] + t[0] * self.window.width, t[5]]


# --------------------------------------------------------------------------------------------
# Pixel values (shared by both writers)

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _pixel_hash(zone: int, rows: np.ndarray, cols: np.ndarray, year: int, seed: int,
                salt: int) -> npt.NDArray[np.uint64]:
    """(len(rows), len(cols)) hash of canonical positions: the same pixel, the same value."""
    key = _mix(np.array([((seed * 1_000_003 + year) * 64 + zone) * 16 + salt], dtype=np.uint64))
    r = _mix(key ^ rows.astype(np.uint64))
    return _mix(r[:, None] ^ _mix(cols.astype(np.uint64) + key)[None, :])


@dataclass
class _CityYear:
    """One city-year in the city's window: codes (band, y, x) and per-pixel arrays (y, x[, m])."""

    codes: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]
    obs: dict[str, npt.NDArray[np.uint16]]
    months: dict[str, npt.NDArray[np.int8]]


def _months(count: npt.NDArray[np.uint16], offset: npt.NDArray[np.uint64]) -> np.ndarray:
    """min(count, 12) consecutive months flagged from ``offset``: 0 obs ↔ no month."""
    n = np.minimum(count, MONTHS).astype(np.int64)[..., None]
    m = np.arange(MONTHS, dtype=np.int64)
    return ((m - (offset % np.uint64(MONTHS)).astype(np.int64)[..., None]) % MONTHS < n).astype(
        np.int8)


def _city_year(c: SynthCity, year: int, emb: np.ndarray, seed: int) -> _CityYear:
    """The stored values: ``quantise_per_pixel`` codes and scales, water embedded, the
    ``nodata`` swath not embedded (NaN scale, codes 0, fewer than 15 optical observations)."""
    h, w = c.window.height, c.window.width
    if emb.shape != (BANDS, h, w):
        raise ConfigError(f"{c.city.name}: render gave {emb.shape}, want {(BANDS, h, w)}")
    codes, scales = quantise_per_pixel(np.asarray(emb, dtype=np.float32))
    embedded = ~c.nodata
    codes[:, ~embedded] = 0
    scales = scales.astype(np.float32)
    scales[~embedded] = np.nan
    rows = np.arange(c.window.row, c.window.row_stop)
    cols = np.arange(c.window.col, c.window.col_stop)
    zone = _zone_number(c.zone)
    hs = [_pixel_hash(zone, rows, cols, year, seed, salt) for salt in range(6)]
    s2 = np.where(embedded, OPTICAL_MIN_OBS + hs[0] % np.uint64(40),
                  hs[0] % np.uint64(OPTICAL_MIN_OBS)).astype(np.uint16)
    s1a = (hs[1] % np.uint64(20)).astype(np.uint16)  # 0 in 5 %: some radar-free pixels
    s1d = (hs[2] % np.uint64(20)).astype(np.uint16)
    obs = dict(zip(OBS_ARRAYS, (s2, s1a, s1d), strict=True))
    months = {m: _months(v, hs[3 + i]) for i, (m, v) in enumerate(zip(MONTH_ARRAYS, obs.values(),
                                                                     strict=True))}
    return _CityYear(codes, scales, obs, months)


def _check_years(years: Sequence[int]) -> list[int]:
    out = sorted({int(y) for y in years})
    if not out:
        raise ConfigError("years is empty: give at least one year, e.g. (2024,)")
    bad = [y for y in out if y not in TIME_YEARS]
    if bad:
        raise ConfigError(f"years {bad} are outside the dClimate time axis 2017..2025")
    return out


def _fresh(path: Path) -> None:
    if path.exists():
        raise ConfigError(f"{path} already exists; remove it or choose another directory")


def _run_id(group: str, year: int, seed: int) -> str:
    return f"{group}-{year}-{seed:04d}-a"


def _time_values() -> tuple[np.ndarray, np.ndarray]:
    """``time`` (ns of Jan 1) and ``time_bnds`` ([Jan 1 y, Jan 1 y+1)) as int64."""
    edges = np.array([np.datetime64(f"{y}-01-01", "ns") for y in (*TIME_YEARS, TIME_YEARS[-1] + 1)])
    ns = edges.astype(np.int64)
    return ns[:-1], np.stack([ns[:-1], ns[1:]], axis=1)


def _group_attrs(g: HemisphereGroup, years_complete: Sequence[int],
                 runs: dict[str, Any]) -> dict[str, Any]:
    """A zone group's attributes (spec §2; corner-origin transform)."""
    crs = CRS.from_user_input(g.crs)
    return {
        "crs": g.crs,
        "years_complete": sorted(int(y) for y in years_complete),
        "zone_scheme": "utm_6deg_nominal",
        "time_convention": "calendar_year",
        "layout": "global",
        "proj:code": g.crs,
        "proj:wkt2": crs.to_wkt("WKT2_2019"),
        "proj:projjson": crs.to_json_dict(),
        "spatial:dimensions": ["northing", "easting"],
        "spatial:transform_type": "affine",
        "spatial:transform": list(g.transform),
        "spatial:shape": list(g.shape),
        "spatial:bbox": g.bbox,
        "spatial:registration": "pixel",
        "zarr_conventions": [PROJ_CONVENTION, SPATIAL_CONVENTION],
        "runs": runs,
    }


def _run_record(g: str, year: int, seed: int, assembled_at: str, empty: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"run_id": _run_id(g, year, seed), "assembled_at": assembled_at}
    if empty:
        rec["empty"] = True
    return rec


def _final_group_attrs(world: Sequence[SynthCity], years: list[int], seed: int,
                       complete_years: Sequence[int] | None,
                       assembled_at: str) -> dict[str, dict[str, Any]]:
    """Every group's attributes once all ``years`` are written (what both writers record)."""
    out = {}
    for name, g in hemisphere_groups(world).items():
        runs = {str(y): _run_record(name, y, seed, assembled_at, _empty(world, g, y))
                for y in years}
        done = years if complete_years is None else complete_years
        out[name] = _group_attrs(g, done, runs)
    return out


def _empty(world: Sequence[SynthCity], g: HemisphereGroup, year: int) -> bool:
    """No embedded pixel of any city inside the group (year-independent here)."""
    for c in world:
        inner = g.window(c.zone).intersection(c.window) if _zone_number(c.zone) == g.number \
            else None
        if inner is not None and (~c.nodata[inner.relative_to(c.window)]).any():
            return False
    return True


# --------------------------------------------------------------------------------------------
# Icechunk store


def _create_icechunk_group(root: zarr.Group, g: HemisphereGroup,
                           years_complete: Sequence[int]) -> None:
    grp = root.create_group(g.name, attributes=_group_attrs(g, years_complete, {}))
    h, w = g.shape
    t = len(TIME_YEARS)
    config: ArrayConfigParams = {"write_empty_chunks": False}
    dims = ["time", "northing", "easting"]
    grp.create_array(
        "embeddings", shape=(t, h, w, BANDS), dtype="int8", fill_value=0,
        chunks=(1, CHUNK_PX, CHUNK_PX, BANDS), shards=(1, SHARD_PX, SHARD_PX, BANDS),
        compressors="auto", dimension_names=[*dims, "band"], config=config,
    )
    grp.create_array(
        "scales", shape=(t, h, w), dtype="float32", fill_value=float("nan"),
        chunks=(1, CHUNK_PX, CHUNK_PX), shards=(1, SHARD_PX, SHARD_PX),
        serializer=PCodec(), compressors=None, dimension_names=dims, config=config,
    )
    for name in OBS_ARRAYS:
        grp.create_array(
            name, shape=(t, h, w), dtype="uint16", fill_value=0,
            chunks=(1, CHUNK_PX, CHUNK_PX), shards=(1, SHARD_PX, SHARD_PX),
            compressors="auto", dimension_names=dims, config=config,
        )
    for name in MONTH_ARRAYS:
        grp.create_array(
            name, shape=(t, h, w, MONTHS), dtype="int8", fill_value=0,
            chunks=(1, CHUNK_PX, CHUNK_PX, MONTHS), shards=(1, SHARD_PX, SHARD_PX, MONTHS),
            compressors="auto", dimension_names=[*dims, "month"], config=config,
            attributes={"dtype": "bool"},
        )
    time, bnds = _time_values()
    a = g.transform
    coords: list[tuple[str, np.ndarray, list[str], dict[str, Any]]] = [
        ("time", time, ["time"], {**TIME_ATTRS, "bounds": "time_bnds"}),
        ("time_bnds", bnds, ["time", "bnds"], dict(TIME_ATTRS)),
        ("northing", a[5] + (np.arange(h) + 0.5) * a[4], ["northing"], {}),
        ("easting", a[2] + (np.arange(w) + 0.5) * a[0], ["easting"], {}),
        ("band", np.arange(BANDS, dtype=np.int64), ["band"], {}),
        ("month", np.arange(1, MONTHS + 1, dtype=np.int16), ["month"], {}),
    ]
    for name, values, vdims, attrs in coords:
        arr = grp.create_array(name, shape=values.shape, dtype=values.dtype,
                               chunks=values.shape, dimension_names=vdims, attributes=attrs)
        arr[...] = values


def _write_icechunk_piece(grp: zarr.Group, g: HemisphereGroup, c: SynthCity, t: int,
                          v: _CityYear) -> tuple[Window, tuple[slice, slice]] | None:
    """Write the part of a city-year inside group ``g``; returns (group window, city slices)."""
    gw = g.window(c.zone)
    inner = gw.intersection(c.window)
    if inner is None:
        return None
    src = inner.relative_to(c.window)
    r0, c0 = inner.row - gw.row, inner.col - gw.col
    dst = (t, slice(r0, r0 + inner.height), slice(c0, c0 + inner.width))
    grp["embeddings"][dst] = np.moveaxis(v.codes[(slice(None), *src)], 0, -1)  # type: ignore[index]
    grp["scales"][dst] = v.scales[src]  # type: ignore[index]
    for name, arr in v.obs.items():
        grp[name][dst] = arr[src]  # type: ignore[index]
    for name, flags in v.months.items():
        grp[name][dst] = flags[src]  # type: ignore[index]
    return Window(r0, c0, inner.height, inner.width), src


def write_tessera_icechunk(
    out: Path,
    world: Sequence[SynthCity],
    years: Sequence[int],
    render: Render,
    seed: int,
    *,
    complete_years: Sequence[int] | None = None,
    registry: bool = True,
    assembled_at: str = ASSEMBLED_AT,
) -> str:
    """Write ``out/dclimate.icechunk`` (and ``out/dclimate.registry`` unless ``registry`` is
    False) and return the repository's path.

    Commits: one seeding the groups (all eight arrays and the coordinates), then one per year
    (every city rendered once, written into each group it touches), tagged
    ``zone-<ZONE>-<YEAR>`` for each group and ``year-<YEAR>-complete`` when the year is in
    ``years_complete``. ``years_complete`` on each group is ``complete_years`` if given, else
    the years written so far.
    """
    out = Path(out)
    years = _check_years(years)
    path = out / ICECHUNK_DIR
    _fresh(path)
    if registry:
        _fresh(out / REGISTRY_DIR)
    groups = hemisphere_groups(world)
    final = _final_group_attrs(world, years, seed, complete_years, assembled_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w", zarr_format=3, attributes=ROOT_ATTRS)
    initial = [] if complete_years is None else sorted(int(y) for y in complete_years)
    for g in groups.values():
        _create_icechunk_group(root, g, initial)
    session.commit(f"seed zone groups {', '.join(groups)}")

    done: list[int] = []
    for year in years:
        t = TIME_YEARS.index(year)
        session = repo.writable_session("main")
        root = zarr.open_group(session.store, mode="r+")
        pieces: dict[str, list[tuple[Window, _CityYear, tuple[slice, slice]]]] = {}
        for c in world:
            v = _city_year(c, year, render(c, year), seed)
            for g in _groups_of(c):
                grp = root[g.name]
                assert isinstance(grp, zarr.Group)
                piece = _write_icechunk_piece(grp, g, c, t, v)
                if piece is not None:
                    pieces.setdefault(g.name, []).append((piece[0], v, piece[1]))
            del v
        done.append(year)
        complete = done if complete_years is None else complete_years
        for name in groups:
            grp = root[name]
            assert isinstance(grp, zarr.Group)
            runs: dict[str, Any] = dict(cast(dict[str, Any], grp.attrs.get("runs") or {}))
            runs[str(year)] = final[name]["runs"][str(year)]
            grp.attrs.update({"runs": runs,
                              "years_complete": sorted(int(y) for y in complete)})
        snapshot = session.commit(f"assemble {year}: {', '.join(groups)}")
        for name in groups:
            repo.create_tag(f"zone-{name}-{year}", snapshot)
        if year in {int(y) for y in complete}:
            repo.create_tag(f"year-{year}-complete", snapshot)
        if registry:
            for name, parts in pieces.items():
                _write_registry_part(out / REGISTRY_DIR, groups[name], year,
                                     final[name]["runs"][str(year)], parts)
    return str(path.resolve())


# --------------------------------------------------------------------------------------------
# Registry


@functools.cache
def _to_wgs84(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def shard_bbox_wgs84(g: HemisphereGroup, r0: int, r1: int, c0: int, c1: int,
                     samples: int = 64) -> tuple[float, float, float, float]:
    """(west, south, east, north) of group pixels [r0, r1) × [c0, c1) from 64 samples per
    edge of its perimeter; across ±180° west > east (GeoJSON/STAC), as ``tile_range_bbox_wgs84``.
    """
    a = Affine(*g.transform)
    t = np.linspace(0.0, 1.0, samples)
    cols = np.concatenate([c0 + t * (c1 - c0), c0 + t * (c1 - c0),
                           np.full_like(t, c0), np.full_like(t, c1)])
    rows = np.concatenate([np.full_like(t, r0), np.full_like(t, r1),
                           r0 + t * (r1 - r0), r0 + t * (r1 - r0)])
    lon, lat = _to_wgs84(g.crs).transform(a.c + a.a * cols, a.f + a.e * rows)
    lon, lat = np.asarray(lon), np.asarray(lat)
    west, east = float(lon.min()), float(lon.max())
    if east - west > 180.0:
        west, east = float(lon[lon > 0].min()), float(lon[lon < 0].max())
    return west, float(lat.min()), east, float(lat.max())


def _shard_row(g: HemisphereGroup, sy: int, sx: int, run: dict[str, Any],
               parts: list[tuple[np.ndarray, ...]]) -> dict[str, Any]:
    scales = np.concatenate([p[0].ravel() for p in parts])
    s2 = np.concatenate([p[1].ravel() for p in parts]).astype(np.int64)
    radar = np.concatenate([(p[2].astype(np.int64) + p[3]).ravel() for p in parts])
    embedded = np.isfinite(scales)
    refused = ~embedded
    anyopt, thin = s2 > 0, (s2 > 0) & (s2 < OPTICAL_MIN_OBS)
    west, south, east, north = shard_bbox_wgs84(
        g, sy * SHARD_PX, (sy + 1) * SHARD_PX, sx * SHARD_PX, (sx + 1) * SHARD_PX)
    return {
        "tile": f"chunk_{sy}_{sx}",
        "run_id": run["run_id"],
        "assembled_at": run["assembled_at"],
        "embedded": bool(embedded.any()),
        "eligible_px": int(scales.size),
        "chunk_px": SHARD_PX * SHARD_PX,
        "refused_px": int(refused.sum()),
        "refused_no_optical_px": int((refused & (s2 == 0)).sum()),
        "refused_thin_px": int((refused & thin).sum()),
        "refused_no_radar_px": 0,
        "px_with_any_optical": int(anyopt.sum()),
        "obs_max": int(s2.max()) if s2.size else None,
        "median_obs_where_any": float(np.median(s2[anyopt])) if anyopt.any() else None,
        "median_obs_where_thin": float(np.median(s2[thin])) if thin.any() else None,
        "px_with_any_radar": int((radar > 0).sum()),
        "radar_rule_enforced": False,
        "optical_min_obs": OPTICAL_MIN_OBS,
        "bbox_west": west, "bbox_south": south, "bbox_east": east, "bbox_north": north,
        "code_version": BUILD_VERSION,
        "code_commit": CODE_COMMIT,
    }


def _write_registry_part(root: Path, g: HemisphereGroup, year: int, run: dict[str, Any],
                         pieces: list[tuple[Window, _CityYear, tuple[slice, slice]]]) -> Path:
    """One parquet part: a row per 2048-px shard the zone-year wrote (city pixels only)."""
    shards: dict[tuple[int, int], list[tuple[np.ndarray, ...]]] = {}
    for win, v, src in pieces:
        for sy in range(win.row // SHARD_PX, (win.row_stop - 1) // SHARD_PX + 1):
            for sx in range(win.col // SHARD_PX, (win.col_stop - 1) // SHARD_PX + 1):
                part = win.intersection(Window(sy * SHARD_PX, sx * SHARD_PX, SHARD_PX, SHARD_PX))
                assert part is not None
                rs, cs = part.relative_to(win)
                sub = (slice(src[0].start + rs.start, src[0].start + rs.stop),
                       slice(src[1].start + cs.start, src[1].start + cs.stop))
                shards.setdefault((sy, sx), []).append(
                    (v.scales[sub], *(v.obs[n][sub] for n in OBS_ARRAYS)))
    rows = [_shard_row(g, sy, sx, run, parts) for (sy, sx), parts in sorted(shards.items())]
    table = pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA).replace_schema_metadata(
        {"zone": g.name, "year": str(year), "run_id": run["run_id"]})
    folder = root / "parts" / f"zone={g.name}" / f"year={year}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run['run_id']}.parquet"
    pq.write_table(table, path, compression="zstd")
    return path


# --------------------------------------------------------------------------------------------
# Plain Zarr v3 copy


def _snapshot_id(text: str) -> str:
    """A 20-character Crockford base32 id shaped like an Icechunk snapshot id."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:13], "big")
    return "".join(alphabet[(n >> (5 * i)) & 31] for i in range(20))[::-1]


def _source_snapshot(store: Path, seed: int, years: list[int]) -> str:
    """The tip of ``main`` of the Icechunk repository at ``store`` when there is one."""
    if store.is_dir():
        try:
            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(store)))
            return repo.lookup_branch("main")
        except Exception:  # not a repository: fall back to a made-up id
            pass
    return _snapshot_id(f"lczscale-synth {seed} {years}")


def _plain_array_configs(grid: _PlainGrid) -> list[tuple[str, dict[str, Any]]]:
    h, w, t = grid.window.height, grid.window.width, len(TIME_YEARS)
    spatial = (1, PLAIN_SHARD, PLAIN_SHARD)
    inner = (1, PLAIN_INNER, PLAIN_INNER)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("embeddings", {"shape": (t, BANDS, h, w), "dtype": "int8", "fill_value": 0,
                        "chunks": (1, BANDS, PLAIN_INNER, PLAIN_INNER),
                        "shards": (1, BANDS, PLAIN_SHARD, PLAIN_SHARD),
                        "dimension_names": ["time", "band", "y", "x"], "attributes": {}}),
        ("scales", {"shape": (t, h, w), "dtype": "float32", "fill_value": float("nan"),
                    "chunks": inner, "shards": spatial,
                    "dimension_names": ["time", "y", "x"], "attributes": {}}),
    ]
    for name in OBS_ARRAYS:
        specs.append((name, {"shape": (t, h, w), "dtype": "uint16", "fill_value": 0,
                             "chunks": inner, "shards": spatial,
                             "dimension_names": ["time", "y", "x"], "attributes": {}}))
    for name in MONTH_ARRAYS:
        specs.append((name, {"shape": (t, h, w, MONTHS), "dtype": "int8", "fill_value": 0,
                             "chunks": (*inner, MONTHS), "shards": (*spatial, MONTHS),
                             "dimension_names": ["time", "y", "x", "month"],
                             "attributes": {"dtype": "bool"}}))
    return specs


def _create_plain_group(root: zarr.Group, grid: _PlainGrid, attrs: dict[str, Any]) -> None:
    grp = root.create_group(grid.zone.name, attributes=attrs)
    comp = BloscCodec(cname="zstd", clevel=3)
    config: ArrayConfigParams = {"write_empty_chunks": False}
    for name, spec in _plain_array_configs(grid):
        grp.create_array(name, compressors=comp, config=config, **spec)
    t = grid.transform
    time, bnds = _time_values()
    coords: list[tuple[str, np.ndarray, list[str], dict[str, Any]]] = [
        ("x", t[2] + (np.arange(grid.window.width) + 0.5) * t[0], ["x"], {}),
        ("y", t[5] + (np.arange(grid.window.height) + 0.5) * t[4], ["y"], {}),
        ("time", np.asarray(TIME_YEARS, dtype=np.int32), ["time"], {}),
        ("band", np.arange(BANDS, dtype=np.int32), ["band"], {}),
        ("month", np.arange(1, MONTHS + 1, dtype=np.int16), ["month"], {}),
        ("time_bnds", bnds, ["time", "bnds"], dict(TIME_ATTRS)),
    ]
    del time
    for name, values, vdims, vattrs in coords:
        arr = grp.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                               fill_value=0, compressors=comp, dimension_names=vdims,
                               attributes=vattrs)
        arr[...] = values


def write_tessera_plain_zarr(
    out: Path,
    world: Sequence[SynthCity],
    years: Sequence[int],
    render: Render,
    seed: int,
    *,
    complete_years: Sequence[int] | None = None,
    assembled_at: str = ASSEMBLED_AT,
    source_store: str | None = None,
    source_snapshot: str | None = None,
) -> str:
    """Write ``out/dclimate.zarr``, the plain Zarr v3 copy, and return its path.

    Same pixels as ``write_tessera_icechunk`` with the same ``seed``; ``complete_years`` and
    ``assembled_at`` only feed ``geotessera:source_groups``. ``source_store`` defaults to
    ``out/dclimate.icechunk``; ``source_snapshot`` to that repository's ``main`` tip when it
    exists (else a made-up id).
    """
    out = Path(out)
    years = _check_years(years)
    path = out / PLAIN_DIR
    _fresh(path)
    store = out / ICECHUNK_DIR
    source = source_store or str(store.resolve())
    snapshot = source_snapshot or _source_snapshot(store, seed, years)
    groups = _final_group_attrs(world, years, seed, complete_years, assembled_at)
    zones = dict(sorted({c.zone.name: c.zone for c in world}.items()))
    migration = hashlib.sha256(json.dumps(
        {"source": source, "snapshot": snapshot, "zones": list(zones), "years": years,
         "shard_size": PLAIN_SHARD, "inner_chunk": PLAIN_INNER}, sort_keys=True).encode()
    ).hexdigest()
    root_attrs = {
        **ROOT_ATTRS,
        "zarr_conventions": [GEOEMB_CONVENTION],
        "geotessera:migration_id": migration,
        "geotessera:mask_source": "source_nodata",
        "geoemb:landmask": False,
        "geoemb:build_version": BUILD_VERSION,
        "geotessera:source_snapshot": snapshot,
        "geotessera:source_store": source,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=root_attrs)
    grids = {name: _PlainGrid.of(z) for name, z in zones.items()}
    for grid in grids.values():
        n = _zone_number(grid.zone)
        attrs = {
            "spatial:dimensions": ["y", "x"],
            "spatial:transform_type": "affine",
            "spatial:transform": grid.transform,
            "spatial:shape": [grid.window.height, grid.window.width],
            "spatial:bbox": grid.bbox,
            "spatial:registration": "pixel",
            "proj:code": grid.zone.crs,
            "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
            "geotessera:mask_source": "source_nodata",
            "geotessera:migration_id": migration,
            "geotessera:source_groups": {
                g: a for g, a in groups.items() if int(g[:2]) == n
            },
        }
        _create_plain_group(root, grid, attrs)

    for year in years:
        t = TIME_YEARS.index(year)
        for c in world:
            grid = grids[c.zone.name]
            inner = grid.data.intersection(c.window)
            if inner is None:
                continue
            v = _city_year(c, year, render(c, year), seed)
            src = inner.relative_to(c.window)
            rs, cs = inner.relative_to(grid.window)
            grp = root[c.zone.name]
            assert isinstance(grp, zarr.Group)
            grp["embeddings"][t, :, rs, cs] = v.codes[(slice(None), *src)]  # type: ignore[index]
            grp["scales"][t, rs, cs] = v.scales[src]  # type: ignore[index]
            for name, arr in v.obs.items():
                grp[name][t, rs, cs] = arr[src]  # type: ignore[index]
            for name, flags in v.months.items():
                grp[name][t, rs, cs] = flags[src]  # type: ignore[index]
            del v
    with warnings.catch_warnings():  # the copy is consolidated; zarr warns: not in v3 spec
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))
    return str(path.resolve())
