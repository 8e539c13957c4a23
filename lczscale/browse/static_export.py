"""``lczscale serve --static``: the web map as plain files, for any static file host.

The same page as the live server (``web_page``: its files, Leaflet included, and its
``legend.json``), an ``info.json`` that tells the page it is static (it then asks only for the
tiles written here and reads a clicked class from the tile's colour), and the tiles over the
data's box rendered ahead, so nothing runs behind the page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lczscale.browse.view import CubeView, check_year, lonlat_to_tile, png
from lczscale.browse.web_page import ASSETS, MAX_ZOOM, asset, info, legend
from lczscale.errors import LczscaleError

MAX_STATIC_TILES = 50_000


def export_static(url: str, out: str | Path, max_zoom: int = 15, min_zoom: int = 0,
                  year: int | None = None) -> dict[str, Any]:
    """Write the web map with pre-rendered tiles over the data's box (zooms min..max) to
    ``out``; empty tiles are left out (the page hides missing ones)."""
    view = CubeView(url)
    check_year(view, year)
    if not 0 <= min_zoom <= max_zoom <= MAX_ZOOM:
        raise LczscaleError(f"zooms must satisfy 0 <= min ({min_zoom}) <= max ({max_zoom}) "
                            f"<= {MAX_ZOOM}")
    bounds = view.bounds()
    tiles = []
    for z in range(min_zoom, max_zoom + 1):
        x0, y0 = lonlat_to_tile(bounds[0], bounds[3], z)
        x1, y1 = lonlat_to_tile(bounds[2], bounds[1], z)
        n = (1 << z) - 1
        tiles += [(z, x, y) for x in range(math.floor(x0), min(math.floor(x1), n) + 1)
                  for y in range(math.floor(y0), min(math.floor(y1), n) + 1)]
    if len(tiles) > MAX_STATIC_TILES:
        raise LczscaleError(f"a static map of {len(tiles)} tiles (zoom {min_zoom}..{max_zoom}) is "
                            f"more than {MAX_STATIC_TILES}; lower --max-zoom or serve the cube "
                            "with `lczscale serve` instead")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(asset(name))
    (root / "legend.json").write_text(json.dumps(legend()))
    page = info(view, static=True, max_zoom=max_zoom) | {"minzoom": min_zoom}
    page["startzoom"] = max(min_zoom, page["startzoom"])
    (root / "info.json").write_text(json.dumps(page))
    written = 0
    for z, x, y in tiles:
        codes = view.tile(z, x, y, year)
        if not np.any(codes):
            continue
        path = root / "tiles" / str(z) / str(x) / f"{y}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(codes))
        written += 1
    return {"out": str(root), "tiles": written, "zooms": [min_zoom, max_zoom],
            "bounds": list(bounds)}
