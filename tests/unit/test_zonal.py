"""Zonal statistics (``lczscale zonal``, ``ds.lcz.zonal``): areas and shares on the cube's own
grid, pixel-centre inclusion, zone ownership at a UTM edge, ellipsoidal areas in a geographic
zone, years, nodata and confidence, and the command's files and errors.

Every expected number is computed here from what the test wrote (pixel counts × 100 m², or an
independent projection of pixel centres, or pyproj's geodesic area), not by the code tested.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Geod, Transformer

import lczscale
from lczscale.browse.zonal import COLUMNS, zonal_stats
from lczscale.cli import main
from lczscale.config import CubeConfig, GridConfig
from lczscale.core.grid import Window, Zone, global_zone, utm_zone
from lczscale.errors import ConfigError, NoDataError
from lczscale.io.cube.store import create_cube, write_tile

TILE = 256
GRID = GridConfig(tile_size=TILE)
UTM31, UTM32 = utm_zone(31), utm_zone(32)
KM2 = 1e-4  # one 10 m pixel


def _tile_at(zone: Zone, lon: float, lat: float) -> Window:
    """The tile of ``zone`` holding a lon/lat point."""
    x, y = Transformer.from_crs("EPSG:4326", zone.crs, always_xy=True).transform(lon, lat)
    col, row = ~zone.affine @ (x, y)
    return Window(int(row) // TILE * TILE, int(col) // TILE * TILE, TILE, TILE)


# Tile T of utm31 near Basel, for both years:
# 2024: class 14 (D, confidence 100) but rows 0:100 × cols 0:100 class 2 (confidence 200),
#       rows 100:150 × cols 0:100 nodata; 2023: class 11 (A, confidence 50) everywhere.
T = _tile_at(UTM31, 5.98, 47.51)


def _lcz_2024() -> tuple[np.ndarray, np.ndarray]:
    lcz = np.full((TILE, TILE), 14, np.uint8)
    lcz[0:100, 0:100] = 2
    lcz[100:150, 0:100] = 0
    conf = np.select([lcz == 2, lcz == 14], [200, 100], 0).astype(np.uint8)
    return lcz, conf


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("zonal") / "cube.zarr")
    create_cube(url, [UTM31], [2023, 2024], GRID, CubeConfig(), {})
    write_tile(url, UTM31, 2024, T, *_lcz_2024())
    write_tile(url, UTM31, 2023, T, np.full((TILE, TILE), 11, np.uint8),
               np.full((TILE, TILE), 50, np.uint8))
    return url


def _rect(zone: Zone, r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    """Zone pixels rows r0:r1, cols c0:c1 (relative to tile T) as a polygon in the zone CRS."""
    a = zone.affine
    x0, y0 = a @ (T.col + c0, T.row + r0)
    x1, y1 = a @ (T.col + c1, T.row + r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _polys(*geoms: shapely.Geometry, crs: str = UTM31.crs, **fields: list) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(fields, geometry=list(geoms), crs=crs)


def _row(df: pd.DataFrame, polygon: object, year: int, lcz: int) -> pd.Series:
    hit = df[(df.polygon == polygon) & (df.year == year) & (df.lcz == lcz)]
    assert len(hit) == 1, (polygon, year, lcz, df)
    return hit.iloc[0]


def test_a_pixel_aligned_rectangle_gives_exact_areas_shares_nodata_and_confidence(
    cube: str,
) -> None:
    # rows 50:150, cols 50:150 = 10 000 px: 2 500 of class 2, 2 500 nodata, 5 000 of class 14
    df = zonal_stats(cube, _polys(_rect(UTM31, 50, 50, 150, 150)), year=2024)
    assert list(df.columns) == COLUMNS
    assert sorted(df.lcz) == [2, 14]
    two, d = _row(df, 0, 2024, 2), _row(df, 0, 2024, 14)
    assert two.area_km2 == pytest.approx(2500 * KM2, rel=1e-12)
    assert d.area_km2 == pytest.approx(5000 * KM2, rel=1e-12)
    assert (two.share, d.share) == (pytest.approx(0.25), pytest.approx(0.5))
    assert (two.lcz_code, d.lcz_code, d.lcz_name) == ("2", "D", "Low plants")
    assert two.nodata_share == pytest.approx(0.25)
    assert two.polygon_km2 == pytest.approx(1.0)
    # confidence in the cube's units (probability × 255), mean over classified pixels
    assert (two.class_mean_confidence, d.class_mean_confidence) == (200.0, 100.0)
    assert two.mean_confidence == pytest.approx((2500 * 200 + 5000 * 100) / 7500)
    assert df.share.sum() + two.nodata_share == pytest.approx(1.0)


def test_pixel_centres_decide_and_any_crs_counts_the_same_pixels(cube: str) -> None:
    """Pixel centres lie 5 m inside a pixel-aligned edge: moving the edges 4.9 m in or out
    changes nothing, 5.1 m drops or adds a ring of pixels; the same rectangle in lon/lat counts
    the same pixels."""
    base = _rect(UTM31, 50, 50, 150, 150)
    moved = [base.buffer(d, join_style="mitre") for d in (-5.1, -4.9, 4.9, 5.1)]
    df = zonal_stats(cube, _polys(base, *moved), year=2024)
    total = df.groupby("polygon").polygon_km2.first()
    want = [100, 98, 100, 100, 102]
    assert list(total) == pytest.approx([n * n * KM2 for n in want], rel=1e-12)
    to_ll = Transformer.from_crs(UTM31.crs, "EPSG:4326", always_xy=True)
    ll = shapely.transform(shapely.segmentize(base, 1.0),
                           lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    in_ll = zonal_stats(cube, _polys(ll, crs="EPSG:4326"), year=2024)
    pd.testing.assert_frame_equal(in_ll, df[df.polygon == 0].reset_index(drop=True))


def test_a_polygon_of_nodata_has_one_row_and_parts_outside_the_written_tiles_are_nodata(
    cube: str,
) -> None:
    only_nodata = _rect(UTM31, 100, 0, 150, 50)  # 2 500 px, all nodata
    # cols -100:100 of rows 0:100: half class 2, half in a tile never written
    half_out = _rect(UTM31, 0, -100, 100, 100)
    df = zonal_stats(cube, _polys(only_nodata, half_out), year=2024)
    row = _row(df, 0, 2024, 0)
    assert (row.lcz_code, row.area_km2, row.share, row.nodata_share) == ("nodata", 0, 0, 1)
    assert row.polygon_km2 == pytest.approx(0.25)
    assert math.isnan(row.mean_confidence)
    assert math.isnan(row.class_mean_confidence)
    two = _row(df, 1, 2024, 2)
    assert (two.area_km2, two.share, two.nodata_share) == (
        pytest.approx(1.0), pytest.approx(0.5), pytest.approx(0.5))


def test_c_every_year_has_its_rows(cube: str) -> None:
    df = zonal_stats(cube, _polys(_rect(UTM31, 50, 50, 150, 150)))
    assert sorted(set(df.year)) == [2023, 2024]
    a = _row(df, 0, 2023, 11)
    assert (a.area_km2, a.share, a.nodata_share, a.mean_confidence) == (
        pytest.approx(1.0), pytest.approx(1.0), 0.0, 50.0)
    assert list(df[df.year == 2023].lcz) == [11]
    assert list(zonal_stats(cube, _polys(_rect(UTM31, 0, 0, 10, 10)), year=[2023]).year) == [
        2023]
    with pytest.raises(NoDataError, match=r"no year 2020 \(years: \[2023, 2024\]\)"):
        zonal_stats(cube, _polys(_rect(UTM31, 0, 0, 10, 10)), year=2020)


def test_ids_come_from_the_id_field_or_an_id_column_or_the_row(cube: str) -> None:
    polys = [_rect(UTM31, 0, 0, 10, 10), _rect(UTM31, 200, 200, 210, 210)]
    assert set(zonal_stats(cube, _polys(*polys, name=["x", "y"]), 2024,
                           id_field="name").polygon) == {"x", "y"}
    assert set(zonal_stats(cube, _polys(*polys, id=[7, 9]), 2024).polygon) == {7, 9}
    assert set(zonal_stats(cube, _polys(*polys, name=["x", "y"]), 2024).polygon) == {0, 1}
    with pytest.raises(ConfigError, match="no field 'nom'"):
        zonal_stats(cube, _polys(*polys, name=["x", "y"]), 2024, id_field="nom")
    with pytest.raises(ConfigError, match="repeats ids"):
        zonal_stats(cube, _polys(*polys, name=["x", "x"]), 2024, id_field="name")


def test_e_the_accessor_gives_the_same_rows(cube: str) -> None:
    polys = _polys(_rect(UTM31, 50, 50, 150, 150), _rect(UTM31, 100, 0, 150, 50))
    want = zonal_stats(cube, polys)
    ds = lczscale.open_cube(cube, zone="utm31")
    pd.testing.assert_frame_equal(ds.lcz.zonal(polys), want)
    pd.testing.assert_frame_equal(ds.lcz.zonal(polys, year=2024),
                                  want[want.year == 2024].reset_index(drop=True))
    # a bbox of the zone: the same pixels, at other window positions
    sub = lczscale.open_cube(cube, (5.9, 47.4, 6.0, 47.6), zone="utm31")
    pd.testing.assert_frame_equal(sub.lcz.zonal(polys), want)


def test_the_accessor_refuses_a_grid_whose_areas_are_not_ground_areas(cube: str) -> None:
    ds = lczscale.open_cube(cube, (5.95, 47.49, 6.0, 47.53), zone="utm31")
    polys = _polys(_rect(UTM31, 50, 50, 150, 150))
    web = ds.isel(time=[1]).lcz.reproject("EPSG:3857", 10.0)
    with pytest.raises(ConfigError, match=r"covers 0\.46× its grid area on the ground"):
        web.lcz.zonal(polys)
    no_conf = ds.drop_vars("confidence").lcz.zonal(polys, year=2024)
    assert list(no_conf.area_km2) == pytest.approx([0.25, 0.5])
    assert no_conf.mean_confidence.isna().all()
    assert no_conf.class_mean_confidence.isna().all()


# -- a polygon across the edge of UTM 31 and 32 (6°E) ------------------------------------

EDGE = shapely.box(5.985, 47.505, 6.015, 47.515)  # lon/lat


@pytest.fixture(scope="module")
def two_zones(tmp_path_factory: pytest.TempPathFactory) -> str:
    """utm31 holds class 3 and utm32 class 12 over the whole of EDGE (both past 6°E)."""
    url = str(tmp_path_factory.mktemp("zonal2") / "cube.zarr")
    create_cube(url, [UTM31, UTM32], [2024], GRID, CubeConfig(), {})
    for zone, code in ((UTM31, 3), (UTM32, 12)):
        a, b = _tile_at(zone, 5.98, 47.52), _tile_at(zone, 6.02, 47.50)
        for r in range(min(a.row, b.row), max(a.row, b.row) + 1, TILE):
            for c in range(min(a.col, b.col), max(a.col, b.col) + 1, TILE):
                full = np.full((TILE, TILE), code, np.uint8)
                write_tile(url, zone, 2024, Window(r, c, TILE, TILE), full, full * 10)
    return url


def _centres_inside(zone: Zone, polygon: shapely.Geometry, owned_only: bool) -> int:
    """Pixels of ``zone`` whose centre (projected exactly) is in the lon/lat polygon and, with
    ``owned_only``, in the zone's 6° band."""
    fwd = Transformer.from_crs("EPSG:4326", zone.crs, always_xy=True)
    xs, ys = fwd.transform(*np.array(polygon.exterior.coords).T)
    inv = ~zone.affine
    cols, rows = inv @ (np.array(xs), np.array(ys))
    r = np.arange(math.floor(rows.min()) - 2, math.ceil(rows.max()) + 2)
    c = np.arange(math.floor(cols.min()) - 2, math.ceil(cols.max()) + 2)
    cc, rr = np.meshgrid(c + 0.5, r + 0.5)
    x, y = zone.affine @ (cc, rr)
    lon, lat = Transformer.from_crs(zone.crs, "EPSG:4326", always_xy=True).transform(x, y)
    inside = shapely.contains_xy(polygon, lon, lat)
    if owned_only:
        inside &= (lon >= zone.lon_band[0]) & (lon < zone.lon_band[1])
    return int(inside.sum())


