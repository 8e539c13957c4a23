"""``lczscale change``: what became of each pixel between two years of a cube, and how much.

``change_between(cube, from_year, to_year)`` writes, in every zone holding both years, the
change layer ``lcz_change_<from>_<to>`` (uint16 (y, x); the codes of
``lczscale.products.transitions``: from*18+to where the change is trusted, 1 = uncertain,
0 = nodata) and returns the transition matrix in km², per zone and in total (or over an AOI,
``bbox``), as ``{"from": {"to": km²}}`` keyed by the LCZ labels "1"–"10", "A"–"G".

It never holds a zone whole: it walks the blocks (chunks, or shards) of ``lcz`` that are stored
for *both* years (a block stored for one year only is nodata in the change), reads the two
years' ``lcz`` and ``confidence`` of one block, writes the block's codes into its own chunk(s)
of the layer, and adds its areas up. With ``bbox`` only the blocks under the AOI are made, and
the matrix counts the pixels whose centres lie in it. Areas are the zone grid's own pixel
areas: 100 m² for a 10 m UTM pixel (the projection's scale error, under 0.1 %, is not
corrected), and on the geographic zone each row's area on the sphere of the WGS84 authalic
radius.

Bad input is refused before anything is written (CubeError / ConfigError): no cube, a year the
cube lacks, the same year twice, a layer made with another confidence threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pyproj import CRS

from lczscale import classes
from lczscale.core.grid import Aoi, Window, Zone, zones_for_aoi
from lczscale.errors import ConfigError, CubeError
from lczscale.io import zarr_calls
from lczscale.io.cube.change_layer import (
    change_name,
    ensure_change_array,
    lcz_block,
    write_change,
)
from lczscale.io.cube.lock import writer_lock
from lczscale.io.cube.store import cube_grid, cube_zones, is_cube, open_root, zone_group
from lczscale.io.shards import stored_chunks
from lczscale.products.transitions import (
    ENCODING,
    N_CODES,
    code_areas,
    encode_change,
    summary,
    transition_matrix,
)

Bbox = tuple[float, float, float, float]
BBOX_DENSIFY_DEG = 0.01  # vertex spacing of a lon/lat box before projecting it (edges bend)
AUTHALIC_RADIUS_M = 6_371_007.181


def change_between(
    url: str, from_year: int, to_year: int, min_confidence: int, bbox: Bbox | None = None,
    overwrite: bool = False, progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the change layer of every zone holding both years (under ``bbox``, if given) and
    return ``{"from", "to", "min_confidence", "variable", "bbox", "matrix", "totals",
    "zones": {zone: {"matrix", "totals", "blocks"}}}``; areas in km². ``overwrite`` makes a
    zone's layer again from empty (needed to change ``min_confidence``). ``progress(zone,
    done, total)`` is called after each block."""
    if from_year == to_year:
        raise ConfigError(f"--from and --to are both {from_year}: give two different years")
    if not 0 <= min_confidence <= 255:
        raise ConfigError(f"min_confidence must be 0..255 (confidence x 255), got "
                          f"{min_confidence}")
    if not is_cube(url):
        raise CubeError(f"{url} is not an lczscale cube (no zarr.json with the cube's "
                        "attributes); give the cube that `lczscale map` wrote")
    zones = _zones_with_years(url, from_year, to_year)
    parts = _aoi_parts(url, zones, bbox) if bbox is not None else None
    work = {}
    for zone, (t_from, t_to) in zones.items():
        if parts is not None and zone.name not in parts:
            continue
        work[zone] = (t_from, t_to, _blocks(url, zone, t_from, t_to, parts))
    total = np.zeros(N_CODES, dtype=np.float64)
    out_zones: dict[str, Any] = {}
    with writer_lock(url, "lczscale change"):
        root = open_root(url, "r+", None)
        arrays = {zone: ensure_change_array(zone_group(root, zone.name, url), zone, from_year,
                                            to_year, min_confidence, ENCODING, overwrite)
                  for zone in work}  # every layer checked before the first block is written
        for zone, (t_from, t_to, blocks) in work.items():
            g = zone_group(root, zone.name, url)
            areas = np.zeros(N_CODES, dtype=np.float64)
            for i, window in enumerate(blocks):
                areas += _block(g, arrays[zone], zone, window, (t_from, t_to), min_confidence,
                                None if parts is None else parts[zone.name])
                if progress is not None:
                    progress(zone.name, i + 1, len(blocks))
            total += areas
            out_zones[zone.name] = {"matrix": transition_matrix(areas), "totals": summary(areas),
                                    "blocks": len(blocks)}
    return {"from": from_year, "to": to_year, "min_confidence": min_confidence,
            "variable": change_name(from_year, to_year),
            "bbox": None if bbox is None else list(bbox), "encoding": ENCODING,
            "labels": classes.LCZ_LABELS, "matrix": transition_matrix(total),
            "totals": summary(total), "zones": out_zones}


