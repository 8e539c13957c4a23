"""The synthetic world as AlphaEarth (AEF) embeddings, in AEF's two published layouts.

The AEF view of a city is its 128-d TESSERA-like embedding, centred, projected to 64 dimensions
by a fixed random orthonormal matrix and normalised to unit length (AEF vectors are unit
length), then quantised the way Google does: ``q = round(sign(v)·sqrt|v|·127.5)`` in −127..127,
the inverse of ``sign(q)·(q/127.5)²``; −128 marks "no data" in every band (the city's no-data
strip). Unlike TESSERA, AEF has values over water.

Layouts (shared/reference/data-formats.md §2.2–2.5):

- ``write_aef_cogs``: ``aef/{year}/{zone}{N|S}/{17-char id}-{10-digit}-{10-digit}.tiff`` — int8
  COGs of 64 bands (``A00``..``A63``), nodata −128, band-separate tiles, ZSTD, in EPSG:326NN or
  327NN (true southern northings) and **bottom-up** like the Source Cooperative files — plus
  ``aef_index.parquet`` (GeoParquet) and ``aef_index_stac_geoparquet.parquet`` (static STAC
  collection), with paths relative to the index so the tree can be copied anywhere;
- ``write_aef_mosaic``: ``aef-mosaic.zarr``, the global EPSG:4326 Zarr with the real shape,
  shards and chunks, its pixels sampled from the UTM codes by the one nearest-neighbour rule in
  :mod:`lczscale.io.sources.aef_warp`.

Files exist only where a city is; everything else of a file is −128, as beyond a real swath.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.shutil
import shapely
import zarr
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from zarr.codecs import ZstdCodec

from lczscale.config import GridConfig
from lczscale.core.grid import UTM_X0, UTM_Y_TOP, Window, Zone, global_zone
from lczscale.errors import ConfigError
from lczscale.io.sources.aef_warp import AEF_RESOLUTION, ReadUtm, sample_nearest
from lczscale.synth.cities import _SPACE, SynthCity, _rng
from lczscale.synth.layout import BANDS, material_prototypes

AEF_BANDS = 64
NODATA = -128
SOUTH_OFFSET = 10_000_000.0  # true southern northing − canonical (326NN) northing
MOSAIC_SHAPE = (1_859_584, 4_009_984)  # (y, x) of the published aef-mosaic store
INDEX = "aef_index.parquet"
STAC_INDEX = "aef_index_stac_geoparquet.parquet"
_PROJECTION_KEY = 2_000_000  # spawn key of the projection's random stream (unused by synth)

Render = Callable[[SynthCity, int], npt.NDArray[np.float32]]


# --------------------------------------------------------------------------------------------
# The 64-d AEF view


def _projection(seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(centre (128,), P (64, 128) with orthonormal rows) of a world.

    The centre is the mean material prototype of the world (the same draw as ``WorldSpace``),
    so unit vectors spread over the sphere instead of crowding round the common mean.
    """
    centre = material_prototypes(_rng(seed, _SPACE)).mean(axis=0).astype(np.float64)
    g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PROJECTION_KEY,)))
    q, r = np.linalg.qr(g.standard_normal((BANDS, AEF_BANDS)))
    q *= np.sign(np.diag(r))[None, :]  # unique orthonormal basis
    return centre, np.ascontiguousarray(q.T)


def quantise_aef(v: npt.NDArray[np.floating]) -> npt.NDArray[np.int8]:
    """AEF int8 codes of values in [-1, 1]: round(sign(v)·sqrt|v|·127.5) clipped to ±127."""
    q = np.rint(np.sign(v) * np.sqrt(np.abs(v)) * 127.5)
    return np.clip(q, -127, 127).astype(np.int8)


def aef_codes(city: SynthCity, emb: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.int8]:
    """int8 (64, H, W) AEF codes of one city-year from its float32 (128, H, W) embedding; −128
    in every band where the city has no data (its ``nodata`` strip)."""
    centre, proj = _projection(seed)
    h, w = emb.shape[1:]
    out = np.empty((AEF_BANDS, h, w), dtype=np.int8)
    step = max(1, 65536 // max(w, 1))  # rows per batch: bounded float64 memory
    for r0 in range(0, h, step):
        x = emb[:, r0 : r0 + step].reshape(BANDS, -1).astype(np.float64) - centre[:, None]
        v = proj @ x
        v /= np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-12)
        out[:, r0 : r0 + step] = quantise_aef(v).reshape(AEF_BANDS, -1, w)
    out[:, city.nodata] = NODATA
    return out


