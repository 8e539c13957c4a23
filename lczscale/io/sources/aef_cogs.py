"""AlphaEarth (AEF) annual embeddings as the published UTM COGs, found through their index.

Layout (shared/reference/data-formats.md §2.2–2.4): ``{year}/{zone}{N|S}/{id}-{off}-{off}.tiff``,
64 int8 bands, nodata −128, one UTM CRS per file (EPSG:326NN north, 327NN south with true
northings), listed in ``aef_index.parquet`` (UTM bounds per file) or in the static STAC
collection ``aef_index_stac_geoparquet.parquet`` (asset ``data``);
:mod:`lczscale.io.sources.aef_index`
reads them, one year at a time. Index paths may be ``gs://``, ``s3://``, ``https://`` or
relative to the index. Remote COGs are read through GDAL's own network file systems, with
endpoints, credentials and the GCS billing project taken from each worker's environment, and
every thread reads with its own handles — no lock (:mod:`lczscale.io.cog_files`).

On the ``utm`` grid a file is read natively: its pixels sit on the canonical 10 m zone lattice
(EPSG:326NN in both hemispheres, southern northings − 10,000,000), so no resampling. Files may be
stored **bottom-up** (positive y resolution: the Source Cooperative copies) or top-down; the
transform's sign decides, and bottom-up rows are read from the mirrored range and reversed.
On the ``global`` grid (EPSG:4326) each pixel is the nearest UTM pixel, by the one rule in
:mod:`lczscale.io.sources.aef_warp` — the rule the global mosaic was built with.

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

import math
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import numpy as np
from rasterio.errors import RasterioIOError

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import NoDataError, SourceError
from lczscale.io.cog_files import (
    NETWORK_FIX,
    REMOTE_HANDLES,
    Handles,
    Location,
    RemoteReadError,
    classify,
    handle_key,
    locate,
    message,
    open_error,
    opened,
)
from lczscale.io.sources.aef_index import (
    FIX,
    INDEX,
    STAC_INDEX,
    AefFile,
    files_from_assets,
    find_index,
    index_years,
    read_index,
    read_table,
    resolve_href,
    table_years,
    true_bounds,
)
from lczscale.io.sources.aef_warp import AEF_RESOLUTION, sample_nearest
from lczscale.io.sources.protocol import EmbeddingWindow, identity

__all__ = ["BANDS", "DATASET", "NODATA", "AefCogSource", "AefFile", "check_header",
           "resolve_href"]

DATASET = "alphaearth/v1"  # the feature space; the global mosaic reports the same
BANDS = 64
NODATA = -128
UTM_BLOCK = 1024  # availability lattice on UTM zones (files need not share one lattice)
GLOBAL_BLOCK = 4096  # … and on the global zone (the mosaic's shard)
WHAT = "AlphaEarth COG"


def check_header(ds: Any, f: AefFile) -> bool:
    """Validate an opened COG against AEF and its index entry; True when stored bottom-up."""
    if ds.count != BANDS or any(d != "int8" for d in ds.dtypes):
        raise SourceError(
            f"{f.href} has {ds.count} bands of {sorted(set(ds.dtypes))}; AlphaEarth COGs have "
            f"{BANDS} int8 bands (A00..A63): this file is not AEF v1 embeddings (another "
            "dataset, or an export with the wrong dimension); remove it from the index"
        )
    t = ds.transform
    if t.is_identity and ds.crs is None:
        raise SourceError(
            f"{f.href} has no georeferencing in its header (a truncated or damaged file, or "
            f"not a GeoTIFF); {FIX}"
        )
    if t.b or t.d or t.a <= 0 or abs(abs(t.e) - AEF_RESOLUTION) > 1e-9 or abs(
        t.a - AEF_RESOLUTION
    ) > 1e-9:
        raise SourceError(
            f"{f.href} has transform {tuple(t)[:6]}; AlphaEarth COGs are north-up 10 m grids "
            "(top-down or bottom-up)"
        )
    epsg = ds.crs.to_epsg() if ds.crs else None
    bounds = true_bounds(ds)
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
        self._handles = Handles()  # local files: per source object
        self._remote_keys: set[str] = set()  # its remote datasets in REMOTE_HANDLES
        self._by_year: dict[int, dict[int, list[AefFile]]] = {}

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What an ``aef_index.parquet`` / ``aef_index_stac_geoparquet.parquet`` lists."""
        found = find_index(url, storage_options)
        if found is None:
            return None
        index, kind = found
        name = index.rsplit("/", 1)[-1]
        try:
            t = read_table(index, storage_options,
                           ["year", "utm_zone", "crs", "datetime", "start_datetime"])
            years = sorted(set(table_years(t, index)))
            zones: list[str] = []
            if kind == "aef":
                col = "utm_zone" if "utm_zone" in t.column_names else "crs"
                zones = sorted({str(z) for z in t.column(col).to_pylist()})
        except (SourceError, KeyError) as exc:
            return f"AlphaEarth COG index {name} (unreadable: {exc})"
        span = f"{years[0]}..{years[-1]}" if years else "none"
        where = f", zones {', '.join(zones[:8])}{' …' if len(zones) > 8 else ''}" if zones else ""
        return (f"AlphaEarth COGs ({name}: {t.num_rows} files, years {span}{where}; 64-d int8, "
                "sign-square de-quantised)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> AefCogSource:
        """The source over the index at ``url``, validated now (the index and its first COG)."""
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
        """The index lists COGs, and the first of the latest year is an AEF COG."""
        years = self.years
        files = self._year_files(years[-1]) if years else ()
        if not files:
            raise SourceError(f"{self.url}: the AlphaEarth index lists no COGs")
        with opened(locate(files[0].href, self.storage_options), WHAT, FIX) as ds:
            check_header(ds, files[0])

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
        """Every file of every year, sorted by href (planning and description only: reads
        take one year's files)."""
        if self._given is not None:
            return tuple(sorted(self._given, key=lambda f: f.href))
        assert self.index is not None
        return read_index(*self.index, self.storage_options)

    def _year_files(self, year: int) -> tuple[AefFile, ...]:
        if self._given is not None or "files" in self.__dict__:
            return tuple(f for f in self.files if f.year == year)
        assert self.index is not None
        return read_index(*self.index, self.storage_options, year)

    def _zone_files(self, number: int, year: int) -> list[AefFile]:
        """The files of UTM zone ``number`` and ``year``, in href order (first one wins)."""
        if year not in self._by_year:
            groups: dict[int, list[AefFile]] = {}
            for f in self._year_files(year):
                groups.setdefault(f.number, []).append(f)
            self._by_year[year] = groups
        return self._by_year[year].get(number, [])

    @property
    def dimensions(self) -> int:
        """AlphaEarth's 64 bands."""
        return BANDS

    @property
    def dataset(self) -> str:
        """The AlphaEarth annual-embeddings feature space (``alphaearth/…``)."""
        return DATASET

    @cached_property
    def years(self) -> list[int]:
        """The years the index lists (from its year column alone)."""
        if self._given is not None:
            return sorted({f.year for f in self._given})
        assert self.index is not None
        return index_years(self.index[0], self.storage_options)

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """UTM zones of the indexed COGs, or ``global`` when read onto the EPSG:4326 lattice."""
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
            block, windows = GLOBAL_BLOCK, [self._global_window(zone, f)
                                            for f in self._year_files(year)]
        elif _utm_number(zone) is not None:
            block = UTM_BLOCK
            windows = [f.window_in(zone) for f in self._zone_files(_utm_number(zone) or 0,
                                                                   year)]
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
        for f in self._zone_files(_utm_number(zone) or 0, year):
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

    def _dataset(self, loc: Location, f: AefFile, fresh: bool) -> tuple[Any, bool]:
        """(dataset, bottom-up) of a checked file, inside ``loc.session()``: kept open by this
        thread where it may be (``fresh`` reopens it), else opened for this read only."""
        def open_checked() -> tuple[Any, bool]:
            try:
                ds = loc.open()
            except RasterioIOError as exc:
                raise open_error(loc, exc, WHAT, FIX) from exc
            try:
                return ds, check_header(ds, f)
            except SourceError:
                ds.close()
                raise

        if not loc.cacheable:
            return open_checked()
        if loc.target is not None:
            key = handle_key(loc, self.storage_options)
            self._remote_keys.add(key)
            return REMOTE_HANDLES.get(key, open_checked, fresh)
        return self._handles.get(f.href, open_checked, fresh)

    def _read_file(self, f: AefFile, inner: Window, fwin: Window) -> np.ndarray:
        """Top-down codes (band, y, x) of ``inner`` (zone pixels) from file ``f``; a read
        that fails twice (the second time on a fresh handle) is a damaged file, unless the
        network failed (then a RemoteReadError, which the tile runner retries)."""
        r0, r1 = inner.row - fwin.row, inner.row_stop - fwin.row
        c0, c1 = inner.col - fwin.col, inner.col_stop - fwin.col
        loc = locate(f.href, self.storage_options)
        for attempt in (0, 1):
            with loc.session():
                ds, bottom_up = self._dataset(loc, f, fresh=attempt > 0)
                rows = (fwin.height - r1, fwin.height - r0) if bottom_up else (r0, r1)
                try:
                    data = read_window(ds, rows, (c0, c1))
                except RasterioIOError as exc:
                    if classify(exc) == "transient":  # the next try opens it afresh
                        REMOTE_HANDLES.close(handle_key(loc, self.storage_options).__eq__)
                        raise RemoteReadError(
                            f"{WHAT} {f.href}{loc.where()} could not be read ({message(exc)}); "
                            f"{NETWORK_FIX}"
                        ) from exc
                    if attempt == 0:
                        continue
                    raise SourceError(
                        f"{WHAT} {f.href} cannot be read at rows {r0}..{r1 - 1}, cols "
                        f"{c0}..{c1 - 1} (top-down) ({message(exc)}): the file is truncated or "
                        f"damaged; {FIX}"
                    ) from exc
                finally:
                    if not loc.cacheable:
                        ds.close()
            return np.ascontiguousarray(data[:, ::-1]) if bottom_up else data
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the COGs this thread keeps open for this source (they reopen when read)."""
        self._handles.close()
        REMOTE_HANDLES.close(self._remote_keys.__contains__)

    def describe(self) -> dict[str, Any]:
        """Provenance: the index file's name, not its counts (new files must not restale a cube)."""
        return {
            **identity(self),
            "index": None if self.index is None else self.index[0].rsplit("/", 1)[-1],
        }  # no file counts, years or zones: files added elsewhere must not restale a cube


def read_window(ds: Any, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """All bands of a window of an open dataset (one place, so that tests can watch reads)."""
    return ds.read(window=(rows, cols))  # type: ignore[no-any-return]


def _utm_number(zone: Zone) -> int | None:
    name = zone.name
    if name.startswith("utm") and name[3:].isdigit():
        return int(name[3:])
    return None
