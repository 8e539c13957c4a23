"""The AlphaEarth COG indexes: which files exist, for which year, where, with what extent.

Two index forms (shared/reference/data-formats.md §2.4): ``aef_index.parquet`` (GeoParquet,
UTM bounds per file in ``utm_west`` … ``utm_north``) and the static STAC collection
``aef_index_stac_geoparquet.parquet`` (asset ``data``; CRS and bounds from ``proj:`` fields, or
from each COG's header when absent). Index paths may be ``gs://``, ``s3://``, ``https://`` or
relative to the index.

Years: the published indexes span 2017–2025 in one file (the Source Cooperative copy has
missed some years at times — data-formats §2.7 — so the years are always taken from the
index). A worker needs one year's files only, so :func:`read_index` filters by year in Arrow
before building any Python object (the full index is ~650k rows), and the result is cached per
process: a source unpickled into many tasks reads its index once.

Mirrors: an index read from a copy (``https://data.source.coop/tge-labs/aef/v1/annual``, or an
S3 mirror) lists the canonical paths of the publisher (``s3://us-west-2.opendata.source.coop/…``,
``gs://alphaearth_foundations/…``). When the copy holds the files too (checked once, on the
first file), they are read from the copy — where the user pointed — not from the publisher.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from affine import Affine
from pyproj import Transformer

from lczscale.core.grid import UTM_X0, UTM_Y_TOP, Window, Zone
from lczscale.errors import ConfigError, SourceError
from lczscale.io.cog_files import locate, opened
from lczscale.io.sources.aef_warp import AEF_RESOLUTION
from lczscale.io.stores import exists, filesystem, is_remote, local_path

log = logging.getLogger(__name__)

INDEX = "aef_index.parquet"
STAC_INDEX = "aef_index_stac_geoparquet.parquet"
SOUTH_OFFSET = 10_000_000.0  # true southern northing − canonical (EPSG:326NN) northing
INDEX_COLUMNS = ("path", "year", "crs", "utm_west", "utm_south", "utm_east", "utm_north")
STAC_COLUMNS = ("id", "datetime", "start_datetime", "assets", "proj:code", "proj:epsg",
                "proj:bbox")
# Where the publishers keep the COGs; an index copied elsewhere still lists these paths.
PUBLISHED = ("s3://us-west-2.opendata.source.coop/", "gs://alphaearth_foundations/")
FIX = "re-download the file, or rebuild the index so that it lists only intact AEF COGs"


@dataclass(frozen=True)
class AefFile:
    """One COG: where it is, its year, and its extent in its own UTM CRS (true northings)."""

    href: str
    year: int
    crs: str
    bounds: tuple[float, float, float, float]  # west, south, east, north

    @property
    def epsg(self) -> int:
        """The numeric EPSG code of the file's own CRS (326NN or 327NN)."""
        return int(self.crs.split(":")[1])

    @property
    def number(self) -> int:
        """The UTM zone number."""
        return self.epsg % 100

    @property
    def south(self) -> bool:
        """Whether the CRS is a southern-hemisphere one (EPSG:327NN, true northings)."""
        return self.epsg // 100 == 327

    @property
    def zone_label(self) -> str:
        """The zone as the index and the logs name it, e.g. ``33N``."""
        return f"{self.number}{'S' if self.south else 'N'}"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the COG at 10 m, from its bounds."""
        w, s, e, n = self.bounds
        return round((n - s) / AEF_RESOLUTION), round((e - w) / AEF_RESOLUTION)

    @property
    def canonical(self) -> Affine:
        """Top-down 10 m transform in the canonical zone CRS (EPSG:326NN)."""
        north = self.bounds[3] - (SOUTH_OFFSET if self.south else 0.0)
        return Affine(AEF_RESOLUTION, 0.0, self.bounds[0], 0.0, -AEF_RESOLUTION, north)

    def window_in(self, zone: Zone) -> Window:
        """The file's pixels as a window of a canonical UTM ``zone``."""
        try:
            row, col = zone.pixel_offset(self.canonical)
        except ConfigError as exc:
            raise SourceError(
                f"{self.href} ({self.crs}, bounds {self.bounds}) is not on the 10 m lattice of "
                f"zone {zone.name}: {exc}"
            ) from None
        return Window(row, col, *self.shape)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """WGS84 box of the file (edges densified: they curve in lon/lat)."""
        w, s, e, n = _to_lonlat(self.crs).transform_bounds(*self.bounds, densify_pts=21)
        return float(w), float(s), float(e), float(n)


