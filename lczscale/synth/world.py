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

With ``changing_city`` the last city changes between the years (``synth.cities.CHANGES``:
an area of farmland, LCZ D, becomes open low-rise, 6, and one of scattered trees, B, becomes
large low-rise, 8, in the middle year); its embeddings show each year's surface, ``truth.zarr``
then holds every year's truth (else only the latest year's), ``lcz_coarse_<year>/`` each
year's 100 m labels, and ``world.json`` the change areas (``changes``). The other cities, and
a world without the option, are byte for byte what they were.

The content is built to be *honest* (see ``synth.layout``): classes are neighbourhood mixtures
of materials, and compact/open classes share roof materials, so per-pixel shortcuts fail.
The cities themselves are built in ``synth.cities`` and their coarse labels made in
``synth.global_lcz_map``; this module writes them, and the other layouts through
``LAYOUT_WRITERS``. Its public names include theirs, so ``world`` is the one import a caller
needs.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from affine import Affine
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from lczscale.config import CubeConfig, GridConfig
from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError
from lczscale.io.cube.store import create_cube, write_tile
from lczscale.synth.cities import (
    _SPACE,
    SITES,
    City,
    SynthCity,
    _render,
    _rng,
    _size_px,
    build_cities,
    change_masks,
    city_window,
    make_world,
    quantise,
)
from lczscale.synth.global_lcz_map import (
    CONFUSED_WITH,
    LCZ_COARSE_RES,
    LCZ_PALETTE,
    _write_coarse,
    coarse_labels,
    coarse_mode,
    reference_errors,
)
from lczscale.synth.layout import BANDS, MATERIALS, WorldSpace

__all__ = [
    "CONFUSED_WITH",
    "LCZ_COARSE_RES",
    "LCZ_PALETTE",
    "MATERIALS",
    "SITES",
    "City",
    "SynthCity",
    "city_window",
    "coarse_labels",
    "coarse_mode",
    "make_world",
    "quantise",
    "reference_errors",
    "write_world",
]

BUILD_VERSION = "lczscale-synth-0.1"
INNER_CHUNK = 32  # TESSERA's inner chunk (1, 128, 32, 32)

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
    "tessera-icechunk":  # dclimate.icechunk/ (+ dclimate.registry/)
        "lczscale.synth.dclimate.icechunk_store:write_tessera_icechunk",
    "tessera-dclimate-zarr":  # dclimate.zarr
        "lczscale.synth.dclimate.plain_copy:write_tessera_plain_zarr",
}
LAYOUT_PRODUCTS = ("tiles", "aef", "aef-mosaic.zarr", "dclimate.icechunk", "dclimate.registry",
                   "dclimate.zarr")


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
# Truth cube


def _write_truth(out_dir: Path, world: Sequence[SynthCity], seed: int, size_km: float,
                 year: int, earlier: Sequence[int] = ()) -> Path:
    """The 10 m truth as an lczscale cube (through the cube API), one write per city and year:
    ``year``, and each of ``earlier`` before it (a changing world's, with its own truth)."""
    url = str(out_dir / "truth.zarr")
    zones = sorted({c.zone.name: c.zone for c in world}.items())
    create_cube(
        url,
        [z for _, z in zones],
        [*earlier, year],
        GridConfig.model_validate({"tile_size": 512}),
        CubeConfig.model_validate({}),
        {
            "lczscale:product": "synthetic truth",
            "lczscale:synth": {"seed": seed, "cities": len(world), "size_km": size_km},
        },
    )
    for y in [*earlier, year]:
        for c in world:
            truth = c.truth_in(y)
            confidence = np.where(truth > 0, 255, 0).astype(np.uint8)
            write_tile(url, c.zone, y, c.window, truth, confidence)
    return out_dir / "truth.zarr"


# --------------------------------------------------------------------------------------------
# A changing city: each year's labels, and where the change is


def _write_changes(out: Path, world: Sequence[SynthCity], changing: Sequence[SynthCity],
                   years: Sequence[int]) -> dict[str, Any]:
    """Each year's 100 m labels (``lcz_coarse_<year>/``, as ``lcz_coarse``: per city and a
    mosaic) and the change areas for
    ``world.json``: per changing city, its change year and each change's from/to classes and
    zone-pixel window (the change mask is that window less its water)."""
    labels = {}
    for year in years:
        coarse, _ = _write_coarse(out / f"lcz_coarse_{year}", [c.in_year(year) for c in world])
        labels[str(year)] = str(coarse.resolve())
    changes = []
    for c in changing:
        for frm, to, mask in change_masks(c.truth_in(years[0])):
            rows, cols = np.nonzero(mask)
            r0, c0 = int(rows.min()), int(cols.min())
            changes.append({
                "city": c.city.name, "zone": c.zone.name, "year": c.change_year,
                "from": frm, "to": to, "pixels": int(mask.sum()),
                "window": [c.window.row + r0, c.window.col + c0, int(rows.max()) - r0 + 1,
                           int(cols.max()) - c0 + 1],
            })
    return {"labels_by_year": labels, "changes": changes}


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
    changing_city: bool = False,
    sites: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write embeddings, coarse labels, truth and ``world.json`` under ``out_dir``.

    ``shard_size`` is the TESSERA shard edge S (real stores use 4096). ``scales_fill`` is the
    scales array's fill value: +inf (default, as real TESSERA stores: unwritten land is "no
    data yet"); NaN is the alternative convention. Either way all-water or never-written
    ``embeddings`` chunks are not stored, which is what planning lists. Returns the summary
    also saved as ``world.json``.

    ``layouts`` chooses the embedding layouts written (same world, same pixels): see
    ``LAYOUT_WRITERS``; ``tessera-zarr`` is ``embeddings.zarr``. ``changing_city``: the last
    city changes in the middle year (see the module's docstring). ``sites``: built-in site
    names (``synth.cities.SITES``) instead of the first ``cities``.
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
                "truth.zarr", "world.json", *LAYOUT_PRODUCTS,
                *(f"lcz_coarse_{y}" for y in years)]
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
    world = build_cities(cities, n, seed, years, changing_city, sites)
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
    changing = [c for c in world if c.change_year is not None]
    truth = (_write_truth(out, world, seed, size_km, years[-1],
                          years[:-1] if changing else ()) if truth_cube else None)

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
    if changing:
        summary |= _write_changes(out, world, changing, years)
    (out / "world.json").write_text(json.dumps(summary, indent=2))
    return summary