def utm_reader(cities: Sequence[SynthCity], codes: Sequence[npt.NDArray[np.int8]]) -> ReadUtm:
    """A ``read_utm`` over in-memory city codes (for the mosaic writer and test references):
    codes and validity of a canonical-zone window, first city wins where two overlap."""

    def read(zone: Zone, window: Window) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((AEF_BANDS, window.height, window.width), dtype=np.int8)
        valid = np.zeros((window.height, window.width), dtype=bool)
        for c, k in zip(cities, codes, strict=True):
            inner = window.intersection(c.window) if c.zone.name == zone.name else None
            if inner is None:
                continue
            src = k[(slice(None), *inner.relative_to(c.window))]
            dst = inner.relative_to(window)
            take = (src[0] != NODATA) & ~valid[dst]
            np.copyto(out[(slice(None), *dst)], src, where=take[None])
            valid[dst] |= take
        return out, valid

    return read


# --------------------------------------------------------------------------------------------
# COGs


@dataclass(frozen=True)
class _Cell:
    """One file of a zone's file lattice (canonical zone pixels, ``size`` px square)."""

    number: int
    row: int
    col: int
    size: int

    @property
    def window(self) -> Window:
        return Window(self.row * self.size, self.col * self.size, self.size, self.size)

    @property
    def south(self) -> bool:
        centre = UTM_Y_TOP - AEF_RESOLUTION * (self.window.row + self.size / 2)
        return centre < 0

    @property
    def label(self) -> str:
        return f"{self.number}{'S' if self.south else 'N'}"

    @property
    def crs(self) -> str:
        return f"EPSG:{(32700 if self.south else 32600) + self.number}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the file's own CRS (true northings in the south)."""
        w = self.window
        west = UTM_X0 + AEF_RESOLUTION * w.col
        north = UTM_Y_TOP - AEF_RESOLUTION * w.row + (SOUTH_OFFSET if self.south else 0.0)
        size = AEF_RESOLUTION * self.size
        return west, north - size, west + size, north

    def name(self, seed: int, year: int) -> str:
        """``{id}-{row offset}-{col offset}.tiff``: one 17-char id per 2×2 block of files (an
        export of one Earth Engine image), offsets inside it, as in the published names."""
        key = f"{seed}/{year}/{self.label}/{self.row // 2}/{self.col // 2}".encode()
        n = int.from_bytes(hashlib.blake2b(key, digest_size=12).digest(), "big")
        digits = ""
        while len(digits) < 16:
            n, d = divmod(n, 36)
            digits += "0123456789abcdefghijklmnopqrstuvwxyz"[d]
        oy, ox = (self.row % 2) * self.size, (self.col % 2) * self.size
        return f"x{digits}-{oy:010d}-{ox:010d}.tiff"


