"""Nearest-neighbour sampling of UTM AlphaEarth codes onto the global EPSG:4326 lattice.

The published AlphaEarth global mosaic (``aef-mosaic``) was built from the UTM COGs by
nearest-neighbour resampling, so each of its pixels is a genuine, unmixed AEF vector. This module
is that rule, in one place: the synthetic mosaic writer and the COG reader's global-grid read both
call :func:`sample_nearest`, so the two give *identical* codes on shared pixels.

The rule, per pixel of the global window: its centre (lon, lat), computed exactly from its integer
position (so a pixel's value never depends on the window it is read in) → the UTM zone that owns
that longitude (:func:`lczscale.core.grid.utm_zone_number`) → the canonical 10 m pixel of that zone
(EPSG:326NN in both hemispheres) containing the projected point. Codes are int8 and never
interpolated: averaging quantised codes is wrong, and −128 would bleed into neighbours.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from pyproj import Transformer

from lczscale.core.grid import UTM_X0, UTM_Y_TOP, Window, Zone, utm_zone

AEF_RESOLUTION = 10.0  # metres: AlphaEarth's native pixel
ReadUtm = Callable[[Zone, Window], tuple[np.ndarray, np.ndarray]]
"""(canonical UTM zone, window) → (int8 codes (band, y, x), bool valid (y, x)); codes of
invalid pixels are 0 and windows past the data are padded invalid."""


@functools.cache
def _to_utm(number: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{32600 + number}", always_xy=True)


def nearest_utm_pixels(zone: Zone, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zone number, row, col) int64 arrays (y, x): the canonical UTM pixel nearest to each
    pixel centre of ``window`` of an EPSG:4326 zone; zone number 0 where the point falls outside
    its zone's canonical extent (or does not project)."""
    if zone.crs != "EPSG:4326":
        raise ValueError(f"nearest_utm_pixels samples onto an EPSG:4326 zone, not {zone.crs}")
    a = zone.affine
    lon1 = a.c + a.a * (np.arange(window.col, window.col_stop, dtype=np.float64) + 0.5)
    lat1 = a.f + a.e * (np.arange(window.row, window.row_stop, dtype=np.float64) + 0.5)
    lon, lat = np.meshgrid(lon1, lat1)
    number = np.clip(np.floor((lon + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)
    rows = np.zeros(lon.shape, dtype=np.int64)
    cols = np.zeros(lon.shape, dtype=np.int64)
    for n in np.unique(number):
        sel = number == n
        x, y = _to_utm(int(n)).transform(lon[sel], lat[sel])
        ext = utm_zone(int(n), AEF_RESOLUTION).shape
        with np.errstate(invalid="ignore"):
            c = np.floor((np.asarray(x) - UTM_X0) / AEF_RESOLUTION)
            r = np.floor((UTM_Y_TOP - np.asarray(y)) / AEF_RESOLUTION)
            inside = np.isfinite(c) & np.isfinite(r) & (r >= 0) & (r < ext[0]) & (c >= 0) & (
                c < ext[1]
            )
        rows[sel] = np.where(inside, r, 0).astype(np.int64)
        cols[sel] = np.where(inside, c, 0).astype(np.int64)
        number[sel] = np.where(inside, n, 0)
    return number, rows, cols


def sample_nearest(
    zone: Zone, window: Window, read_utm: ReadUtm, bands: int
) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (bands, y, x) and validity (y, x) of a window of the EPSG:4326 ``zone``,
    each pixel taken from the nearest UTM pixel (see the module docstring).

    ``read_utm`` is asked once per UTM zone the window touches, for the bounding window of the
    pixels it must supply; it returns codes 0 where invalid, so the gather needs no masking.
    """
    number, rows, cols = (a.ravel() for a in nearest_utm_pixels(zone, window))
    codes = np.zeros((bands, number.size), dtype=np.int8)
    valid = np.zeros(number.size, dtype=bool)
    zones = np.unique(number)
    for n in zones[zones > 0]:
        pos = np.flatnonzero(number == n) if len(zones) > 1 else slice(None)
        rr, cc = rows[pos], cols[pos]
        r0, c0 = int(rr.min()), int(cc.min())
        box = Window(r0, c0, int(rr.max()) - r0 + 1, int(cc.max()) - c0 + 1)
        src_codes, src_valid = read_utm(utm_zone(int(n), AEF_RESOLUTION), box)
        idx = (rr - r0) * box.width + (cc - c0)
        valid[pos] = src_valid.reshape(-1)[idx]
        codes[:, pos] = np.take(src_codes.reshape(bands, -1), idx, axis=1)
    shape = (window.height, window.width)
    return codes.reshape(bands, *shape), valid.reshape(shape)
