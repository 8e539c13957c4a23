"""The output LCZ cube: a Zarr v3 store, one group per zone, readable without lczscale.

Created once from a template (metadata and coordinates only); afterwards every task writes
exactly its own chunk(s), so no locks are needed. Each zone group carries CF georeferencing
(``spatial_ref`` with ``crs_wkt`` and ``GeoTransform``, ``grid_mapping`` on the data variables)
for xarray/odc-geo, GDAL's ``_CRS`` attribute for GDAL's Zarr driver, and ``x``/``y`` pixel-centre
coordinates that both use. ``lcz`` is uint8 1–17 with fill value 0 = nodata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pyproj import CRS
from zarr.codecs import ZstdCodec

from lczscale import classes
from lczscale.config import CubeConfig, GridConfig, OutputsConfig
from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError
from lczscale.io import zarr_calls
from lczscale.io.cube import outputs as cube_outputs
from lczscale.io.cube.ledger import fsync_path as ledger_fsync
from lczscale.io.stores import child_url, exists, is_remote, local_path, open_store
from lczscale.io.zarr_calls import ZarrArray

CUBE_FORMAT = "lczscale-cube"
CUBE_FORMAT_VERSION = 1
COORD_CHUNK = 1 << 18
VARIABLES = ("lcz", "confidence")


def open_root(url: str, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    """The cube's root group."""
    store = open_store(url, read_only=(mode == "r"), storage_options=storage_options)
    return zarr.open_group(store, mode=mode, zarr_format=3)  # type: ignore[arg-type]


