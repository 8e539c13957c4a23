"""LCZ label rasters (the 100 m global-map format, LCZ Generator outputs …) onto a zone window.

Labels are categorical, so they are warped with nearest neighbour (never bilinear), and any code
outside 1–17 becomes 0 = nodata. Embeddings stay on their own grid; only labels move.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window as Win

from lczscale.errors import SourceError
from lczscale.grid import Window, Zone


@lru_cache(maxsize=16)
def _describe(path: str) -> tuple[str, int | None, tuple[float, float, float, float]]:
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise SourceError(f"label raster {path} has no CRS; it must be georeferenced")
            b = ds.bounds
            return ds.crs.to_string(), ds.count, (b.left, b.bottom, b.right, b.top)
    except rasterio.errors.RasterioIOError as exc:
        raise SourceError(f"cannot read label raster {path}: {exc}") from exc


def read_labels(path: str, zone: Zone, window: Window, band: int = 1) -> np.ndarray:
    """uint8 (h, w) LCZ codes 1–17 on the zone window, 0 where unlabelled."""
    _describe(path)
    out = np.zeros((window.height, window.width), dtype=np.uint8)
    gbox = zone.window_geobox(window)
    with rasterio.open(path) as ds:
        # Read only the part of the (possibly global) raster under the window, plus a margin.
        left, bottom, right, top = transform_bounds(zone.crs, ds.crs, *gbox.extent.boundingbox)
        win = ds.window(left, bottom, right, top).round_offsets().round_lengths()
        win = Win(win.col_off - 2, win.row_off - 2, win.width + 4, win.height + 4)
        try:
            win = win.intersection(Win(0, 0, ds.width, ds.height))
        except WindowError:  # the window lies outside the label raster: all unlabelled
            return out
        src = ds.read(band, window=win)
        nodata = ds.nodata
        valid = (src >= 1) & (src <= 17)
        if nodata is not None:
            valid &= src != nodata
        src = np.where(valid, src, 0).astype(np.uint8)
        reproject(
            source=src,
            destination=out,
            src_transform=ds.window_transform(win),
            src_crs=ds.crs,
            src_nodata=0,
            dst_transform=gbox.affine,
            dst_crs=zone.crs,
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
    return out


def label_bounds(path: str) -> tuple[float, float, float, float]:
    """Bounds of a label raster in its own CRS."""
    return _describe(path)[2]
