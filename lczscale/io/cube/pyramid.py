"""Browsing pyramid: mode-downsampled overviews of ``lcz``, written into the cube.

Level k of a zone is the zone's lattice at 2^k × its resolution, stored as the array
``<zone>/overviews/<k>/lcz`` (time, y, x) in a group that carries its own georeferencing
(``spatial_ref`` with ``GeoTransform``, ``x``/``y`` coordinates), so ``xarray.open_zarr(store,
group="utm32/overviews/3")`` or GDAL open any level on its own. Pixel (r, c) of level k covers
exactly zone pixels ``r·2^k … (r+1)·2^k − 1`` (every level shares the zone's origin). The zone
group lists the levels in the ``multiscales`` attribute of the Zarr *multiscales* convention
(https://github.com/zarr-conventions/multiscales, the layout GeoZarr adopted): one ``layout``
entry per level with ``asset``, ``derived_from``, ``transform.scale``, the level's absolute
``spatial:transform``/``spatial:shape``, and ``resampling_method: "mode"``.

Each level is made from the one below by a 2×2 mode that ignores nodata (0) unless all four
pixels are 0; ties go to the lowest code, as in ``aggregate.majority``. Work goes chunk by
chunk (256 px output, 512 px input) over the region that has data only — the ledger's done
tiles, or the stored chunks of a cube without a ledger — never a whole zone (10^10 px).

A build is resumable and idempotent: ``_pyramid/<zone>.json`` records which source tiles (and
their provenance) the finished pyramid reflects, and which levels a build in progress has
finished. A rerun redoes only the chunks above tiles that are new or changed since.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from pyproj import CRS
from zarr.codecs import ZstdCodec

from lczscale import classes
from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError
from lczscale.io.cube import ledger
from lczscale.io.cube.store import cube_zones, open_root, zone_group
from lczscale.io.stores import child_url, filesystem

TILE = 256  # overview chunk edge, and the size the top level must fit in
OVERVIEWS = "overviews"
STATE_DIR = "_pyramid"
STATE_FORMAT = 1
MULTISCALES_CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}


def level_zone(zone: Zone, k: int) -> Zone:
    """The zone's lattice at level k: same origin and CRS, pixels 2^k times larger."""
    f = 1 << k
    a, b, c, d, e, g = zone.transform
    h, w = zone.shape
    return Zone(zone.name, zone.crs, (a * f, b * f, c, d * f, e * f, g),
                (-(-h // f), -(-w // f)), zone.lon_band)


def level_path(k: int) -> str:
    """Path of level k's ``lcz`` array inside the zone group (level 0 is ``lcz`` itself)."""
    return "lcz" if k == 0 else f"{OVERVIEWS}/{k}/lcz"


def mode2x2(codes: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """2×2 mode of a class map: nodata (0) never votes, ties → lowest code, 0 only if all 0.

    An odd last row/column is a half cell (its missing pixels count as nodata). The same rule
    as ``aggregate.majority`` with factor 2, without the per-cell count table (18× less memory).
    """
    a = np.asarray(codes, dtype=np.uint8)
    if a.ndim != 2:
        raise ValueError(f"codes must be 2-D (y, x), got shape {a.shape}")
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)))
    quads = np.stack([a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]])
    votes = sum((quads == quads[i]).astype(np.uint8) for i in range(4))  # per candidate
    votes = np.where(quads > 0, votes, 0)
    score = votes.astype(np.int16) * 32 + (31 - quads.astype(np.int16))  # more votes, then low
    best = score.argmax(axis=0)
    out: npt.NDArray[np.uint8] = np.take_along_axis(quads, best[None], axis=0)[0]
    return out


# --------------------------------------------------------------------------------------------
# Where a zone has data


@dataclass(frozen=True)
class Source:
    """A region of a zone's ``lcz`` that holds data: time index, window, version (None =
    unknown, always rebuilt)."""

    t: int
    window: Window
    version: str | None