def cube_attrs(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Root attributes of an existing cube; CubeError when ``url`` is not an lczscale cube."""
    if not exists(url, storage_options):
        raise CubeError(f"no cube at {url}: run `lczscale map --out {url}` first")
    try:
        attrs = dict(open_root(url, "r", storage_options).attrs)
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise CubeError(f"{url} is not a Zarr v3 group ({exc}); is it an lczscale cube?") from exc
    if attrs.get("lczscale:format") != CUBE_FORMAT:
        raise CubeError(
            f"{url} is a Zarr store but not an lczscale cube (no 'lczscale:format' attribute)"
        )
    return attrs


def is_cube(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` holds a cube's root metadata (a folder holding only the writer lock, or
    one whose creation was cut short before its root was written, is not a cube yet)."""
    return exists(f"{url.rstrip('/')}/zarr.json", storage_options)


def half_created(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """A cube whose creation was cut short before its root attributes were written: a root
    group with no attributes holding nothing but zone groups (never a foreign Zarr store,
    which is refused as not a cube)."""
    if not is_cube(url, storage_options):
        return False
    root = open_root(url, "r", storage_options)
    if dict(root.attrs):
        return False
    return all(name == "global" or (name.startswith("utm") and name[3:].isdigit())
               for name, _ in root.members())


def create_cube(
    url: str,
    zones: Sequence[Zone],
    years: Sequence[int],
    grid: GridConfig,
    cube: CubeConfig,
    attrs: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    outputs: OutputsConfig | None = None,
    history: dict[str, Any] | None = None,
) -> None:
    """Create the cube, or extend an existing compatible one with missing zones and years
    (and, in ``zones``, with the optional arrays ``outputs`` asks for).

    Only metadata and coordinates are written. An existing cube made with another grid or
    layout is refused (its chunks would not line up), and nothing in it is changed.
    Idempotent: a creation cut short (a full disk, a kill) resumes — a root without
    attributes is completed, and a zone group not yet registered in ``lczscale:zones`` (so no
    tile was ever written to it) is made again. ``history`` is appended to the cube's
    ``lczscale:history``: every run that wrote it, and whether it overwrote another lineage.
    """
    layout = {"grid": grid.model_dump(mode="json"), "cube": cube.model_dump(mode="json")}
    if half_created(url, storage_options):  # created, cut short before its attributes
        open_root(url, "r+", storage_options).attrs.update(_root_attrs(layout))
    if is_cube(url, storage_options):
        old = cube_attrs(url, storage_options)
        if old.get("lczscale:layout") != layout:
            raise CubeError(
                f"cube {url} was created with layout {old.get('lczscale:layout')} but this run "
                f"uses {layout}; write to a new --out or rerun with the cube's own settings"
            )
        root = open_root(url, "r+", storage_options)
    else:  # a new cube (its folder may already hold the writer lock)
        root = open_root(url, "a", storage_options)
        root.attrs.update(_root_attrs(layout))
    root.attrs.update(attrs)
    if history is not None:
        past = list(root.attrs.get("lczscale:history") or [])  # type: ignore[arg-type]
        root.attrs["lczscale:history"] = [*past, history]
    present: dict[str, Any] = dict(root.attrs.get("lczscale:zones") or {})  # type: ignore[arg-type]
    for zone in zones:
        child_url(url, zone.name)
        if zone.name not in present:
            if zone.name in root:  # made by a creation cut short: never written to
                del root[zone.name]
            _create_zone(root, zone, grid, cube)
            present[zone.name] = zone.to_dict()
            root.attrs["lczscale:zones"] = present
        g = zone_group(root, zone.name, url)
        if outputs is not None:
            cube_outputs.ensure_output_arrays(g, zone, grid, cube, outputs)
        _ensure_years(g, years)
    if outputs is not None:
        root.attrs["lczscale:outputs"] = outputs.model_dump(mode="json")


def _root_attrs(layout: dict[str, Any]) -> dict[str, Any]:
    return {
        "lczscale:format": CUBE_FORMAT,
        "lczscale:format_version": CUBE_FORMAT_VERSION,
        "lczscale:layout": layout,
        "lczscale:classes": {
            "codes": classes.LCZ_CODES,
            "labels": classes.LCZ_LABELS,
            "names": classes.LCZ_CLASS_NAMES,
            "palette": classes.LCZ_PALETTE,
            "nodata": 0,
        },
        "title": "Local Climate Zones (LCZ)",
        "Conventions": "CF-1.8",
    }


def _create_zone(root: zarr.Group, zone: Zone, grid: GridConfig, cube: CubeConfig) -> None:
    crs = CRS.from_user_input(zone.crs)
    a = zone.affine
    h, w = zone.shape
    g = root.create_group(
        zone.name,
        attributes={
            "proj:code": zone.crs,
            "spatial:dimensions": ["y", "x"],
            "spatial:transform": list(zone.transform),
            "spatial:shape": [h, w],
            "spatial:bbox": list(zone.geobox.extent.boundingbox.bbox),
            "spatial:registration": "pixel",
            "lczscale:zone": zone.to_dict(),
        },
    )
    tile = grid.tile_size
    if cube.sharding:
        chunking: dict[str, Any] = {
            "chunks": (1, cube.inner_chunk, cube.inner_chunk),
            "shards": (1, tile, tile),
        }
    else:
        chunking = {"chunks": (1, tile, tile)}
    gdal_crs = {"wkt": crs.to_wkt()}
    for name, long_name in (
        ("lcz", "Local Climate Zone class (1-10 built, 11-17 = A-G land cover, 0 = nodata)"),
        ("confidence", "blended probability of the chosen class x 255 (0 = nodata)"),
    ):
        arr = g.create_array(
            name,
            shape=(0, h, w),
            dtype="uint8",
            fill_value=0,
            dimension_names=["time", "y", "x"],
            compressors=[ZstdCodec(level=cube.compression_level)],
            **chunking,
        )
        arr.attrs.update(
            {"grid_mapping": "spatial_ref", "_CRS": gdal_crs, "long_name": long_name}
        )
    g["lcz"].attrs.update(
        {
            "flag_values": classes.LCZ_CODES,
            "flag_meanings": " ".join(
                n.lower().replace(",", "").replace(" ", "_") for n in classes.LCZ_CLASS_NAMES
            ),
            "lczscale:palette": classes.LCZ_PALETTE,
        }
    )
    geographic = crs.is_geographic
    for dim, n, start, step in (("x", w, a.c, a.a), ("y", h, a.f, a.e)):
        coord = g.create_array(
            dim, shape=(n,), dtype="float64", chunks=(min(n, COORD_CHUNK),),
            dimension_names=[dim], fill_value=np.nan,
        )
        coord[:] = start + step * (np.arange(n, dtype=np.float64) + 0.5)
        if geographic:
            std = "longitude" if dim == "x" else "latitude"
            units = "degrees_east" if dim == "x" else "degrees_north"
        else:
            std = f"projection_{dim}_coordinate"
            units = "m"
        coord.attrs.update({"standard_name": std, "units": units, "axis": dim.upper()})
    t = g.create_array(
        "time", shape=(0,), dtype="int32", chunks=(64,), dimension_names=["time"], fill_value=0
    )
    t.attrs.update({"long_name": "year of the input embeddings", "axis": "T"})
    sr = g.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    cf = crs.to_cf()
    cf.update(
        {
            "crs_wkt": crs.to_wkt(),
            "spatial_ref": crs.to_wkt(),
            "GeoTransform": " ".join(repr(v) for v in (a.c, a.a, a.b, a.f, a.d, a.e)),
        }
    )
    sr.attrs.update(cf)


def _ensure_years(g: zarr.Group, years: Sequence[int]) -> None:
    time = g["time"]
    assert isinstance(time, zarr.Array)
    have = [int(v) for v in time[:]]  # type: ignore[union-attr]
    new = [y for y in dict.fromkeys(years) if y not in have]
    if not new:
        return
    n = len(have) + len(new)
    for name in (*VARIABLES, *(v for v in cube_outputs.TIME_VARIABLES if v in g)):
        arr = g[name]
        assert isinstance(arr, zarr.Array)
        arr.resize((n, *arr.shape[1:]))
    time.resize((n,))
    time[len(have) :] = np.asarray(new, dtype=np.int32)


def zone_group(root: zarr.Group, name: str, url: str) -> zarr.Group:
    """The zarr group of zone ``name`` in an opened cube root (for readers that need the
    arrays themselves); a name that would leave the cube root is refused."""
    child_url(url, name)
    try:
        g = root[name]
    except KeyError:
        raise CubeError(f"cube {url} has no zone group {name!r}") from None
    if not isinstance(g, zarr.Group):
        raise CubeError(f"{url}/{name} is not a zone group")
    return g


def _time_index(g: zarr.Group, year: int, url: str) -> int:
    years = [int(v) for v in g["time"][:]]  # type: ignore[union-attr, index]
    if year not in years:
        raise CubeError(f"cube {url} group {g.basename} has no year {year} (years: {years})")
    return years.index(year)


def zone_year(
    url: str, zone: str, year: int, mode: str = "r",
    storage_options: dict[str, Any] | None = None,
) -> tuple[zarr.Group, int]:
    """The group of ``zone`` and the time index of ``year`` (for the optional arrays)."""
    g = zone_group(open_root(url, mode, storage_options), zone, url)
    return g, _time_index(g, year, url)


def write_tile(
    url: str,
    zone: Zone,
    year: int,
    core: Window,
    lcz: np.ndarray,
    confidence: np.ndarray,
    storage_options: dict[str, Any] | None = None,
    probability: np.ndarray | None = None,
) -> None:
    """Write one tile's core into its own chunk(s) of ``lcz`` and ``confidence`` (and of
    ``probability``, (17, h, w), when given)."""
    if lcz.shape != (core.height, core.width) or confidence.shape != lcz.shape:
        raise CubeError(
            f"tile {core} expects arrays of shape {(core.height, core.width)}, got "
            f"{lcz.shape} and {confidence.shape}"
        )
    root = open_root(url, "r+", storage_options)
    g = zone_group(root, zone.name, url)
    t = _time_index(g, year, url)
    sel = (t, slice(core.row, core.row_stop), slice(core.col, core.col_stop))
    for name, values in (("lcz", lcz), ("confidence", confidence)):
        arr = g[name]
        assert isinstance(arr, zarr.Array)
        values = values.astype(np.uint8, copy=False)
        zarr_calls.setitem(without_empty_check(arr, values, core), sel, values)
    if probability is not None:
        cube_outputs.write_probability(g, t, core, probability)
    if not is_remote(url):  # then the ledger may say "done": the bytes are on disk
        names = ["lcz", "confidence"] + (["probability"] if probability is not None else [])
        sync_tile_chunks(url, g, names, t, core)


def without_empty_check(arr: ZarrArray, values: np.ndarray, core: Window) -> ZarrArray:
    """``arr``, told not to compare the chunk with its fill value, when that cannot change
    what is written.

    zarr leaves out chunks that hold only the fill value, and to know it compares every
    element of the chunk first: for a 4096 px uint8 chunk that costs more than compressing it
    (15–25 ms here, more than half of a tile's writes). When the tile is exactly one unsharded
    chunk and holds a value other than the fill, zarr would write that chunk anyway, so the
    check is skipped; in every other case (an empty tile, sharded or smaller chunks) zarr
    decides as always, and the stored chunks are the same either way.
    """
    one_chunk = arr.shards is None and tuple(arr.chunks[1:]) == (core.height, core.width)
    if not one_chunk:
        return arr
    fill = arr.fill_value
    holds_data = bool(values.any()) if fill == 0 else bool((values != fill).any())
    return arr.with_config({"write_empty_chunks": True}) if holds_data else arr


def sync_tile_chunks(url: str, g: zarr.Group, names: Sequence[str], t: int,
                     core: Window) -> None:
    """Fsync the chunk (or shard) files a tile wrote in a local cube, then their directories:
    its ledger entry says ``done`` only after this, so a power loss cannot leave a done tile
    whose bytes never reached the disk."""
    dirs: set[Path] = set()
    for name in names:
        arr = g[name]
        assert isinstance(arr, zarr.Array)
        block = arr.shards or arr.chunks
        rows = range(core.row // block[-2], (core.row_stop - 1) // block[-2] + 1)
        cols = range(core.col // block[-1], (core.col_stop - 1) // block[-1] + 1)
        lead = (t, *([0] * (arr.ndim - 3)))
        for r in rows:
            for c in cols:
                key = arr.metadata.encode_chunk_key((*lead, r, c))
                path = local_path(url) / arr.path / key
                if path.exists():
                    ledger_fsync(path)
                    dirs.add(path.parent)
    for d in dirs:
        ledger_fsync(d)


def read_window(
    url: str,
    zone: Zone,
    year: int,
    window: Window,
    variable: str = "lcz",
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """One variable of one year over a window (zero outside the zone)."""
    g = zone_group(open_root(url, "r", storage_options), zone.name, url)
    t = _time_index(g, year, url)
    out = np.zeros((window.height, window.width), dtype=np.uint8)
    inner = window.intersection(zone.full_window)
    if inner is not None:
        arr = g[variable]
        assert isinstance(arr, zarr.Array)
        out[inner.relative_to(window)] = np.asarray(zarr_calls.getitem(
            arr, (t, slice(inner.row, inner.row_stop), slice(inner.col, inner.col_stop))
        ))
    return out


def read_probability(
    url: str, zone: Zone, year: int, window: Window,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """uint8 (17, h, w) blended probabilities (p × 255) of one year over a window, zero outside
    the zone; a cube made without ``--probabilities`` has none (CubeError)."""
    g = zone_group(open_root(url, "r", storage_options), zone.name, url)
    if "probability" not in g:
        raise CubeError(f"cube {url} zone {zone.name} holds no probability array; map with "
                        "--probabilities (or --fractions soft) to write it")
    t = _time_index(g, year, url)
    arr = g["probability"]
    assert isinstance(arr, zarr.Array)
    out = np.zeros((int(arr.shape[1]), window.height, window.width), dtype=np.uint8)
    inner = window.intersection(zone.full_window)
    if inner is not None:
        rows, cols = inner.relative_to(window)
        out[:, rows, cols] = np.asarray(zarr_calls.getitem(
            arr, (t, slice(None), slice(inner.row, inner.row_stop),
                  slice(inner.col, inner.col_stop))))
    return out


def cube_zones(url: str, storage_options: dict[str, Any] | None = None) -> list[Zone]:
    """The zones present in a cube."""
    zones = cube_attrs(url, storage_options).get("lczscale:zones", {})
    for name in zones:
        child_url(url, name)  # a tampered zone list must not point readers or writers outside
    return [Zone.from_dict(zones[name]) for name in sorted(zones)]


def stored_block(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """(rows, cols) of the unit a writer replaces in the cube's ``lcz`` (shard, else chunk),
    read from the stored array metadata; None for a cube without zones yet."""
    root = open_root(url, "r", storage_options)
    for zone in cube_zones(url, storage_options):
        arr = zone_group(root, zone.name, url)["lcz"]
        assert isinstance(arr, zarr.Array)
        block = arr.shards or arr.chunks
        return int(block[-2]), int(block[-1])
    return None


def cube_grid(url: str, storage_options: dict[str, Any] | None = None) -> GridConfig:
    """The grid settings the cube was made with."""
    return GridConfig.model_validate(cube_attrs(url, storage_options)["lczscale:layout"]["grid"])
