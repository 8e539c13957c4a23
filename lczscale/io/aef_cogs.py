"""AlphaEarth (AEF) annual embeddings as the published UTM COGs, found through their index.

Layout (shared/reference/data-formats.md §2.2–2.4): ``{year}/{zone}{N|S}/{id}-{off}-{off}.tiff``,
64 int8 bands, nodata −128, one UTM CRS per file (EPSG:326NN north, 327NN south with true
northings), listed in ``aef_index.parquet`` (UTM bounds per file) or in the static STAC
collection ``aef_index_stac_geoparquet.parquet`` (asset ``data``). Index paths may be ``gs://``,
``s3://``, ``https://`` or relative to the index; they are opened through fsspec.

On the ``utm`` grid a file is read natively: its pixels sit on the canonical 10 m zone lattice
(EPSG:326NN in both hemispheres, southern northings − 10,000,000), so no resampling. Files may be
stored **bottom-up** (positive y resolution: the Source Cooperative copies) or top-down; the
transform's sign decides, and bottom-up rows are read from the mirrored range and reversed.
On the ``global`` grid (EPSG:4326) each pixel is the nearest UTM pixel, by the one rule in
:mod:`lczscale.io.aef_warp` — the rule the global mosaic was built with.

Validity: a pixel is data unless its codes are −128. AEF writes −128 in all bands or none (the
quantiser clips to ±127), so a pixel with −128 in *some* bands is damaged input and the read
raises :class:`~lczscale.errors.SourceError` naming the file (a silently half-masked vector
would be garbage). Where two files of a zone overlap, the first in path order that has data
wins. Outside every file: codes 0, invalid. AEF has embeddings over water too, so ``water`` is
always False.

Planning (``availability``) uses the index bounds only, never pixels. A missing, zero-byte,
truncated or non-AEF file (≠ 64 bands, not int8, header disagreeing with the index) raises a
SourceError naming the file when it is first read.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.errors import RasterioIOError

from lczscale.errors import ConfigError, NoDataError, SourceError
from lczscale.grid import UTM_X0, UTM_Y_TOP, Window, Zone
from lczscale.io.aef_warp import AEF_RESOLUTION, sample_nearest
from lczscale.io.source import EmbeddingWindow, identity
from lczscale.io.stores import exists, filesystem, is_remote
from lczscale.plan import Availability

log = logging.getLogger(__name__)

DATASET = "alphaearth/v1"  # the feature space; the global mosaic reports the same
BANDS = 64
NODATA = -128
INDEX = "aef_index.parquet"
STAC_INDEX = "aef_index_stac_geoparquet.parquet"
SOUTH_OFFSET = 10_000_000.0  # true southern northing − canonical (EPSG:326NN) northing
UTM_BLOCK = 1024  # availability lattice on UTM zones (files need not share one lattice)
GLOBAL_BLOCK = 4096  # … and on the global zone (the mosaic's shard)
INDEX_COLUMNS = ("path", "year", "crs", "utm_west", "utm_south", "utm_east", "utm_north")
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
        return int(self.crs.split(":")[1])

    @property
    def number(self) -> int:
        return self.epsg % 100

    @property
    def south(self) -> bool:
        return self.epsg // 100 == 327

    @property
    def zone_label(self) -> str:
        return f"{self.number}{'S' if self.south else 'N'}"

    @property
    def shape(self) -> tuple[int, int]:
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
    f = AefFile(href, int(year), f"EPSG:{epsg}", b)  # type: ignore[arg-type]
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


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


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


def _read_table(url: str, storage_options: dict[str, Any] | None,
                columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url, storage_options)
    try:
        names = pq.read_schema(path, filesystem=fs).names
        cols = None if columns is None else [c for c in columns if c in names]
        return pq.read_table(path, filesystem=fs, columns=cols)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise
        raise SourceError(f"cannot read the AlphaEarth index {url} as Parquet: {exc}") from exc


def _stac_hrefs(table: pa.Table, url: str) -> list[str]:
    assets = table.column("assets").combine_chunks()
    if "data" not in [assets.type.field(i).name for i in range(assets.type.num_fields)]:
        keys = [assets.type.field(i).name for i in range(assets.type.num_fields)]
        raise SourceError(
            f"{url}: the STAC items have assets {keys} but no 'data' asset (the AEF COG); "
            "is this the AlphaEarth stac-geoparquet index?"
        )
    return [str(h) for h in pc.struct_field(assets, ["data", "href"]).to_pylist()]


def _stac_years(table: pa.Table) -> list[int]:
    col = "datetime" if "datetime" in table.column_names else "start_datetime"
    return [int(y) for y in pc.year(table.column(col)).to_pylist()]


def read_index(url: str, kind: str, storage_options: dict[str, Any] | None) -> list[AefFile]:
    """The files an index lists (relative paths resolved against the index's directory)."""
    base = _parent(url)
    if kind == "aef":
        table = _read_table(url, storage_options, list(INDEX_COLUMNS))
        missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
        if missing:
            raise SourceError(
                f"{url} lacks columns {missing} (found {table.column_names}); an AlphaEarth "
                f"index has {', '.join(INDEX_COLUMNS)}"
            )
        rows = table.to_pydict()
        return [
            make_file(resolve_href(str(p), base), y, c, b, url)
            for p, y, c, *b in zip(*(rows[k] for k in INDEX_COLUMNS), strict=True)
        ]
    table = _read_table(url, storage_options, [
        "id", "datetime", "start_datetime", "assets", "proj:code", "proj:epsg", "proj:bbox"])
    if "assets" not in table.column_names or not {"datetime", "start_datetime"} & set(
        table.column_names
    ):
        raise SourceError(
            f"{url} is not a stac-geoparquet file (no 'assets' or 'datetime' column; found "
            f"{table.column_names})"
        )
    hrefs = [resolve_href(h, base) for h in _stac_hrefs(table, url)]
    years = _stac_years(table)
    codes = (table.column("proj:code").to_pylist() if "proj:code" in table.column_names
             else [None] * len(hrefs))
    if "proj:epsg" in table.column_names:
        codes = [c or (f"EPSG:{e}" if e else None)
                 for c, e in zip(codes, table.column("proj:epsg").to_pylist(), strict=True)]
    boxes = (table.column("proj:bbox").to_pylist() if "proj:bbox" in table.column_names
             else [None] * len(hrefs))
    records = [{"href": h, "year": y, "crs": c, "bounds": b}
               for h, y, c, b in zip(hrefs, years, codes, boxes, strict=True)]
    return files_from_assets(records, url, storage_options, None)


def _field(asset: Any, name: str) -> Any:
    return asset.get(name) if isinstance(asset, Mapping) else getattr(asset, name, None)


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
            crs, bounds = _header_extent(href, storage_options)
        out.append(make_file(href, int(_field(a, "year")), crs, bounds, where))
    if unknown:
        log.info("%s: read CRS and bounds of %d COGs from their headers", where, unknown)
    return out


# rasterio's bridge from GDAL to Python file objects (``opener=``) is not thread-safe
# (rasterio issue #3636: concurrent opens fail as "not recognized as being in a supported file
# format"), and a dataset closed after its file object is gone can crash the process. Remote COGs
# are therefore opened, read and closed in one step, under one process-wide lock; local files
# are opened natively and their handles cached per thread.
_OPENER_LOCK = threading.Lock()
_BLOCK = 1 << 20  # fsspec read block: about one compressed 1024² tile of one band


def _open_dataset(href: str, storage_options: dict[str, Any] | None) -> Any:
    """An opened rasterio dataset, or a SourceError saying why the file cannot be one (remote
    files only under ``_OPENER_LOCK``)."""
    try:
        fs, path = filesystem(href, storage_options)
    except ImportError as exc:  # e.g. gs:// paths (the GCS index) without gcsfs
        raise SourceError(
            f"cannot open {href}: {exc}; install that fsspec backend, or use an index whose "
            "paths it can open (the Source Cooperative copy lists s3:// paths; GCS objects are "
            "also at https://storage.googleapis.com/<bucket>/<key>)"
        ) from exc
    try:
        if is_remote(href):
            def opener(p: str, mode: str = "rb", **kw: Any) -> Any:
                return fs.open(p, mode, block_size=_BLOCK, cache_type="blockcache", **kw)

            return rasterio.open(path, opener=opener)
        return rasterio.open(path)
    except RasterioIOError as exc:
        if not fs.exists(path):
            raise SourceError(f"{href} is listed as an AlphaEarth COG but does not exist; "
                              f"{FIX}") from None
        size = fs.size(path)
        what = "is empty (zero bytes)" if size == 0 else f"({size} bytes) is not a readable GeoTIFF"
        raise SourceError(f"AlphaEarth COG {href} {what}: {exc}; {FIX}") from exc


@contextmanager
def open_cog(href: str, storage_options: dict[str, Any] | None) -> Iterator[Any]:
    """A dataset open for the ``with`` block (remote ones holding the opener lock)."""
    with _OPENER_LOCK if is_remote(href) else nullcontext():
        ds = _open_dataset(href, storage_options)
        try:
            yield ds
        finally:
            ds.close()


def _true_bounds(ds: Any) -> tuple[float, float, float, float]:
    """(west, south, east, north) from a header, bottom-up or top-down (rasterio's ``bounds``
    swaps south and north for bottom-up files)."""
    t, h, w = ds.transform, ds.height, ds.width
    y0, y1 = t.f, t.f + t.e * h
    return t.c, min(y0, y1), t.c + t.a * w, max(y0, y1)


def _header_extent(href: str, storage_options: dict[str, Any] | None) -> tuple[str, tuple]:
    with open_cog(href, storage_options) as ds:
        epsg = ds.crs.to_epsg() if ds.crs else None
        return f"EPSG:{epsg}", _true_bounds(ds)


def check_header(ds: Any, f: AefFile) -> bool:
    """Validate an opened COG against AEF and its index entry; True when stored bottom-up."""
    if ds.count != BANDS or any(d != "int8" for d in ds.dtypes):
        raise SourceError(
            f"{f.href} has {ds.count} bands of {sorted(set(ds.dtypes))}; AlphaEarth COGs have "
            f"{BANDS} int8 bands (A00..A63): this file is not AEF v1 embeddings (another "
            "dataset, or an export with the wrong dimension); remove it from the index"
        )
    t = ds.transform
    if t.b or t.d or t.a <= 0 or abs(abs(t.e) - AEF_RESOLUTION) > 1e-9 or abs(
        t.a - AEF_RESOLUTION
    ) > 1e-9:
        raise SourceError(
            f"{f.href} has transform {tuple(t)[:6]}; AlphaEarth COGs are north-up 10 m grids "
            "(top-down or bottom-up)"
        )
    epsg = ds.crs.to_epsg() if ds.crs else None
    bounds = _true_bounds(ds)
    if epsg != f.epsg or any(abs(a - b) > 1e-6 for a, b in zip(bounds, f.bounds, strict=True)):
        raise SourceError(
            f"{f.href}: the index says {f.crs} bounds {f.bounds} but the file header says "
            f"EPSG:{epsg} bounds {bounds}; the index and the file disagree — {FIX}"
        )
    if ds.nodata is not None and ds.nodata != NODATA:
        raise SourceError(f"{f.href} declares nodata {ds.nodata}; AlphaEarth uses {NODATA}")
    return bool(t.e > 0)


class AefCogSource:
    """Reads AEF COGs through their index; pickles as its address (plus asset records when
    built from STAC items), never handles or credentials."""

    kind = "alphaearth"
    layout = "aef-cogs"
    grid_kinds: tuple[str, ...] = ("utm", "global")

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 files: Iterable[AefFile] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self._given = None if files is None else tuple(files)
        self._local = threading.local()

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What an ``aef_index.parquet`` / ``aef_index_stac_geoparquet.parquet`` lists."""
        found = find_index(url, storage_options)
        if found is None:
            return None
        index, kind = found
        name = index.rsplit("/", 1)[-1]
        try:
            if kind == "aef":
                t = _read_table(index, storage_options, ["year", "utm_zone", "crs"])
                years = sorted({int(y) for y in t.column("year").to_pylist()})
                col = "utm_zone" if "utm_zone" in t.column_names else "crs"
                zones = sorted({str(z) for z in t.column(col).to_pylist()})
            else:
                t = _read_table(index, storage_options, ["datetime", "start_datetime"])
                years, zones = sorted(set(_stac_years(t))), []
        except (SourceError, KeyError) as exc:
            return f"AlphaEarth COG index {name} (unreadable: {exc})"
        span = f"{years[0]}..{years[-1]}" if years else "none"
        where = f", zones {', '.join(zones[:8])}{' …' if len(zones) > 8 else ''}" if zones else ""
        return (f"AlphaEarth COGs ({name}: {t.num_rows} files, years {span}{where}; 64-d int8, "
                "sign-square de-quantised)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> AefCogSource:
        source = cls(url, storage_options)
        source._validate()
        return source

    @classmethod
    def from_assets(
        cls, url: str, assets: Iterable[Any],
        storage_options: dict[str, Any] | None = None, base_url: str | None = None,
    ) -> AefCogSource:
        """A source over given COGs (records or objects with href, year and optionally crs and
        UTM bounds, e.g. from STAC items); ``url`` names the collection in messages,
        ``base_url`` resolves relative hrefs."""
        files = files_from_assets(assets, url, storage_options, base_url)
        source = cls(url, storage_options, files)
        source._validate()
        return source

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "files": self._given}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["files"])  # type: ignore[misc]

    def _validate(self) -> None:
        if not self.files:
            raise SourceError(f"{self.url}: the AlphaEarth index lists no COGs")
        first = self.files[0]
        with open_cog(first.href, self.storage_options) as ds:
            check_header(ds, first)

    @cached_property
    def index(self) -> tuple[str, str] | None:
        """(index URL, kind), or None for a source built from assets."""
        if self._given is not None:
            return None
        found = find_index(self.url, self.storage_options)
        if found is None:
            raise SourceError(
                f"{self.url} holds no {INDEX} or {STAC_INDEX}; point the source at the "
                "directory of an AlphaEarth index (e.g. .../tge-labs/aef/v1/annual) or the "
                "index file itself"
            )
        return found

    @cached_property
    def files(self) -> tuple[AefFile, ...]:
        if self._given is not None:
            return tuple(sorted(self._given, key=lambda f: f.href))
        assert self.index is not None
        return tuple(sorted(read_index(*self.index, self.storage_options), key=lambda f: f.href))

    @cached_property
    def _groups(self) -> dict[tuple[int, int], list[AefFile]]:
        out: dict[tuple[int, int], list[AefFile]] = {}
        for f in self.files:
            out.setdefault((f.number, f.year), []).append(f)
        return out

    @property
    def dimensions(self) -> int:
        return BANDS

    @property
    def dataset(self) -> str:
        return DATASET

    @property
    def years(self) -> list[int]:
        return sorted({f.year for f in self.files})

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        if grid_kind in (None, "utm"):
            return sorted({f"utm{f.number:02d}" for f in self.files})
        return ["global"] if grid_kind == "global" and self.files else []

    def _check_year(self, year: int) -> None:
        if year not in self.years:
            raise NoDataError(f"{self.url} has no AlphaEarth COGs for {year} (years: "
                              f"{self.years}); pass --year with one of them")

    def availability(self, zone: Zone, year: int, within: Window | None = None) -> Availability:
        """Blocks meeting a file of ``year``, from the index bounds alone (no pixel reads)."""
        self._check_year(year)
        if zone.crs == "EPSG:4326":
            block, windows = GLOBAL_BLOCK, [self._global_window(zone, f) for f in self.files
                                            if f.year == year]
        elif _utm_number(zone) is not None:
            block = UTM_BLOCK
            windows = [f.window_in(zone) for f in self._groups.get((_utm_number(zone) or 0,
                                                                    year), [])]
        else:
            return Availability((1, 1), (0, 0), frozenset())
        blocks = {
            (r, c)
            for w in windows
            for r in range(w.row // block, (w.row_stop - 1) // block + 1)
            for c in range(w.col // block, (w.col_stop - 1) // block + 1)
        }
        return Availability((block, block), (0, 0), frozenset(blocks))

    @staticmethod
    def _global_window(zone: Zone, f: AefFile) -> Window:
        """Global-zone pixels that may take a pixel of ``f`` (its lon/lat box + 1 px)."""
        w, s, e, n = f.lonlat_bounds()
        a = zone.affine
        c0, c1 = math.floor((w - a.c) / a.a) - 1, math.ceil((e - a.c) / a.a) + 1
        r0, r1 = math.floor((n - a.f) / a.e) - 1, math.ceil((s - a.f) / a.e) + 1
        return Window(r0, c0, r1 - r0, c1 - c0)

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes and validity of ``window``: native on a UTM zone, nearest-neighbour on the
        global zone; invalid pixels have codes 0."""
        self._check_year(year)
        if zone.crs == "EPSG:4326":
            codes, valid = sample_nearest(
                zone, window, lambda z, w: self._read_utm(z, w, year), BANDS)
        elif _utm_number(zone) is not None:
            codes, valid = self._read_utm(zone, window, year)
        else:
            raise NoDataError(f"{self.url}: zone {zone.name} is neither a UTM zone nor the "
                              "global EPSG:4326 zone")
        water = np.zeros(valid.shape, dtype=bool)
        return EmbeddingWindow(window, codes, None, valid, water, "sign_square")

    def _read_utm(self, zone: Zone, window: Window, year: int) -> tuple[np.ndarray, np.ndarray]:
        codes = np.zeros((BANDS, window.height, window.width), dtype=np.int8)
        valid = np.zeros((window.height, window.width), dtype=bool)
        for f in self._groups.get((_utm_number(zone) or 0, year), []):
            fwin = f.window_in(zone)
            inner = window.intersection(fwin)
            if inner is None:
                continue
            part = self._read_file(f, inner, fwin)
            nodata = part == NODATA
            empty = nodata.all(axis=0)
            mixed = nodata.any(axis=0) & ~empty
            if mixed.any():
                r, c = divmod(int(np.flatnonzero(mixed)[0]), inner.width)
                raise SourceError(
                    f"damaged AlphaEarth COG {f.href}: {int(mixed.sum())} pixels have the "
                    f"nodata code {NODATA} in some bands but not all (first at {zone.name} row "
                    f"{inner.row + r}, col {inner.col + c}); AEF writes {NODATA} in every band "
                    f"or none; {FIX}"
                )
            dst = inner.relative_to(window)
            take = ~empty & ~valid[dst]
            np.copyto(codes[(slice(None), *dst)], part, where=take[None])
            valid[dst] |= take
        return codes, valid

    def _handles(self) -> dict[str, tuple[Any, bool]]:
        cache = getattr(self._local, "handles", None)
        if cache is None:
            cache = self._local.handles = {}
        return cache  # type: ignore[no-any-return]

    @contextmanager
    def _opened(self, f: AefFile, fresh: bool) -> Iterator[tuple[Any, bool]]:
        """(dataset, bottom-up) of a checked file: local ones cached per thread (``fresh``
        drops the cached handle), remote ones opened for this block only."""
        if is_remote(f.href):
            with open_cog(f.href, self.storage_options) as ds:
                yield ds, check_header(ds, f)
            return
        cache = self._handles()
        if fresh and f.href in cache:
            cache.pop(f.href)[0].close()
        if f.href not in cache:
            ds = _open_dataset(f.href, self.storage_options)
            try:
                cache[f.href] = (ds, check_header(ds, f))
            except SourceError:
                ds.close()
                raise
        yield cache[f.href]

    def _read_file(self, f: AefFile, inner: Window, fwin: Window) -> np.ndarray:
        """Top-down codes (band, y, x) of ``inner`` (zone pixels) from file ``f``; a read
        that fails twice (the second time on a fresh handle) is a damaged file."""
        r0, r1 = inner.row - fwin.row, inner.row_stop - fwin.row
        c0, c1 = inner.col - fwin.col, inner.col_stop - fwin.col
        for attempt in (0, 1):
            try:
                with self._opened(f, fresh=attempt > 0) as (ds, bottom_up):
                    rows = (fwin.height - r1, fwin.height - r0) if bottom_up else (r0, r1)
                    data = ds.read(window=(rows, (c0, c1)))
                return np.ascontiguousarray(data[:, ::-1]) if bottom_up else data
            except RasterioIOError as exc:
                if attempt == 0:
                    continue
                raise SourceError(
                    f"AlphaEarth COG {f.href} cannot be read at rows {r0}..{r1 - 1}, cols "
                    f"{c0}..{c1 - 1} (top-down) ({exc}): the file is truncated or damaged; {FIX}"
                ) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the local COGs this thread keeps open (they reopen on the next read)."""
        cache = self._handles()
        while cache:
            ds, _ = cache.popitem()[1]
            ds.close()

    def describe(self) -> dict[str, Any]:
        return {
            **identity(self),
            "index": None if self.index is None else self.index[0].rsplit("/", 1)[-1],
            "files": len(self.files),
            "years": self.years,
            "zones": sorted({f.zone_label for f in self.files},
                            key=lambda z: (int(z[:-1]), z[-1])),
        }


def _utm_number(zone: Zone) -> int | None:
    name = zone.name
    if name.startswith("utm") and name[3:].isdigit():
        return int(name[3:])
    return None
