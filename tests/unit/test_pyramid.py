"""Browsing pyramid (2×2 mode overviews) and the cross-zone view rendered from it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lczscale.browse.view import CubeView, lonlat_to_tile, png, tile_geobox
from lczscale.cli import main
from lczscale.core.grid import utm_zone
from lczscale.io.cube import pyramid
from lczscale.io.cube.pyramid import TILE, build_pyramid, level_path, mode2x2, read_state
from lczscale.products.counts import block_majority
from tests.small_cubes import make_cube, write

TILES = {"utm32": [(1600, 118), (1600, 119), (1601, 119)]}
R0, C0 = 1600 * TILE, 118 * TILE  # the data's corner: a multiple of 2^8, so levels align


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9)),
              elements=st.integers(0, 17)))
def test_mode2x2_is_the_majority_of_each_2x2_cell(codes: np.ndarray) -> None:
    expected, _ = block_majority(codes, factor=2)
    assert np.array_equal(mode2x2(codes), expected)


def test_mode_ignores_nodata_unless_all_nodata() -> None:
    codes = np.array([[0, 0, 0, 0], [0, 5, 0, 0]], dtype=np.uint8)
    assert mode2x2(codes).tolist() == [[5, 0]]
    assert mode2x2(np.array([[3, 4], [4, 3]], dtype=np.uint8)).tolist() == [[3]]  # tie: low


def _cascade(base: np.ndarray, k: int) -> np.ndarray:
    for _ in range(k):
        base = mode2x2(base)
    return base


def test_levels_are_cascaded_modes_over_the_data_only(tmp_path: Path) -> None:
    url = make_cube(tmp_path / "c.zarr", TILES)
    report = build_pyramid(url)["utm32"]
    # data box 512 x 512 px: level 1 is 256 px, so it already fits in one tile
    assert report["levels"] == 1
    assert report["chunks"] == {1: 1}
    g = zarr.open_group(url, mode="r")["utm32"]
    base = np.asarray(g["lcz"][0, R0 : R0 + 512, C0 : C0 + 512])
    got = np.asarray(g[level_path(1)][0, R0 // 2 : R0 // 2 + 256, C0 // 2 : C0 // 2 + 256])
    assert np.array_equal(got, _cascade(base, 1))
    stored = list((Path(url) / "utm32" / "overviews" / "1" / "lcz" / "c").rglob("*"))
    assert sum(p.is_file() for p in stored) == 1  # the chunk above the data, nothing else
    layout = g.attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["lcz", "overviews/1/lcz"]
    assert layout[1]["derived_from"] == "lcz"
    assert layout[1]["resampling_method"] == "mode"
    assert layout[1]["spatial:transform"][0] == 20.0
    assert any(c["name"] == "multiscales" for c in g.attrs["zarr_conventions"])


def test_each_level_is_a_georeferenced_dataset(tmp_path: Path) -> None:
    url = make_cube(tmp_path / "c.zarr", {"utm32": [(1600, 118), (1604, 122)]})
    assert build_pyramid(url)["utm32"]["levels"] == 3  # 1280 px box → 160 px at level 3
    ds = xr.open_zarr(url, group="utm32/overviews/3", consolidated=False, zarr_format=3)
    gt = [float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split()]
    assert gt[1] == 80.0
    assert gt[5] == -80.0
    assert float(ds["x"][1] - ds["x"][0]) == 80.0
    assert ds["lcz"].shape[1:] == (math.ceil(utm_zone(32).shape[0] / 8),
                                   math.ceil(utm_zone(32).shape[1] / 8))
    g = zarr.open_group(url, mode="r")["utm32"]
    lvl2 = np.asarray(g[level_path(2)][0, R0 // 4 : R0 // 4 + 320, C0 // 4 : C0 // 4 + 320])
    lvl3 = ds["lcz"].isel(time=0, y=slice(R0 // 8, R0 // 8 + 160),
                          x=slice(C0 // 8, C0 // 8 + 160)).values
    assert np.array_equal(lvl3, mode2x2(lvl2))


def test_rebuild_redoes_only_what_changed_and_resumes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_cube(tmp_path / "c.zarr", TILES)
    build_pyramid(url)
    again = build_pyramid(url)["utm32"]
    assert again["changed_sources"] == 0
    assert again["chunks"] == {1: 0}
    zone = utm_zone(32)
    write(url, zone, 2024, 1601, 118, seed=99)  # a new tile: its chunk only, at every level
    write(url, zone, 2024, 1604, 122, seed=98)  # …and the box grows: two more levels
    calls: list[tuple[int, int]] = []

    real = pyramid._make_level

    def crash_at_3(g, zone, k, chunks, threads):  # type: ignore[no-untyped-def]
        if k == 3:
            raise RuntimeError("killed")
        return real(g, zone, k, chunks, threads)

    monkeypatch.setattr(pyramid, "_make_level", crash_at_3)
    with pytest.raises(RuntimeError):
        build_pyramid(url)
    assert read_state(url, "utm32")["pending"]["levels_done"] == 2
    monkeypatch.setattr(pyramid, "_make_level", real)
    report = build_pyramid(url, on_level=lambda z, k, n: calls.append((k, n)))["utm32"]
    assert [k for k, _ in calls] == [3]  # resumed at the level that failed
    assert report["levels"] == 3
    assert "pending" not in read_state(url, "utm32")
    fresh = make_cube(tmp_path / "fresh.zarr", {"utm32": [*TILES["utm32"]]})
    write(fresh, zone, 2024, 1601, 118, seed=99)
    write(fresh, zone, 2024, 1604, 122, seed=98)
    build_pyramid(fresh)
    for k in (1, 2, 3):
        a = zarr.open_group(url, mode="r")["utm32"][level_path(k)]
        b = zarr.open_group(fresh, mode="r")["utm32"][level_path(k)]
        f = 1 << k
        sel = (0, slice(R0 // f, R0 // f + 1280 // f), slice(C0 // f, C0 // f + 1280 // f))
        assert np.array_equal(np.asarray(a[sel]), np.asarray(b[sel])), k


def test_cube_without_ledger_uses_its_stored_chunks(tmp_path: Path) -> None:
    url = make_cube(tmp_path / "c.zarr", TILES)
    for p in (Path(url) / "_ledger").rglob("*.json"):
        p.unlink()
    assert build_pyramid(url)["utm32"]["chunks"] == {1: 1}


def test_cli_pyramid_and_unknown_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = make_cube(tmp_path / "c.zarr", TILES)
    assert main(["pyramid", url, "--quiet"]) == 0
    assert main(["pyramid", url, "--zone", "utm99"]) == 2
    assert "no zone(s) ['utm99']" in capsys.readouterr().err


def test_view_renders_tiles_across_utm_zones(tmp_path: Path) -> None:
    """Data on both sides of 6°E (UTM 31 | 32): one lon/lat view holds both, each pixel the
    class of the 10 m pixel under its centre."""
    # 6°E at 47.4°N: zone 31 easting ~726 km, zone 32 easting ~274 km
    row = int((9_340_000 - 5_253_000) / 10) // TILE
    url = make_cube(tmp_path / "c.zarr", {"utm31": [(row, (726_000 - 160_000) // 10 // TILE - 1)],
                                          "utm32": [(row, (274_000 - 160_000) // 10 // TILE)]})
    build_pyramid(url)
    view = CubeView(url)
    w, s, e, n = view.bounds()
    assert w < 6.0 < e
    shape = (64, 128)
    codes = view.lonlat((w, s, e, n), shape)
    lons = w + (np.arange(shape[1]) + 0.5) * (e - w) / shape[1]
    lats = n - (np.arange(shape[0]) + 0.5) * (n - s) / shape[0]
    root = zarr.open_group(url, mode="r")
    checked = {"utm31": 0, "utm32": 0}
    for i in range(0, shape[0], 3):
        for j in range(0, shape[1], 3):
            p = view.point(float(lons[j]), float(lats[i]))
            if codes[i, j] and p["code"]:
                checked[p["zone"]] += 1
                r, c = p["row"], p["col"]  # GDAL's warp approximates to 1/8 px: a neighbour
                near = np.asarray(root[p["zone"]]["lcz"][0, r - 1 : r + 2, c - 1 : c + 2])
                assert codes[i, j] in near, (i, j, p)
    assert min(checked.values()) > 5, checked
    # an XYZ tile over the seam: both zones, and level > 0 at a coarse zoom
    x, y = lonlat_to_tile(6.0, (s + n) / 2, 12)
    tile = view.tile(12, int(x), int(y))
    assert tile.shape == (256, 256)
    assert tile.any()
    assert tile_geobox(12, int(x), int(y)).crs == "EPSG:3857"
    assert png(tile)[:8] == b"\x89PNG\r\n\x1a\n"
