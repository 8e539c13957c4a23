"""The cube's change layers: ``lcz_change_<from>_<to>`` uint16 (y, x) in a zone group.

One layer per pair of years (``lczscale change``; the codes are those of
``lczscale.products.transitions``), chunked (and sharded) on the same spatial grid as ``lcz``,
so that each stored block of ``lcz`` is written into exactly its own chunk(s) of the layer, one
writer per block, and a zone is never held whole. Its attributes name the two years, the
confidence threshold and the encoding; a layer is remade (emptied) only when asked, and a
threshold other than the one it was made with is refused, so a layer never mixes two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from pyproj import CRS

from lczscale import classes
from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError
from lczscale.io import zarr_calls
from lczscale.io.zarr_calls import ZarrArray


def change_name(from_year: int, to_year: int) -> str:
    """The zone group's variable holding the change from ``from_year`` to ``to_year``."""
    return f"lcz_change_{from_year}_{to_year}"


def lcz_block(g: zarr.Group) -> tuple[int, int]:
    """(rows, cols) of the unit a writer replaces in the group's ``lcz`` (shard, else chunk)."""
    arr = g["lcz"]
    assert isinstance(arr, zarr.Array)
    block = arr.shards or arr.chunks
    return int(block[-2]), int(block[-1])


def ensure_change_array(
    g: zarr.Group, zone: Zone, from_year: int, to_year: int, min_confidence: int,
    encoding: str, remake: bool = False,
) -> ZarrArray:
    """The group's change layer for the two years, created (metadata only) when missing, or
    emptied and made again with ``remake``. A layer made with another ``min_confidence`` is
    refused (CubeError) unless ``remake``: its chunks would mix two thresholds."""
    name = change_name(from_year, to_year)
    if name in g and not remake:
        arr = g[name]
        assert isinstance(arr, zarr.Array)
        made = arr.attrs.get("lczscale:min_confidence")
        if made != min_confidence:
            raise CubeError(
                f"{g.basename}/{name} was made with min_confidence {made}, not "
                f"{min_confidence}; rerun with --min-confidence {made}, or pass --overwrite to "
                "make the layer again (its other chunks are then emptied)"
            )
        return arr
    if name in g:
        del g[name]
    lcz = g["lcz"]
    assert isinstance(lcz, zarr.Array)
    chunking: dict[str, Any] = {"chunks": tuple(lcz.chunks[-2:])}
    if lcz.shards:
        chunking["shards"] = tuple(lcz.shards[-2:])
    arr = g.create_array(
        name, shape=tuple(lcz.shape[-2:]), dtype="uint16", fill_value=0,
        dimension_names=["y", "x"], compressors=lcz.compressors, **chunking,
    )
    arr.attrs.update({
        "grid_mapping": "spatial_ref",
        "_CRS": {"wkt": CRS.from_user_input(zone.crs).to_wkt()},
        "long_name": f"LCZ change from {from_year} to {to_year}",
        "lczscale:from_year": from_year,
        "lczscale:to_year": to_year,
        "lczscale:min_confidence": min_confidence,
        "lczscale:encoding": encoding,
        "lczscale:labels": classes.LCZ_LABELS,
        "flag_values": [0, 1],
        "flag_meanings": "nodata uncertain",
    })
    return arr


def write_change(arr: ZarrArray, window: Window, codes: np.ndarray) -> None:
    """One block's codes into its own chunk(s) of the layer."""
    zarr_calls.setitem(arr, (slice(window.row, window.row_stop),
                             slice(window.col, window.col_stop)),
                       codes.astype(np.uint16, copy=False))
