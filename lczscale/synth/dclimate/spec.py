"""The facts of the dClimate TESSERA v1.1 formats that every writer here shares: product
directory names, the nine-year time axis, pixel, chunk and shard sizes, the pinned N and S
group extents, the array names and the root attributes (spec §1–§5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lczscale.errors import ConfigError
from lczscale.io.sources.dclimate_registry import SCHEMA
from lczscale.synth.cities import SynthCity
from lczscale.synth.layout import BANDS
from lczscale.synth.world import BUILD_VERSION

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


def _time_values() -> tuple[np.ndarray, np.ndarray]:
    """``time`` (ns of Jan 1) and ``time_bnds`` ([Jan 1 y, Jan 1 y+1)) as int64."""
    edges = np.array([np.datetime64(f"{y}-01-01", "ns") for y in (*TIME_YEARS, TIME_YEARS[-1] + 1)])
    ns = edges.astype(np.int64)
    return ns[:-1], np.stack([ns[:-1], ns[1:]], axis=1)
