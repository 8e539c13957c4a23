"""``lczscale serve`` facing hostile or unlucky clients, in-process on loopback: input is
checked before any work, renders have a deadline, connections a bounded pool of threads, and
a failure's detail stays in the log. Each finding of the issue ("a cube never lies", item 7)
is reproduced here; a seeded fuzz run checks that malformed requests are 4xx, never 500, and
that the server still serves a correct tile afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from PIL import Image

from lczscale.browse.serve import ASSETS, Limits, make_server
from lczscale.browse.view import CubeView, lonlat_to_tile, tile_geobox
from lczscale.errors import ConfigError, NoDataError
from lczscale.io.cube.pyramid import build_pyramid
from tests.small_cubes import make_cube

pytestmark = pytest.mark.integration
Z = 13  # a zoom at which the small cube spans a few tiles


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> CubeView:
    url = make_cube(tmp_path_factory.mktemp("serve") / "c.zarr",
                    {"utm32": [(1600, 118), (1600, 119)]})
    build_pyramid(url)
    return CubeView(url)


@pytest.fixture(scope="module")
def tile(view: CubeView) -> tuple[int, int, int]:
    """A tile over the data that holds classes."""
    w, s, e, n = view.bounds()
    x, y = lonlat_to_tile((w + e) / 2, (s + n) / 2, Z)
    found = (Z, int(x), int(y))
    assert view.tile(*found).any()
    return found


@contextlib.contextmanager
def serving(view: CubeView, **limits: Any) -> Iterator[int]:
    server = make_server(view, port=0, limits=Limits(**limits))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def get(port: int, target: str, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.0 GET (any bytes in the target, as urllib would refuse to send); the
    client socket's timeout turns a hung server into a test failure."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:  # as http.server decodes it: "²" arrives as "²"
            raw = target.encode("latin-1")
        except UnicodeEncodeError:
            raw = target.encode()
        sock.sendall(b"GET " + raw + b" HTTP/1.0\r\nHost: t\r\n\r\n")
        data = b""
        with contextlib.suppress(ConnectionResetError):  # what arrived before still counts
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers, body


class Gate:
    """A render that blocks until released: a slow cube read, on demand."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def tile(self, *args: Any, **kwargs: Any) -> np.ndarray:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(60)
        return np.ones((256, 256), dtype=np.uint8)


def test_huge_zoom_is_refused_at_once_without_allocating(view: CubeView) -> None:
    """Finding: /tiles/8589934592/0/0.png computed 1 << z (1 GB, seconds) before any check."""
    proc = psutil.Process()
    with serving(view) as port:
        get(port, "/legend.json")  # warm up: imports, first thread stacks
        rss = proc.memory_info().rss
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for target, expected in [("/tiles/8589934592/0/0.png", 404),
                                 ("/tiles/19/0/0.png", 404),  # above the served max zoom
                                 ("/tiles/3/8/0.png", 404), ("/tiles/3/0/4294967296.png", 404),
                                 ("/tiles/" + "9" * 2000 + "/0/0.png", 400),
                                 ("/tiles/" + "9" * 5000 + "/0/0.png", 414),
                                 ("/tiles/2/99999999999/0.png", 400)]:
            start = time.monotonic()
            status, _, body = get(port, target)
            assert time.monotonic() - start < 1.0, target  # was 5.6 s
            assert status == expected, (target, status, body)
            assert len(body) < 200, (target, status, body)
            assert "error" in json.loads(body)
        assert proc.memory_info().rss - rss < 100 * 2**20
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 2**10
    start = time.monotonic()
    with pytest.raises(NoDataError):  # the view's own check comes before 1 << z too
        tile_geobox(2**33, 0, 0)
    assert time.monotonic() - start < 1.0