def test_b_a_polygon_across_a_zone_edge_is_counted_once(two_zones: str) -> None:
    df = zonal_stats(two_zones, _polys(EDGE, crs="EPSG:4326"))
    assert sorted(df.lcz) == [3, 12]  # class 3 only from utm31, class 12 only from utm32
    n31 = _centres_inside(UTM31, EDGE, owned_only=True)
    n32 = _centres_inside(UTM32, EDGE, owned_only=True)
    assert _row(df, 0, 2024, 3).area_km2 == pytest.approx(n31 * KM2, rel=1e-12)
    assert _row(df, 0, 2024, 12).area_km2 == pytest.approx(n32 * KM2, rel=1e-12)
    total = df.area_km2.sum()
    assert df.polygon_km2.iloc[0] == pytest.approx(total)
    assert (df.nodata_share == 0).all()
    # the polygon's area on the grids: its geodesic area × the UTM scale² (~1.00045 here)
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(
        shapely.segmentize(EDGE, 1e-4))[0]) / 1e6
    assert total == pytest.approx(geodesic * 1.00045, rel=5e-4)
    # both zones hold data under all of it: counting every zone's pixels would double it
    naive = (_centres_inside(UTM31, EDGE, False) + _centres_inside(UTM32, EDGE, False)) * KM2
    assert naive == pytest.approx(2 * total, rel=1e-2)
    # each zone's Dataset counts its own part only
    for zone, code, n in (("utm31", 3, n31), ("utm32", 12, n32)):
        own = lczscale.open_cube(two_zones, zone=zone).lcz.zonal(_polys(EDGE, crs="EPSG:4326"))
        assert list(own.lcz) == [code]
        assert own.area_km2.iloc[0] == pytest.approx(n * KM2, rel=1e-12)


