"""What the ``.lcz`` xarray accessor does (``lczscale.browse.accessor`` only registers it): plot,
colour, aggregate and warp a georeferenced uint8 LCZ map (0 = nodata, 1–17).

Coarse cells (``fractions``, ``majority``) are blocks of the *zone's* pixel lattice, as in
``lczscale.products.counts``: a 100 m cell means the same ground whatever bbox the data was opened
with. Off a zone (e.g. a warped view) the lattice is the CRS's own (cell edges on multiples of
the cell size), which for the UTM zones is the same thing.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import odc.geo.xr  # noqa: F401  (registers .odc)
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from lczscale import classes
from lczscale.core.grid import Zone
from lczscale.errors import ConfigError, NoDataError
from lczscale.io.cube.warp import (
    METRES_PER_DEGREE,
    check_resampling,
    default_resolution,
    georeferenced,
    warp,
)
from lczscale.products.counts import N_CODES, block_counts, majority

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

STRIP_PIXELS = 1 << 24  # pixels counted per strip: bounds the int64 bincount index (128 MiB)
T = TypeVar("T", xr.Dataset, xr.DataArray)
NODATA_RGB = (255, 255, 255)  # not black: black is LCZ E (bare rock or paved)


def lcz_map(obj: xr.Dataset | xr.DataArray, year: int | None = None) -> xr.DataArray:
    """The (y, x) LCZ codes of a Dataset's ``lcz`` or of a DataArray, for one year."""
    if isinstance(obj, xr.Dataset) and "lcz" not in obj:
        raise NoDataError(f"dataset has no 'lcz' variable (variables: {list(obj.data_vars)})")
    da = georeferenced(obj)["lcz"] if isinstance(obj, xr.Dataset) else obj
    if "time" in da.dims:
        years = [int(v) for v in da["time"].values]
        if not years:
            raise NoDataError("the LCZ map has no year (empty time dimension)")
        if year is None:
            da = da.isel(time=-1)
        elif year in years:
            da = da.sel(time=year)
        else:
            raise NoDataError(f"the LCZ map has no year {year} (years: {years})")
    if set(da.dims) != {"y", "x"}:
        raise ConfigError(
            f"an LCZ map has dims (y, x) (plus time), got {da.dims}; select the others first"
        )
    if da.dtype != np.uint8:
        raise ConfigError(f"LCZ codes are uint8 (0 = nodata, 1–17), got dtype {da.dtype}")
    return georeferenced(da.transpose("y", "x"))


def to_rgb(da: xr.DataArray, nodata: tuple[int, int, int] = NODATA_RGB) -> xr.DataArray:
    """(y, x, band) uint8 red/green/blue of LCZ codes in the official colours."""
    table = np.array([nodata, *classes.palette_rgb()], dtype=np.uint8)
    rgb = xr.apply_ufunc(
        lambda a: table[np.minimum(a, len(table) - 1)], da,
        output_core_dims=[["band"]], dask="parallelized", output_dtypes=[np.uint8],
        dask_gufunc_kwargs={"output_sizes": {"band": 3}},
    )
    return rgb.assign_coords(band=["red", "green", "blue"]).rename("lcz_rgb")


def _lattice_origin(da: xr.DataArray, factor: int) -> tuple[int, int]:
    """Lattice (row, col) of ``da``'s pixel (0, 0): in its zone when it carries one, else on
    the CRS lattice (pixel k spans k·res .. (k+1)·res), else its own grid."""
    a = da.odc.geobox.affine
    zone = da.attrs.get("lczscale:zone")
    if zone:
        return Zone.from_dict(zone).pixel_offset(a)
    col, row = a.c / a.a, a.f / a.e
    if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
        # a lattice index is only needed modulo the factor: keep it small
        return int(round(row)) % factor, int(round(col)) % factor
    return 0, 0


