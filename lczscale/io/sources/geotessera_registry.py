"""Where TESSERA NPY tiles are and what they cover: everything that reads no pixels.

Tile names ``grid_{lon:.2f}_{lat:.2f}`` (centres at odd multiples of 0.05°) give each tile's
footprint without opening a file: the UTM rectangle of its 0.1° box in the zone of its centre,
snapped outward to the 10 m lattice, on the zone's canonical 326NN axis (southern northings
− 10,000,000). Two trees are recognised by their marker files (shared/reference/data-formats.md
§1.4, §1.6), through fsspec only:

- *local*: ``{root}/global_0.1_degree_representation/{year}/grid_X_Y/grid_X_Y.npy`` and
  ``grid_X_Y_scales.npy``, landmasks ``{root}/global_0.1_degree_tiff_all/grid_X_Y.tiff``,
  ``tessera_metadata.json`` and optionally ``manifest.parquet``;
- *mirror*: the public tree with the URL at ``…/npy/{dataset_dir}`` (``{year}/grid_X_Y/…`` and
  ``manifest.parquet`` there, landmasks in ``…/landmasks/{version_path}/``), or at its base
  when ``npy/`` holds one dataset.

The index holds, per year, the complete tiles (.npy, _scales.npy *and* landmask present,
geotessera issue #406) and the incomplete ones with the paths they lack (logged). It comes from
a listing where the filesystem can list (local, s3, memory) and from ``manifest.parquet`` (plus
``landmasks.parquet`` when present) over HTTP. The catalog adds the dataset (version, variant),
which the metadata, manifest and directory name must agree on; it is small and picklable.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
from affine import Affine
from fsspec import AbstractFileSystem
from pyproj import Transformer

from lczscale.errors import SourceError

log = logging.getLogger(__name__)

EMBEDDINGS_DIR = "global_0.1_degree_representation"
LANDMASKS_DIR = "global_0.1_degree_tiff_all"
METADATA_FILE = "tessera_metadata.json"
MANIFEST_FILE = "manifest.parquet"
LANDMASK_REGISTRY = "landmasks.parquet"
BANDS = 128
RES = 10.0  # TESSERA's pixel size (m)
SOUTH = 10_000_000.0  # false northing of EPSG:327NN
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
def to_utm(epsg: int) -> Transformer:
    """lon/lat (EPSG:4326) → EPSG:``epsg``, x first; cached per zone."""
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
        xs, ys = (np.asarray(v) for v in to_utm(int(code)).transform(lon, lat))
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
        """Path of a tile's int8 embeddings file."""
        return f"{self.embeddings}/{year}/{name}/{name}.npy"

    def scales(self, year: int, name: str) -> str:
        """Path of a tile's float32 scales file."""
        return f"{self.embeddings}/{year}/{name}/{name}_scales.npy"

    def landmask(self, name: str) -> str:
        """Path of a tile's landmask GeoTIFF (also its CRS and transform; one for all years)."""
        return f"{self.landmasks}/{name}.tiff"

    @property
    def manifest(self) -> str:
        """Path of the tree's file manifest: its index where the filesystem cannot list (HTTP)."""
        return f"{self.root}/{MANIFEST_FILE}"

    @property
    def metadata(self) -> str:
        """Path of the tree's metadata file (which marks a geotessera download)."""
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


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """A JSON object file ({} when absent); SourceError when it is not one."""
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


def read_manifest(fs: AbstractFileSystem, path: str) -> dict[str, np.ndarray] | None:
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
        registry = read_manifest(fs, f"{layout.landmasks}/{LANDMASK_REGISTRY}")
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


def build_catalog(fs: AbstractFileSystem, url: str, layout: TileLayout) -> Catalog:
    """Dataset and tile index of the tree at ``layout``; SourceError when mixed or empty."""
    meta = read_json(fs, layout.metadata) if layout.form == "local" else {}
    manifest = read_manifest(fs, layout.manifest)
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