def data_sources(
    url: str, zone: Zone, years: list[int], entries: dict[str, dict[str, Any]],
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Source]:
    """The regions of ``zone`` with data: its done ledger tiles, else its stored blocks."""
    out: dict[str, Source] = {}
    for key, e in entries.items():
        if e.get("zone") != zone.name or ledger.state(e) != ledger.DONE:
            continue
        if e.get("year") not in years or not isinstance(e.get("core"), list):
            continue
        r, c, h, w = (int(v) for v in e["core"])
        version = f"{e.get('provenance_hash')}@{e.get('finished_at')}"
        out[key] = Source(years.index(int(e["year"])), Window(r, c, h, w), version)
    return out or stored_blocks(url, zone, storage_options)


def stored_blocks(
    url: str, zone: Zone, storage_options: dict[str, Any] | None = None
) -> dict[str, Source]:
    """The stored chunks (shards) of a zone's ``lcz``, for cubes written without a ledger
    (e.g. a synthetic truth cube). Their version is unknown, so they are always rebuilt."""
    arr = zone_group(open_root(url, "r", storage_options), zone.name, url)["lcz"]
    assert isinstance(arr, zarr.Array)
    bh, bw = (arr.shards or arr.chunks)[-2:]
    fs, root = filesystem(child_url(url, zone.name, "lcz", "c"), storage_options)
    try:
        paths = fs.find(root)
    except FileNotFoundError:
        return {}
    out = {}
    for p in paths:
        parts = p[len(root):].strip("/").split("/")
        if len(parts) != 3 or not all(s.isdigit() for s in parts):
            continue
        t, br, bc = (int(s) for s in parts)
        win = Window(br * bh, bc * bw, bh, bw).intersection(zone.full_window)
        if win is not None:
            out[f"stored/{t}/{br}_{bc}"] = Source(t, win, None)
    return out


def data_window(windows: Iterable[Window]) -> Window | None:
    """Bounding box of some windows (None for none)."""
    ws = list(windows)
    if not ws:
        return None
    r0, c0 = min(w.row for w in ws), min(w.col for w in ws)
    r1, c1 = max(w.row_stop for w in ws), max(w.col_stop for w in ws)
    return Window(r0, c0, r1 - r0, c1 - c0)


def levels_needed(windows: Iterable[Window]) -> int:
    """The smallest k at which the data's bounding box fits in one TILE × TILE tile."""
    box = data_window(windows)
    if box is None:
        return 0
    r0, c0, r1, c1 = box.row, box.col, box.row_stop, box.col_stop
    k = 0
    while max(-(-r1 >> k) - (r0 >> k), -(-c1 >> k) - (c0 >> k)) > TILE:
        k += 1
    return k


def chunks_at(sources: Iterable[Source], k: int) -> set[tuple[int, int, int]]:
    """(t, chunk row, chunk col) of level k's chunks above the given regions."""
    out: set[tuple[int, int, int]] = set()
    for s in sources:
        w = s.window
        r0, r1 = (w.row >> k) // TILE, ((w.row_stop - 1) >> k) // TILE
        c0, c1 = (w.col >> k) // TILE, ((w.col_stop - 1) >> k) // TILE
        out.update((s.t, r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1))
    return out


# --------------------------------------------------------------------------------------------
# Building


