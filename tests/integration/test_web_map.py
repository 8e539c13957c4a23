"""The web map in a real browser: ``lczscale serve`` on loopback, headless Chromium (Debian
``chromium``) takes a screenshot, and its colours must be the LCZ colours the cube has at those
places; the legend must be drawn; a scripted click must show the class the cube has there. The
page is Leaflet from the package: Chromium's network log must show that the page asked nothing
but its own server, Leaflet included; the zoom control and a right scale bar must be on it. The
static export must work the same from a plain file server."""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lczscale import classes
from lczscale.browse.serve import ASSETS
from lczscale.browse.view import CubeView, lonlat_to_tile
from lczscale.cli import main
from tests.conftest import World
from tests.servers import free_port, process

pytestmark = pytest.mark.integration
W, H, SIDE = 960, 640, 260  # window; the legend panel is the right SIDE px, the map the rest
ZOOM = 14
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={W},{H}",
         "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "headless Chromium is not installed: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} — CI (.ci/run) must install it")
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="module")
def cube(world: World, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The world's truth cube (known classes at known places) with its pyramid."""
    url = str(tmp_path_factory.mktemp("webmap") / "truth.zarr")
    shutil.copytree(world.truth, url)
    assert main(["pyramid", url, "--quiet"]) == 0
    return url


@pytest.fixture(scope="module")
def server(cube: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "lczscale.cli", "serve", cube, "--port", str(port)]
    with process(cmd, port, "lczscale serve", log):
        yield f"http://127.0.0.1:{port}"


def _browse(exe: str, url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # fresh: no cache, no state
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=180, check=False)


def _page_requests(exe: str, url: str, tmp: Path) -> tuple[str, list[str]]:
    """The DOM of the page at ``url`` and every URL the page asked for, from Chromium's network
    log: a request's initiator is the origin of the page that made it (the browser's own
    requests, for updates and the like, have none, and are not the page's doing)."""
    log = tmp / f"netlog-{len(list(tmp.glob('netlog-*')))}.json"
    dom = _browse(exe, url, tmp, "--dump-dom", f"--log-net-log={log}").stdout
    netlog = json.loads(log.read_text())
    start = netlog["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    origin = "/".join(url.split("/")[:3])  # scheme://host:port
    urls = [e["params"]["url"] for e in netlog["events"]
            if e["type"] == start and e.get("params", {}).get("initiator") == origin]
    return dom, urls


def _own_paths(urls: list[str], server: str) -> set[str]:
    """The paths of ``urls``, each of which must be on ``server`` and one the page may ask
    for: a file of the package's allow-list, its JSON, a tile or a point."""
    paths = set()
    for url in urls:
        assert url.startswith(server + "/"), f"the page asked another host: {url}"
        path = url[len(server) + 1 :].partition("?")[0]
        assert path in ASSETS or path in ("info.json", "legend.json", "point") or re.fullmatch(
            r"tiles/\d+/\d+/\d+\.png", path), f"the page asked for {url}"
        paths.add(path)
    return paths


def _mosaic(view: CubeView, ox: int, oy: int, w: int, h: int) -> np.ndarray:
    """Codes of the map's pixels, from the same tiles the page shows (z = ZOOM)."""
    tx0, ty0, tx1, ty1 = ox // 256, oy // 256, (ox + w - 1) // 256, (oy + h - 1) // 256
    rows = [np.hstack([view.tile(ZOOM, tx, ty) for tx in range(tx0, tx1 + 1)])
            for ty in range(ty0, ty1 + 1)]
    big = np.vstack(rows)
    return big[oy - ty0 * 256 : oy - ty0 * 256 + h, ox - tx0 * 256 : ox - tx0 * 256 + w]


def _origin(lon: float, lat: float, w: int, h: int) -> tuple[int, int]:
    x, y = lonlat_to_tile(lon, lat, ZOOM)
    return round(x * 256 - w / 2), round(y * 256 - h / 2)


def _layout(exe: str, url: str, tmp: Path, lon: float, lat: float) -> tuple[int, int, int, int]:
    """Where the page puts the map (world pixel of its corner, its size), as it reports in the
    DOM; the view must be centred on (lon, lat)."""
    page = _browse(exe, url, tmp, "--dump-dom").stdout
    found = re.search(r'data-view="([-\d,]+)"', page)
    assert found, page[-3000:]
    z, ox, oy, mw, mh = (int(v) for v in found.group(1).split(","))
    assert z == ZOOM
    assert (ox, oy) == _origin(lon, lat, mw, mh)
    return ox, oy, mw, mh


def _uniform(codes: np.ndarray, r: int, c: int) -> bool:
    block = codes[r - 2 : r + 3, c - 2 : c + 3]
    return block.shape == (5, 5) and bool((block == block[2, 2]).all())


def test_screenshot_shows_the_cube_in_lcz_colours_with_legend(
    chromium: str, server: str, cube: str, world: World, tmp_path: Path,
) -> None:
    city = world.summary["cities"][0]
    lon, lat = city["lon"], city["lat"]
    shot = tmp_path / "map.png"
    done = _browse(chromium, f"{server}/?z={ZOOM}&lat={lat}&lon={lon}", tmp_path,
                   f"--screenshot={shot}")
    assert shot.is_file(), done.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (H, W)
    # headless Chromium lays the page out in a smaller viewport, then grows it to the window
    # for the picture; the page re-centres on (lat, lon) and holds a ring of tiles beyond its
    # edges, so the picture is the map of the whole window
    mw, mh = W - SIDE, H
    ox, oy = _origin(lon, lat, mw, mh)
    expected = _mosaic(CubeView(cube), ox, oy, mw, mh)
    palette = np.array([(223, 230, 236), *classes.palette_rgb()])  # 0: the map's background
    checked, wrong, seen = 0, [], set()
    for r in range(80, mh - 30, 7):  # below Leaflet's zoom control, above its scale bar and
        # attribution
        for c in range(40, mw - 4, 7):
            if not _uniform(expected, r, c):
                continue
            code = int(expected[r, c])
            checked += 1
            seen.add(code)
            if np.abs(img[r, c] - palette[code]).max() > 2:
                wrong.append((r, c, code, img[r, c].tolist()))
    assert checked > 2000, (checked, seen)
    assert len(seen - {0}) >= 6, (checked, seen)
    assert len(wrong) <= checked // 200, wrong[:10]  # a handful at most (antialiased text)
    side = img[:, mw + 1 :].reshape(-1, 3)
    for code, rgb in enumerate(classes.palette_rgb(), start=1):
        swatch = int((np.abs(side - np.array(rgb)).max(axis=1) == 0).sum())
        assert swatch >= 28 * 16 - 40, f"legend swatch of LCZ {code} {rgb}: {swatch} px"


def test_click_shows_the_class_of_the_cube_there(
    chromium: str, server: str, cube: str, world: World, tmp_path: Path,
) -> None:
    city = world.summary["cities"][0]
    lon, lat = city["lon"], city["lat"]
    view = CubeView(cube)
    ox, oy, mw, mh = _layout(chromium, f"{server}/?z={ZOOM}&lat={lat}&lon={lon}", tmp_path,
                             lon, lat)
    expected = _mosaic(view, ox, oy, mw, mh)
    px, py = next((c, r) for r in range(mh // 3, mh, 5) for c in range(mw // 3, mw, 5)
                  if expected[r, c] and _uniform(expected, r, c))
    dom = _browse(chromium, f"{server}/?z={ZOOM}&lat={lat}&lon={lon}&clickpx={px},{py}",
                  tmp_path, "--dump-dom").stdout
    readout = re.search(r'<div id="readout"[^>]*data-code="(\d+)"[^>]*>(.*?)</div></div>', dom)
    assert readout, dom[-3000:]
    code = int(readout.group(1))
    n = 256 * 2**ZOOM
    click_lon = (ox + px) / n * 360 - 180
    click_lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (oy + py) / n))))
    assert code == view.point(click_lon, click_lat)["code"] == expected[py, px]
    assert classes.LCZ_CLASS_NAMES[code - 1] in readout.group(2)
    legend = re.findall(r'<li data-code="(\d+)">', dom)
    assert legend == [str(c) for c in classes.LCZ_CODES]
    assert 'class="leaflet-interactive"' in dom  # the clicked spot is marked on the map


