"""``.lcz``: LCZ-aware methods on what ``open_cube`` returns (and on any georeferenced uint8
LCZ map): ``plot``, ``to_rgb``, ``fractions``, ``majority``, ``reproject`` and ``map``; on a
Dataset also ``zonal`` (per polygon, year and class: area and share, see
``lczscale.browse.zonal``).

Registered on xarray's Dataset and DataArray by importing this module, which
``lczscale.open_cube`` does (``import lczscale.browse.accessor`` for a cube opened with plain
xarray).
On a Dataset the methods use its ``lcz`` variable (``ds.lcz`` is the accessor, ``ds["lcz"]``
the variable); with a ``time`` dimension they take ``year=`` (default: the last year).

The work is in ``lczscale.browse.query``, imported on first use, so registering stays cheap.

- ``to_rgb()`` → DataArray (y, x, band) uint8, band = red, green, blue (``.transpose("band",
  "y", "x")`` for (3, y, x)); nodata is white, not black, because black is LCZ E.
- ``fractions(res=100)`` → (class, y, x) float32 shares of classes 1–17 among valid pixels in
  cells of ``res`` (CRS units) on the zone's pixel lattice; NaN where a cell has none.
- ``reproject(crs, resolution=None, resampling="nearest")`` → warped with nearest or mode only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.axes import Axes

NODATA_RGB = (255, 255, 255)


class _LczMethods:
    """The methods both accessors share; ``_obj`` is the Dataset or the DataArray."""

    _obj: Any

    def map(self, year: int | None = None) -> xr.DataArray:
        """The (y, x) uint8 LCZ codes of one year (default: the last), georeferenced."""
        from lczscale.browse.query import lcz_map

        return lcz_map(self._obj, year)

    def plot(self, ax: Axes | None = None, year: int | None = None, title: str | None = None,
             legend: bool = True) -> Axes:
        """Draw the map with the official LCZ colours and a legend of the classes present;
        returns the Axes (a new figure's when ``ax`` is None)."""
        from lczscale.browse.query import plot

        return plot(self.map(year), ax=ax, title=title, legend=legend)

    def to_rgb(self, year: int | None = None,
               nodata: tuple[int, int, int] = NODATA_RGB) -> xr.DataArray:
        """(y, x, band=red/green/blue) uint8 in the official colours; nodata → ``nodata``."""
        from lczscale.browse.query import to_rgb

        return to_rgb(self.map(year), nodata)

    def fractions(self, res: float = 100.0, year: int | None = None) -> xr.DataArray:
        """(class, y, x) float32 class shares in cells of ``res`` on the zone lattice."""
        from lczscale.browse.query import fractions

        return fractions(self.map(year), res)

    def majority(self, res: float = 100.0, year: int | None = None) -> xr.DataArray:
        """(y, x) uint8 majority class in cells of ``res`` (ties → lowest code, 0 = none)."""
        from lczscale.browse.query import majority_map

        return majority_map(self.map(year), res)


@xr.register_dataset_accessor("lcz")
class LczDatasetAccessor(_LczMethods):
    """``ds.lcz``: LCZ methods on a cube Dataset (its ``lcz`` variable)."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._obj = ds

    def reproject(self, crs: Any, resolution: float | None = None,
                  resampling: str = "nearest") -> xr.Dataset:
        """The Dataset's (y, x) variables warped onto ``crs`` (or a GeoBox): ``lcz`` with
        ``resampling`` (nearest or mode), the others nearest and 0 where ``lcz`` is nodata."""
        from lczscale.browse.query import reproject

        ds: xr.Dataset = self._obj
        return reproject(ds, crs, resolution, resampling)

    def zonal(self, polygons: Any, year: int | Sequence[int] | None = None,
              id_field: str | None = None) -> pd.DataFrame:
        """Per polygon of a GeoDataFrame (any CRS), year (default: all) and class: area in km²
        and share, with nodata share and mean confidence (× 255), counting only the pixels
        this Dataset's zone owns; the table ``lczscale zonal`` writes."""
        from lczscale.browse.zonal import dataset_zone_data, zonal_table

        return zonal_table(polygons, [dataset_zone_data(self._obj)], year, id_field)


@xr.register_dataarray_accessor("lcz")
class LczDataArrayAccessor(_LczMethods):
    """``da.lcz``: LCZ methods on a DataArray of codes (e.g. ``ds["lcz"]``)."""

    def __init__(self, da: xr.DataArray) -> None:
        self._obj = da

    def reproject(self, crs: Any, resolution: float | None = None,
                  resampling: str = "nearest") -> xr.DataArray:
        """The codes warped onto ``crs`` (or a GeoBox) with nearest or mode."""
        from lczscale.browse.query import reproject

        da: xr.DataArray = self._obj
        return reproject(da, crs, resolution, resampling)
