"""The cube's optional arrays: per-class probabilities, 100 m products and the seam layer.

Each zone group may hold, beside ``lcz`` and ``confidence`` (see ``cube``):

- ``probability`` uint8 (time, class, y, x): round(p × 255) of the blended softmax, written by
  each tile into its own chunk (or shard) of (1, 17, tile, tile), like ``lcz``;
- ``lcz_fraction_100m`` uint8 (time, class, y_100m, x_100m): share of each class among a 100 m
  cell's valid 10 m pixels in 1/255 (each valid cell sums to 255), ``lcz_100m_majority`` and
  ``lcz_100m`` uint8 (time, y_100m, x_100m): the majority class and the majority after the
  global LCZ map's Gaussian mode filter. Chunked in blocks of ``block_cells`` cells, one writer
  per block. They carry their own grid mapping ``spatial_ref_100m`` (the zone's CRS with a
  GeoTransform of 10 × the zone's pixel size), ``_CRS`` for GDAL and pixel-centre coordinates;
- ``seam_ratio``, ``seam_border_rate``, ``seam_interior_rate`` float32 (time, tile_y, tile_x):
  the seam-quality layer per tile of the 10 m grid (see ``lczscale.products.cells``), written by the
  run's driver alone.

Arrays are created on request in new and existing groups (their time axis as long as the
group's), so a cube made without an output gains it when a later run asks for it. This module
works on opened zarr groups and never imports ``cube`` (which imports it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from pyproj import CRS
from zarr.codecs import ZstdCodec

from lczscale import classes
from lczscale.config import CubeConfig, GridConfig, OutputsConfig
from lczscale.core.grid import Window, Zone
from lczscale.io import zarr_calls
from lczscale.io.zarr_calls import ZarrArray

FACTOR = 10  # 10 m pixels per 100 m cell side
N_CLASSES = 17
SEAM_CHUNK = 256  # tiles per side of one seam-layer chunk
PROBABILITY = "probability"
FRACTIONS, MAJORITY, FILTERED = "lcz_fraction_100m", "lcz_100m_majority", "lcz_100m"
SEAM_VARIABLES = ("seam_ratio", "seam_border_rate", "seam_interior_rate")
CELL_VARIABLES = (FRACTIONS, MAJORITY, FILTERED)
# Arrays with a time axis first that ``cube._ensure_years`` must grow with the years.
TIME_VARIABLES = (PROBABILITY, *CELL_VARIABLES, *SEAM_VARIABLES)


def cells_shape(zone: Zone) -> tuple[int, int]:
    """(rows, cols) of 100 m cells; the last ones may be cut by the zone's edge."""
    return -(-zone.shape[0] // FACTOR), -(-zone.shape[1] // FACTOR)


def tiles_shape(zone: Zone, tile_size: int) -> tuple[int, int]:
    """Tile rows and columns of a zone cut into ``tile_size`` tiles."""
    return -(-zone.shape[0] // tile_size), -(-zone.shape[1] // tile_size)


def ensure_output_arrays(
    g: zarr.Group, zone: Zone, grid: GridConfig, cube: CubeConfig, outputs: OutputsConfig
) -> None:
    """Create the arrays ``outputs`` asks for that group ``g`` lacks (metadata only)."""
    time = g["time"]
    assert isinstance(time, zarr.Array)
    nt = int(time.shape[0])
    crs = CRS.from_user_input(zone.crs)
    gdal_crs = {"wkt": crs.to_wkt()}
    compressors = [ZstdCodec(level=cube.compression_level)]
    if (outputs.probabilities or outputs.fractions) and "class" not in g:
        cls = g.create_array("class", shape=(N_CLASSES,), dtype="uint8", chunks=(N_CLASSES,),
                             dimension_names=["class"], fill_value=0)
        cls[:] = np.asarray(classes.LCZ_CODES, dtype=np.uint8)
        cls.attrs.update({"long_name": "LCZ class code", "labels": classes.LCZ_LABELS,
                          "names": classes.LCZ_CLASS_NAMES})
    if outputs.probabilities and PROBABILITY not in g:
        h, w = zone.shape
        arr = g.create_array(
            PROBABILITY, shape=(nt, N_CLASSES, h, w), dtype="uint8", fill_value=0,
            dimension_names=["time", "class", "y", "x"], compressors=compressors,
            **_chunking(cube, (1, N_CLASSES), grid.tile_size, cube.inner_chunk),
        )
        arr.attrs.update({
            "grid_mapping": "spatial_ref", "_CRS": gdal_crs,
            "long_name": "blended probability of each LCZ class x 255 (0 = nodata)",
            "scale_factor_note": "probability = value / 255",
        })
    if outputs.fractions and FRACTIONS not in g:
        _create_cell_arrays(g, zone, cube, outputs.block_cells, nt, crs, compressors)
    if outputs.fractions and SEAM_VARIABLES[0] not in g:
        _create_seam_arrays(g, zone, grid.tile_size, nt, compressors)


def _chunking(cube: CubeConfig, lead: tuple[int, ...], block: int, inner: int) -> dict[str, Any]:
    """``block`` px chunks, or with sharding ``block`` shards of ``inner`` chunks (as ``lcz``)."""
    if cube.sharding and inner < block and block % inner == 0:
        return {"chunks": (*lead, inner, inner), "shards": (*lead, block, block)}
    return {"chunks": (*lead, block, block)}


def _create_cell_arrays(
    g: zarr.Group, zone: Zone, cube: CubeConfig, block: int, nt: int, crs: CRS,
    compressors: list[Any],
) -> None:
    hc, wc = cells_shape(zone)
    a = zone.affine
    gdal_crs = {"wkt": crs.to_wkt()}
    inner = min(cube.inner_chunk, block)
    for name, lead, long_name in (
        (FRACTIONS, (1, N_CLASSES),
         "share of each LCZ class among the valid 10 m pixels of the 100 m cell x 255"),
        (MAJORITY, (1,), "majority LCZ class of the 10 m pixels of the 100 m cell (0 = nodata)"),
        (FILTERED, (1,), "majority LCZ class after the Gaussian mode filter (sigma 1 cell, 5x5)"
         ", as the global LCZ map's LCZ_Filter band (0 = nodata)"),
    ):
        dims = ["time", "class", "y_100m", "x_100m"] if len(lead) == 2 else [
            "time", "y_100m", "x_100m"]
        arr = g.create_array(
            name, shape=(nt, *lead[1:], hc, wc), dtype="uint8", fill_value=0,
            dimension_names=dims, compressors=compressors,
            **_chunking(cube, lead, block, inner),
        )
        arr.attrs.update({"grid_mapping": "spatial_ref_100m", "_CRS": gdal_crs,
                          "long_name": long_name, "lczscale:block_cells": block})
        if name != FRACTIONS:
            arr.attrs.update({"flag_values": classes.LCZ_CODES,
                              "lczscale:palette": classes.LCZ_PALETTE})
    geographic = crs.is_geographic
    for dim, n, start, step in (("x_100m", wc, a.c, a.a * FACTOR), ("y_100m", hc, a.f,
                                                                     a.e * FACTOR)):
        coord = g.create_array(dim, shape=(n,), dtype="float64", chunks=(min(n, 1 << 18),),
                               dimension_names=[dim], fill_value=np.nan)
        coord[:] = start + step * (np.arange(n, dtype=np.float64) + 0.5)
        axis = dim[0]
        if geographic:
            std = "longitude" if axis == "x" else "latitude"
            units = "degrees_east" if axis == "x" else "degrees_north"
        else:
            std, units = f"projection_{axis}_coordinate", "m"
        coord.attrs.update({"standard_name": std, "units": units, "axis": axis.upper()})
    sr = g.create_array("spatial_ref_100m", shape=(), dtype="int32", fill_value=0)
    cf = crs.to_cf()
    cf.update({
        "crs_wkt": crs.to_wkt(),
        "spatial_ref": crs.to_wkt(),
        "GeoTransform": " ".join(repr(v) for v in (a.c, a.a * FACTOR, a.b, a.f, a.d,
                                                    a.e * FACTOR)),
    })
    sr.attrs.update(cf)


def _create_seam_arrays(
    g: zarr.Group, zone: Zone, tile_size: int, nt: int, compressors: list[Any]
) -> None:
    ty, tx = tiles_shape(zone, tile_size)
    for name, long_name in (
        ("seam_ratio", "class-change rate across the tile's right and bottom borders / "
         "class-change rate inside the tile (~1 seamless, >> 1 a seam; NaN undefined)"),
        ("seam_border_rate", "share of valid pixel pairs across the tile's right and bottom "
         "borders that change class"),
        ("seam_interior_rate", "share of valid adjacent pixel pairs inside the tile that "
         "change class"),
    ):
        arr = g.create_array(
            name, shape=(nt, ty, tx), dtype="float32", fill_value=np.nan,
            chunks=(1, min(ty, SEAM_CHUNK), min(tx, SEAM_CHUNK)),
            dimension_names=["time", "tile_y", "tile_x"], compressors=compressors,
        )
        arr.attrs.update({"long_name": long_name, "lczscale:tile_size": tile_size})
    for dim, n in (("tile_y", ty), ("tile_x", tx)):
        coord = g.create_array(dim, shape=(n,), dtype="int64", chunks=(min(n, 1 << 18),),
                               dimension_names=[dim], fill_value=0)
        coord[:] = np.arange(n, dtype=np.int64) * tile_size
        coord.attrs.update({"long_name": f"zone pixel {'row' if dim == 'tile_y' else 'column'}"
                            " of the tile's first pixel"})


def _array(g: zarr.Group, name: str) -> ZarrArray:
    arr = g[name]
    assert isinstance(arr, zarr.Array)
    return arr


def write_probability(g: zarr.Group, t: int, core: Window, probability: np.ndarray) -> None:
    """One tile's (17, h, w) probabilities into its own chunk(s)."""
    sel = (t, slice(None), slice(core.row, core.row_stop), slice(core.col, core.col_stop))
    zarr_calls.setitem(_array(g, PROBABILITY), sel, probability.astype(np.uint8, copy=False))


def write_cells(
    g: zarr.Group, t: int, cells: Window, fractions: np.ndarray, majority: np.ndarray,
    filtered: np.ndarray,
) -> None:
    """One block's 100 m products (``cells`` in cell coordinates) into its own chunk(s)."""
    rows, cols = slice(cells.row, cells.row_stop), slice(cells.col, cells.col_stop)
    zarr_calls.setitem(_array(g, FRACTIONS), (t, slice(None), rows, cols), fractions)
    zarr_calls.setitem(_array(g, MAJORITY), (t, rows, cols), majority)
    zarr_calls.setitem(_array(g, FILTERED), (t, rows, cols), filtered)


def update_seam(
    g: zarr.Group, t: int, tiles: dict[tuple[int, int], tuple[float, float, float]]
) -> None:
    """Set the seam layer of the given tiles (tile row, tile col) → (ratio, border rate,
    interior rate); the driver alone writes, over the bounding box of the tiles."""
    if not tiles:
        return
    ys = [k[0] for k in tiles]
    xs = [k[1] for k in tiles]
    sel = (t, slice(min(ys), max(ys) + 1), slice(min(xs), max(xs) + 1))
    for i, name in enumerate(SEAM_VARIABLES):
        arr = _array(g, name)
        block = np.asarray(zarr_calls.getitem(arr, sel), dtype=np.float32).copy()
        for (ty, tx), values in tiles.items():
            block[ty - min(ys), tx - min(xs)] = values[i]
        zarr_calls.setitem(arr, sel, block)
