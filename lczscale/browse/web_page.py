"""The web map's page: the files it is made of and the two JSON documents it reads.

The live server (``map_app``) and the static export (``static_export``) must hand a browser
the same page, so both take it from here: one allow-list of files, one ``legend()``, one
``info()``. The files come with the package (``lczscale/browse/web``, Leaflet vendored under
``web/vendor/leaflet``; no CDN: the map must work offline and behind any firewall). A file is
served only when its name is a key of ``ASSETS``, never by a path taken from a request, so no
request can reach any other file of the package or the disk.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from lczscale import classes
from lczscale.browse.view import CubeView, describe, lonlat_to_tile

MAX_ZOOM = 18  # 10 m pixels are ~2 screen px at zoom 15 in mid-latitudes; beyond, overzoom

_HTML = "text/html; charset=utf-8"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
_PNG = "image/png"
_LEAFLET = "vendor/leaflet/"

# Every file of the page, by the path the page asks for (relative to ``web/``), with its
# content type. Leaflet's images are those leaflet.css and its default marker refer to.
ASSETS: dict[str, str] = {
    "index.html": _HTML,
    "map.js": _JS,
    "map.css": _CSS,
    _LEAFLET + "leaflet.js": _JS,
    _LEAFLET + "leaflet.css": _CSS,
    _LEAFLET + "LICENSE": "text/plain; charset=utf-8",
    **{_LEAFLET + "images/" + name: _PNG
       for name in ("layers.png", "layers-2x.png", "marker-icon.png", "marker-icon-2x.png",
                    "marker-shadow.png")},
}


def asset(name: str) -> bytes:
    """The bytes of the page's file ``name``, a key of ``ASSETS`` (KeyError for any other)."""
    if name not in ASSETS:
        raise KeyError(f"not a file of the web map: {name!r}")
    return resources.files("lczscale.browse").joinpath("web", *name.split("/")).read_bytes()


def legend() -> list[dict[str, Any]]:
    """The 17 classes with their official labels, names and colours."""
    return [describe(code) for code in classes.LCZ_CODES]


def info(view: CubeView, static: bool = False, max_zoom: int = MAX_ZOOM) -> dict[str, Any]:
    """What the page needs to open on the data: its box, zoom range and years."""
    bounds = view.bounds()
    return {
        "title": str(view.attrs.get("title", "Local Climate Zones")),
        "bounds": list(bounds),
        "minzoom": 0,
        "maxzoom": max_zoom,
        "startzoom": start_zoom(bounds, max_zoom),
        "years": view.years,
        "static": static,
    }


def start_zoom(bounds: tuple[float, float, float, float], max_zoom: int, px: int = 600) -> int:
    """The largest zoom at which the data's box fits in ``px`` screen pixels."""
    for z in range(max_zoom, -1, -1):
        x0, y0 = lonlat_to_tile(bounds[0], bounds[3], z)
        x1, y1 = lonlat_to_tile(bounds[2], bounds[1], z)
        if max(x1 - x0, y1 - y0) * 256 <= px:
            return z
    return 0