def test_a_failing_render_is_a_generic_500_with_the_detail_in_the_log(
    view: CubeView, tile: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding: a 500's body held the exception's text (paths, internals)."""
    secret = "s3://private-bucket/credentials.json went wrong"

    def boom(*args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError(secret)

    monkeypatch.setattr(view, "tile", boom)
    with serving(view) as port, caplog.at_level(logging.ERROR, logger="lczscale.browse.serve"):
        status, headers, body = get(port, "/tiles/{}/{}/{}.png".format(*tile))
    assert status == 500
    rid = headers["X-Request-Id"]
    assert json.loads(body) == {"error": "internal error", "request_id": rid}
    assert b"private-bucket" not in body
    assert b"RuntimeError" not in body
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged
    assert logged[0].exc_info
    assert secret in str(logged[0].exc_info[1])


def test_a_slow_render_times_out_with_503_and_frees_its_worker(
    view: CubeView, tile: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding: no request timeout. A render past the deadline is a 503; a retry of the same
    tile waits on the running render instead of starting another; the late render fills the
    cache and frees the (only) worker."""
    gate = Gate()
    monkeypatch.setattr(view, "tile", gate.tile)
    z, x, y = tile
    slow, other = f"/tiles/{z}/{x}/{y}.png", f"/tiles/{z}/{x + 1}/{y}.png"
    try:
        with serving(view, timeout=0.3, workers=1) as port:
            status, headers, body = get(port, slow)
            assert status == 503
            assert headers["Retry-After"] == "1"
            assert json.loads(body)["request_id"] == headers["X-Request-Id"]
            assert get(port, slow)[0] == 503
            assert gate.calls == 1
            assert get(port, other)[0] == 503
            assert gate.calls == 1
            gate.release.set()
            deadline = time.monotonic() + 30
            while (got := get(port, slow))[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert got[0] == 200
            assert gate.calls == 1
            assert get(port, other)[0] == 200
            assert gate.calls == 2
    finally:
        gate.release.set()


def test_connections_beyond_the_pool_get_503_not_threads(
    view: CubeView, tile: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding: ThreadingHTTPServer starts a thread per connection, without bound."""
    gate = Gate()
    monkeypatch.setattr(view, "tile", gate.tile)
    target = "/tiles/{}/{}/{}.png".format(*tile)
    try:
        with serving(view, threads=1, backlog=1, timeout=60) as port:
            first: list[int] = []
            client = threading.Thread(target=lambda: first.append(get(port, target)[0]))
            client.start()
            assert gate.entered.wait(30)  # the one handler thread is busy
            waiting = socket.create_connection(("127.0.0.1", port))  # takes the backlog
            threads = threading.active_count()
            for _ in range(20):
                status, _, body = get(port, "/legend.json")
                assert status == 503
                assert json.loads(body) == {
                    "error": "server busy, retry later"}
            assert threading.active_count() <= threads
            waiting.close()
            gate.release.set()
            client.join(30)
            assert first == [200]
            # The one thread may still be taking the closed backlog connection off the queue:
            # a request in that instant is refused (503) as designed; the server must recover.
            deadline = time.monotonic() + 10
            while (status := get(port, "/legend.json")[0]) == 503 and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            assert status == 200
    finally:
        gate.release.set()


def test_an_idle_connection_lets_go_of_its_thread(view: CubeView) -> None:
    with serving(view, threads=1, backlog=4, timeout=0.5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert idle.recv(1024) == b""  # sent nothing: closed after the socket timeout
        assert get(port, "/legend.json")[0] == 200  # the thread is free again


def test_known_malformed_inputs_are_short_4xx(view: CubeView) -> None:
    """Found while fuzzing the old server: "²".isdigit() is True but int("²") fails (a 500
    with the exception's text), and errors echoed their input whole."""
    with serving(view) as port:
        for target, expected in [("/tiles/²/0/0.png", 400), ("/tiles/1_0/0/0.png", 400),
                                 ("/tiles/٣/0/0.png", 400), ("/tiles/-1/0/0.png", 400),
                                 ("/point?lon=1&lat=1&year=" + "9" * 1900, 400),
                                 ("/point?lon=nan&lat=1", 400), ("/point?lon=1", 400),
                                 ("/point?lon=1e400&lat=1", 400), ("/?" + "a&" * 40, 400),
                                 ("//[x", 404), ("http://[::1", 200), ("*", 400)]:
            status, _, body = get(port, target)
            short = status == 200 or len(body) < 200  # 200: the page itself
            assert status == expected, (target[:60], status, body)
            assert short, (target[:60], status, body)


def test_the_page_files_are_an_allow_list(view: CubeView) -> None:
    """The page and the vendored Leaflet are served by name from ``ASSETS``, byte for byte as
    packaged; any other path under the web folder, or out of it, is a 404."""
    web = Path(__file__).parents[2] / "lczscale" / "browse" / "web"
    assert "vendor/leaflet/leaflet.js" in ASSETS
    assert "vendor/leaflet/leaflet.css" in ASSETS
    with serving(view) as port:
        for name, ctype in ASSETS.items():
            status, headers, body = get(port, "/" + name)
            assert status == 200, name
            assert headers["Content-Type"] == ctype, name
            assert body == (web / name).read_bytes(), name
        for target in ["/vendor/leaflet/", "/vendor/leaflet/leaflet.js.map", "/vendor/",
                       "/vendor/leaflet/README.md", "/vendor/leaflet/../../serve.py",
                       "/vendor/leaflet/images/../leaflet.js/", "/../web_page.py",
                       "/vendor/leaflet/%2e%2e/LICENSE", "/vendor//leaflet/leaflet.js",
                       "/./map.js", "/web/map.js", "/../../../../etc/passwd",
                       "/vendor/leaflet/images", "/vendor\\leaflet\\leaflet.js"]:
            status, _, body = get(port, target)
            assert status == 404, (target, status, body)
            assert len(body) < 200, (target, status, body)


def test_limits_are_checked() -> None:
    for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"threads": 0}, {"workers": 0},
                {"backlog": -1}):
        with pytest.raises(ConfigError):
            Limits(**bad)


NUMBERS = ["0", "1", "3", "7", "12", "13", "18", "19", "24", "25", "-1", "+1", "01", "1_0", "²",
           "٣", "1e3", "0x1", "1.0", " 1", "", "%31", "..", "é", "\x00", "2" * 11, "8589934592",
           "9" * 5000, "nan", "inf", "-inf", "1e400", "2024", "2023", "-0", "4294967296"]
KEYS = ["year", "lon", "lat", "z", "x", "", "year[]", "%79ear", "ye%00ar"]
CHARS = [chr(c) for c in range(0x21, 0x7F)] + ["é", "²", "\x00", "\x7f", "ÿ"]


def _query(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 20])  # 20: more fields than the server parses
    parts = [f"{rng.choice(KEYS)}={rng.choice(NUMBERS)}" for _ in range(n)]
    junk = rng.choice(["", "&", "&&=", "=", "%zz", "%", "#frag", ";year=2024", "year"])
    return "?" + "&".join(parts) + junk if n or junk else ""


def _target(rng: random.Random, tile: tuple[int, int, int]) -> str:
    """One request target: tiles with odd coordinates, points with odd numbers, odd pages."""
    kind = rng.randrange(8)
    z, x, y = (str(v) for v in tile)
    num = rng.choice
    if kind == 0:  # a real tile with an odd query
        return f"/tiles/{z}/{x}/{y}.png" + _query(rng)
    if kind in (1, 2):
        coords = [num(NUMBERS) if rng.random() < 0.6 else v for v in (z, x, y)]
        coords = coords[: rng.choice([1, 2, 3, 3, 3, 4])]
        return "/tiles/" + "/".join(coords) + rng.choice([".png", ".png", "", ".jpg", "/"])
    if kind == 3:
        return f"/point?lon={num(NUMBERS)}&lat={num(NUMBERS)}&year={num(NUMBERS)}"
    if kind == 4:
        return "/point" + _query(rng)
    if kind == 5:
        return "/" + "".join(rng.choice(CHARS) for _ in range(rng.randrange(60)))
    if kind == 6:
        return rng.choice(["/", "//", "//[x", "http://[::1", "http://h/tiles/0/0/0.png", "*",
                           "/../../etc/passwd", "/index.html/..", "/tiles/", "/info.json?%",
                           "/tiles/" + "1/" * 1500 + "1.png", "/?" + "a=1&" * 400,
                           "/legend.json" + "#" * 3000, "/vendor/leaflet/../../serve.py",
                           "/vendor/leaflet/%2e%2e/LICENSE", "/vendor/leaflet/"])
    return rng.choice(["/legend.json", "/info.json", "/map.js", "/vendor/leaflet/leaflet.js",
                       "/vendor/leaflet/images/layers.png"]) + _query(rng)


def test_fuzzed_requests_are_answered_4xx_never_500(
    view: CubeView, tile: tuple[int, int, int],
) -> None:
    rng = random.Random(7)
    seen: dict[int, int] = {}
    start = time.monotonic()
    with serving(view, timeout=20) as port:
        for _ in range(300):
            target = _target(rng, tile)
            status, headers, body = get(port, target)
            seen[status] = seen.get(status, 0) + 1
            assert status in (200, 400, 404, 414), (target[:200], status, body[:200])
            if status != 200 and headers.get("Content-Type") == "application/json":
                error = json.loads(body)["error"]
                assert len(error) < 200
                assert "Traceback" not in error
        assert time.monotonic() - start < 120
        status, headers, body = get(port, "/tiles/{}/{}/{}.png".format(*tile))
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), view.tile(*tile))
    assert seen.get(200, 0) > 20, seen
    assert seen.get(400, 0) > 50, seen
    assert seen.get(404, 0) > 10, seen


def test_cli_passes_timeout_and_threads(tmp_path: Path) -> None:
    from lczscale.cli import parser

    args = parser().parse_args(["serve", str(tmp_path), "--timeout", "2.5", "--threads", "3"])
    assert (args.timeout, args.threads) == (2.5, 3)
