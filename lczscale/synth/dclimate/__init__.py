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

Modules: ``spec`` (the formats' shared facts: sizes, extents, array names, root attributes),
``zone_groups`` (the N/S groups and their attributes), ``pixel_values`` (what a city-year
stores), ``icechunk_store`` and ``registry`` (the first writer), ``plain_copy`` (the second).
"""

from __future__ import annotations

from lczscale.synth.dclimate.icechunk_store import write_tessera_icechunk
from lczscale.synth.dclimate.plain_copy import write_tessera_plain_zarr
from lczscale.synth.dclimate.registry import shard_bbox_wgs84
from lczscale.synth.dclimate.spec import (
    ICECHUNK_DIR,
    PLAIN_DIR,
    PRODUCTS,
    REGISTRY_DIR,
    REGISTRY_SCHEMA,
    TIME_YEARS,
)
from lczscale.synth.dclimate.zone_groups import (
    HemisphereGroup,
    equator_city,
    equator_row,
    hemisphere_groups,
)

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