def write_cog(
    path: Path, codes: npt.NDArray[np.integer], crs: str, west: float, north: float, *,
    bottom_up: bool = True, block: int = 256, res: float = AEF_RESOLUTION,
    dtype: str = "int8",
) -> None:
    """One COG in the AEF format from top-down ``codes`` (bands, y, x) whose top-left corner
    is (west, north): band-separate ZSTD tiles, nodata −128, descriptions A00.., overviews.

    ``bottom_up`` stores rows south→north with a positive y resolution (the Source Cooperative
    files); otherwise the usual top-down layout.
    """
    bands, h, w = codes.shape
    if bottom_up:
        transform = Affine(res, 0.0, west, 0.0, res, north - res * h)
        data = np.ascontiguousarray(codes[:, ::-1])
    else:
        transform = Affine(res, 0.0, west, 0.0, -res, north)
        data = codes
    mem_profile = {"driver": "MEM", "width": w, "height": h, "count": bands, "dtype": dtype,
                   "crs": crs, "transform": transform, "nodata": NODATA if dtype == "int8" else 0}
    levels: list[int] = []
    while max(h, w) // (2 ** (len(levels) + 1)) >= block:
        levels.append(2 ** (len(levels) + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as mf, mf.open(**mem_profile) as mem:
        mem.write(data.astype(dtype, copy=False))
        for i in range(bands):
            mem.set_band_description(i + 1, f"A{i:02d}")
        if levels:  # real overviews are re-normalised means; nearest keeps genuine vectors
            mem.build_overviews(levels, Resampling.nearest)
        rasterio.shutil.copy(
            mem, str(path), driver="GTiff", tiled=True, blockxsize=block, blockysize=block,
            compress="ZSTD", interleave="band", copy_src_overviews=True,
        )


@functools.cache
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def _footprint(crs: str, bounds: tuple[float, float, float, float]) -> shapely.Polygon:
    """The file's outline in WGS84 (edges densified: they curve in lon/lat)."""
    west, south, east, north = bounds
    t = np.linspace(0.0, 1.0, 17)
    xs = np.concatenate([west + (east - west) * t, np.full(17, east),
                         east - (east - west) * t, np.full(17, west)])
    ys = np.concatenate([np.full(17, south), south + (north - south) * t,
                         np.full(17, north), north - (north - south) * t])
    lon, lat = _to_lonlat(crs).transform(xs, ys)
    return shapely.Polygon(np.column_stack([lon, lat]))


def index_rows(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """``aef_index.parquet`` columns (§2.4) of files given as {path, year, crs, bounds}."""
    cols: dict[str, list[Any]] = {k: [] for k in (
        "fid", "geometry", "crs", "path", "year", "utm_zone", "utm_west", "utm_south",
        "utm_east", "utm_north", "wgs84_west", "wgs84_south", "wgs84_east", "wgs84_north")}
    for fid, r in enumerate(records, start=1):
        epsg = int(r["crs"].split(":")[1])
        poly = _footprint(r["crs"], r["bounds"])
        lon0, lat0, lon1, lat1 = poly.bounds
        values = [fid, shapely.to_wkb(poly), r["crs"], r["path"], int(r["year"]),
                  f"{epsg % 100}{'S' if epsg // 100 == 327 else 'N'}", *r["bounds"],
                  lon0, lat0, lon1, lat1]
        for k, v in zip(cols, values, strict=True):
            cols[k].append(v)
    return cols


def write_index(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """``aef_index.parquet`` as GeoParquet (WKB footprints in WGS84)."""
    cols = index_rows(records)
    table = pa.table({k: pa.array(v, type=pa.binary() if k == "geometry" else None)
                      for k, v in cols.items()})
    lon0, lat0 = min(cols["wgs84_west"], default=0), min(cols["wgs84_south"], default=0)
    lon1, lat1 = max(cols["wgs84_east"], default=0), max(cols["wgs84_north"], default=0)
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": ["Polygon"], "bbox": [lon0, lat0, lon1, lat1]}}}
    table = table.replace_schema_metadata({"geo": json.dumps(geo)})
    pq.write_table(table, path, compression="zstd")


def stac_items(records: Sequence[dict[str, Any]], collection: str) -> list[dict[str, Any]]:
    """One STAC Item per COG (asset key ``data``, href relative to the index), with the
    projection extension's code, bbox, shape and the file's own (bottom-up) transform."""
    items = []
    for r in records:
        poly = _footprint(r["crs"], r["bounds"])
        year = int(r["year"])
        items.append({
            "type": "Feature",
            "stac_version": "1.1.0",
            "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
            "id": Path(r["path"]).stem,
            "collection": collection,
            "geometry": shapely.geometry.mapping(poly),
            "bbox": list(poly.bounds),
            "properties": {
                "datetime": f"{year}-01-01T00:00:00Z",
                "start_datetime": f"{year}-01-01T00:00:00Z",
                "end_datetime": f"{year}-12-31T23:59:59Z",
                "proj:code": r["crs"],
                "proj:bbox": list(r["bounds"]),
                "proj:shape": list(r["shape"]),
                "proj:transform": list(r["transform"]),
            },
            "links": [],
            "assets": {"data": {
                "href": r["path"],
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }},
        })
    return items


def write_stac_index(path: Path, items: Sequence[dict[str, Any]]) -> None:
    """stac-geoparquet via rustac (the reference writer); pyarrow when rustac is absent."""
    try:
        import rustac
    except ImportError:
        _write_stac_pyarrow(path, items)
        return
    rustac.write_sync(str(path), list(items))


def _write_stac_pyarrow(path: Path, items: Sequence[dict[str, Any]]) -> None:
    flat = []
    for it in items:
        row = {k: v for k, v in it.items() if k not in ("properties", "geometry", "bbox")}
        row.update(it["properties"])
        row["geometry"] = shapely.to_wkb(shapely.geometry.shape(it["geometry"]))
        row["bbox"] = dict(zip(("xmin", "ymin", "xmax", "ymax"), it["bbox"], strict=True))
        for k in ("datetime", "start_datetime", "end_datetime"):
            row[k] = np.datetime64(row[k].rstrip("Z"), "ms")
        flat.append(row)
    table = pa.Table.from_pylist(flat)
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    table = table.replace_schema_metadata(
        {"geo": json.dumps(geo), "stac-geoparquet": json.dumps({"version": "1.0.0"})})
    pq.write_table(table, path, compression="zstd")


def _cells(c: SynthCity, size: int) -> list[_Cell]:
    w = c.window
    number = int(c.zone.name[3:])
    return [_Cell(number, r, k, size)
            for r in range(w.row // size, (w.row_stop - 1) // size + 1)
            for k in range(w.col // size, (w.col_stop - 1) // size + 1)]


def write_aef_cogs(
    out: str | Path, world: Sequence[SynthCity], years: Sequence[int], render: Render,
    seed: int, *, file_px: int = 1024, bottom_up: bool = True, block: int = 256,
) -> dict[str, Any]:
    """``out/aef/``: AEF COGs of every city and year (``file_px`` square files on the zone's
    10 m lattice; the real ones are 8192), ``aef_index.parquet`` and the STAC GeoParquet."""
    if file_px % block or file_px < block:
        raise ConfigError(f"file_px ({file_px}) must be a multiple of the block ({block})")
    root = Path(out) / "aef"
    root.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for year in sorted(int(y) for y in years):
        codes = [aef_codes(c, render(c, year), seed) for c in world]
        cells = sorted({cell for c in world for cell in _cells(c, file_px)},
                       key=lambda k: (k.number, k.row, k.col))
        for cell in cells:
            canvas = np.full((AEF_BANDS, file_px, file_px), NODATA, dtype=np.int8)
            for c, k in zip(world, codes, strict=True):
                same = int(c.zone.name[3:]) == cell.number
                inner = c.window.intersection(cell.window) if same else None
                if inner is not None:
                    canvas[(slice(None), *inner.relative_to(cell.window))] = k[
                        (slice(None), *inner.relative_to(c.window))]
            rel = f"{year}/{cell.label}/{cell.name(seed, year)}"
            west, south, _, north = cell.bounds
            write_cog(root / rel, canvas, cell.crs, west, north, bottom_up=bottom_up,
                      block=block)
            res = AEF_RESOLUTION
            transform = ((res, 0.0, west, 0.0, res, south) if bottom_up
                         else (res, 0.0, west, 0.0, -res, north))
            records.append({"path": rel, "year": year, "crs": cell.crs, "bounds": cell.bounds,
                            "shape": (file_px, file_px), "transform": transform})
    write_index(root / INDEX, records)
    write_stac_index(root / STAC_INDEX, stac_items(records, "aef-synthetic"))
    return {
        "root": str(root.resolve()),
        "index": str((root / INDEX).resolve()),
        "stac_index": str((root / STAC_INDEX).resolve()),
        "files": len(records),
        "file_px": file_px,
        "bottom_up": bottom_up,
        "zones": sorted({r["path"].split("/")[1] for r in records}),
        "years": sorted({r["year"] for r in records}),
    }


# --------------------------------------------------------------------------------------------
# The global mosaic


def mosaic_zone() -> Zone:
    """The global EPSG:4326 zone of the published mosaic (the GridConfig defaults)."""
    g = GridConfig()
    return global_zone(g.global_resolution, g.global_top)


def mosaic_window(c: SynthCity, margin: int = 2) -> Window:
    """Global-zone pixels covering a city's lon/lat box (plus ``margin`` px)."""
    a = mosaic_zone().affine
    minlon, minlat, maxlon, maxlat = c.bbox_lonlat
    c0 = int(np.floor((minlon - a.c) / a.a)) - margin
    c1 = int(np.ceil((maxlon - a.c) / a.a)) + margin
    r0 = int(np.floor((maxlat - a.f) / a.e)) - margin
    r1 = int(np.ceil((minlat - a.f) / a.e)) + margin
    return Window(r0, c0, r1 - r0, c1 - c0)


def _mosaic_attrs(zone: Zone) -> dict[str, Any]:
    t = list(zone.transform)
    return {"crs": "EPSG:4326", "proj:code": "EPSG:4326", "spatial:transform": t,
            "spatial:registration": "pixel", "nodata": NODATA,
            "aef:dequantization": "sign(q) * (q / 127.5) ** 2; q == -128 is no data"}


def write_aef_mosaic(
    out: str | Path, world: Sequence[SynthCity], years: Sequence[int], render: Render,
    seed: int, *, shard: int = 4096, chunk: int = 256,
) -> dict[str, Any]:
    """``out/aef-mosaic.zarr``: the global AEF Zarr (§2.5) — ``embeddings`` int8 (time, band,
    y, x) of the real global shape, fill −128, shards (1, 64, shard, shard) of (1, 64, chunk,
    chunk) zstd chunks, coordinates ``x``/``y`` (pixel centres) and ``time``. Only chunks
    holding a city are stored (zarr does not store the rest)."""
    if shard % chunk:
        raise ConfigError(f"shard ({shard}) must be a multiple of chunk ({chunk})")
    path = Path(out) / "aef-mosaic.zarr"
    zone = mosaic_zone()
    years = sorted(int(y) for y in years)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({**_mosaic_attrs(zone), "lczscale:synthetic": True,
                       "title": "AlphaEarth global mosaic (synthetic, lczscale)"})
    comp = ZstdCodec(level=3)
    arr = root.create_array(
        "embeddings", shape=(len(years), AEF_BANDS, *MOSAIC_SHAPE),
        chunks=(1, AEF_BANDS, chunk, chunk), shards=(1, AEF_BANDS, shard, shard), dtype="int8",
        fill_value=NODATA, compressors=comp, dimension_names=["time", "band", "y", "x"],
        config={"write_empty_chunks": False},
    )
    arr.attrs.update(_mosaic_attrs(zone))
    a = zone.affine
    days = [(np.datetime64(f"{y}-01-01") - np.datetime64("1970-01-01")).astype(int)
            for y in years]
    coords: dict[str, tuple[np.ndarray, int, dict[str, Any]]] = {
        "x": (a.c + a.a * (np.arange(MOSAIC_SHAPE[1]) + 0.5), 1 << 20,
              {"units": "degrees_east", "standard_name": "longitude"}),
        "y": (a.f + a.e * (np.arange(MOSAIC_SHAPE[0]) + 0.5), 1 << 20,
              {"units": "degrees_north", "standard_name": "latitude"}),
        "time": (np.asarray(days, dtype=np.int64), max(1, len(years)),
                 {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"}),
    }
    for name, (values, size, attrs) in coords.items():
        c = root.create_array(name, shape=values.shape, chunks=(size,), dtype=values.dtype,
                              fill_value=0, compressors=comp, dimension_names=[name])
        c[:] = values
        c.attrs.update(attrs)
    written = 0
    for t, year in enumerate(years):
        read = utm_reader(world, [aef_codes(c, render(c, year), seed) for c in world])
        for box in _shard_boxes(world, shard, chunk):
            codes, valid = sample_nearest(zone, box, read, AEF_BANDS)
            codes[:, ~valid] = NODATA
            arr[t, :, box.row : box.row_stop, box.col : box.col_stop] = codes
            written += 1
    return {"path": str(path.resolve()), "shape": list(arr.shape), "years": years,
            "shard": shard, "chunk": chunk, "writes": written}


def _shard_boxes(world: Sequence[SynthCity], shard: int, chunk: int) -> list[Window]:
    """Windows to write: each city's window grown to whole inner chunks, cut at shard edges
    (one partial-shard write each; two cities' boxes may overlap and then write equal codes,
    since every box is sampled from all cities)."""
    boxes: set[Window] = set()
    extent = Window(0, 0, *MOSAIC_SHAPE)
    for c in world:
        w = mosaic_window(c)
        r0, c0 = (w.row // chunk) * chunk, (w.col // chunk) * chunk
        grown = Window(r0, c0, -(-(w.row_stop - r0) // chunk) * chunk,
                       -(-(w.col_stop - c0) // chunk) * chunk)
        for sr in range(grown.row // shard, (grown.row_stop - 1) // shard + 1):
            for sc in range(grown.col // shard, (grown.col_stop - 1) // shard + 1):
                cell = Window(sr * shard, sc * shard, shard, shard).intersection(extent)
                box = grown.intersection(cell) if cell is not None else None
                if box is not None:
                    boxes.add(box)
    return sorted(boxes)
