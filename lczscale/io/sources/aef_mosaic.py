"""The AlphaEarth global mosaic (``tge-labs/aef-mosaic``): one Zarr v3 array in EPSG:4326.

Layout (shared/reference/data-formats.md §2.5): ``embeddings`` int8 (time, band, y, x) =
(T, 64, 1,859,584, 4,009,984), fill/nodata −128, shards (1, 64, 4096, 4096) of (1, 64, 256, 256)
zstd chunks, coordinate arrays ``x``/``y`` (pixel centres) and ``time``, attributes ``crs`` and
``proj:code``. Its pixels were sampled from the UTM COGs by nearest neighbour, so they are
genuine AEF vectors, read here natively on the ``global`` zone (GridConfig's defaults are that
lattice: 360/4,007,520° pixels, top edge 83.6857…°, left edge −180°).

What the reference marks unconfirmed is checked from the store itself when it is opened: the CRS
(``proj:code``/``crs`` must be EPSG:4326 — the builder's default config says EPSG:6933, which
would need resampling and is refused), the pixel size and origin (from the ``x``/``y`` arrays,
else a transform attribute) against the global zone's lattice, dtype int8, 64 bands, and the
year of each time index (integer years or CF ``<unit> since <date>``).

Validity is ``codes != −128`` with the same all-bands-or-none rule as the COGs (a pixel with
−128 in some bands only raises SourceError). Invalid pixels come back with codes 0. Planning
lists the stored shards of the year and reads their shard indexes (inner chunks), never pixels.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any

import numpy as np
import zarr
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError

from lczscale.config import GridConfig
from lczscale.core.grid import Window, Zone, global_zone
from lczscale.core.tiling import Availability
from lczscale.errors import ConfigError, NoDataError, SourceError, exception_chain
from lczscale.io import zarr_calls
from lczscale.io.shards import inner_chunk_mask, stored_chunks
from lczscale.io.sources.aef_cogs import BANDS, DATASET, NODATA
from lczscale.io.sources.protocol import EmbeddingWindow, identity
from lczscale.io.stores import filesystem, open_store, store_filesystem
from lczscale.io.zarr_calls import ZarrArray

log = logging.getLogger(__name__)

ARRAY = "embeddings"
FIX = "re-download the damaged shard, or read the AlphaEarth COGs instead (--source-kind aef-cogs)"
_CF_UNITS = {"days": "D", "day": "D", "hours": "h", "hour": "h", "minutes": "m", "minute": "m",
             "seconds": "s", "second": "s", "milliseconds": "ms", "microseconds": "us"}


def _crs_attr(attrs: dict[str, Any]) -> Any:
    return attrs.get("proj:code") or attrs.get("crs") or attrs.get("proj:wkt2")


def _epsg(value: Any) -> int | None:
    try:
        return CRS.from_user_input(value).to_epsg()
    except (CRSError, TypeError, ValueError):
        return None


def decode_years(values: np.ndarray, attrs: dict[str, Any], where: str) -> list[int]:
    """Calendar years of a ``time`` coordinate: datetime64, CF ``<unit> since <date>``
    integers, or plain integer years."""
    values = np.asarray(values)
    if values.dtype.kind == "M":
        return [int(y) + 1970 for y in values.astype("datetime64[Y]").astype(np.int64)]
    units = str(attrs.get("units", ""))
    if " since " in units:
        unit, _, epoch = units.partition(" since ")
        code = _CF_UNITS.get(unit.strip().lower())
        if code is None or values.dtype.kind not in "iuf":
            raise SourceError(f"{where}: cannot decode time units {units!r}")
        start = np.datetime64(epoch.strip().replace(" ", "T").rstrip("Z")[:19], "s")
        stamps = start + np.rint(values).astype(np.int64).astype(f"timedelta64[{code}]")
        return [int(y) + 1970 for y in stamps.astype("datetime64[Y]").astype(np.int64)]
    if values.dtype.kind in "iu" and ((values >= 1900) & (values <= 2200)).all():
        return [int(v) for v in values]
    raise SourceError(
        f"{where}: time values {values[:4].tolist()} (units {units!r}) are neither years nor "
        "CF-encoded dates; the store's time axis cannot be mapped to years"
    )


class AefMosaicSource:
    """Reads windows of the global AEF mosaic; picklable (holds only the URL and options)."""

    kind = "alphaearth"
    layout = "aef-mosaic"
    grid_kinds: tuple[str, ...] = ("global",)

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """A Zarr v3 group whose ``embeddings`` is int8 (time, band, y, x) with a CRS
        attribute, and which is not in the ``geoemb:`` convention (TESSERA, generic)."""
        fs, path = filesystem(url, storage_options)
        try:
            root = json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
            meta = json.loads(fs.cat_file(f"{path.rstrip('/')}/{ARRAY}/zarr.json"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(root, dict) or not isinstance(meta, dict):
            return None
        attrs = root.get("attributes") or {}
        if root.get("node_type") != "group" or any(str(k).startswith("geoemb:") for k in attrs):
            return None
        shape = meta.get("shape") or []
        if meta.get("node_type") != "array" or meta.get("data_type") != "int8" or len(shape) != 4:
            return None
        crs = _crs_attr(meta.get("attributes") or {}) or _crs_attr(attrs)
        if crs is None:
            return None
        return (f"AlphaEarth global mosaic (Zarr v3 '{ARRAY}' int8 (time, band, y, x) "
                f"{tuple(shape)}, {shape[1]}-d, CRS {crs}, {shape[0]} time steps)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> AefMosaicSource:
        """The mosaic at ``url``, validated now: its array, CRS, transform and years."""
        source = cls(url, storage_options)
        _ = source._info  # validates the store now, with a clear error
        return source

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    @cached_property
    def root(self) -> zarr.Group:
        """The store's root group; an unopenable store is a SourceError saying what to point at."""
        try:
            store = open_store(self.url, storage_options=self.storage_options)
            return zarr.open_group(store, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            raise SourceError(
                f"cannot open {self.url} as a Zarr v3 store ({type(exc).__name__}: {exc}); "
                "point --source at the AlphaEarth global mosaic (aef-mosaic)"
            ) from exc

    @cached_property
    def _info(self) -> tuple[ZarrArray, Affine, dict[int, int]]:
        """(embeddings array, transform, year → time index), validated."""
        root = self.root
        arr = root.get(ARRAY)
        if not isinstance(arr, zarr.Array):
            raise SourceError(f"{self.url} has no '{ARRAY}' array; not an AlphaEarth mosaic")
        where = f"{self.url}/{ARRAY}"
        if arr.dtype != np.int8 or arr.ndim != 4:
            raise SourceError(f"{where} is {arr.dtype} with {arr.ndim} dims; the AlphaEarth "
                              "mosaic is int8 (time, band, y, x)")
        if arr.shape[1] != BANDS:
            raise SourceError(
                f"{where} has {arr.shape[1]} bands; AlphaEarth embeddings have {BANDS} — this "
                "store holds another dataset"
            )
        attrs = {**dict(root.attrs), **dict(arr.attrs)}
        self._check_crs(attrs)
        transform = self._transform(root, arr, attrs)
        if "time" not in root:
            raise SourceError(f"{self.url} lacks the 'time' coordinate array (years)")
        tarr = root["time"]
        assert isinstance(tarr, zarr.Array)
        years = decode_years(tarr[:], dict(tarr.attrs), f"{self.url}/time")  # type: ignore[arg-type]
        if len(years) != arr.shape[0]:
            raise SourceError(f"{self.url}/time has {len(years)} values for {arr.shape[0]} "
                              "time steps of embeddings")
        return arr, transform, {y: i for i, y in enumerate(years)}

    def _check_crs(self, attrs: dict[str, Any]) -> None:
        codes = [attrs[k] for k in ("proj:code", "crs", "proj:wkt2") if attrs.get(k)]
        if not codes:
            raise SourceError(
                f"{self.url} declares no CRS (no 'proj:code' or 'crs' attribute); the "
                "AlphaEarth mosaic must say EPSG:4326, lczscale will not guess"
            )
        epsgs = {_epsg(c) for c in codes}
        if epsgs != {4326}:
            raise SourceError(
                f"{self.url} declares CRS {', '.join(map(str, codes))}, not EPSG:4326. lczscale "
                "reads the AlphaEarth mosaic only on its EPSG:4326 lattice (the published "
                "store); EPSG:6933 (EASE-Grid 2.0, the aef-mosaic builder's default config) "
                "would need resampling the embeddings. Read the AlphaEarth COGs instead "
                "(--source-kind aef-cogs) or rebuild the mosaic in EPSG:4326"
            )

    def _transform(self, root: zarr.Group, arr: ZarrArray, attrs: dict[str, Any]) -> Affine:
        """The store's pixel grid, from the x/y coordinates and/or a transform attribute,
        checked against the global zone's lattice (and against each other)."""
        g = GridConfig()
        zone = global_zone(g.global_resolution, g.global_top)
        found: list[tuple[str, Affine, tuple[int, int]]] = []
        problems: list[str] = []

        def fit(what: str, t: Affine) -> bool:
            if t.e > 0:
                problems.append(f"its {what} run south→north (the mosaic is top-down)")
                return False
            try:
                found.append((what, t, zone.pixel_offset(t)))
                return True
            except ConfigError as exc:
                problems.append(f"the grid from its {what} {tuple(t)[:6]}: {exc}")
                return False

        if "x" in root and "y" in root:
            x, y = root["x"], root["y"]
            assert isinstance(x, zarr.Array) and isinstance(y, zarr.Array)
            if (y.shape[0], x.shape[0]) != arr.shape[2:]:
                raise SourceError(f"{self.url}: x/y have {x.shape[0]}/{y.shape[0]} values for "
                                  f"{arr.shape[3]}×{arr.shape[2]} pixels")
            x0, x1 = (float(x[i]) for i in (0, x.shape[0] - 1))  # type: ignore[arg-type]
            y0, y1 = (float(y[i]) for i in (0, y.shape[0] - 1))  # type: ignore[arg-type]
            rx, ry = (x1 - x0) / max(x.shape[0] - 1, 1), (y1 - y0) / max(y.shape[0] - 1, 1)
            centres = Affine(rx, 0.0, x0 - rx / 2, 0.0, ry, y0 - ry / 2)
            if not fit("x/y coordinates (pixel centres)", centres) and fit(
                "x/y coordinates (pixel corners)", Affine(rx, 0.0, x0, 0.0, ry, y0)
            ):  # corners land exactly on the known lattice: unambiguous, but say so
                log.warning("%s: x/y coordinates are pixel corners, not centres", self.url)
                problems.pop(0)
        for key in ("spatial:transform", "proj:transform"):
            if attrs.get(key):
                fit(f"'{key}' attribute", Affine(*[float(v) for v in attrs[key]][:6]))
                break
        if problems or not found or len({o for _, _, o in found}) > 1:
            said = "; ".join(problems) or "; ".join(f"{w} put pixel (0, 0) at global {o}"
                                                     for w, _, o in found)
            raise SourceError(
                f"{self.url} is not on the AlphaEarth mosaic lattice lczscale reads (pixel "
                f"{zone.affine.a}°, left edge -180°, top edge {zone.affine.f}°): "
                f"{said or 'it has neither x/y coordinates nor a transform attribute'}"
            )
        return found[0][1]

    @property
    def dimensions(self) -> int:
        """AlphaEarth's 64 bands."""
        return BANDS

    @property
    def dataset(self) -> str:
        """The AlphaEarth annual-embeddings feature space (``alphaearth/…``)."""
        return DATASET

    @property
    def years(self) -> list[int]:
        """The years of the mosaic's time axis."""
        return sorted(self._info[2])

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """Only ``global``: the mosaic is one EPSG:4326 grid, never read onto UTM zones."""
        return ["global"] if grid_kind in (None, "global") else []

    def _locate(self, zone: Zone, year: int) -> tuple[ZarrArray, tuple[int, int], int]:
        arr, transform, tindex = self._info
        if zone.crs != "EPSG:4326":
            raise NoDataError(f"{self.url} is the global EPSG:4326 mosaic; it has no zone "
                              f"{zone.name} (set grid.kind='global')")
        if year not in tindex:
            raise NoDataError(f"{self.url} has no year {year} (years: {sorted(tindex)}); pass "
                              "--year with one of them")
        return arr, zone.pixel_offset(transform), tindex[year]

    def availability(self, zone: Zone, year: int, within: Window | None = None) -> Availability:
        """Stored shards of the year, and inner chunks of those meeting ``within``."""
        arr, offset, t = self._locate(zone, year)
        fs, _ = store_filesystem(arr.store_path.store)
        b = arr.shards or arr.chunks
        block = (b[-2], b[-1])
        stored = stored_chunks(arr, (t, 0))

        def meets(k: tuple[int, int]) -> bool:
            w = Window(offset[0] + k[0] * block[0], offset[1] + k[1] * block[1], *block)
            return within is None or within.intersection(w) is not None

        masks = {k: inner_chunk_mask(fs, p, arr) for k, p in stored.items() if meets(k)}
        cells = {k: m for k, m in masks.items() if m is not None}
        inner = (arr.chunks[-2], arr.chunks[-1]) if cells else None
        return Availability(block, offset, frozenset(stored), inner, cells)

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes and validity of ``window``; invalid pixels (−128, or past the array) have
        codes 0."""
        arr, (r_off, c_off), t = self._locate(zone, year)
        codes = np.zeros((BANDS, window.height, window.width), dtype=np.int8)
        valid = np.zeros((window.height, window.width), dtype=bool)
        inner = window.intersection(Window(r_off, c_off, arr.shape[2], arr.shape[3]))
        if inner is not None:
            sel = (t, slice(None), slice(inner.row - r_off, inner.row_stop - r_off),
                   slice(inner.col - c_off, inner.col_stop - c_off))
            raw = self._fetch(arr, sel, year, inner)
            nodata = raw == NODATA
            empty = nodata.all(axis=0)
            mixed = nodata.any(axis=0) & ~empty
            if mixed.any():
                r, c = divmod(int(np.flatnonzero(mixed)[0]), inner.width)
                raise SourceError(
                    f"damaged AlphaEarth mosaic {self.url}/{ARRAY} year {year}: "
                    f"{int(mixed.sum())} pixels have {NODATA} in some bands but not all (first "
                    f"at global row {inner.row + r}, col {inner.col + c}); {FIX}"
                )
            dst = inner.relative_to(window)
            codes[(slice(None), *dst)] = np.where(empty, 0, raw)
            valid[dst] = ~empty
        water = np.zeros(valid.shape, dtype=bool)
        return EmbeddingWindow(window, codes, None, valid, water, "sign_square")

    def _fetch(self, arr: ZarrArray, sel: tuple[Any, ...], year: int, inner: Window) -> Any:
        """``arr[sel]``; undecodable stored bytes become a SourceError naming the window."""
        try:
            return zarr_calls.getitem(arr, sel)
        except (ValueError, RuntimeError) as exc:
            if any(isinstance(e, OSError) for e in exception_chain(exc)):
                raise  # an I/O failure underneath: the caller may retry
            raise SourceError(
                f"{self.url}/{ARRAY} year {year}: the stored data for global rows "
                f"{inner.row}..{inner.row_stop - 1}, cols {inner.col}..{inner.col_stop - 1} "
                f"cannot be decoded ({type(exc).__name__}: {' '.join(str(exc).split())}): a "
                f"shard is truncated or overwritten; {FIX}"
            ) from exc

    def describe(self) -> dict[str, Any]:
        """Provenance: CRS, shape and transform, not the years (a new year must not restale)."""
        arr, transform, _ = self._info
        return {
            **identity(self),
            "crs": "EPSG:4326",  # no years: a year appended must not restale a cube
            "shape": list(arr.shape[1:]),
            "transform": list(transform)[:6],
        }
