"""``lczscale serve``: the cube as a slippy web map, or a static export of one.

A standard-library HTTP server in front of a ``CubeView``; the page is Leaflet with a short
script of ours, all from the package (no CDN: it must work offline). This module puts the
parts together and is what the CLI and callers import; each part is a module of its own so
that one concern can be read, and reviewed, in one place:

- ``web_page``: the page's files (an allow-list, Leaflet vendored) and its ``legend.json``
  and ``info.json``;
- ``map_app``: the routes (page, legend, info, ``/tiles/{z}/{x}/{y}.png``,
  ``/point?lon=..&lat=..``), every input checked by its text before any work;
- ``render_pool``: renders on a fixed pool of workers, each request waiting at most
  ``Limits.timeout`` (then 503), and the tile cache;
- ``http_server``: the server itself, with a fixed pool of connection threads, a bounded
  waiting line (then 503), socket timeouts, and generic 500s whose detail goes to the
  ``lczscale.browse.serve`` log under the request's id (see ``Limits``);
- ``static_export``: the same page with pre-rendered tiles, for any static file host.
"""

from __future__ import annotations

import logging
import sys

from lczscale.browse.http_server import BoundedHTTPServer, HttpError, Limits, Reply, make_handler
from lczscale.browse.map_app import MapApp
from lczscale.browse.static_export import MAX_STATIC_TILES, export_static
from lczscale.browse.view import CubeView
from lczscale.browse.web_page import ASSETS, MAX_ZOOM, asset, info, legend

__all__ = ["ASSETS", "MAX_STATIC_TILES", "MAX_ZOOM", "BoundedHTTPServer", "HttpError", "Limits",
           "MapApp", "Reply", "asset", "export_static", "info", "legend", "make_server", "serve"]


def make_server(view: CubeView, host: str = "127.0.0.1", port: int = 8000,
                max_zoom: int = MAX_ZOOM, limits: Limits | None = None) -> BoundedHTTPServer:
    """An HTTP server for the map of ``view`` (not started: call ``serve_forever``)."""
    limits = limits or Limits()
    app = MapApp(view, max_zoom, limits)
    return BoundedHTTPServer((host, port), make_handler(app.respond, limits.timeout), limits,
                             on_close=app.close)


def serve(url: str, host: str = "127.0.0.1", port: int = 8000,
          max_zoom: int = MAX_ZOOM, limits: Limits | None = None) -> None:
    """Serve the cube's web map until interrupted."""
    logging.basicConfig(level=logging.INFO, format="lczscale serve: %(levelname)s %(message)s")
    view = CubeView(url)
    if view.missing_overviews():
        print(f"lczscale serve: zones {view.missing_overviews()} have no overviews, so zoomed-out "
              f"tiles read 10 m data (slow, or refused when large): run `lczscale pyramid {url}`",
              file=sys.stderr)
    server = make_server(view, host, port, max_zoom, limits)
    print(f"lczscale serve: {url} at http://{host}:{server.server_port}/ (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
