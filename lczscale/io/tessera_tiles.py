"""TESSERA embeddings as NPY tiles, the layout ``geotessera download --format npy`` writes.

Two trees are read (shared/reference/data-formats.md §1.4, §1.6), through fsspec only:

- *local*: ``{root}/global_0.1_degree_representation/{year}/grid_X_Y/grid_X_Y.npy`` (int8
  H×W×128) and ``grid_X_Y_scales.npy`` (float32 H×W, or H×W×128), landmasks
  ``{root}/global_0.1_degree_tiff_all/grid_X_Y.tiff`` (uint8, 0 = water, the tile's UTM CRS and
  transform), ``tessera_metadata.json`` and optionally ``manifest.parquet``;
- *mirror*: the public tree with the URL at ``…/npy/{dataset_dir}`` (``{year}/grid_X_Y/…`` and
  ``manifest.parquet`` there, landmasks in ``…/landmasks/{version_path}/``), or at its base
  when ``npy/`` holds one dataset.

A tile is present only when its .npy, _scales.npy *and* landmask exist (geotessera issue #406).
Incomplete tiles are logged, left out of planning, and a read that needs one raises a
SourceError naming the missing file: nothing is silently no-data. The index comes from a
listing where the filesystem can list (local, s3, memory) and from ``manifest.parquet`` (plus
``landmasks.parquet`` when present) over HTTP; planning never reads pixels.

Pixels. A tile's pixel is *water* where its landmask is 0 (codes and scale are ignored there),
*data* where the scale is finite and > 0, and *no data* otherwise: NPY has no +inf sentinel,
missing land (v1's clipped coastlines, issue #266) is stored as codes 0 with scale 0 ("NoData
0"). So scale 0 with all-zero codes is no data here, unlike the Zarr store where it is a valid
zero vector (TESSERA never writes one). The corruption rules of ``tessera_zarr`` apply to
every pixel read (negative scales, NaN/+inf over nonzero codes, a positive scale over all-zero
codes, scale 0 over nonzero codes, |value| > MAX_ABS_VALUE); they raise naming the files.

Mosaic. Tiles live in the UTM zone of their centre; their landmask gives CRS and transform
(EPSG:327NN northings are moved to the canonical 326NN axis by −10,000,000). A landmask in
another zone, or whose raster is not where the tile's 0.1° box is, is refused. Tiles on the
zone's 10 m lattice are copied; others are mapped nearest-neighbour (logged). Neighbouring UTM
rectangles overlap; a pixel is taken from the tile whose 0.1° box holds the pixel centre (its
*owner*, the tile geotessera's point lookups use) when that tile has data or says water there,
else from the first other tile (ascending lon, lat) with data, else it is water if any tile
says so, else no data. The result does not depend on the window read.

3-D scales (H, W, 128) equal across bands are used as the 2-D scale exactly. Where they vary,
the pixel is re-quantised on the host: values ``q·s`` per band, new scale ``max|q·s|/127``,
new codes ``round(q·s / scale)``; each value moves by at most half the new step (scale/2).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
from affine import Affine
from fsspec import AbstractFileSystem
from pyproj import Transformer

from lczscale.errors import NoDataError, SourceError
from lczscale.grid import Window, Zone
from lczscale.io.source import EmbeddingWindow
from lczscale.io.stores import filesystem
from lczscale.io.tessera_zarr import _corruption
from lczscale.plan import Availability

log = logging.getLogger(__name__)

EMBEDDINGS_DIR = "global_0.1_degree_representation"
LANDMASKS_DIR = "global_0.1_degree_tiff_all"
METADATA_FILE = "tessera_metadata.json"
MANIFEST_FILE = "manifest.parquet"
LANDMASK_REGISTRY = "landmasks.parquet"
BANDS = 128
RES = 10.0  # TESSERA's pixel size (m)
SOUTH = 10_000_000.0  # false northing of EPSG:327NN
BLOCK = 512  # availability block edge (zone px)
PAD = 64  # px a landmask may reach past the footprint computed from the tile's name
LANDMASK_CACHE = 32  # landmasks kept per worker (about 1 MB each)
FIX = ("re-download that tile (geotessera download --tile LON,LAT --format npy) or leave its "
       "area out of the run")

_GRID = re.compile(r"^grid_(-?\d{1,3}\.\d{2})_(-?\d{1,2}\.\d{2})$")
_DATASET_DIR = re.compile(r"^v(\d+)(?:\.(\d+))?(?:-(.+))?$")
_KNOWN_DIRS = {"v1": ("1.0", "vultr"), "v1.1-cam": ("1.1", "cambridge")}


# --------------------------------------------------------------------------------------------
# Tile names and geometry (pure)


def tile_name(lon_i: int, lat_i: int) -> str:
    """``grid_{lon:.2f}_{lat:.2f}`` of a tile centre given in hundredths of a degree."""
    return f"grid_{lon_i / 100:.2f}_{lat_i / 100:.2f}"


def tile_key(name: str) -> tuple[int, int] | None:
    """(lon, lat) of a tile name in hundredths of a degree; None unless on the 0.05° grid."""
    m = _GRID.match(name)
    if not m:
        return None
    lon_i, lat_i = round(float(m.group(1)) * 100), round(float(m.group(2)) * 100)
    return (lon_i, lat_i) if lon_i % 10 == 5 and lat_i % 10 == 5 else None


def tile_epsg(lon_i: int, lat_i: int) -> int:
    """EPSG of the UTM zone of a tile centre: 326NN north, 327NN south (TESSERA's rule)."""
    zone = min(60, max(1, math.floor((lon_i / 100 + 180.0) / 6.0) + 1))
    return (32600 if lat_i > 0 else 32700) + zone


@cache
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


# Corners (as TESSERA) plus edge midpoints: a parallel sags ~1 m between the corners where a
# box straddles the central meridian, which could otherwise leave a row of pixels uncovered.
_DLON = np.array([-5, 5, -5, 5, 0, 0, -5, 5])
_DLAT = np.array([-5, -5, 5, 5, -5, 5, 0, 0])


def footprints(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tile (rows of (lon_i, lat_i)): EPSG, canonical (west, top) in metres, (h, w) px.

    The UTM bounding rectangle of the tile's 0.1° box (data-formats §1.2, no file opened),
    snapped outward to the 10 m lattice so that it shares the zone grid's pixels. "Canonical"
    is the zone's 326NN axis: southern northings minus 10,000,000.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 2)
    epsg = np.array([tile_epsg(int(k[0]), int(k[1])) for k in keys], dtype=np.int64)
    west = np.zeros(len(keys))
    top = np.zeros(len(keys))
    shape = np.zeros((len(keys), 2), dtype=np.int64)
    for code in np.unique(epsg):
        sel = epsg == code
        lon = (keys[sel, 0:1] + _DLON) / 100.0
        lat = (keys[sel, 1:2] + _DLAT) / 100.0
        xs, ys = (np.asarray(v) for v in _to_utm(int(code)).transform(lon, lat))
        x0 = np.floor(xs.min(axis=1) / RES) * RES
        x1 = np.ceil(xs.max(axis=1) / RES) * RES
        y0 = np.floor(ys.min(axis=1) / RES) * RES
        y1 = np.ceil(ys.max(axis=1) / RES) * RES
        west[sel] = x0
        top[sel] = y1 - (SOUTH if code > 32700 else 0.0)
        shape[sel] = np.stack([np.rint((y1 - y0) / RES), np.rint((x1 - x0) / RES)], axis=1)
    return epsg, west, top, shape


def tile_footprint(lon_i: int, lat_i: int) -> tuple[int, Affine, tuple[int, int]]:
    """EPSG, transform in that CRS (true northings) and (height, width) of one tile."""
    epsg, west, top, shape = footprints(np.array([[lon_i, lat_i]]))
    north = float(top[0]) + (SOUTH if epsg[0] > 32700 else 0.0)
    return int(epsg[0]), Affine(RES, 0.0, float(west[0]), 0.0, -RES, north), (
        int(shape[0, 0]), int(shape[0, 1]))


def canonical(transform: Affine, epsg: int) -> Affine:
    """A tile transform on the zone's canonical 326NN axis (southern northings − 10^7)."""
    if 32701 <= epsg <= 32760:
        t = transform
        return Affine(t.a, t.b, t.c, t.d, t.e, t.f - SOUTH)
    return transform


def version_path(dataset_dir: str) -> str:
    """``v1`` → ``v1``, ``v1.1-cam`` → ``v1.1``, ``v2-2B-L~beta1`` → ``v2`` (landmasks/ key)."""
    m = _DATASET_DIR.match(dataset_dir)
    if not m:
        raise SourceError(f"{dataset_dir!r} is not a TESSERA dataset directory (v1, v1.1-cam …)")
    return f"v{m.group(1)}" if m.group(2) in (None, "0") else f"v{m.group(1)}.{m.group(2)}"


def dataset_of_dir(dataset_dir: str) -> tuple[str, str] | None:
    """(version, variant) a mirror's npy/ directory name stands for, as geotessera reads it."""
    if dataset_dir in _KNOWN_DIRS:
        return _KNOWN_DIRS[dataset_dir]
    m = _DATASET_DIR.match(dataset_dir)
    if not m or not m.group(3):
        return None
    return f"{m.group(1)}.{m.group(2) or '0'}", m.group(3)


def normalise_version(v: Any) -> str:
    """``v1``/``1``/``1.0`` → ``1.0``; ``v1.1`` → ``1.1`` (geotessera's normal form)."""
    s = str(v).strip().removeprefix("v")
    return s if "." in s else f"{s}.0"


# --------------------------------------------------------------------------------------------
# Layout and index (listings and manifests only)


@dataclass(frozen=True)
class TileLayout:
    """Where a tree keeps its files (paths inside its fsspec filesystem)."""

    form: str  # "local" (geotessera download) or "mirror" (npy/{dataset_dir} of the public tree)
    root: str
    embeddings: str  # holds {year}/grid_X_Y/
    landmasks: str  # holds grid_X_Y.tiff
    dataset_dir: str | None = None

    def npy(self, year: int, name: str) -> str:
        return f"{self.embeddings}/{year}/{name}/{name}.npy"

    def scales(self, year: int, name: str) -> str:
        return f"{self.embeddings}/{year}/{name}/{name}_scales.npy"

    def landmask(self, name: str) -> str:
        return f"{self.landmasks}/{name}.tiff"

    @property
    def manifest(self) -> str:
        return f"{self.root}/{MANIFEST_FILE}"

    @property
    def metadata(self) -> str:
        return f"{self.root}/{METADATA_FILE}"


def find_layout(fs: AbstractFileSystem, root: str) -> TileLayout | None:
    """The tree at ``root``, recognised by its marker files; None when it is not one."""
    root = root.rstrip("/")
    if fs.exists(f"{root}/{EMBEDDINGS_DIR}") or fs.exists(f"{root}/{METADATA_FILE}"):
        return TileLayout("local", root, f"{root}/{EMBEDDINGS_DIR}", f"{root}/{LANDMASKS_DIR}")
    parent, _, name = root.rpartition("/")
    base, _, npy = parent.rpartition("/")
    has_manifest = fs.exists(f"{root}/{MANIFEST_FILE}")
    if has_manifest and npy == "npy" and _DATASET_DIR.match(name):
        return TileLayout("mirror", root, root, f"{base}/landmasks/{version_path(name)}", name)
    if fs.exists(f"{root}/npy") and fs.exists(f"{root}/landmasks"):
        dirs = sorted(p.rstrip("/").rpartition("/")[2] for p in fs.ls(f"{root}/npy", detail=False)
                      if fs.exists(f"{p.rstrip('/')}/{MANIFEST_FILE}"))
        if len(dirs) == 1:
            return find_layout(fs, f"{root}/npy/{dirs[0]}")
        if dirs:
            raise SourceError(
                f"{root} is a TESSERA mirror holding several datasets ({', '.join(dirs)}), which "
                "are different feature spaces; point the source at one of them, e.g. "
                f"{root}/npy/{dirs[0]}"
            )
    if has_manifest and _manifest_columns(fs, f"{root}/{MANIFEST_FILE}") >= {"lon", "lat", "year"}:
        return TileLayout("local", root, f"{root}/{EMBEDDINGS_DIR}", f"{root}/{LANDMASKS_DIR}")
    return None


def _manifest_columns(fs: AbstractFileSystem, path: str) -> set[str]:
    try:
        with fs.open(path, "rb") as f:
            return set(pq.ParquetFile(f).schema_arrow.names)
    except (OSError, ValueError):
        return set()


def _read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    if not fs.exists(path):
        return {}
    try:
        doc = json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not valid JSON ({exc}); re-download the tiles or delete "
                          "the file to rely on manifest.parquet") from exc
    if not isinstance(doc, dict):
        raise SourceError(f"{path} holds {type(doc).__name__}, expected a JSON object")
    return doc


def _read_manifest(fs: AbstractFileSystem, path: str) -> dict[str, np.ndarray] | None:
    """The manifest's columns we use (None when there is none); SourceError when malformed."""
    if not fs.exists(path):
        return None
    wanted = ["version", "variant", "lon", "lat", "year", "grid_size", "scales_size",
              "file_size"]
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in wanted if c in pf.schema_arrow.names]
            table = pf.read(columns=cols)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"{path} cannot be read as Parquet ({exc}); re-download it") from exc
    if not {"lon", "lat", "year"} <= set(cols):
        raise SourceError(f"{path} lacks the lon, lat and year columns of a TESSERA manifest "
                          f"(found {cols}); re-download it")
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in cols}