@functools.cache
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def make_file(href: str, year: int, crs: Any, bounds: Iterable[float], where: str) -> AefFile:
    """An AefFile, checked: a UTM WGS84 CRS and 10 m-aligned, non-empty bounds."""
    code = str(crs).upper()
    if code.isdigit():
        code = f"EPSG:{code}"
    epsg = int(code.split(":")[1]) if code.startswith("EPSG:") and code[5:].isdigit() else 0
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise SourceError(
            f"{where}: {href} has CRS {crs!r}; AlphaEarth COGs are in WGS 84 / UTM "
            "(EPSG:326NN or 327NN); is this an AlphaEarth index?"
        )
    b = tuple(float(v) for v in bounds)
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= b[0] or b[3] <= b[1]:
        raise SourceError(f"{where}: {href} has invalid UTM bounds {b} (west, south, east, north)")
    f = AefFile(href, int(year), f"EPSG:{epsg}", b)
    size = ((b[3] - b[1]) / AEF_RESOLUTION, (b[2] - b[0]) / AEF_RESOLUTION)
    if any(abs(v - round(v)) > 1e-6 for v in (*size, (b[0] - UTM_X0) / AEF_RESOLUTION,
                                               (UTM_Y_TOP - b[3]) / AEF_RESOLUTION)):
        raise SourceError(
            f"{where}: {href} bounds {b} are not whole 10 m pixels on the UTM zone's 10 m "
            "lattice, as AlphaEarth files are; the index or the file is not AEF"
        )
    return f


def resolve_href(href: str, base: str | None) -> str:
    """An index path made absolute: URLs and absolute paths as they are, relative paths under
    ``base`` (the index's directory)."""
    if "://" in href or href.startswith("/"):
        return href
    if base is None:
        raise SourceError(
            f"asset href {href!r} is relative but no base URL was given to resolve it against"
        )
    return f"{base.rstrip('/')}/{href.removeprefix('./')}"


def parent(url: str) -> str:
    """The URL's directory (the last path element removed)."""
    return url.rstrip("/").rsplit("/", 1)[0]


def mirrored(href: str, index_dir: str) -> str | None:
    """``href`` (at a :data:`PUBLISHED` location) under a remote copy's ``index_dir``: the
    path after the directory's last two names (e.g. ``v1/annual``) where ``href`` has them too;
    None when it is not such a path."""
    origin = next((p for p in PUBLISHED if href.startswith(p)), None)
    if origin is None or not is_remote(index_dir) or index_dir.startswith(PUBLISHED):
        return None
    base = index_dir.rstrip("/")
    tail = base.split("://", 1)[1].split("/")[-2:]
    parts = href[len(origin):].split("/")
    for i in range(len(parts) - len(tail)):
        if parts[i:i + len(tail)] == tail:
            return f"{base}/{'/'.join(parts[i + len(tail):])}"
    return None


def find_index(url: str, storage_options: dict[str, Any] | None) -> tuple[str, str] | None:
    """(index URL, "aef" | "stac") for a directory holding an AEF index or an index file."""
    url = url.rstrip("/")
    name = url.rsplit("/", 1)[-1]
    if name.endswith(".parquet"):  # an index file given directly: judged by its columns
        if not exists(url, storage_options):
            return None
        fs, path = filesystem(url, storage_options)
        try:
            names = set(pq.read_schema(path, filesystem=fs).names)
        except (pa.ArrowInvalid, OSError):
            return None
        if set(INDEX_COLUMNS) <= names:
            return url, "aef"
        return (url, "stac") if {"assets", "id"} <= names else None
    for candidate, kind in ((INDEX, "aef"), (STAC_INDEX, "stac")):
        if exists(f"{url}/{candidate}", storage_options):
            return f"{url}/{candidate}", kind
    return None