def test_a_stitched_view_counts_each_pixel_once(two_zones: str) -> None:
    ds = lczscale.open_cube(two_zones, (5.98, 47.5, 6.02, 47.52), crs="EPSG:32631")
    df = ds.lcz.zonal(_polys(EDGE, crs="EPSG:4326"))
    want = zonal_stats(two_zones, _polys(EDGE, crs="EPSG:4326"))
    assert df.area_km2.sum() == pytest.approx(want.area_km2.sum(), rel=2e-3)


# -- a geographic zone: pixels in degrees, areas on the ellipsoid -------------------------


def test_a_geographic_zone_counts_ellipsoidal_areas(tmp_path: Path) -> None:
    grid = GridConfig(kind="global", tile_size=TILE, global_resolution=1e-3, global_top=90.0)
    zone = global_zone(1e-3, 90.0)
    url = str(tmp_path / "global.zarr")
    create_cube(url, [zone], [2024], grid, CubeConfig(), {})
    row, col = 30 * TILE, 725 * TILE  # lat 82.32..82.06 (pixel areas vary by row), lon 5.6
    lcz = np.full((TILE, TILE), 5, np.uint8)
    lcz[:, 128:] = 9
    write_tile(url, zone, 2024, Window(row, col, TILE, TILE), lcz, lcz * 10)
    a = zone.affine
    (x0, y0), (x1, y1) = a @ (col + 28, row + 10), a @ (col + 228, row + 210)
    box = shapely.box(x0, y1, x1, y0)  # 200 × 200 px: half class 5, half class 9
    df = zonal_stats(url, _polys(box, crs="EPSG:4326"))
    half = shapely.segmentize(shapely.box(x0, y1, (x0 + x1) / 2, y0), 1e-3)  # along parallels
    want = abs(Geod(ellps="WGS84").geometry_area_perimeter(half)[0]) / 1e6
    five, nine = _row(df, 0, 2024, 5), _row(df, 0, 2024, 9)
    assert five.area_km2 == pytest.approx(want, rel=1e-6)
    assert nine.area_km2 == pytest.approx(want, rel=1e-6)
    assert five.share == pytest.approx(0.5, rel=1e-9)
    assert five.class_mean_confidence == pytest.approx(50.0, rel=1e-12)
    assert nine.class_mean_confidence == pytest.approx(90.0, rel=1e-12)
    # near 82°N a pixel is ~0.13 of one at the equator: not a pixel count × a constant
    lat = math.radians(82.2)
    assert want == pytest.approx(100 * 200 * 111.32**2 * math.cos(lat) * 1e-6, rel=1e-2)


