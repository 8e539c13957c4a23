"""Warp LCZ maps onto another grid (CRS, resolution) and stitch the cube's zones onto one grid.

Class codes are categories, so a warp may only *pick* a source pixel (``nearest``) or take the
most frequent class under a target pixel (``mode``); ``bilinear`` or ``average`` would invent
classes between codes (the mean of 3 and 5 is 4, a class no pixel has) and are refused.
Nodata (0) never votes and stays 0.

Stitching: every zone the region touches is warped onto the same target GeoBox; each target
pixel takes the value of the zone whose longitude band holds its centre (the zone that owns
that ground when mapping), and where that zone has nodata the first other zone (by name) with a
class. ``zone_choice`` is that rule, and every multi-zone picture uses it: ``open_cube(crs=)``,
the exports and the web map's tiles and points, so they agree pixel for pixel at zone edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import odc.geo.xr  # noqa: F401  (registers .odc)
import xarray as xr
from odc.geo import geom
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from pyproj import CRS, Transformer

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError, NoDataError

CATEGORICAL_RESAMPLING = ("nearest", "mode")
METRES_PER_DEGREE = 111_320.0  # at the equator: the default geographic pixel ≈ the native one
CLASS_VARIABLES = ("lcz",)  # the chosen resampling; every other (y, x) variable: nearest

T = TypeVar("T", xr.Dataset, xr.DataArray)
A = TypeVar("A", np.ndarray, xr.DataArray)


def check_resampling(resampling: str) -> str:
    """``resampling`` if it is categorical; ConfigError otherwise."""
    if resampling not in CATEGORICAL_RESAMPLING:
        raise ConfigError(
            f"resampling {resampling!r} would blend class codes into classes no pixel has; "
            f"LCZ maps are warped with one of {CATEGORICAL_RESAMPLING} (nearest keeps 10 m "
            "detail, mode suits a coarser target)"
        )
    return resampling


def georeferenced[T: (xr.Dataset, xr.DataArray)](obj: T) -> T:
    """``obj`` with ``spatial_ref`` as a coordinate (as odc-geo expects; the cube stores it as
    a variable so that GDAL sees it) and nodata 0 declared on its uint8 variables."""
    if isinstance(obj, xr.Dataset) and "spatial_ref" in obj.data_vars:
        obj = obj.set_coords("spatial_ref")
    if isinstance(obj, xr.DataArray):
        if "spatial_ref" not in obj.coords and obj.attrs.get("grid_mapping") == "spatial_ref":
            # ds["lcz"] of a cube Dataset: the CRS is in GDAL's _CRS attribute of the variable
            wkt = (obj.attrs.get("_CRS") or {}).get("wkt")
            obj = obj.copy(deep=False)
            obj.attrs.pop("grid_mapping")
            if wkt:
                obj = obj.odc.assign_crs(wkt)
        return obj.assign_attrs(nodata=0) if obj.dtype == np.uint8 else obj
    return obj.assign({name: var.assign_attrs(nodata=0) for name, var in obj.data_vars.items()
                       if var.dtype == np.uint8})  # a new Dataset: the caller's is untouched


def default_resolution(crs: str | CRS, native: float) -> float:
    """The target pixel size for a native one of ``native`` metres: the same in a projected
    CRS, its equatorial equivalent in degrees in a geographic one."""
    c = CRS.from_user_input(crs)
    return native / METRES_PER_DEGREE if c.is_geographic else native


def target_geobox(
    bbox: tuple[float, float, float, float], crs: str | CRS, resolution: float
) -> GeoBox:
    """The GeoBox in ``crs`` covering a lon/lat bbox, its pixel edges on multiples of
    ``resolution`` (so two requests on overlapping bboxes share pixels)."""
    if not resolution > 0:
        raise ConfigError(f"resolution must be > 0 (in units of {crs}), got {resolution}")
    region = geom.box(*bbox, "EPSG:4326").to_crs(CRS.from_user_input(crs))
    return GeoBox.from_bbox(region.boundingbox, region.crs, resolution=resolution)


def warp[T: (xr.Dataset, xr.DataArray)](obj: T, how: GeoBox, resampling: str = "nearest") -> T:
    """Warp an LCZ DataArray or a cube Dataset onto ``how`` (lazily when the input is dask).

    ``lcz`` uses ``resampling``; other (y, x) variables (e.g. ``confidence``) are picked with
    nearest and set to 0 where ``lcz`` became nodata; variables without (y, x) are dropped.
    """
    check_resampling(resampling)
    obj = georeferenced(obj)
    if isinstance(obj, xr.DataArray):
        return _warp_da(obj, how, resampling)
    out = {
        name: _warp_da(var, how, resampling if name in CLASS_VARIABLES else "nearest")
        for name, var in obj.data_vars.items()
        if {"y", "x"} <= set(var.dims)
    }
    if not out:
        raise NoDataError(f"dataset has no (y, x) variable to warp (variables: {list(obj)})")
    ds = xr.Dataset(out, attrs=grid_free_attrs(obj.attrs))
    if "lcz" in ds:
        valid = ds["lcz"] > 0
        for name in ds.data_vars:
            if name != "lcz" and ds[name].dims == ds["lcz"].dims:
                ds[name] = ds[name].where(valid, 0).astype(ds[name].dtype)
    return ds


def _warp_da(da: xr.DataArray, how: GeoBox, resampling: str) -> xr.DataArray:
    nodata = 0 if da.dtype == np.uint8 else None
    out = xr_reproject(
        da, how, resampling=resampling, src_nodata=nodata, dst_nodata=nodata, always_yx=True
    )
    out.attrs = grid_free_attrs(out.attrs)
    return out


def grid_free_attrs(attrs: dict[Any, Any]) -> dict[Any, Any]:
    """Attributes without those that describe the source grid (wrong after a warp): the
    zone, its STAC-style projection/spatial fields and GDAL's ``_CRS``."""
    return {
        k: v for k, v in attrs.items()
        if not (str(k).startswith(("proj:", "spatial:")) or k in ("lczscale:zone", "_CRS"))
    }