class TileIndex(NamedTuple):
    """Complete tiles per year ((N, 2) int32 lon/lat in hundredths, sorted) and incomplete
    ones with the paths they lack. Compact: this travels with the pickled source."""

    tiles: dict[int, np.ndarray]
    broken: dict[int, dict[tuple[int, int], tuple[str, ...]]]


def _listable(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return not {"http", "https"} & set(protocols)


def _index(fs: AbstractFileSystem, layout: TileLayout,
           manifest: dict[str, np.ndarray] | None) -> TileIndex:
    """Which (npy, scales, landmask) triples exist, from listings or, over HTTP, manifests."""
    parts: dict[tuple[int, tuple[int, int]], set[str]] = {}
    masks: set[tuple[int, int]] | None
    if _listable(fs):
        for path in fs.find(layout.embeddings) if fs.exists(layout.embeddings) else []:
            year, name, fname = (["", "", ""] + path.rstrip("/").split("/"))[-3:]
            key = tile_key(name)
            if key is None or not year.isdigit():
                continue
            kind = {f"{name}.npy": "npy", f"{name}_scales.npy": "scales"}.get(fname)
            if kind:
                parts.setdefault((int(year), key), set()).add(kind)
        listed = fs.ls(layout.landmasks, detail=False) if fs.exists(layout.landmasks) else []
        masks = {k for p in listed if p.endswith(".tiff")
                 and (k := tile_key(p.rpartition("/")[2][:-5])) is not None}
    elif manifest is not None:
        n = len(manifest["lon"])
        grid = manifest.get("grid_size", np.ones(n))
        scales = manifest.get("scales_size", np.ones(n))
        for i in range(n):
            key = (round(float(manifest["lon"][i]) * 100), round(float(manifest["lat"][i]) * 100))
            got = {k for k, size in (("npy", grid[i]), ("scales", scales[i])) if size > 0}
            if got:  # a row with neither file is a tile without data, not a broken one
                parts.setdefault((int(manifest["year"][i]), key), set()).update(got)
        registry = _read_manifest(fs, f"{layout.landmasks}/{LANDMASK_REGISTRY}")
        masks = None if registry is None else {
            (round(float(lo) * 100), round(float(la) * 100))
            for lo, la, size in zip(registry["lon"], registry["lat"],
                                    registry.get("file_size", np.ones(len(registry["lon"]))),
                                    strict=True) if size > 0}
    else:
        raise SourceError(
            f"cannot list {layout.root} over HTTP and it has no {MANIFEST_FILE}: point the source "
            "at a TESSERA dataset directory with its manifest (…/npy/v1.1-cam) or at a local copy"
        )
    tiles: dict[int, list[tuple[int, int]]] = {}
    broken: dict[int, dict[tuple[int, int], tuple[str, ...]]] = {}
    for (year, key), have in sorted(parts.items()):
        name = tile_name(*key)
        missing = [p for kind, p in (("npy", layout.npy(year, name)),
                                     ("scales", layout.scales(year, name))) if kind not in have]
        if masks is not None and key not in masks:
            missing.append(layout.landmask(name))
        if missing:
            broken.setdefault(year, {})[key] = tuple(missing)
        else:
            tiles.setdefault(year, []).append(key)
    return TileIndex({y: np.array(sorted(k), dtype=np.int32).reshape(-1, 2)
                      for y, k in tiles.items()}, broken)


@dataclass(frozen=True)
class Catalog:
    """What ``open`` learnt: layout, dataset, tile index (all small, all picklable)."""

    layout: TileLayout
    version: str
    variant: str
    index: TileIndex
    indexed_by: str  # "listing" or "manifest"
    generated_at: str | None


def _catalog(fs: AbstractFileSystem, url: str, layout: TileLayout) -> Catalog:
    meta = _read_json(fs, layout.metadata) if layout.form == "local" else {}
    manifest = _read_manifest(fs, layout.manifest)
    claims: dict[str, set[tuple[str, str]]] = {}
    if meta.get("dataset_version"):
        claims[METADATA_FILE] = {(normalise_version(meta["dataset_version"]),
                                  str(meta.get("dataset_variant", "")))}
    if manifest is not None and "version" in manifest and "variant" in manifest:
        claims[MANIFEST_FILE] = {(normalise_version(v), str(w)) for v, w in
                                 zip(manifest["version"], manifest["variant"], strict=True)}
    if layout.dataset_dir and (pair := dataset_of_dir(layout.dataset_dir)):
        claims[f"directory name {layout.dataset_dir}"] = {pair}
    pairs = set().union(*claims.values()) if claims else set()
    versions = {v for v, _ in pairs}
    variants = {w for _, w in pairs if w}  # an old sidecar may not name its variant
    if len(versions) > 1 or len(variants) > 1:
        said = "; ".join(f"{where}: {', '.join(f'{v}/{w}' for v, w in sorted(p))}"
                         for where, p in claims.items())
        raise SourceError(
            f"{url} mixes TESSERA dataset versions ({said}): each (version, variant) is its own "
            "feature space and a model never crosses them; download one dataset per directory "
            "(geotessera download --dataset-version … --dataset-variant …)"
        )
    version = versions.pop() if versions else "unknown"
    variant = variants.pop() if variants else ""
    if version == "unknown":
        log.warning("%s: no %s or manifest says which TESSERA dataset these tiles are; its "
                    "dataset is 'tessera/unknown'", url, METADATA_FILE)
    listing = _listable(fs)
    index = _index(fs, layout, None if listing else manifest)
    _report(url, index)
    if not any(len(v) for v in index.tiles.values()):
        lacking = [p for b in index.broken.values() for m in b.values() for p in m]
        raise SourceError(
            f"{url} holds no complete TESSERA tile (a tile needs grid_X_Y.npy, "
            "grid_X_Y_scales.npy and the landmask grid_X_Y.tiff)"
            + (f"; missing: {', '.join(lacking[:4])}" if lacking else
               f"; nothing found under {layout.embeddings}") + f"; {FIX}"
        )
    return Catalog(layout, version, variant, index, "listing" if listing else "manifest",
                   meta.get("generated_at"))


def _report(url: str, index: TileIndex) -> None:
    lacking = [p for b in index.broken.values() for m in b.values() for p in m]
    if lacking:
        n = sum(len(b) for b in index.broken.values())
        log.warning(
            "%s: %d incomplete TESSERA tile(s) left out (each needs .npy, _scales.npy and the "
            "landmask; geotessera issue #406); missing: %s%s", url, n, ", ".join(lacking[:8]),
            " …" if len(lacking) > 8 else "")


# --------------------------------------------------------------------------------------------
# Reading one tile


class _Npy(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int


class _Mask(NamedTuple):
    transform: Affine  # canonical (326NN axis)
    land: np.ndarray  # (h, w) bool


def _check_npy(path: str, hdr: _Npy, what: str, shape: tuple[int, int]) -> None:
    """Embeddings int8 (h, w, 128); scales float32 (h, w) or (h, w, 128)."""
    h, w = shape
    if what == "embeddings":
        ok = hdr.dtype == np.int8 and hdr.shape == (h, w, BANDS)
        want = f"int8 ({h}, {w}, {BANDS})"
    else:
        ok = hdr.dtype.kind == "f" and hdr.dtype.itemsize == 4 and hdr.shape in (
            (h, w), (h, w, BANDS))
        want = f"float32 ({h}, {w}) or ({h}, {w}, {BANDS})"
    if not ok:
        raise SourceError(
            f"{path} is {hdr.dtype} {hdr.shape}, but TESSERA {what} of this tile are {want} "
            f"(the landmask is {h}×{w} px and TESSERA embeddings have {BANDS} dimensions); {FIX}"
        )


def _flatten_scales(q: np.ndarray, s: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, 2-D float32 scales): 3-D scales equal across bands collapse exactly; pixels
    whose scales vary are re-quantised to one scale (error ≤ half the new step)."""
    s = s.astype(np.float32)
    if s.ndim == 2:
        return q, s
    first = s[..., :1]
    same = ((s == first) | (np.isnan(s) & np.isnan(first))).all(axis=-1)
    out = s[..., 0].copy()
    if same.all():
        return q, out
    vary = ~same
    sv = s[vary]
    if not np.isfinite(sv).all() or (sv < 0).any():
        r, c = np.argwhere(vary & ~(np.isfinite(s) & (s >= 0)).all(axis=-1))[0]
        raise SourceError(
            f"{path}: per-band scales vary and include NaN, ±inf or negative values (first at "
            f"tile row {r}, col {c}): the scales file is damaged; {FIX}"
        )
    values = q[vary].astype(np.float32) * sv
    peak = np.abs(values).max(axis=1)
    scale = np.where(peak > 0, peak / np.float32(127.0), sv.max(axis=1)).astype(np.float32)
    codes = np.rint(values / np.where(scale > 0, scale, 1)[:, None]).clip(-127, 127)
    q = q.copy()
    q[vary] = codes.astype(np.int8)
    out[vary] = scale
    return q, out


# --------------------------------------------------------------------------------------------
# The source


class TesseraTilesSource:
    """Reads zone windows mosaicked from TESSERA NPY tiles; picklable (URL, options, index)."""

    kind = "tessera"
    layout = "tessera-tiles"
    grid_kinds: tuple[str, ...] = ("utm",)

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 catalog: Catalog | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        if catalog is not None:
            self.__dict__["catalog"] = catalog
        self._lock = threading.Lock()
        self._headers: dict[str, _Npy] = {}
        self._masks: OrderedDict[tuple[int, int], _Mask] = OrderedDict()
        self._windows: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._warned: set[tuple[int, int]] = set()

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What the tree's marker files say (dataset, years, tile count), or None."""
        fs, root = filesystem(url, storage_options)
        layout = find_layout(fs, root)
        if layout is None:
            return None
        where = ("geotessera local layout" if layout.form == "local"
                 else f"TESSERA mirror npy/{layout.dataset_dir}")
        try:
            meta = _read_json(fs, layout.metadata) if layout.form == "local" else {}
            manifest = _read_manifest(fs, layout.manifest)
        except SourceError as exc:
            return f"TESSERA NPY tiles ({where}; unreadable metadata: {exc})"
        version, variant = meta.get("dataset_version"), meta.get("dataset_variant")
        if manifest is not None and "version" in manifest and len(manifest["version"]):
            version = version or manifest["version"][0]
            variant = variant or manifest["variant"][0]
        if not version and layout.dataset_dir:
            version, variant = dataset_of_dir(layout.dataset_dir) or (None, None)
        dataset = f"tessera/{normalise_version(version)}/{variant}" if version else "unknown"
        if manifest is not None:
            years = sorted({int(y) for y in manifest["year"]})
            count: Any = len(manifest["year"])
        else:
            listed = fs.ls(layout.embeddings, detail=False) if fs.exists(layout.embeddings) else []
            years = sorted(int(n) for p in listed if (n := p.rstrip("/").rpartition("/")[2])
                           .isdigit())
            count = meta.get("tile_count", "an unknown number of")
        return (f"TESSERA NPY tiles ({where}), dataset {dataset}, years "
                f"{', '.join(map(str, years)) or 'none'}, {count} tiles (int8 128-d + scales)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None
             ) -> TesseraTilesSource:
        source = cls(url, storage_options)
        _ = source.catalog  # layout, dataset and index, validated now
        year = source.years[0]
        lon_i, lat_i = source.catalog.index.tiles[year][0].tolist()
        source._check_tile(year, (lon_i, lat_i))
        return source

    # Pickle the address and the compact index; handles and caches are rebuilt on the worker.
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options,
                "catalog": self.catalog}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["catalog"])  # type: ignore[misc]

    @cached_property
    def _fs(self) -> AbstractFileSystem:
        return filesystem(self.url, self.storage_options)[0]

    @cached_property
    def catalog(self) -> Catalog:
        fs, root = filesystem(self.url, self.storage_options)
        layout = find_layout(fs, root)
        if layout is None:
            raise SourceError(
                f"{self.url} is not a TESSERA NPY tile tree: no {METADATA_FILE}, "
                f"{EMBEDDINGS_DIR}/ or {MANIFEST_FILE} found; point the source at the directory "
                "`geotessera download --format npy --output DIR` wrote"
            )
        return _catalog(fs, self.url, layout)

    @property
    def dimensions(self) -> int:
        return BANDS

    @property
    def dataset(self) -> str:
        c = self.catalog
        return f"tessera/{c.version}" + (f"/{c.variant}" if c.variant else "")

    @property
    def years(self) -> list[int]:
        return sorted(y for y, k in self.catalog.index.tiles.items() if len(k))

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        return list(self._zones) if grid_kind in (None, "utm") else []

    @cached_property
    def _zones(self) -> tuple[str, ...]:
        """UTM zones of the complete tiles (of any year)."""
        keys = np.concatenate([k for k in self.catalog.index.tiles.values()])
        numbers = np.unique(np.clip(np.floor((keys[:, 0] / 100 + 180.0) / 6.0) + 1, 1, 60))
        return tuple(f"utm{int(n):02d}" for n in numbers)

    def _tiles(self, zone: Zone, year: int, broken: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Keys (N, 2) of the zone's complete (or incomplete) tiles of a year and their padded
        footprints (N, 4: row, col, height, width in zone pixels), from names alone."""
        cache_key = (zone.name, zone.transform, year, broken)
        if cache_key not in self._windows:
            index = self.catalog.index
            keys = (np.array(sorted(index.broken.get(year, {})), dtype=np.int32).reshape(-1, 2)
                    if broken else index.tiles.get(year, np.zeros((0, 2), np.int32)))
            epsg, west, top, shape = footprints(keys)
            mine = (epsg % 100) == int(zone.name[3:]) if zone.name[3:].isdigit() else epsg < 0
            keys, west, top, shape = keys[mine], west[mine], top[mine], shape[mine]
            wins = np.zeros((len(keys), 4), dtype=np.int64)
            if len(keys):
                zone.pixel_offset(Affine(RES, 0, west[0], 0, -RES, top[0]))  # lattice check
                a = zone.affine
                wins[:, 0] = np.rint((top - a.f) / a.e) - PAD
                wins[:, 1] = np.rint((west - a.c) / a.a) - PAD
                wins[:, 2:] = shape + 2 * PAD
            self._windows[cache_key] = (keys, wins)
        return self._windows[cache_key]

    def availability(self, zone: Zone, year: int, within: Window | None = None
                     ) -> Availability:
        """Blocks of ``BLOCK`` px meeting the footprint (padded by ``PAD``) of a complete tile
        of the zone and year: from the index and tile names, no file is opened."""
        if zone.name not in self.zone_names() or year not in self.catalog.index.tiles:
            return Availability((1, 1), (0, 0), frozenset())
        _, wins = self._tiles(zone, year)
        blocks: set[tuple[int, int]] = set()
        for r, c, h, w in wins.tolist():
            blocks.update((i, j) for i in range(r // BLOCK, (r + h - 1) // BLOCK + 1)
                          for j in range(c // BLOCK, (c + w - 1) // BLOCK + 1))
        return Availability((BLOCK, BLOCK), (0, 0), frozenset(blocks))

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes, scales and masks of ``window`` mosaicked from the zone's tiles (rule in the
        module docstring); SourceError for corrupt or incomplete tiles."""
        bad_keys, bad_wins = self._tiles(zone, year, broken=True)
        for (lon_i, lat_i), win in zip(bad_keys.tolist(), bad_wins.tolist(), strict=True):
            if window.intersection(Window(*win)) is not None:
                lacking = self.catalog.index.broken[year][(lon_i, lat_i)]
                raise SourceError(
                    f"{self.url}, {zone.name} year {year}: the window {window} needs tile "
                    f"{tile_name(lon_i, lat_i)}, which is incomplete (missing "
                    f"{', '.join(lacking)}); a tile needs its .npy, _scales.npy and landmask "
                    f"(geotessera issue #406); {FIX}"
                )
        if year not in self.years:
            raise NoDataError(f"{self.url} has no tiles for {year} (years: {self.years}); pass "
                              "--year with one of them")
        if zone.name not in self.zone_names():
            raise NoDataError(f"{self.url} has no tiles in zone {zone.name} (zones: "
                              f"{', '.join(self.zone_names())})")
        keys, wins = self._tiles(zone, year)
        hit = [(lon_i, lat_i) for (lon_i, lat_i), w in zip(keys.tolist(), wins.tolist(),
                                                            strict=True)
               if window.intersection(Window(*w)) is not None]
        h, w = window.height, window.width
        codes = np.zeros((BANDS, h, w), dtype=np.int8)
        scales = np.zeros((h, w), dtype=np.float32)
        valid = np.zeros((h, w), dtype=bool)
        water = np.zeros((h, w), dtype=bool)
        rank = np.full((h, w), np.iinfo(np.int32).max, dtype=np.int32)
        boxes = None
        if len(hit) > 1:  # which tile's 0.1° box holds each pixel centre
            lon, lat = zone.lonlat(window)
            boxes = (np.floor(lon * 10).astype(np.int64), np.floor(lat * 10).astype(np.int64))
        for i, key in enumerate(hit):
            part = self._part(zone, window, year, key)
            if part is None:
                continue
            sub, t_codes, t_scales, t_valid, t_water = part
            sl = sub.relative_to(window)
            own: np.ndarray | bool = True
            if boxes is not None:
                own = ((boxes[0][sl] == (key[0] - 5) // 10)
                       & (boxes[1][sl] == (key[1] - 5) // 10))
            r = np.full(t_valid.shape, np.iinfo(np.int32).max, dtype=np.int32)
            r[t_water & ~own] = len(hit) + 2
            r[t_valid & ~own] = i + 2
            r[t_water & own] = 1
            r[t_valid & own] = 0
            better = r < rank[sl]
            rank[sl][better] = r[better]
            np.copyto(codes[(slice(None), *sl)], t_codes, where=better[None])
            scales[sl][better] = t_scales[better]
            valid[sl][better] = t_valid[better]
            water[sl][better] = t_water[better]
        return EmbeddingWindow(window, codes, scales, valid, water, "per_pixel_scale")

    # ---- one tile ------------------------------------------------------------------------

    def _check_tile(self, year: int, key: tuple[int, int]) -> None:
        """Headers and landmask of one tile (what ``open`` validates eagerly)."""
        land = self._landmask(key).land
        self._check_shapes(year, tile_name(*key), (land.shape[0], land.shape[1]))

    def _check_shapes(self, year: int, name: str, shape: tuple[int, int]) -> tuple[_Npy, _Npy]:
        layout = self.catalog.layout
        emb = self._header(layout.npy(year, name))
        _check_npy(layout.npy(year, name), emb, "embeddings", shape)
        sc = self._header(layout.scales(year, name))
        _check_npy(layout.scales(year, name), sc, "scales", shape)
        return emb, sc

    def _part(self, zone: Zone, window: Window, year: int, key: tuple[int, int]
              ) -> tuple[Window, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(sub-window, codes, scales, valid, water) of one tile over ``window``; None when it
        does not reach it. Pixel centres of the window map to tile pixels (nearest; a pure
        shift when the tile is on the zone lattice)."""
        name, layout = tile_name(*key), self.catalog.layout
        mask = self._landmask(key)
        th, tw = mask.land.shape
        t, a = mask.transform, zone.affine
        xs = a.c + a.a * (np.arange(window.col, window.col_stop) + 0.5)
        ys = a.f + a.e * (np.arange(window.row, window.row_stop) + 0.5)
        cols = np.floor((xs - t.c) / t.a).astype(np.int64)
        rows = np.floor((ys - t.f) / t.e).astype(np.int64)
        r_in, c_in = np.flatnonzero((rows >= 0) & (rows < th)), np.flatnonzero(
            (cols >= 0) & (cols < tw))
        if not len(r_in) or not len(c_in):
            return None
        sub = Window(window.row + int(r_in[0]), window.col + int(c_in[0]), len(r_in), len(c_in))
        src_r, src_c = rows[r_in], cols[c_in]
        r0, r1, c0, c1 = int(src_r[0]), int(src_r[-1]) + 1, int(src_c[0]), int(src_c[-1]) + 1
        shifted = (r1 - r0 == len(src_r)) and (c1 - c0 == len(src_c))  # slices suffice
        off = ((t.c - a.c) / a.a, (t.f - a.f) / a.e)
        aligned = (t.a, t.e) == (a.a, a.e) and all(abs(v - round(v)) < 1e-6 for v in off)
        if not aligned and key not in self._warned:
            self._warned.add(key)
            log.warning("%s: tile %s is not on %s's 10 m lattice (landmask transform %s); its "
                        "pixels are mapped nearest-neighbour", self.url, name, zone.name,
                        tuple(mask.transform)[:6])
        emb_hdr, sc_hdr = self._check_shapes(year, name, (th, tw))
        q = self._rows(layout.npy(year, name), emb_hdr, r0, r1)
        s = self._rows(layout.scales(year, name), sc_hdr, r0, r1)
        if shifted:
            q, s, land = q[:, c0:c1], s[:, c0:c1], mask.land[r0:r1, c0:c1]
        else:
            ix = np.ix_(src_r - r0, src_c)
            q, s, land = q[ix], s[ix], mask.land[np.ix_(src_r, src_c)]
        q, s2 = _flatten_scales(q, s, layout.scales(year, name))
        codes = np.moveaxis(q, -1, 0).copy(order="C")
        problems = _corruption(codes, s2)
        if problems:
            raise SourceError(self._corrupt_message(zone, year, name, sub, src_r, src_c,
                                                    problems))
        t_valid = land & np.isfinite(s2) & (s2 > 0)
        codes[:, ~t_valid] = 0
        return sub, codes, np.where(t_valid, s2, np.float32(0)), t_valid, ~land

    def _corrupt_message(self, zone: Zone, year: int, name: str, sub: Window,
                         src_r: np.ndarray, src_c: np.ndarray,
                         problems: list[tuple[str, str, np.ndarray]]) -> str:
        layout, parts = self.catalog.layout, []
        for what, cause, m in problems:
            r, c = divmod(int(np.flatnonzero(m)[0]), sub.width)
            parts.append(f"{int(m.sum())} pixels {what} (first at tile row {src_r[r]}, col "
                         f"{src_c[c]} = {zone.name} row {sub.row + r}, col {sub.col + c}): {cause}")
        return (f"corrupt TESSERA tile {name} year {year} ({layout.npy(year, name)} with "
                f"{layout.scales(year, name)}): {'; '.join(parts)}; {FIX}")

    def _missing(self, path: str) -> SourceError:
        return SourceError(
            f"{path} is missing, though {self.url} was indexed with it (deleted since, or a "
            f"manifest that lists objects the store lacks, geotessera issue #406); {FIX}"
        )

    def _header(self, path: str) -> _Npy:
        """The .npy header (shape, dtype, data offset), validated against the file size."""
        if path in self._headers:
            return self._headers[path]
        fmt = np.lib.format
        try:
            with self._fs.open(path, "rb") as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                offset = f.tell()
                f.seek(0, 2)
                size = f.tell()
        except FileNotFoundError:
            raise self._missing(path) from None
        except ValueError as exc:
            raise SourceError(f"{path} is not a valid .npy file ({exc}): it is empty, "
                              f"truncated or overwritten; {FIX}") from exc
        if dtype.hasobject:
            raise SourceError(f"{path} holds Python objects; TESSERA tiles are plain int8/float32 "
                              "arrays (lczscale never unpickles input)")
        need = offset + math.prod(shape) * dtype.itemsize
        if size < need:
            raise SourceError(
                f"{path} is truncated: its header says {dtype} {tuple(shape)} ({need} bytes with "
                f"the header) but the file has {size} bytes; {FIX}"
            )
        hdr = _Npy(tuple(shape), dtype, bool(fortran), offset)
        with self._lock:
            self._headers[path] = hdr
        return hdr

    def _rows(self, path: str, hdr: _Npy, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of a C-order .npy by one ranged read (the whole file if Fortran)."""
        per_row = math.prod(hdr.shape[1:]) * hdr.dtype.itemsize
        try:
            with self._fs.open(path, "rb") as f:
                if hdr.fortran:
                    f.seek(hdr.offset)
                    data = np.frombuffer(f.read(), hdr.dtype, math.prod(hdr.shape))
                    return data.reshape(hdr.shape, order="F")[r0:r1]
                f.seek(hdr.offset + r0 * per_row)
                buf = f.read((r1 - r0) * per_row)
        except FileNotFoundError:
            raise self._missing(path) from None
        if len(buf) != (r1 - r0) * per_row:
            raise SourceError(f"{path} ended early reading rows {r0}..{r1 - 1} (got {len(buf)} "
                              f"of {(r1 - r0) * per_row} bytes): the file is truncated; {FIX}")
        return np.frombuffer(buf, hdr.dtype).reshape((r1 - r0, *hdr.shape[1:]))

    def _landmask(self, key: tuple[int, int]) -> _Mask:
        """The tile's landmask, checked against where its name says the tile is."""
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = self._load_landmask(key)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > LANDMASK_CACHE:
                self._masks.popitem(last=False)
        return mask

    def _load_landmask(self, key: tuple[int, int]) -> _Mask:
        from rasterio import MemoryFile
        from rasterio.errors import RasterioError

        name = tile_name(*key)
        path = self.catalog.layout.landmask(name)
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            raise self._missing(path) from None
        try:
            with MemoryFile(data) as mem, mem.open() as src:
                crs, transform, land = src.crs, src.transform, src.read(1) != 0
        except RasterioError as exc:
            raise SourceError(f"{path} cannot be read as a GeoTIFF ({exc}); {FIX}") from exc
        want = tile_epsg(*key)
        epsg = crs.to_epsg() if crs else None
        zone_no = want % 100
        if epsg not in (32600 + zone_no, 32700 + zone_no):
            raise SourceError(
                f"CRS mismatch between tiles of utm{zone_no:02d}: the landmask {path} is in "
                f"{crs or 'no CRS'}, but tile {name} lies in UTM zone {zone_no} (EPSG:{want}), "
                f"like the other tiles of that zone; the landmask belongs to another tile or was "
                f"reprojected; {FIX}"
            )
        t = canonical(transform, epsg)
        h, w = land.shape
        if t.b or t.d or t.a <= 0 or t.e >= 0:
            raise SourceError(f"{path} has a rotated or flipped transform {tuple(t)[:6]}; "
                              f"TESSERA landmasks are north-up; {FIX}")
        _, west, top, shape = footprints(np.array([key]))
        fx0, fy1 = float(west[0]) - PAD * RES, float(top[0]) + PAD * RES
        fx1 = float(west[0]) + (int(shape[0, 1]) + PAD) * RES
        fy0 = float(top[0]) - (int(shape[0, 0]) + PAD) * RES
        x0, x1, y0, y1 = t.c, t.c + t.a * w, t.f + t.e * h, t.f
        cx, cy = _to_utm(want).transform(key[0] / 100, key[1] / 100)
        cy -= SOUTH if want > 32700 else 0.0
        if not (x0 <= cx <= x1 and y0 <= cy <= y1 and fx0 <= x0 and x1 <= fx1
                and fy0 <= y0 and y1 <= fy1):
            raise SourceError(
                f"transform mismatch between tiles of utm{zone_no:02d}: the landmask {path} "
                f"covers E {x0:.0f}..{x1:.0f}, N {y0:.0f}..{y1:.0f} (zone axis) but tile "
                f"{name}'s 0.1° box lies within E {fx0:.0f}..{fx1:.0f}, N {fy0:.0f}..{fy1:.0f}: "
                f"its pixels would land on its neighbours'; {FIX}"
            )
        return _Mask(t, land)

    def describe(self) -> dict[str, Any]:
        c = self.catalog
        return {
            "kind": self.kind,
            "layout": self.layout,
            "url": self.url,
            "dataset": self.dataset,
            "dimensions": self.dimensions,
            "form": c.layout.form,
            "indexed_by": c.indexed_by,
            "tiles": {str(y): len(k) for y, k in sorted(c.index.tiles.items())},
            "incomplete_tiles": sum(len(b) for b in c.index.broken.values()),
            "generated_at": c.generated_at,
        }