def test_page_is_leaflet_from_the_package_with_zoom_scale_and_legend(
    chromium: str, server: str, world: World, tmp_path: Path,
) -> None:
    city = world.summary["cities"][0]
    lon, lat = city["lon"], city["lat"]
    dom, urls = _page_requests(chromium, f"{server}/?z={ZOOM}&lat={lat}&lon={lon}", tmp_path)
    paths = _own_paths(urls, server)
    assert {"vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css", "map.js", "info.json",
            "legend.json"} <= paths, paths
    assert any(p.startswith(f"tiles/{ZOOM}/") for p in paths), paths
    assert 'class="leaflet-control-zoom-in"' in dom
    assert 'class="leaflet-control-zoom-out"' in dom
    # the scale bar: a round distance over its width, at the map's metres per screen pixel
    found = re.search(r'class="leaflet-control-scale-line" style="width: (\d+)px;">(\d+) (k?m)<',
                      dom)
    assert found, dom[-3000:]
    metres = int(found.group(2)) * (1000 if found.group(3) == "km" else 1)
    per_px = 2 * math.pi * 6378137 * math.cos(math.radians(lat)) / (256 * 2**ZOOM)
    assert metres / int(found.group(1)) == pytest.approx(per_px, rel=0.02)
    legend = re.findall(r'<li data-code="(\d+)"><span class="swatch" style="background: '
                        r'rgb\((\d+), (\d+), (\d+)\);">', dom)
    assert [(int(c), tuple(map(int, rgb))) for c, *rgb in legend] == list(
        zip(classes.LCZ_CODES, classes.palette_rgb(), strict=True))
    assert "Stewart &amp; Oke (2012)" in dom  # the attribution


