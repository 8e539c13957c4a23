"""A cube as xarray: one zone on its own grid, or several warped and stitched onto one.

``open_cube`` is what ``lczscale.open_cube`` and ``ds.lcz`` users get: a lazily indexed Dataset
of one zone (a bbox of it, a year of it) with its CRS, or with ``crs=`` the zones a bbox touches
warped onto one grid by ``lczscale.io.cube.warp``'s rules (nearest or mode, never bilinear;
the owner zone decides where zones overlap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor on what open_cube returns)
import xarray as xr
from odc.geo import geom
from pyproj import CRS

from lczscale.core.grid import Zone
from lczscale.errors import ConfigError, CubeError, NoDataError
from lczscale.io.cube.store import cube_attrs, cube_zones
from lczscale.io.cube.warp import (
    METRES_PER_DEGREE,
    check_resampling,
    default_resolution,
    stitch,
    stitch_attrs,
    target_geobox,
    zone_window,
)
from lczscale.io.stores import open_store


def open_cube(
    url: str,
    bbox: tuple[float, float, float, float] | None = None,
    *,
    zone: str | None = None,
    year: int | None = None,
    storage_options: dict[str, Any] | None = None,
    crs: str | None = None,
    resolution: float | None = None,
    resampling: str = "nearest",
) -> xr.Dataset:
    """The cube (or a lon/lat ``bbox`` of it) as an xarray Dataset on its zone's native grid.

    ``lcz`` and ``confidence`` are lazy (dask) uint8 arrays with dims (time, y, x); the
    ``spatial_ref`` coordinate carries the CRS on every variable, so ``ds.odc.geobox``,
    ``ds["lcz"].odc.geobox`` and rioxarray's ``.rio.crs`` all work.

    With ``crs`` (needs ``bbox``), every zone the bbox touches is warped (``resampling``:
    nearest or mode, never bilinear) onto one grid in that CRS with pixel size ``resolution``
    (default: the native 10 m, in degrees for a geographic CRS) and the zones are stitched;
    see ``lczscale.io.cube.warp``.
    """
    attrs = cube_attrs(url, storage_options)
    present = {z.name: z for z in cube_zones(url, storage_options)}
    if zone is None:
        candidates = sorted(present)
        if bbox is not None:
            region = geom.box(*bbox, "EPSG:4326")
            # The bbox in the zone's CRS, not the zone in lon/lat: the canonical extent of a
            # zone near ±180° (utm01–05, utm56–60) wraps the antimeridian in lon/lat.
            candidates = [
                n for n in candidates
                if _lon_overlap(present[n], bbox)
                and present[n].bounding_window(region) is not None
            ]
        if not candidates:
            raise NoDataError(
                f"cube {url} has no zone covering bbox {bbox} (zones: {sorted(present)})"
            )
        if len(candidates) > 1 and crs is None:
            raise CubeError(
                f"bbox {bbox} spans zones {candidates} of cube {url}, which have different "
                "CRSs; open one at a time with zone=..., or stitch them onto one grid with "
                'crs="EPSG:4326" (CLI: --crs EPSG:4326)'
            )
    if crs is None and (resolution is not None or resampling != "nearest"):
        raise ConfigError(
            f"resolution={resolution} / resampling={resampling!r} apply only to a warped view: "
            'pass crs= too (e.g. crs="EPSG:4326"; CLI: --crs), or drop them for the native grid'
        )
    if crs is not None:
        names = [zone] if zone is not None else candidates
        missing = [n for n in names if n not in present]
        if missing:
            raise CubeError(f"cube {url} has no zone {missing[0]!r} (zones: {sorted(present)})")
        return open_stitched(
            url, bbox, [present[n] for n in names], crs=crs, resolution=resolution,
            resampling=resampling, year=year, storage_options=storage_options,
        )
    if zone is None:
        zone = candidates[0]
    if zone not in present:
        raise CubeError(f"cube {url} has no zone {zone!r} (zones: {sorted(present)})")
    store = open_store(url, storage_options=storage_options)
    # Lazily indexed (no dask) until the selection is made: a dask graph over a whole zone
    # (the global zone holds ~10^9 chunks of 128 px) would not fit in memory.
    # decode_coords="all": the ``grid_mapping`` variable (spatial_ref) becomes a coordinate
    # of every variable, so ds["lcz"].odc.crs and .rio.crs know the CRS, not only the Dataset.
    ds = xr.open_zarr(store, group=zone, consolidated=False, zarr_format=3, chunks=None,
                      decode_coords="all")
    ds.attrs.update({k: v for k, v in attrs.items() if k.startswith("lczscale:")})
    if year is not None:
        years = [int(v) for v in ds["time"].values]
        if year not in years:
            raise NoDataError(f"cube {url} has no year {year} (years: {years})")
        ds = ds.sel(time=[year])
    if bbox is not None:
        zobj = present[zone]
        roi = _bbox_window(zobj, geom.box(*bbox, "EPSG:4326").to_crs(zobj.crs))
        ds = ds.isel(y=roi[0], x=roi[1])
        if "y_100m" in ds.dims:  # the 100 m cells holding any pixel of the window
            ds = ds.isel({f"{d}_100m": slice(s.start // 10, -(-s.stop // 10))
                          for d, s in zip("yx", roi, strict=True)})
    chunks = ds["lcz"].encoding.get("chunks") or (1, 2048, 2048)
    extra = {d: 512 for d in ("y_100m", "x_100m") if d in ds.dims}
    chunked: xr.Dataset = ds.chunk(
        {"time": 1, "y": max(chunks[-2], 2048), "x": max(chunks[-1], 2048)} | extra)
    return chunked


def _lon_overlap(zone: Zone, bbox: tuple[float, float, float, float]) -> bool:
    return bbox[0] < zone.lon_band[1] and bbox[2] > zone.lon_band[0]


def _bbox_window(zone: Zone, region: geom.Geometry) -> tuple[slice, slice]:
    inv = ~zone.affine
    b = region.boundingbox
    xs, ys = zip(*(inv @ (x, y) for x in (b.left, b.right) for y in (b.bottom, b.top)), strict=True)
    r0, r1 = max(0, int(np.floor(min(ys)))), min(zone.shape[0], int(np.ceil(max(ys))))
    c0, c1 = max(0, int(np.floor(min(xs)))), min(zone.shape[1], int(np.ceil(max(xs))))
    if r1 <= r0 or c1 <= c0:
        raise NoDataError(f"bbox does not overlap zone {zone.name}")
    return slice(r0, r1), slice(c0, c1)


def open_stitched(
    url: str,
    bbox: tuple[float, float, float, float] | None,
    zones: Sequence[Zone],
    *,
    crs: str,
    resolution: float | None = None,
    resampling: str = "nearest",
    year: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A lon/lat ``bbox`` of a cube's ``zones`` warped and stitched onto one grid in ``crs``
    (what ``open_cube(url, bbox, crs=...)`` returns)."""
    check_resampling(resampling)
    if bbox is None:
        raise ConfigError(
            f"open_cube(crs={crs!r}) needs a bbox: the target grid covers the bbox, and a whole "
            "zone warped at 10 m would be far too large; pass bbox=(minlon, minlat, maxlon, maxlat)"
        )
    try:
        target = CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises CRSError, a plain Exception subclass
        raise ConfigError(f"crs {crs!r} is not a CRS pyproj knows ({exc}); e.g. 'EPSG:4326'"
                          ) from exc
    native = min(abs(z.affine.a) for z in zones)
    if zones and CRS.from_user_input(zones[0].crs).is_geographic:
        native *= METRES_PER_DEGREE
    box = target_geobox(bbox, target, resolution or default_resolution(target, native))
    parts: list[tuple[Zone, xr.Dataset]] = []
    for zone in zones:
        win = zone_window(zone, box)
        if win is None:
            continue
        b = zone.window_geobox(win).extent.to_crs("EPSG:4326").boundingbox
        try:
            ds = open_cube(url, (b.left, b.bottom, b.right, b.top), zone=zone.name, year=year,
                           storage_options=storage_options)
        except NoDataError:
            continue
        parts.append((zone, ds))
    if not parts:
        raise NoDataError(f"cube {url} has no zone under bbox {bbox} "
                          f"(zones tried: {[z.name for z in zones]})")
    out = stitch(parts, box, resampling)
    out.attrs.update(stitch_attrs([z for z, _ in parts], resampling, box))
    return out