def zone_window(zone: Zone, box: GeoBox, pad: int = 2) -> Window | None:
    """The zone pixels under a target GeoBox, plus ``pad`` source pixels and one target pixel
    on every side (nearest and mode look that far outside the footprint)."""
    footprint = box.extent.to_crs(zone.crs)
    native = abs(zone.affine.a)
    b = footprint.boundingbox
    # one target pixel, in zone units: the diagonal of the footprint over the pixel diagonal
    span = math.hypot(b.right - b.left, b.top - b.bottom) / math.hypot(*box.shape)
    margin = pad * native + span
    padded = geom.box(b.left - margin, b.bottom - margin, b.right + margin, b.top + margin,
                      zone.crs)
    return zone.bounding_window(padded)


def pixel_lons(box: GeoBox) -> np.ndarray:
    """(y, x) longitudes of the centres of ``box``'s pixels."""
    a = box.affine
    h, w = box.shape
    xs = a.c + a.a * (np.arange(w) + 0.5)
    ys = a.f + a.e * (np.arange(h) + 0.5)
    c = CRS.from_user_input(box.crs)
    if c.is_geographic and c.equals(CRS.from_epsg(4326), ignore_axis_order=True):
        return np.broadcast_to(xs[None, :], (h, w))
    xx, yy = np.meshgrid(xs, ys)
    lon, _ = Transformer.from_crs(c, "EPSG:4326", always_xy=True).transform(xx, yy)
    return np.asarray(lon)


def owned(zone: Zone, lon: np.ndarray) -> np.ndarray:
    """True where a longitude lies in the zone's band (the ground the zone maps)."""
    lo, hi = zone.lon_band
    return (lon >= lo) & (lon < hi)


def zone_choice[A: (np.ndarray, xr.DataArray)](has_class: Sequence[A], owns: Sequence[A]) -> A:
    """For each target pixel, the index of the zone it takes its value from, −1 where no zone
    has a class: the zone owning the pixel where that zone has a class, else the first zone
    with one. ``has_class[k]`` and ``owns[k]`` are zone k's boolean masks on the target grid
    (numpy arrays, or DataArrays that broadcast by dimension name)."""
    if not has_class:
        raise NoDataError("no zone to choose from")
    choice: Any = xr.where(has_class[0], -1, -1)  # −1 everywhere, shaped like the masks
    for k, (has, own) in enumerate(zip(has_class, owns, strict=True)):
        choice = xr.where((choice < 0) & has & own, k, choice)
    for k, has in enumerate(has_class):
        choice = xr.where((choice < 0) & has, k, choice)
    return choice  # type: ignore[no-any-return]


def stitch(parts: Sequence[tuple[Zone, xr.Dataset]], box: GeoBox, resampling: str) -> xr.Dataset:
    """Warp each zone's Dataset onto ``box`` and combine them by ``zone_choice``."""
    if not parts:
        raise NoDataError("no zone to stitch")
    warped = [warp(ds, box, resampling) for _, ds in parts]
    warped = list(xr.align(*warped, join="outer", fill_value=0))
    if len(warped) == 1:
        return warped[0]
    names = [n for n in warped[0].data_vars if all(n in w for w in warped)]
    first = warped[0]
    lon = pixel_lons(box)
    owns = [xr.DataArray(owned(zone, lon), dims=("y", "x"),
                         coords={"y": first["y"], "x": first["x"]}) for zone, _ in parts]
    choice = zone_choice([w["lcz"] > 0 for w in warped], owns)
    out = {}
    for n in names:
        value = xr.zeros_like(first[n])
        for k, w in enumerate(warped):
            value = xr.where(choice == k, w[n], value)
        out[n] = value.transpose(*first[n].dims).astype(first[n].dtype)
    return xr.Dataset(out, attrs=dict(first.attrs))


def stitch_attrs(zones: Sequence[Zone], resampling: str, box: GeoBox) -> dict[str, Any]:
    """Provenance of a stitched view (which zones, how)."""
    return {
        "lczscale:stitched_zones": [z.name for z in zones],
        "lczscale:resampling": resampling,
        "lczscale:crs": str(box.crs),
        "lczscale:resolution": abs(box.resolution.x),
    }