def test_point_endpoint_and_errors(server: str, cube: str, world: World) -> None:
    city = world.summary["cities"][0]
    with urllib.request.urlopen(f"{server}/point?lon={city['lon']}&lat={city['lat']}") as r:
        got = json.load(r)
    assert got == CubeView(cube).point(city["lon"], city["lat"])
    assert got["name"] == classes.LCZ_CLASS_NAMES[got["code"] - 1]
    # malformed: 400; a well-formed tile outside the pyramid: 404, as on any XYZ server
    for bad, status in (("/point?lon=x&lat=1", 400), ("/tiles/1/2.png", 400),
                        ("/tiles/3/99/0.png", 404), ("/tiles/8589934592/0/0.png", 404),
                        ("/point?lon=1&lat=1&year=1990", 400)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server + bad)
        assert err.value.code == status
        assert "error" in json.load(err.value)
    with urllib.request.urlopen(f"{server}/legend.json") as r:
        legend = json.load(r)
    assert [e["color"] for e in legend] == classes.LCZ_PALETTE


def test_static_export_has_the_served_tiles(server: str, cube: str, tmp_path: Path) -> None:
    out = tmp_path / "static"
    assert main(["serve", cube, "--static", str(out), "--max-zoom", "12"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["static"]
    assert info["maxzoom"] == 12
    assert (out / "index.html").is_file()
    assert (out / "map.js").is_file()
    tiles = sorted((out / "tiles").rglob("*.png"))
    assert tiles
    z, x, y = tiles[-1].relative_to(out / "tiles").with_suffix("").parts
    with urllib.request.urlopen(f"{server}/tiles/{z}/{x}/{y}.png") as r:
        assert r.read() == tiles[-1].read_bytes()
    for name in ASSETS:  # the page, Leaflet included, as the server gives it
        with urllib.request.urlopen(f"{server}/{name}") as r:
            assert (out / name).read_bytes() == r.read(), name


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_static_export_in_the_browser_shows_the_class_from_the_tiles(
    chromium: str, cube: str, world: World, tmp_path: Path,
) -> None:
    """The export on a plain file server: Leaflet from the export, and a click's class read
    from the colour of the exported tile (no server to ask)."""
    z = 12
    out = tmp_path / "static"
    assert main(["serve", cube, "--static", str(out), "--max-zoom", str(z)]) == 0
    city = world.summary["cities"][0]
    x, y = lonlat_to_tile(city["lon"], city["lat"], z)
    tx, ty = int(x), int(y)
    codes = CubeView(cube).tile(z, tx, ty)
    col, row = next((c, r) for r in range(5, 251) for c in range(5, 251)
                    if codes[r, c] and _uniform(codes, r, c))
    n = 256 * 2**z  # the centre of that pixel
    lon = (tx * 256 + col + 0.5) / n * 360 - 180
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (ty * 256 + row + 0.5) / n))))
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{files.server_port}"
        dom, urls = _page_requests(
            chromium, f"{host}/?z={z}&lat={city['lat']}&lon={city['lon']}&click={lon},{lat}",
            tmp_path)
    finally:
        files.shutdown()
        files.server_close()
    assert {"vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css"} <= _own_paths(urls, host)
    readout = re.search(r'<div id="readout"[^>]*data-code="(\d+)"[^>]*>(.*?)</div></div>', dom)
    assert readout, dom[-3000:]
    code = int(readout.group(1))
    assert code == codes[row, col]
    assert classes.LCZ_CLASS_NAMES[code - 1] in readout.group(2)
    assert f"at zoom {z} resolution" in readout.group(2)