def read_table(url: str, storage_options: dict[str, Any] | None,
               columns: Iterable[str] | None = None) -> pa.Table:
    """The ``columns`` of a Parquet index that it has (all when None); an unreadable or missing
    index is a SourceError naming it, a transient I/O error propagates."""
    fs, path = filesystem(url, storage_options)
    try:
        names = pq.read_schema(path, filesystem=fs).names
        cols = None if columns is None else [c for c in columns if c in names]
        return pq.read_table(path, filesystem=fs, columns=cols)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise
        raise SourceError(f"cannot read the AlphaEarth index {url} as Parquet: {exc}") from exc


def _years_of(column: pa.ChunkedArray) -> list[int | None]:
    """Calendar years of a timestamp, date, integer or ISO-string column (nulls stay None)."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return [None if y is None else int(y) for y in pc.year(column).to_pylist()]
    if pa.types.is_integer(t):
        return [None if y is None else int(y) for y in column.to_pylist()]
    return [int(str(s)[:4]) if s is not None and str(s)[:4].isdigit() else None
            for s in column.to_pylist()]


def table_years(table: pa.Table, url: str) -> list[int]:
    """Each row's year: ``year`` (aef index), else STAC ``datetime`` where set and
    ``start_datetime`` where not (annual items may carry only the range)."""
    years: list[int | None] = [None] * table.num_rows
    for col in ("year", "datetime", "start_datetime"):
        if col in table.column_names:
            years = [y if y is not None else v
                     for y, v in zip(years, _years_of(table.column(col)), strict=True)]
    missing = sum(y is None for y in years)
    if missing:
        raise SourceError(f"{url}: {missing} of {table.num_rows} entries have no year (no "
                          "'year', 'datetime' or 'start_datetime' value); fix the index")
    return years  # type: ignore[return-value]


def _for_year(table: pa.Table, years: list[int], year: int | None) -> tuple[pa.Table, list[int]]:
    if year is None:
        return table, years
    keep = pa.array([y == year for y in years])
    return table.filter(keep), [year] * int(pc.sum(keep).as_py() or 0)


def _stac_hrefs(table: pa.Table, url: str) -> list[str]:
    assets = table.column("assets").combine_chunks()
    keys = [assets.type.field(i).name for i in range(assets.type.num_fields)]
    if "data" not in keys:
        raise SourceError(
            f"{url}: the STAC items have assets {keys} but no 'data' asset (the AEF COG); "
            "is this the AlphaEarth stac-geoparquet index?"
        )
    return [str(h) for h in pc.struct_field(assets, ["data", "href"]).to_pylist()]


def _aef_records(url: str, opts: dict[str, Any] | None, year: int | None) -> list[dict[str, Any]]:
    table = read_table(url, opts, INDEX_COLUMNS)
    missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
    if missing:
        raise SourceError(
            f"{url} lacks columns {missing} (found {table.column_names}); an AlphaEarth "
            f"index has {', '.join(INDEX_COLUMNS)}"
        )
    table, years = _for_year(table, table_years(table, url), year)
    rows = table.to_pydict()
    return [{"href": str(p), "year": y, "crs": c, "bounds": b}
            for p, y, c, *b in zip(rows["path"], years, rows["crs"],
                                   *(rows[k] for k in INDEX_COLUMNS[3:]), strict=True)]


def _stac_records(url: str, opts: dict[str, Any] | None, year: int | None) -> list[dict[str, Any]]:
    table = read_table(url, opts, STAC_COLUMNS)
    if "assets" not in table.column_names or not {"datetime", "start_datetime"} & set(
        table.column_names
    ):
        raise SourceError(
            f"{url} is not a stac-geoparquet file (no 'assets' or 'datetime' column; found "
            f"{table.column_names})"
        )
    table, years = _for_year(table, table_years(table, url), year)
    n = table.num_rows
    codes = (table.column("proj:code").to_pylist() if "proj:code" in table.column_names
             else [None] * n)
    if "proj:epsg" in table.column_names:
        codes = [c or (f"EPSG:{e}" if e else None)
                 for c, e in zip(codes, table.column("proj:epsg").to_pylist(), strict=True)]
    boxes = (table.column("proj:bbox").to_pylist() if "proj:bbox" in table.column_names
             else [None] * n)
    return [{"href": h, "year": y, "crs": c, "bounds": b}
            for h, y, c, b in zip(_stac_hrefs(table, url), years, codes, boxes, strict=True)]


def _rebase(records: list[dict[str, Any]], index_dir: str, opts: dict[str, Any] | None
            ) -> list[dict[str, Any]]:
    """Relative paths resolved; published paths moved to the copy the index is in when that
    copy has the first of them (one existence check per index read)."""
    for r in records:
        r["href"] = resolve_href(r["href"], index_dir)
    first = mirrored(records[0]["href"], index_dir) if records else None
    if first is None or not exists(first, opts):
        return records
    for r in records:
        r["href"] = mirrored(r["href"], index_dir) or r["href"]
    return records


def _options_key(url: str, opts: dict[str, Any] | None) -> str:
    """Cache key part for an index: its options and, for a local file, its size and time."""
    stamp: tuple[int, int] | None = None
    if not is_remote(url):
        st = local_path(url).stat()
        stamp = (st.st_size, st.st_mtime_ns)
    return json.dumps([opts or {}, stamp], sort_keys=True, default=str)


def _field(asset: Any, name: str) -> Any:
    return asset.get(name) if isinstance(asset, Mapping) else getattr(asset, name, None)


def header_extent(href: str, storage_options: dict[str, Any] | None
                  ) -> tuple[str, tuple[float, float, float, float]]:
    """(CRS, true bounds) from a COG's header (one small ranged read)."""
    with opened(locate(href, storage_options), "AlphaEarth COG", FIX) as ds:
        epsg = ds.crs.to_epsg() if ds.crs else None
        return f"EPSG:{epsg}", true_bounds(ds)


