"""The web map's routes: a request target in, a ``Reply`` out, every input checked first.

``/`` and the page's files (``web_page.ASSETS``), ``/legend.json`` and ``/info.json``, tiles
rendered from the pyramid (``/tiles/{z}/{x}/{y}.png``, ``?year=``) and the class at a point
from the 10 m data (``/point?lon=..&lat=..``). The server faces whatever reaches its port, so
every path and query parameter is checked, by its text, before any work: a malformed one is a
400, a well-formed tile outside the pyramid (zoom above the served maximum, x or y outside
0..2^z-1) a 404 as on any XYZ tile server, a target longer than ``MAX_TARGET`` a 414 — so
``/tiles/8589934592/0/0.png`` never reaches ``1 << z``. Renders then run on the deadline-bound
pool of ``render_pool``.
"""

from __future__ import annotations

import math
import re
from urllib.parse import parse_qs

from lczscale.browse.http_server import HttpError, Limits, Reply, json_reply
from lczscale.browse.render_pool import Renderer, TileCache
from lczscale.browse.view import MAX_ZOOM as VIEW_MAX_ZOOM
from lczscale.browse.view import CubeView, png
from lczscale.browse.web_page import ASSETS, asset, info, legend
from lczscale.errors import ConfigError

MAX_TARGET = 2048  # characters of a request target: the page's longest is ~80
MAX_FIELDS = 16  # query parameters (the page sends at most three)
MAX_VALUE = 32  # characters of a number in the query
# Z, X and Y: ASCII digits only (str.isdigit() also takes "²", which int() refuses), and at
# most 10 of them, so a coordinate is a small int before it is compared with anything
TILE_PATH = re.compile(r"tiles/([0-9]{1,10})/([0-9]{1,10})/([0-9]{1,10})\.png")
YEAR = re.compile(r"-?[0-9]{1,6}")
ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)  # absolute-form request target


class MapApp:
    """The server's routes as a function of the request target: checks, then work."""

    def __init__(self, view: CubeView, max_zoom: int, limits: Limits) -> None:
        if not 0 <= max_zoom <= VIEW_MAX_ZOOM:
            raise ConfigError(f"serve max zoom must be in 0..{VIEW_MAX_ZOOM}, got {max_zoom}")
        self.view = view
        self.max_zoom = max_zoom
        self.years = frozenset(view.years)
        self.page_info = info(view, max_zoom=max_zoom)
        self.cache = TileCache()
        self.renderer = Renderer(limits.workers, limits.timeout)

    def respond(self, target: str) -> Reply:
        """The reply to a GET of ``target``; HttpError for a request it refuses."""
        path, query = split_target(target)
        if path in ASSETS:  # the allow-list: no other file is ever read
            return Reply(200, asset(path), ASSETS[path])
        if path == "legend.json":
            return json_reply(legend())
        if path == "info.json":
            return json_reply(self.page_info)
        if path == "point":
            return self._point(query)
        if path.startswith("tiles/"):
            return self._tile(path, query)
        raise HttpError(404, f"no such page: /{_clip(path)}")

    def close(self) -> None:
        """Stop taking renders (the server is closing)."""
        self.renderer.close()

    def _tile(self, path: str, query: dict[str, str]) -> Reply:
        found = TILE_PATH.fullmatch(path)
        if found is None:
            raise HttpError(400, "a tile is /tiles/Z/X/Y.png with Z, X and Y whole numbers")
        z, x, y = (int(v) for v in found.groups())
        check_tile(z, x, y, self.max_zoom)
        year = self._year(query)
        key = (z, x, y, year)
        data = self.cache.get(key)
        if data is None:  # rendered on a worker; cached there, so a late render is not lost
            data = self.renderer.run(
                key, lambda: self.cache.put(key, png(self.view.tile(z, x, y, year))))
        return Reply(200, data, "image/png", cacheable=True)

    def _point(self, query: dict[str, str]) -> Reply:
        lon = _number(query, "lon", 180.0)
        lat = _number(query, "lat", 90.0)
        year = self._year(query)
        return json_reply(self.renderer.run(None, lambda: self.view.point(lon, lat, year)))

    def _year(self, query: dict[str, str]) -> int | None:
        text = query.get("year", "")
        if not text:
            return None  # the latest
        if YEAR.fullmatch(text) is None:
            raise HttpError(400, f"year must be a whole number, got {_clip(text)}")
        year = int(text)
        if year not in self.years:
            raise HttpError(400, f"this map has no year {year} (years: {sorted(self.years)})")
        return year


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The path (no leading slash; the page where empty) and the last value of each query
    parameter of a request target; HttpError 414 or 400 for one too long or with too many
    parameters (each would cost parsing time and memory for nothing)."""
    if len(target) > MAX_TARGET:
        raise HttpError(414, f"request target longer than {MAX_TARGET} characters")
    if not target.startswith("/"):
        origin = ABSOLUTE.match(target)
        if origin is None:
            raise HttpError(400, "request target must be a path")
        target = target[origin.end():]
    raw, _, qs = target.partition("#")[0].partition("?")
    try:
        fields = parse_qs(qs, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise HttpError(400, f"more than {MAX_FIELDS} query parameters") from None
    return raw.lstrip("/") or "index.html", {k: v[-1] for k, v in fields.items()}


def check_tile(z: int, x: int, y: int, max_zoom: int) -> None:
    """HttpError 404 unless z/x/y is a tile of the served pyramid. ``z`` is compared first,
    so ``1 << z`` is at most 2^max_zoom."""
    if not 0 <= z <= max_zoom:
        raise HttpError(404, f"no tile at zoom {z}: this map has zooms 0..{max_zoom}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise HttpError(404, f"no tile {z}/{x}/{y}: at zoom {z}, x and y are in 0..{n - 1}")


def _number(query: dict[str, str], what: str, bound: float) -> float:
    text = query.get(what)
    if text is None:
        raise HttpError(400, f"{what} is missing")
    try:
        value = float(text) if len(text) <= MAX_VALUE else math.nan
    except ValueError:
        value = math.nan
    if not -bound <= value <= bound:  # NaN, infinities and junk fail here too
        raise HttpError(400, f"{what} must be a number in -{bound:g}..{bound:g}, got "
                             f"{_clip(text)}")
    return value


def _clip(text: str, n: int = 40) -> str:
    """``text`` for an error message: quoted, control characters escaped, at most ``n``."""
    return repr(text[:n]) + ("…" if len(text) > n else "")