def build_pyramid(
    url: str,
    zones: Iterable[str] | None = None,
    *,
    threads: int = 4,
    storage_options: dict[str, Any] | None = None,
    on_level: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Make or bring up to date the overviews of every zone (or the named ones) of a cube.

    Returns per zone: levels, chunks written per level, and how many source regions were new.
    ``on_level(zone, k, chunks)`` is called after each level (progress).
    """
    present = {z.name: z for z in cube_zones(url, storage_options)}
    names = list(present) if zones is None else list(zones)
    unknown = [n for n in names if n not in present]
    if unknown:
        raise CubeError(f"cube {url} has no zone(s) {unknown} (zones: {sorted(present)})")
    entries = ledger.read_all(url, storage_options)
    return {
        name: _build_zone(url, present[name], entries, threads, storage_options, on_level)
        for name in names
    }


def _build_zone(
    url: str, zone: Zone, entries: dict[str, dict[str, Any]], threads: int,
    storage_options: dict[str, Any] | None,
    on_level: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    root = open_root(url, "r+", storage_options)
    g = zone_group(root, zone.name, url)
    years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr]
    sources = data_sources(url, zone, years, entries, storage_options)
    state = read_state(url, zone.name, storage_options)
    done: dict[str, str] = state.get("sources", {})
    built = int(state.get("levels", 0))
    levels = max(levels_needed(s.window for s in sources.values()), built)
    versions = {k: s.version for k, s in sources.items()}
    changed = [s for k, s in sources.items() if s.version is None or done.get(k) != s.version]
    pending = state.get("pending") or {}
    start = 1
    if pending.get("sources") == versions and pending.get("levels") == levels:
        start = int(pending.get("levels_done", 0)) + 1  # resume where a crashed build stopped
    written: dict[int, int] = {}
    for k in range(1, levels + 1):
        _ensure_level(g, zone, k, years)
    for k in range(start, levels + 1):
        todo = sources.values() if k > built else changed  # a new level needs all of it
        chunks = sorted(chunks_at(todo, k))
        write_state(url, zone.name, {**state, "pending": {
            "sources": versions, "levels": levels, "levels_done": k - 1}}, storage_options)
        _make_level(g, zone, k, chunks, threads)
        written[k] = len(chunks)
        if on_level:
            on_level(zone.name, k, len(chunks))
    _write_multiscales(g, zone, levels)
    bounds = data_window(s.window for s in sources.values())
    if bounds is not None:  # where viewers look first, without reading the ledger
        g.attrs["lczscale:data_window"] = [bounds.row, bounds.col, bounds.height, bounds.width]
    write_state(url, zone.name, {"format": STATE_FORMAT, "levels": levels, "sources": versions},
                storage_options)
    return {"levels": levels, "chunks": written, "changed_sources": len(changed),
            "sources": len(sources)}


def _make_level(g: zarr.Group, zone: Zone, k: int, chunks: list[tuple[int, int, int]],
                threads: int) -> None:
    src = g[level_path(k - 1)]
    dst = g[level_path(k)]
    assert isinstance(src, zarr.Array) and isinstance(dst, zarr.Array)
    hs, ws = src.shape[-2:]
    hd, wd = dst.shape[-2:]

    def one(chunk: tuple[int, int, int]) -> None:
        t, cr, cc = chunk
        r0, c0 = cr * TILE, cc * TILE
        r1, c1 = min(r0 + TILE, hd), min(c0 + TILE, wd)
        block = np.asarray(src[t, 2 * r0 : min(2 * r1, hs), 2 * c0 : min(2 * c1, ws)])
        dst[t, r0:r1, c0:c1] = mode2x2(block)[: r1 - r0, : c1 - c0]

    if threads <= 1:
        for c in chunks:
            one(c)
        return
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(chunks), 64 * threads):  # bounded waves: never all futures
            list(pool.map(one, chunks[start : start + 64 * threads]))


def _ensure_level(g: zarr.Group, zone: Zone, k: int, years: list[int]) -> None:
    """Create level k's group (coordinates, georeferencing, empty ``lcz``) unless present;
    grow its time axis to the zone's years."""
    lz = level_zone(zone, k)
    name = f"{OVERVIEWS}/{k}"
    if name in g:
        lg = g[name]
        assert isinstance(lg, zarr.Group)
        arr, time = lg["lcz"], lg["time"]
        assert isinstance(arr, zarr.Array) and isinstance(time, zarr.Array)
        if arr.shape[0] != len(years):
            arr.resize((len(years), *arr.shape[1:]))
            time.resize((len(years),))
            time[:] = np.asarray(years, dtype=np.int32)
        return
    h, w = lz.shape
    lg = g.require_group(OVERVIEWS).create_group(str(k), attributes={
        "proj:code": zone.crs,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": list(lz.transform),
        "spatial:shape": [h, w],
        "spatial:registration": "pixel",
        "lczscale:overview_level": k,
        "lczscale:zone": lz.to_dict(),
    })
    crs = CRS.from_user_input(zone.crs)
    arr = lg.create_array(
        "lcz", shape=(len(years), h, w), dtype="uint8", fill_value=0,
        dimension_names=["time", "y", "x"], chunks=(1, TILE, TILE),
        compressors=[ZstdCodec(level=3)],
    )
    arr.attrs.update({
        "grid_mapping": "spatial_ref", "_CRS": {"wkt": crs.to_wkt()},
        "long_name": f"Local Climate Zone class, 2x2 mode overview level {k} (0 = nodata)",
        "flag_values": classes.LCZ_CODES, "lczscale:palette": classes.LCZ_PALETTE,
    })
    a = lz.affine
    for dim, n, start, step in (("x", w, a.c, a.a), ("y", h, a.f, a.e)):
        coord = lg.create_array(dim, shape=(n,), dtype="float64", chunks=(min(n, 1 << 18),),
                                dimension_names=[dim], fill_value=np.nan)
        coord[:] = start + step * (np.arange(n, dtype=np.float64) + 0.5)
        coord.attrs.update({"standard_name": f"projection_{dim}_coordinate", "units": "m",
                            "axis": dim.upper()} if not crs.is_geographic else
                           {"units": "degrees_east" if dim == "x" else "degrees_north",
                            "axis": dim.upper()})
    time = lg.create_array("time", shape=(len(years),), dtype="int32", chunks=(64,),
                           dimension_names=["time"], fill_value=0)
    time[:] = np.asarray(years, dtype=np.int32)
    time.attrs.update({"long_name": "year of the input embeddings", "axis": "T"})
    sr = lg.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    cf = crs.to_cf()
    cf.update({"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
               "GeoTransform": " ".join(repr(v) for v in (a.c, a.a, a.b, a.f, a.d, a.e))})
    sr.attrs.update(cf)


def _write_multiscales(g: zarr.Group, zone: Zone, levels: int) -> None:
    layout: list[dict[str, Any]] = []
    for k in range(levels + 1):
        lz = level_zone(zone, k)
        entry: dict[str, Any] = {
            "asset": level_path(k),
            "transform": {"scale": [float(1 << k)] * 2, "translation": [0.0, 0.0]},
            "spatial:transform": list(lz.transform),
            "spatial:shape": list(lz.shape),
        }
        if k:
            entry.update(derived_from=level_path(k - 1), resampling_method="mode",
                         transform={"scale": [2.0, 2.0], "translation": [0.0, 0.0]})
        layout.append(entry)
    conventions = [c for c in g.attrs.get("zarr_conventions", [])  # type: ignore[union-attr]
                   if isinstance(c, dict) and c.get("uuid") != MULTISCALES_CONVENTION["uuid"]]
    g.attrs.update({
        "zarr_conventions": [*conventions, MULTISCALES_CONVENTION],
        "multiscales": {"layout": layout, "resampling_method": "mode"},
    })


# --------------------------------------------------------------------------------------------
# State and reading


def _state_url(url: str, zone: str) -> str:
    return child_url(url, STATE_DIR, f"{zone}.json")


def read_state(url: str, zone: str, storage_options: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The pyramid's build state of ``zone`` (which levels are complete)."""
    fs, path = filesystem(_state_url(url, zone), storage_options)
    try:
        state = dict(json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return {}
    if state.get("format", STATE_FORMAT) != STATE_FORMAT:
        return {}  # another layout of the record: rebuild from scratch
    return state


def write_state(url: str, zone: str, state: dict[str, Any],
                storage_options: dict[str, Any] | None = None) -> None:
    """Write the pyramid's build state of ``zone``."""
    fs, path = filesystem(_state_url(url, zone), storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps(state, sort_keys=True).encode())


def pyramid_levels(g: zarr.Group) -> int:
    """How many overview levels a zone group has (0 = none built)."""
    ms = g.attrs.get("multiscales")
    if not isinstance(ms, dict):
        return 0
    return max(0, len(ms.get("layout", [])) - 1)


def level_for_resolution(zone: Zone, levels: int, resolution: float) -> int:
    """The coarsest level whose pixels are no larger than ``resolution`` (zone CRS units), so
    a view at that resolution never shows pixels coarser than its own."""
    base = abs(zone.transform[0])
    if not math.isfinite(resolution) or resolution <= base:
        return 0
    return max(0, min(levels, int(math.floor(math.log2(resolution / base) + 1e-9))))
