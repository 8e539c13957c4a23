"""TESSERA embeddings as NPY tiles, the layout ``geotessera download --format npy`` writes.

:class:`TesseraTilesSource` reads zone windows mosaicked from the tiles. Where the tiles are
(local or mirror tree), which are complete and what each covers comes from
:mod:`lczscale.io.sources.geotessera_registry`, from names, listings and manifests only, so planning
never reads pixels; the tiles' .npy files are read by :mod:`lczscale.io.sources.tessera_npy`.

A tile is present only when its .npy, _scales.npy *and* landmask exist (geotessera issue #406).
Incomplete tiles are logged, left out of planning, and a read that needs one raises a
SourceError naming the missing file: nothing is silently no-data.

Pixels. A tile's pixel is *water* where its landmask is 0 (codes and scale are ignored there),
*data* where the scale is finite and > 0, and *no data* otherwise: NPY has no +inf sentinel,
missing land (v1's clipped coastlines, issue #266) is stored as codes 0 with scale 0 ("NoData
0"). So scale 0 with all-zero codes is no data here, unlike the Zarr store where it is a valid
zero vector (TESSERA never writes one). The rules of :mod:`lczscale.io.sources.corrupt_pixels`
apply to every pixel read (negative scales, NaN/+inf over nonzero codes, a positive scale over
all-zero codes, scale 0 over nonzero codes, |value| > MAX_ABS_VALUE); they raise naming the
files.
3-D scales are flattened to one scale per pixel as :mod:`lczscale.io.sources.tessera_npy` describes.

Mosaic. Tiles live in the UTM zone of their centre; their landmask gives CRS and transform
(EPSG:327NN northings are moved to the canonical 326NN axis by −10,000,000). A landmask in
another zone, or whose raster is not where the tile's 0.1° box is, is refused. Tiles on the
zone's 10 m lattice are copied; others are mapped nearest-neighbour (logged). Neighbouring UTM
rectangles overlap; a pixel is taken from the tile whose 0.1° box holds the pixel centre (its
*owner*, the tile geotessera's point lookups use) when that tile has data or says water there,
else from the first other tile (ascending lon, lat) with data, else it is water if any tile
says so, else no data. The result does not depend on the window read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from affine import Affine
from fsspec import AbstractFileSystem

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import NoDataError, SourceError
from lczscale.io.sources.corrupt_pixels import corruption
from lczscale.io.sources.geotessera_registry import (
    BANDS,
    EMBEDDINGS_DIR,
    FIX,
    LANDMASKS_DIR,
    MANIFEST_FILE,
    METADATA_FILE,
    RES,
    SOUTH,
    Catalog,
    build_catalog,
    canonical,
    dataset_of_dir,
    find_layout,
    footprints,
    normalise_version,
    read_json,
    read_manifest,
    tile_epsg,
    tile_footprint,
    tile_name,
    to_utm,
)
from lczscale.io.sources.protocol import EmbeddingWindow, identity
from lczscale.io.sources.tessera_npy import (
    NpyHeader,
    check_npy,
    flatten_scales,
    read_header,
    read_rows,
)
from lczscale.io.stores import filesystem

# Re-exported: callers import these names from this module.
__all__ = [
    "BANDS",
    "EMBEDDINGS_DIR",
    "LANDMASKS_DIR",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "TesseraTilesSource",
    "canonical",
    "tile_footprint",
    "tile_name",
]

log = logging.getLogger(__name__)

BLOCK = 512  # availability block edge (zone px)
PAD = 64  # px a landmask may reach past the footprint computed from the tile's name
LANDMASK_CACHE = 32  # landmasks kept per worker (about 1 MB each)


class _Mask(NamedTuple):
    transform: Affine  # canonical (326NN axis)
    land: np.ndarray  # (h, w) bool


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
        self._headers: dict[str, NpyHeader] = {}
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
            meta = read_json(fs, layout.metadata) if layout.form == "local" else {}
            manifest = read_manifest(fs, layout.manifest)
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
        """The tree at ``url``, validated now: layout, dataset, index and one tile's landmask."""
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
        """Layout, dataset and the per-year index of complete tiles, from listings and manifests."""
        fs, root = filesystem(self.url, self.storage_options)
        layout = find_layout(fs, root)
        if layout is None:
            raise SourceError(
                f"{self.url} is not a TESSERA NPY tile tree: no {METADATA_FILE}, "
                f"{EMBEDDINGS_DIR}/ or {MANIFEST_FILE} found; point the source at the directory "
                "`geotessera download --format npy --output DIR` wrote"
            )
        return build_catalog(fs, self.url, layout)

    @property
    def dimensions(self) -> int:
        """TESSERA's 128 bands."""
        return BANDS

    @property
    def dataset(self) -> str:
        """``tessera/<version>[/<variant>]`` as the tree's metadata and directory name agree on."""
        c = self.catalog
        return f"tessera/{c.version}" + (f"/{c.variant}" if c.variant else "")

    @property
    def years(self) -> list[int]:
        """The years with at least one complete tile."""
        return sorted(y for y, k in self.catalog.index.tiles.items() if len(k))

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """UTM zones of the complete tiles (tiles live in the zone of their centre)."""
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

    def _check_shapes(self, year: int, name: str, shape: tuple[int, int]
                      ) -> tuple[NpyHeader, NpyHeader]:
        layout = self.catalog.layout
        emb = self._header(layout.npy(year, name))
        check_npy(layout.npy(year, name), emb, "embeddings", shape)
        sc = self._header(layout.scales(year, name))
        check_npy(layout.scales(year, name), sc, "scales", shape)
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
        q, s2 = flatten_scales(q, s, layout.scales(year, name))
        codes = np.moveaxis(q, -1, 0).copy(order="C")
        problems = corruption(codes, s2)
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

    def _header(self, path: str) -> NpyHeader:
        """The .npy header (shape, dtype, data offset), validated against the file size."""
        if path in self._headers:
            return self._headers[path]
        try:
            hdr = read_header(self._fs, path)
        except FileNotFoundError:
            raise self._missing(path) from None
        with self._lock:
            self._headers[path] = hdr
        return hdr

    def _rows(self, path: str, hdr: NpyHeader, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of a C-order .npy by one ranged read (the whole file if Fortran)."""
        try:
            return read_rows(self._fs, path, hdr, r0, r1)
        except FileNotFoundError:
            raise self._missing(path) from None

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
        cx, cy = to_utm(want).transform(key[0] / 100, key[1] / 100)
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
        """Provenance: the tree's form and how it was indexed, never tile counts (new tiles must not
        restale a cube)."""
        c = self.catalog
        return {
            **identity(self),
            "form": c.layout.form,
            "indexed_by": c.indexed_by,
        }  # no catalogue counts or dates: tiles added elsewhere must not restale this cube
