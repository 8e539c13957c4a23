"""Is my area covered, and how well? Asked of a TESSERA v1.1 store before paying for a run.

Per zone group the AOI touches: whether the year is in ``years_complete``, and how many of its
2048 px tiles meet the AOI, are embedded, and what share of their pixels the depth rule refused.
From the registry when the store has one (a filter over one zone-year's Parquet parts, with the
antimeridian rows handled), else from the store's own chunk index (embedded tiles only; the
refused share is then unknown).
"""

from __future__ import annotations

from typing import Any

from lczscale.config import GridConfig
from lczscale.core.grid import Aoi, zones_for_aoi
from lczscale.errors import ConfigError, NoDataError
from lczscale.io.sources.dclimate_registry import latest_rows, meets_bbox, registry_url
from lczscale.io.sources.protocol import EmbeddingSource
from lczscale.io.sources.tessera_icechunk import TesseraIcechunkSource


def coverage(source: EmbeddingSource, aoi: Aoi, year: int) -> list[dict[str, Any]]:
    """One row per zone group the AOI touches (see the module docstring)."""
    if not isinstance(source, TesseraIcechunkSource):
        raise ConfigError(
            f"coverage reads the TESSERA v1.1 Icechunk store and its registry; {source.url} is "
            f"layout {source.layout} — map it with --bbox and read `lczscale status` instead"
        )
    rows: list[dict[str, Any]] = []
    bbox = aoi.bbox
    for zone, part in zones_for_aoi(aoi, GridConfig()):
        within = zone.bounding_window(part)
        for p in source._parts(zone):
            if within is None or within.intersection(p.owned) is None:
                continue
            row: dict[str, Any] = {"zone": p.group, "year": year,
                                   "years_complete": list(p.complete),
                                   "complete": year in p.complete}
            found = latest_rows(registry_url(source.url), source.storage_options, p.group, year)
            if found is not None:
                hit = [r for r in found if meets_bbox(r, bbox)]
                px = sum(int(r["chunk_px"] or 0) for r in hit)
                row |= {"from": "registry", "tiles": len(hit),
                        "embedded": sum(bool(r["embedded"]) for r in hit),
                        "refused_share": (sum(int(r["refused_px"] or 0) for r in hit) / px
                                          if px else None)}
            elif row["complete"]:
                avail = source.availability(zone, year, within.intersection(p.owned))
                row |= {"from": "chunk index", "tiles": None, "embedded": None,
                        "blocks_with_data": len(avail.blocks), "refused_share": None}
            rows.append(row)
    if not rows:
        raise NoDataError(f"{source.url} has no zone group under the AOI {bbox}")
    return rows