def cell_counts(da: xr.DataArray, res: float) -> tuple[np.ndarray, GeoBox]:
    """(n_codes, cy, cx) counts of codes 0–17 in the lattice cells of size ``res`` (CRS units)
    that ``da`` touches, and the cells' GeoBox. Read in row strips, so the map need not fit in
    memory twice."""
    box = da.odc.geobox
    if box is None:
        raise ConfigError("the LCZ map has no CRS/transform (no spatial_ref); open it with "
                          "lczscale.open_cube")
    a = box.affine
    factor = res / abs(a.a)
    if abs(factor - round(factor)) > 1e-6 or round(factor) < 1 or abs(a.a) != abs(a.e):
        raise ConfigError(
            f"res {res} must be a whole multiple of the pixel size {abs(a.a)} (square pixels; "
            f"e.g. res={abs(a.a) * 10:g})"
        )
    f = int(round(factor))
    r0, c0 = _lattice_origin(da, f)
    h, w = da.shape
    br0, bc0 = r0 // f, c0 // f
    nbr, nbc = (r0 + h - 1) // f - br0 + 1, (c0 + w - 1) // f - bc0 + 1
    counts = np.zeros((N_CODES, nbr, nbc), dtype=np.int64)
    strip = max(f, (STRIP_PIXELS // max(w, 1)) // f * f)
    start = 0
    while start < h:
        stop = min(h, (((r0 + start) // f) * f + strip) - r0)  # ends on a cell boundary
        codes = np.asarray(da.isel(y=slice(start, stop)).values)
        bc = block_counts(codes, (r0 + start, c0), f)
        counts[:, bc.rows - br0, bc.cols - bc0] = bc.counts.T
        start = stop
    cells = Affine(a.a * f, 0.0, a.c + a.a * (bc0 * f - c0), 0.0, a.e * f,
                   a.f + a.e * (br0 * f - r0))
    return counts, GeoBox((nbr, nbc), cells, box.crs)


def fractions(da: xr.DataArray, res: float = 100.0) -> xr.DataArray:
    """(class, y, x) float32 share of each class 1–17 among the valid pixels of every cell of
    size ``res``; NaN in cells without a valid pixel. Cells cut by the edge of ``da`` use the
    pixels inside it."""
    counts, box = cell_counts(da, res)
    valid = counts[1:].sum(axis=0)
    share = np.divide(counts[1:], valid, out=np.full(counts[1:].shape, np.nan),
                      where=valid > 0).astype(np.float32)
    coords: dict[Hashable, Any] = {"class": classes.LCZ_CODES,
                              "label": ("class", classes.LCZ_LABELS)}
    coords.update(xr_coords(box, always_yx=True))
    out = xr.DataArray(share, dims=("class", "y", "x"), coords=coords, name="lcz_fraction",
                       attrs={"long_name": f"share of each LCZ class in {res:g} cells",
                              "units": "1", "valid_pixels_per_cell_max": int(valid.max(
                                  initial=0))})
    out.encoding["grid_mapping"] = "spatial_ref"
    return out


def majority_map(da: xr.DataArray, res: float = 100.0) -> xr.DataArray:
    """(y, x) uint8 majority class of every cell of size ``res`` (0 = no valid pixel; ties go
    to the lowest code), as ``lczscale.products.counts.majority``."""
    counts, box = cell_counts(da, res)
    n, cy, cx = counts.shape
    maj = majority(counts.reshape(n, cy * cx).T).reshape(cy, cx)
    out = xr.DataArray(maj, dims=("y", "x"), coords=xr_coords(box, always_yx=True),
                       name="lcz", attrs={"nodata": 0})
    out.encoding["grid_mapping"] = "spatial_ref"
    return out


def plot(
    da: xr.DataArray, ax: Axes | None = None, title: str | None = None, legend: bool = True,
) -> Axes:
    """Draw the map with the official LCZ colours and a legend of the classes present."""
    import matplotlib.pyplot as plt  # matplotlib only when a picture is asked for

    from lczscale.browse.draw import draw_lcz

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 7.5), dpi=110)
    box = da.odc.geobox
    extent = None
    if box is not None:
        b = box.extent.boundingbox
        extent = (b.left, b.right, b.bottom, b.top)
    if title is None:
        year = f" {int(da['time'])}" if "time" in da.coords and da["time"].ndim == 0 else ""
        title = f"LCZ{year}"
    draw_lcz(ax, np.asarray(da.values), extent=extent, title=title, legend=legend)
    if box is not None and box.crs is not None and box.crs.geographic:
        mid = (box.extent.boundingbox.bottom + box.extent.boundingbox.top) / 2
        ax.set_aspect(1 / max(np.cos(np.radians(mid)), 1e-3))  # metres, not degrees, square
    if fig is not None:
        fig.tight_layout()  # room for the legend outside the axes
    return ax


def reproject[T: (xr.Dataset, xr.DataArray)](
    obj: T, crs: Any, resolution: float | None = None, resampling: str = "nearest",
) -> T:
    """``obj`` warped onto ``crs`` (a CRS, or a GeoBox to land on exactly) with a categorical
    resampling (nearest or mode); ``resolution`` in the target CRS's units, default the native
    pixel size (in degrees at the equator for a geographic CRS)."""
    check_resampling(resampling)
    obj = georeferenced(obj)
    if isinstance(crs, GeoBox):
        return warp(obj, crs, resampling)
    src = obj.odc.geobox
    if src is None:
        raise ConfigError("the LCZ map has no CRS/transform (no spatial_ref) to warp from")
    native = abs(src.resolution.x)
    if src.crs is not None and src.crs.geographic:
        native *= METRES_PER_DEGREE
    res = resolution or default_resolution(crs, native)
    return warp(obj, obj.odc.output_geobox(crs, resolution=res), resampling)