def _zones_with_years(url: str, from_year: int, to_year: int) -> dict[Zone, tuple[int, int]]:
    """Zones holding both years, with the two time indices; CubeError when none does."""
    root = open_root(url, "r", None)
    found: dict[Zone, tuple[int, int]] = {}
    have: dict[str, list[int]] = {}
    for zone in cube_zones(url):
        times = zone_group(root, zone.name, url)["time"]
        assert isinstance(times, zarr.Array)
        years = [int(v) for v in np.asarray(times[:])]
        have[zone.name] = years
        if from_year in years and to_year in years:
            found[zone] = (years.index(from_year), years.index(to_year))
    if not found:
        every = sorted({y for ys in have.values() for y in ys})
        lacking = [y for y in (from_year, to_year) if y not in every]
        why = (f"has no year {', '.join(map(str, lacking))}" if lacking
               else "has no zone holding both years")
        raise CubeError(f"cube {url} {why} (years per zone: {have}); map both with "
                        f"`lczscale map --years {from_year},{to_year}`")
    return found


def _aoi_parts(url: str, zones: dict[Zone, tuple[int, int]], bbox: Bbox) -> dict[str, Any]:
    """Per zone name, the AOI's part in the zone's CRS (zones it misses are absent)."""
    aoi = Aoi.from_bbox(bbox)
    dense = Aoi(aoi.geometry.segmented(BBOX_DENSIFY_DEG))
    names = {z.name for z in zones}
    parts = {zone.name: part for zone, part in zones_for_aoi(dense, cube_grid(url))
             if zone.name in names}
    if not parts:
        raise CubeError(f"the bbox {bbox} lies in none of the cube's zones holding both years "
                        f"({', '.join(sorted(names))})")
    return parts


def _blocks(url: str, zone: Zone, t_from: int, t_to: int,
            parts: dict[str, Any] | None) -> list[Window]:
    """The zone windows of the ``lcz`` blocks stored for both years (under the AOI)."""
    g = zone_group(open_root(url, "r", None), zone.name, url)
    arr = g["lcz"]
    assert isinstance(arr, zarr.Array)
    bh, bw = lcz_block(g)
    both = set(stored_chunks(arr, (t_from,))) & set(stored_chunks(arr, (t_to,)))
    limit = zone.bounding_window(parts[zone.name]) if parts is not None else None
    out = []
    for r, c in sorted(both):
        window = Window(r * bh, c * bw, bh, bw).intersection(zone.full_window)
        if window is None or (limit is not None and window.intersection(limit) is None):
            continue
        out.append(window)
    return out


def _block(g: zarr.Group, layer: Any, zone: Zone, window: Window, times: tuple[int, int],
           min_confidence: int, part: Any | None) -> np.ndarray:
    """One block: read both years, write its codes, return its areas (m²) per code."""
    rows, cols = slice(window.row, window.row_stop), slice(window.col, window.col_stop)
    lcz, conf = g["lcz"], g["confidence"]
    assert isinstance(lcz, zarr.Array) and isinstance(conf, zarr.Array)
    a, b = (np.asarray(zarr_calls.getitem(lcz, (t, rows, cols))) for t in times)
    ca, cb = (np.asarray(zarr_calls.getitem(conf, (t, rows, cols))) for t in times)
    codes = encode_change(a, b, ca, cb, min_confidence)
    write_change(layer, window, codes)
    inside = None if part is None else _inside(zone, window, part)
    return code_areas(codes, row_areas_m2(zone, window), inside)


def _inside(zone: Zone, window: Window, part: Any) -> np.ndarray:
    """Pixels of ``window`` whose centres lie in ``part`` (a geometry in the zone's CRS)."""
    from rasterio.features import geometry_mask

    box = zone.window_geobox(window)
    return geometry_mask([part.geom], out_shape=(window.height, window.width),
                         transform=box.affine, invert=True)


def row_areas_m2(zone: Zone, window: Window) -> float | np.ndarray:
    """Area of one pixel of each row of ``window`` in m²: constant on a projected zone (in
    its units, metres), one per row on a geographic zone (on the authalic sphere)."""
    crs = CRS.from_user_input(zone.crs)
    a = zone.affine
    if not crs.is_geographic:
        unit = float(crs.axis_info[0].unit_conversion_factor)
        return abs(a.a * a.e) * unit * unit
    lat = a.f + a.e * np.arange(window.row, window.row_stop + 1, dtype=np.float64)
    band = np.abs(np.diff(np.sin(np.radians(np.clip(lat, -90.0, 90.0)))))
    return AUTHALIC_RADIUS_M ** 2 * math.radians(abs(a.a)) * band


def plot_matrix(result: dict[str, Any], out: str | Path) -> Path:
    """A PNG of the transition matrix (rows: the classes of ``from``, columns: of ``to``),
    each cell's area in km² written in it and coloured by the share of its row."""
    from lczscale.browse.plot import plot_row_shares

    matrix: dict[str, dict[str, float]] = result["matrix"]
    labels = classes.LCZ_LABELS
    present = [lab for lab in labels
               if lab in matrix or any(lab in row for row in matrix.values())]
    if not present:
        raise CubeError("the transition matrix is empty (no pixel has a class in both years "
                        "there); nothing to plot")
    m = np.array([[matrix.get(f, {}).get(t, 0.0) for t in present] for f in present])
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    where = "AOI" if result.get("bbox") else "all zones"
    return plot_row_shares(
        m, share, out, present, present, f"LCZ in {result['to']}", f"LCZ in {result['from']}",
        f"LCZ change {result['from']} → {result['to']} (km², {where})",
        f"share of the {result['from']} class's area", lambda v: f"{v:.3g}")
