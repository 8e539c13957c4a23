"""``lczscale serve``: the cube as a slippy web map, or a static export of one.

Standard library HTTP server (threads) in front of a ``CubeView``: the page and its script come
from the package (``lczscale/web``, no CDN: it must work offline), tiles are rendered on
request from the pyramid (``/tiles/{z}/{x}/{y}.png``), the class at a point comes from the 10 m
data (``/point?lon=..&lat=..``), and ``/legend.json`` + ``/info.json`` tell the page the
official classes and where the data is. ``export_static`` writes the same page with
pre-rendered tiles for the data's box, for any static file host.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from lczscale import classes
from lczscale.errors import LczscaleError
from lczscale.view import CubeView, check_year, describe, lonlat_to_tile, png

ASSETS = {"index.html": "text/html; charset=utf-8", "map.js": "text/javascript; charset=utf-8",
          "map.css": "text/css; charset=utf-8"}
MAX_ZOOM = 18  # 10 m pixels are ~2 screen px at zoom 15 in mid-latitudes; beyond, overzoom
MAX_STATIC_TILES = 50_000


def asset(name: str) -> bytes:
    return resources.files("lczscale").joinpath("web", name).read_bytes()


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


class _TileCache:
    """Recently rendered PNG tiles (a browser asks for the same ones again while panning)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.items: OrderedDict[tuple[int, int, int, int | None], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int, int, int | None], make: Callable[[], bytes]) -> bytes:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        data = make()
        with self.lock:
            self.items[key] = data
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return data


def make_server(view: CubeView, host: str = "127.0.0.1", port: int = 8000,
                max_zoom: int = MAX_ZOOM) -> ThreadingHTTPServer:
    """An HTTP server for the map of ``view`` (not started: call ``serve_forever``)."""
    cache = _TileCache()
    page_info = info(view, max_zoom=max_zoom)

    class Handler(BaseHTTPRequestHandler):
        server_version = "lczscale"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error
            pass

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = url.path.lstrip("/") or "index.html"
            try:
                if path in ASSETS:
                    self._send(200, asset(path), ASSETS[path])
                elif path == "legend.json":
                    self._json(legend())
                elif path == "info.json":
                    self._json(page_info)
                elif path == "point":
                    year = _int(query.get("year"), "year")
                    check_year(view, year)
                    self._json(view.point(_float(query.get("lon"), "lon"),
                                          _float(query.get("lat"), "lat"), year))
                elif path.startswith("tiles/") and path.endswith(".png"):
                    parts = path[len("tiles/"):-len(".png")].split("/")
                    if len(parts) != 3:
                        raise LczscaleError(f"tile path must be tiles/Z/X/Y.png, got /{path}")
                    if not all(p.isdigit() for p in parts):
                        raise LczscaleError(f"tile coordinates must be integers, got /{path}")
                    z, x, y = (int(p) for p in parts)
                    year = _int(query.get("year"), "year")
                    check_year(view, year)
                    data = cache.get((z, x, y, year), lambda: png(view.tile(z, x, y, year)))
                    self._send(200, data, "image/png", cache=True)
                else:
                    self._json({"error": f"no such page: /{path}"}, 404)
            except LczscaleError as exc:
                self._json({"error": str(exc)}, 400)
            except BrokenPipeError:
                pass
            except Exception as exc:  # a bug must not kill the server thread silently
                print(f"lczscale serve: {self.path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                self._json({"error": f"{type(exc).__name__}: {exc}"}, 500)

    return ThreadingHTTPServer((host, port), Handler)


def serve(url: str, host: str = "127.0.0.1", port: int = 8000,
          max_zoom: int = MAX_ZOOM) -> None:
    """Serve the cube's web map until interrupted."""
    view = CubeView(url)
    if view.missing_overviews():
        print(f"lczscale serve: zones {view.missing_overviews()} have no overviews, so zoomed-out "
              f"tiles read 10 m data (slow, or refused when large): run `lczscale pyramid {url}`",
              file=sys.stderr)
    server = make_server(view, host, port, max_zoom)
    print(f"lczscale serve: {url} at http://{host}:{server.server_port}/ (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


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
        (root / name).write_bytes(asset(name))
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


def _float(text: str | None, what: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LczscaleError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise LczscaleError(f"{what} must be finite, got {text!r}")
    return value


def _int(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise LczscaleError(f"{what} must be an integer, got {text!r}") from None
