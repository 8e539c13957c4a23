"""The web map in a real browser: ``lczscale serve`` on loopback, headless Chromium (Debian
``chromium``) takes a screenshot, and its colours must be the LCZ colours the cube has at those
places; the legend must be drawn; a scripted click must show the class the cube has there."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lczscale import classes
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
    assert z == ZOOM and (ox, oy) == _origin(lon, lat, mw, mh)
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
    for r in range(60, mh - 30, 7):  # below the zoom buttons, above the attribution
        for c in range(40, mw - 4, 7):
            if not _uniform(expected, r, c):
                continue
            code = int(expected[r, c])
            checked += 1
            seen.add(code)
            if np.abs(img[r, c] - palette[code]).max() > 2:
                wrong.append((r, c, code, img[r, c].tolist()))
    assert checked > 2000 and len(seen - {0}) >= 6, (checked, seen)
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
        assert err.value.code == status and "error" in json.load(err.value)
    with urllib.request.urlopen(f"{server}/legend.json") as r:
        legend = json.load(r)
    assert [e["color"] for e in legend] == classes.LCZ_PALETTE


def test_static_export_has_the_served_tiles(server: str, cube: str, tmp_path: Path) -> None:
    out = tmp_path / "static"
    assert main(["serve", cube, "--static", str(out), "--max-zoom", "12"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["static"] and info["maxzoom"] == 12
    assert (out / "index.html").is_file() and (out / "map.js").is_file()
    tiles = sorted((out / "tiles").rglob("*.png"))
    assert tiles
    z, x, y = tiles[-1].relative_to(out / "tiles").with_suffix("").parts
    with urllib.request.urlopen(f"{server}/tiles/{z}/{x}/{y}.png") as r:
        assert r.read() == tiles[-1].read_bytes()
