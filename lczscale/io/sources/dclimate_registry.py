"""The Parquet registry beside the dClimate TESSERA store: coverage without opening the store.

``<store>/../dclimate.registry/parts/zone=<ZONE>/year=<YEAR>/<run_id>.parquet``, one row per
2048 px tile (shard) per year: ``tile`` = ``chunk_<shard_y>_<shard_x>`` (the same shard grid as
Icechunk's chunk index), ``embedded``, ``refused_px``, ``assembled_at`` and a WGS84 bbox
(dClimate/tessera-embeddings, docs/global-store.md §The registry). Its traps, handled here:

- a refilled zone-year keeps both runs' parts, so only the latest ``assembled_at`` per
  (zone, year, tile) counts — else tiles are counted twice, or an old refusal wins;
- in zones 01 and 60 a row crossing the antimeridian has ``bbox_west > bbox_east``, which a
  plain west-to-east overlap test drops;
- the schema is stated, not inferred from whichever part sorts first;
- a tile marked embedded can still be mostly holes: ``refused_px`` says how many.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lczscale.errors import SourceError
from lczscale.io.stores import filesystem

log = logging.getLogger(__name__)

# The declared columns (dClimate tessera_embeddings.storage.registry); the ones read here first.
SCHEMA = pa.schema([
    pa.field("tile", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("assembled_at", pa.string(), nullable=False),
    pa.field("embedded", pa.bool_(), nullable=False),
    pa.field("eligible_px", pa.int64()),
    pa.field("chunk_px", pa.int64()),
    pa.field("refused_px", pa.int64()),
    pa.field("refused_no_optical_px", pa.int64()),
    pa.field("refused_thin_px", pa.int64()),
    pa.field("refused_no_radar_px", pa.int64()),
    pa.field("px_with_any_optical", pa.int64()),
    pa.field("obs_max", pa.int64()),
    pa.field("median_obs_where_any", pa.float64()),
    pa.field("median_obs_where_thin", pa.float64()),
    pa.field("px_with_any_radar", pa.int64()),
    pa.field("radar_rule_enforced", pa.bool_()),
    pa.field("optical_min_obs", pa.int64()),
    pa.field("bbox_west", pa.float64()),
    pa.field("bbox_south", pa.float64()),
    pa.field("bbox_east", pa.float64()),
    pa.field("bbox_north", pa.float64()),
    pa.field("code_version", pa.string()),
    pa.field("code_commit", pa.string()),
])
COLUMNS = ("tile", "run_id", "assembled_at", "embedded", "refused_px", "chunk_px",
           "bbox_west", "bbox_south", "bbox_east", "bbox_north")


def registry_url(store_url: str) -> str:
    """``…/dclimate.registry`` beside ``…/dclimate.icechunk`` (``X.icechunk`` → ``X.registry``)."""
    base = store_url.rstrip("/")
    stem = base[: -len(".icechunk")] if base.endswith(".icechunk") else base
    return f"{stem}.registry"


def latest_rows(url: str, storage_options: dict[str, Any] | None, zone: str,
                year: int) -> list[dict[str, Any]] | None:
    """The registry rows of one zone group and year, one per tile (its latest run); None when
    there is no registry or no part for that zone and year (the caller asks the store)."""
    fs, root = filesystem(url, storage_options)
    folder = f"{root.rstrip('/')}/parts/zone={zone}/year={year}"
    try:
        if not fs.isdir(folder):
            return None
        files = sorted(p for p in fs.ls(folder, detail=False) if str(p).endswith(".parquet"))
    except (FileNotFoundError, PermissionError):
        return None
    if not files:
        return None
    best: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            with fs.open(path, "rb") as fh:
                table = pq.read_table(fh, columns=list(COLUMNS))
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise SourceError(
                f"registry part {path} cannot be read as the dClimate registry's Parquet "
                f"({type(exc).__name__}: {exc}); repair or remove it — planning then asks the "
                "store's chunk index instead"
            ) from exc
        for row in table.to_pylist():
            when = _when(row["assembled_at"], path)
            current = best.get(row["tile"])
            if current is None or when > current["_when"]:
                best[row["tile"]] = row | {"_when": when}
    return list(best.values())


def _when(text: str, path: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise SourceError(f"registry part {path} has assembled_at {text!r}, not an ISO-8601 "
                          "time; the registry is damaged") from None


def shard_of(tile: str) -> tuple[int, int]:
    """``chunk_<sy>_<sx>`` → (sy, sx)."""
    parts = tile.split("_")
    if len(parts) != 3 or parts[0] != "chunk" or not all(p.isdigit() for p in parts[1:]):
        raise SourceError(f"registry tile label {tile!r} is not chunk_<shard_y>_<shard_x>")
    return int(parts[1]), int(parts[2])


def embedded_shards(url: str, storage_options: dict[str, Any] | None, zone: str,
                    year: int) -> set[tuple[int, int]] | None:
    """Shards (sy, sx) of a zone group whose latest row says embedded; None: no registry."""
    rows = latest_rows(url, storage_options, zone, year)
    if rows is None:
        return None
    log.info("%s: %d tiles of %s/%d from the registry", url, len(rows), zone, year)
    return {shard_of(r["tile"]) for r in rows if r["embedded"]}


def meets_bbox(row: dict[str, Any], bbox: tuple[float, float, float, float]) -> bool:
    """Whether a row's WGS84 bbox meets ``bbox`` (MINLON > MAXLON crosses the antimeridian,
    on either side: the row's own ``bbox_west > bbox_east`` means the same)."""
    w, s, e, n = (row[k] for k in ("bbox_west", "bbox_south", "bbox_east", "bbox_north"))
    if None in (w, s, e, n) or n < bbox[1] or s > bbox[3]:
        return False
    return any(_overlap(a, b) for a in _spans(w, e) for b in _spans(bbox[0], bbox[2]))


def _spans(west: float, east: float) -> list[tuple[float, float]]:
    return [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