# -- the command -------------------------------------------------------------------------


def test_f_the_command_writes_csv_and_parquet_from_any_polygon_file(
    cube: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    polys = _polys(_rect(UTM31, 50, 50, 150, 150), _rect(UTM31, 100, 0, 150, 50),
                   name=["park", "lot"])
    want = zonal_stats(cube, polys, id_field="name")
    gj, gpkg, gpq = tmp_path / "a.geojson", tmp_path / "a.gpkg", tmp_path / "a.parquet"
    polys.to_crs("EPSG:4326").to_file(gj, driver="GeoJSON")
    polys.to_file(gpkg, driver="GPKG")
    polys.to_parquet(gpq)
    for src, out in ((gj, "s.csv"), (gpkg, "s.parquet"), (gpq, "t.csv")):
        path = tmp_path / out
        assert main(["zonal", cube, "--polygons", str(src), "--out", str(path),
                     "--id-field", "name"]) == 0
        assert capsys.readouterr().out.strip() == str(path)
        got = pd.read_csv(path) if out.endswith(".csv") else pd.read_parquet(path)
        assert list(got.columns) == COLUMNS
        pd.testing.assert_frame_equal(got.drop(columns="lcz_code"),
                                      want.drop(columns="lcz_code"), check_dtype=False,
                                      rtol=1e-9)
    got = pd.read_csv(tmp_path / "t.csv", dtype={"lcz_code": str})
    assert list(got.lcz_code) == list(want.lcz_code)
    assert main(["zonal", cube, "--polygons", str(gpq), "--out", str(tmp_path / "y.csv"),
                 "--year", "2023"]) == 0
    assert set(pd.read_csv(tmp_path / "y.csv").year) == {2023}


@pytest.mark.parametrize(("args", "message"), [
    (["--polygons", "{tmp}/missing.geojson"], "--polygons {tmp}/missing.geojson does not exist"),
    (["--out", "{tmp}/s.txt"], "must end in .csv or .parquet"),
    (["--year", "2020"], "no year 2020"),
    (["--id-field", "nom"], "no field 'nom'"),
    (["--polygons", "{tmp}/far.geojson"], "no polygon overlaps the cube's zones ['utm31']"),
    (["--polygons", "{tmp}/a.shp"], "is not a GeoJSON (.geojson), GeoPackage"),
    (["--polygons", "{tmp}/bad.geojson"], "cannot read polygons from"),
    (["--polygons", "{tmp}/line.geojson"], "is a LineString, not a polygon"),
])
def test_f_bad_input_exits_2_with_one_line(
    cube: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    message: str,
) -> None:
    _polys(_rect(UTM31, 0, 0, 10, 10)).to_file(tmp_path / "a.geojson", driver="GeoJSON")
    _polys(shapely.box(150, -30, 151, -29), crs="EPSG:4326").to_file(tmp_path / "far.geojson")
    _polys(shapely.LineString([(5.9, 47.5), (5.95, 47.5)]), crs="EPSG:4326").to_file(
        tmp_path / "line.geojson")
    (tmp_path / "a.shp").write_text("x")
    (tmp_path / "bad.geojson").write_text("{not json")
    opts = {"--polygons": str(tmp_path / "a.geojson"), "--out": str(tmp_path / "s.csv")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        opts[k] = v.format(tmp=tmp_path)
    argv = ["zonal", cube, *(x for kv in opts.items() for x in kv)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("lczscale zonal: error: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "s.csv").exists()
