"""``lczscale serve``: the cube as a slippy web map, or a static export of one.

Standard library HTTP server in front of a ``CubeView``: the page and its script come from the
package (``lczscale/browse/web``, no CDN: it must work offline), tiles are rendered on request from
the pyramid (``/tiles/{z}/{x}/{y}.png``), the class at a point comes from the 10 m data
(``/point?lon=..&lat=..``), and ``/legend.json`` + ``/info.json`` tell the page the official
classes and where the data is. ``export_static`` writes the same page with pre-rendered tiles
for the data's box, for any static file host.

The server faces whatever reaches its port, so no request may cost it more than a bounded
amount (see ``Limits``):

- every path and query parameter is checked, by its text, before any work: a malformed one
  is a 400, a well-formed tile outside the pyramid (zoom above the served maximum, x or y
  outside 0..2^z-1) a 404 as on any XYZ tile server, a target longer than ``MAX_TARGET`` a
  414 — so ``/tiles/8589934592/0/0.png`` never reaches ``1 << z``;
- renders run on a fixed pool of workers and a request waits at most ``Limits.timeout``
  for one (then 503; the render goes on to fill the cache, its worker is not held past it);
- connections are handled by a fixed pool of threads with a bounded waiting line; beyond it
  a connection gets a 503 at once instead of a new thread;
- a failure the server did not expect is a 500 whose body says only "internal error" and a
  request id; the exception goes to the ``lczscale.browse.serve`` log under the same id.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from lczscale import classes
from lczscale.browse.view import MAX_ZOOM as VIEW_MAX_ZOOM
from lczscale.browse.view import CubeView, check_year, describe, lonlat_to_tile, png
from lczscale.errors import ConfigError, LczscaleError

logger = logging.getLogger("lczscale.browse.serve")

ASSETS = {"index.html": "text/html; charset=utf-8", "map.js": "text/javascript; charset=utf-8",
          "map.css": "text/css; charset=utf-8"}
JSON = "application/json"
MAX_ZOOM = 18  # 10 m pixels are ~2 screen px at zoom 15 in mid-latitudes; beyond, overzoom
MAX_STATIC_TILES = 50_000
MAX_TARGET = 2048  # characters of a request target: the page's longest is ~80
MAX_FIELDS = 16  # query parameters (the page sends at most three)
MAX_VALUE = 32  # characters of a number in the query
# Z, X and Y: ASCII digits only (str.isdigit() also takes "²", which int() refuses), and at
# most 10 of them, so a coordinate is a small int before it is compared with anything
TILE_PATH = re.compile(r"tiles/([0-9]{1,10})/([0-9]{1,10})/([0-9]{1,10})\.png")
YEAR = re.compile(r"-?[0-9]{1,6}")
ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)  # absolute-form request target
REFUSE_WAIT = 0.1  # s a refused connection may take to send its request (see _refuse)


def asset(name: str) -> bytes:
    return resources.files("lczscale.browse").joinpath("web", name).read_bytes()


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


@dataclass(frozen=True)
class Limits:
    """What the server may spend on its clients: one slow render or a flood of connections
    must cost a bounded number of threads and a bounded wait, never the whole server.

    ``timeout``: seconds a request waits for its render (then 503), and the socket timeout of
    each read or write (an idle client cannot hold a thread longer). ``threads``: connections
    handled at once. ``workers``: renders at once (a render that outlives its request still
    holds its worker until it ends, so at most this many can pile up). ``backlog``:
    connections waiting for a thread; beyond it a connection gets a 503 at once.
    """

    timeout: float = 30.0
    threads: int = 16
    workers: int = max(2, min(8, os.cpu_count() or 2))
    backlog: int = 64

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"serve timeout must be a positive number of seconds, got "
                              f"{self.timeout}")
        if self.threads < 1 or self.workers < 1 or self.backlog < 0:
            raise ConfigError(f"serve needs threads >= 1, workers >= 1 and backlog >= 0, got "
                              f"{self.threads}, {self.workers}, {self.backlog}")


class HttpError(Exception):
    """A request answered with ``status`` and a short message of ours (never a traceback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    ctype: str
    cacheable: bool = False


class _TileCache:
    """Recently rendered PNG tiles (a browser asks for the same ones again while panning)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> bytes:
        with self.lock:
            self.items[key] = data
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return data


class _Renderer:
    """Runs renders on ``workers`` threads; each caller waits at most ``timeout`` seconds.

    Python cannot stop a thread inside GDAL or a Zarr read, so a render that outlives its
    request runs to its end (reads are bounded by ``view.MAX_READ_PX``), then frees its
    worker; callers that find every worker busy wait for one within their own deadline. A
    second request for a tile already being rendered waits on that render instead of
    starting another: retries of a slow tile cannot take every worker.
    """

    def __init__(self, workers: int, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lczscale-render")
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[Any]] = {}

    def run(self, key: Hashable | None, make: Callable[[], Any]) -> Any:
        """``make()``'s value (or its exception), or HttpError 503 past the deadline. Calls
        with the same ``key`` (not None) share one running render."""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            fut = self._running.get(key) if key is not None else None
            mine = fut is None
            if fut is None:
                fut = Future()
                if key is not None:
                    self._running[key] = fut
        if mine:
            self._start(key, fut, make, deadline)
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            fut.add_done_callback(_log_late_failure)
            raise HttpError(503, f"rendering took longer than {self.timeout:g} s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start(self, key: Hashable | None, fut: Future[Any], make: Callable[[], Any],
               deadline: float) -> None:
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._finish(key, fut, HttpError(503, "every renderer is busy"))
            return
        try:
            self._pool.submit(self._work, key, fut, make)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._slots.release()
            self._finish(key, fut, HttpError(503, "the server is shutting down"))

    def _work(self, key: Hashable | None, fut: Future[Any], make: Callable[[], Any]) -> None:
        try:
            value = make()
        except BaseException as exc:  # handed to whoever waits on ``fut``
            self._finish(key, fut, exc)
        else:
            self._finish(key, fut, None, value)
        finally:
            self._slots.release()

    def _finish(self, key: Hashable | None, fut: Future[Any], error: BaseException | None,
                value: Any = None) -> None:
        with self._lock:
            if key is not None and self._running.get(key) is fut:
                del self._running[key]
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def _log_late_failure(fut: Future[Any]) -> None:
    """A render whose request timed out failed later: nobody else will report it."""
    exc = fut.exception()
    if exc is not None and not isinstance(exc, HttpError):
        logger.error("a render that outlived its request failed", exc_info=exc)


class _MapApp:
    """The server's routes as a function of the request target: checks, then work."""

    def __init__(self, view: CubeView, max_zoom: int, limits: Limits) -> None:
        if not 0 <= max_zoom <= VIEW_MAX_ZOOM:
            raise ConfigError(f"serve max zoom must be in 0..{VIEW_MAX_ZOOM}, got {max_zoom}")
        self.view = view
        self.max_zoom = max_zoom
        self.years = frozenset(view.years)
        self.page_info = info(view, max_zoom=max_zoom)
        self.cache = _TileCache()
        self.renderer = _Renderer(limits.workers, limits.timeout)

    def respond(self, target: str) -> Reply:
        path, query = split_target(target)
        if path in ASSETS:
            return Reply(200, asset(path), ASSETS[path])
        if path == "legend.json":
            return _json(legend())
        if path == "info.json":
            return _json(self.page_info)
        if path == "point":
            return self._point(query)
        if path.startswith("tiles/"):
            return self._tile(path, query)
        raise HttpError(404, f"no such page: /{_clip(path)}")

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
        return _json(self.renderer.run(None, lambda: self.view.point(lon, lat, year)))

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


def _json(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode(), JSON)


def _error(status: int, message: str, request_id: str | None = None) -> Reply:
    body: dict[str, str] = {"error": message}
    if request_id is not None:
        body["request_id"] = request_id
    return _json(body, status)


class BoundedHTTPServer(HTTPServer):
    """An HTTP server whose connections are handled by a fixed pool of ``limits.threads``
    threads. ``ThreadingHTTPServer`` starts a thread per connection, so a flood of slow
    requests grows threads (and their stacks) without bound; here at most
    ``limits.backlog`` connections wait for a thread, and one beyond gets a 503 at once.
    A connection that waited longer than ``limits.timeout`` gets a 503 too (its client has
    likely given up)."""

    request_queue_size = 128  # the listening socket's backlog, in the kernel

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 limits: Limits, on_close: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._capacity = threading.BoundedSemaphore(limits.threads + limits.backlog)
        self._pending: queue.SimpleQueue[tuple[Any, Any, float] | None] = queue.SimpleQueue()
        self._on_close = on_close
        super().__init__(address, handler)
        self._threads = [threading.Thread(target=self._work, name=f"lczscale-http-{i}",
                                          daemon=True) for i in range(limits.threads)]
        for thread in self._threads:
            thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the connection for the pool, or refuse it at once when the line is full."""
        if not self._capacity.acquire(blocking=False):
            logger.warning("busy: refused a connection from %s", client_address[0])
            _refuse(request)
            self.shutdown_request(request)
            return
        self._pending.put((request, client_address, time.monotonic()))

    def _work(self) -> None:
        while (item := self._pending.get()) is not None:
            request, client_address, since = item
            try:
                if time.monotonic() - since > self.limits.timeout:
                    _refuse(request)
                else:
                    self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                self._capacity.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection broke outside a request's handling (the client went away): not
        worth socketserver's traceback on stderr."""
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._threads:
            self._pending.put(None)
        if self._on_close is not None:
            self._on_close()


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without a handler thread. The request is read first (at most
    ``REFUSE_WAIT`` s for it to arrive): closing a socket with unread data resets the
    connection, and the client could lose the answer."""
    body = json.dumps({"error": "server busy, retry later"}).encode()
    head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        sock.settimeout(REFUSE_WAIT)
        sock.recv(65536)
        sock.sendall(head.encode() + body)
    except OSError:
        pass


def _handler(app: _MapApp, socket_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "lczscale"
        timeout = socket_timeout  # of each socket read or write: an idle client lets go

        def log_message(self, format: str, *args: Any) -> None:  # errors go to ``logger``
            logger.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            request_id = secrets.token_hex(6)
            try:
                reply = app.respond(self.path)
            except HttpError as exc:
                if exc.status >= 500:
                    logger.warning("request %s: GET %.200r: %s", request_id, self.path,
                                   exc.message)
                reply = _error(exc.status, exc.message,
                               request_id if exc.status >= 500 else None)
            except LczscaleError as exc:  # the cube cannot give this view (messages say why)
                reply = _error(400, str(exc))
            except Exception:  # a bug: the detail stays in the log, the client gets the id
                logger.exception("request %s: GET %.200r failed", request_id, self.path)
                reply = _error(500, "internal error", request_id)
            try:
                self._send(reply, request_id)
            except OSError:  # the client went away or stalled past the socket timeout
                logger.debug("request %s: could not send the reply", request_id,
                             exc_info=True)

        def _send(self, reply: Reply, request_id: str) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "max-age=300" if reply.cacheable else "no-store")
            self.send_header("X-Request-Id", request_id)
            if reply.status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(reply.body)

    return Handler


def make_server(view: CubeView, host: str = "127.0.0.1", port: int = 8000,
                max_zoom: int = MAX_ZOOM, limits: Limits | None = None) -> BoundedHTTPServer:
    """An HTTP server for the map of ``view`` (not started: call ``serve_forever``)."""
    limits = limits or Limits()
    app = _MapApp(view, max_zoom, limits)
    return BoundedHTTPServer((host, port), _handler(app, limits.timeout), limits,
                             on_close=app.renderer.close)


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