def files_from_assets(
    assets: Iterable[Any], where: str, storage_options: dict[str, Any] | None,
    base_url: str | None,
) -> list[AefFile]:
    """AefFiles of asset records — mappings or objects (e.g. ``stac.StacAsset``) with ``href``,
    ``year`` and optionally ``crs`` and ``bounds`` (UTM, in that CRS). Without bounds, CRS and
    bounds come from the COG's header (one small ranged read per file); a lon/lat ``bbox`` is
    never taken for them."""
    out = []
    unknown = 0
    for a in assets:
        if isinstance(a, AefFile):
            out.append(a)
            continue
        href = resolve_href(str(_field(a, "href")), base_url)
        crs, bounds = _field(a, "crs"), _field(a, "bounds")
        if not crs or bounds is None:
            unknown += 1
            crs, bounds = header_extent(href, storage_options)
        out.append(make_file(href, int(_field(a, "year")), crs, bounds, where))
    if unknown:
        log.info("%s: read CRS and bounds of %d COGs from their headers", where, unknown)
    return out


@functools.lru_cache(maxsize=32)
def _cached_files(url: str, kind: str, key: str, year: int | None) -> tuple[AefFile, ...]:
    opts = json.loads(key)[0] or None
    records = (_aef_records if kind == "aef" else _stac_records)(url, opts, year)
    files = files_from_assets(_rebase(records, parent(url), opts), url, opts, None)
    return tuple(sorted(files, key=lambda f: f.href))


def read_index(url: str, kind: str, storage_options: dict[str, Any] | None,
               year: int | None = None) -> tuple[AefFile, ...]:
    """The files an index lists for ``year`` (every year for None), sorted by href; relative
    paths resolved against the index's directory. Cached per process."""
    return _cached_files(url, kind, _options_key(url, storage_options), year)


@functools.lru_cache(maxsize=32)
def _cached_years(url: str, key: str) -> tuple[int, ...]:
    opts = json.loads(key)[0] or None
    table = read_table(url, opts, ("year", "datetime", "start_datetime"))
    return tuple(sorted(set(table_years(table, url))))


def index_years(url: str, storage_options: dict[str, Any] | None) -> list[int]:
    """The years an index lists, from its year/datetime columns alone (cached per process)."""
    return list(_cached_years(url, _options_key(url, storage_options)))


def true_bounds(ds: Any) -> tuple[float, float, float, float]:
    """(west, south, east, north) from a header, bottom-up or top-down (rasterio's ``bounds``
    swaps south and north for bottom-up files)."""
    t, h, w = ds.transform, ds.height, ds.width
    y0, y1 = t.f, t.f + t.e * h
    return t.c, min(y0, y1), t.c + t.a * w, max(y0, y1)
