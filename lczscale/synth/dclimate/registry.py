"""The tile registry beside the Icechunk store: one parquet part per zone-year under
``dclimate.registry/parts/zone=<ZONE>/year=<YEAR>/<run_id>.parquet``, a row per 2048 px shard
written, in the 23 declared columns (spec §5)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine
from pyproj import Transformer

from lczscale.core.grid import Window
from lczscale.synth.dclimate.pixel_values import _CityYear
from lczscale.synth.dclimate.spec import (
    CODE_COMMIT,
    OBS_ARRAYS,
    OPTICAL_MIN_OBS,
    REGISTRY_SCHEMA,
    SHARD_PX,
)
from lczscale.synth.dclimate.zone_groups import HemisphereGroup
from lczscale.synth.world import BUILD_VERSION


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
