"""Querying and exporting the cube: zones stitched onto one lon/lat grid, COG / GeoTIFF /
NetCDF exports read back with GDAL (rasterio) and xarray, and the fraction and confusion plots.

The cube spans the border of UTM 31 and 32 at 6°E (each zone mapped a little past its band,
with classes 1–8 in the west zone and 9–17 in the east one) plus a southern zone (Nairobi,
negative northings); every pixel's class is known without reading (``lcz_regions.codes``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import Transformer

import lczscale
from lczscale import classes
from lczscale.browse.export import export
from lczscale.cli import main
from lczscale.errors import ConfigError, CubeError, NoDataError
from tests.small_cubes import EAST, SOUTH, WEST, Region, build, codes

pytestmark = pytest.mark.integration

ACROSS = (5.985, 47.503, 6.015, 47.517)  # both sides of 6°E
IN_EAST = (6.004, 47.503, 6.026, 47.517)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build(tmp_path_factory.mktemp("export") / "cube.zarr", [WEST, EAST, SOUTH])


def _zone_codes(da: xr.DataArray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """What ``region``'s zone holds under each pixel centre of a lon/lat DataArray, and where
    that centre is well inside a 4-px block (GDAL's approximate transformer errs < 0.125 px)."""
    lon, lat = np.meshgrid(da["x"].values, da["y"].values)
    x, y = Transformer.from_crs(4326, region.zone.crs, always_xy=True).transform(lon, lat)
    z = region.zone.affine
    col, row = (x - z.c) / z.a, (y - z.f) / z.e
    clear = (row % 4 > 0.3) & (row % 4 < 3.7) & (col % 4 > 0.3) & (col % 4 < 3.7)
    return codes(region, np.floor(row).astype(int), np.floor(col).astype(int)), clear


def _clear_samples(da: xr.DataArray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """(got, want) at the pixels whose centres are well inside a block of ``region``."""
    want, clear = _zone_codes(da, region)
    return da.values[clear], want[clear]


def test_bbox_across_zones_without_crs_suggests_one(cube: str) -> None:
    with pytest.raises(CubeError, match=r'crs="EPSG:4326"'):
        lczscale.open_cube(cube, ACROSS)


def test_stitched_lonlat_view_agrees_with_each_zone(cube: str) -> None:
    ds = lczscale.open_cube(cube, ACROSS, crs="EPSG:4326", year=2024)
    assert ds.odc.crs.epsg == 4326
    assert ds["lcz"].dims == ("time", "y", "x")
    assert ds.attrs["lczscale:stitched_zones"] == ["utm31", "utm32"]
    b = ds.odc.geobox.extent.boundingbox
    assert b.left <= ACROSS[0]
    assert b.right >= ACROSS[2]
    assert b.bottom <= ACROSS[1]
    assert b.top >= ACROSS[3]
    lcz = ds["lcz"].sel(time=2024)
    lon = np.broadcast_to(lcz["x"].values[None, :], lcz.shape)
    values = lcz.values
    # Each side of 6°E comes from the zone that owns it, though both zones hold data there;
    # where the owner has nodata, from the other zone.
    west, west_clear = _zone_codes(lcz, WEST)
    east, east_clear = _zone_codes(lcz, EAST)
    owner = np.where(lon < 6.0, west, east)
    other = np.where(lon < 6.0, east, west)
    want = np.where(owner > 0, owner, other)
    clear = west_clear & east_clear
    assert clear.sum() > 2000
    assert (owner[clear] == 0).sum() > 50
    np.testing.assert_array_equal(values[clear], want[clear])
    # classes 1–8 exist only in the west zone: only where it owns the ground or east has none
    assert ((values <= 8) | (lon >= 6.0) | (west == 0)).all()
    assert ((values >= 9) | (values == 0) | (lon < 6.0) | (east == 0)).all()
    conf = ds["confidence"].sel(time=2024).values
    np.testing.assert_array_equal(conf, np.where(values > 0, 100 + values, 0))


def test_web_map_tiles_and_points_follow_the_same_stitching_rule(cube: str) -> None:
    """The web map's pictures and click read-out combine zones as open_cube(crs=) does: the
    owner of a pixel's longitude, else the other zone with a class (here: both zones hold data
    on both sides of 6°E, with nodata blocks, so the fallback is exercised)."""
    from lczscale.browse.view import CubeView

    ds = lczscale.open_cube(cube, ACROSS, crs="EPSG:4326", year=2024)
    stitched = ds["lcz"].sel(time=2024).values
    b = ds.odc.geobox.extent.boundingbox
    view = CubeView(cube)
    pictured = view.lonlat((b.left, b.bottom, b.right, b.top), stitched.shape, year=2024)
    lcz = ds["lcz"].sel(time=2024)
    west, west_clear = _zone_codes(lcz, WEST)
    east, east_clear = _zone_codes(lcz, EAST)
    clear = west_clear & east_clear
    lon = np.broadcast_to(lcz["x"].values[None, :], lcz.shape)
    owner, other = np.where(lon < 6.0, west, east), np.where(lon < 6.0, east, west)
    fallback = clear & (owner == 0) & (other > 0)
    assert fallback.sum() > 50
    np.testing.assert_array_equal(pictured[clear], stitched[clear])
    lats = lcz["y"].values
    rows, cols = np.nonzero(fallback)
    for i, j in list(zip(rows, cols, strict=True))[::7]:
        p = view.point(float(lon[i, j]), float(lats[i]), year=2024)
        assert p["code"] == stitched[i, j], (i, j, p)
        assert p["zone"] == ("utm32" if lon[i, j] < 6.0 else "utm31")  # the other zone's class


def test_stitched_view_south_of_the_equator(cube: str) -> None:
    ds = lczscale.open_cube(cube, (36.803, -1.297, 36.817, -1.283), crs="EPSG:4326")
    got, want = _clear_samples(ds["lcz"].sel(time=2024), SOUTH)
    assert len(got) > 1000
    np.testing.assert_array_equal(got, want)
    assert list(ds["time"].values) == [2023, 2024]


def test_stitched_view_in_a_projected_crs_with_mode(cube: str) -> None:
    ds = lczscale.open_cube(cube, ACROSS, crs="EPSG:3857", resolution=40.0, resampling="mode")
    assert ds.odc.crs.epsg == 3857
    assert abs(ds.odc.geobox.resolution.x) == 40.0
    values = ds["lcz"].sel(time=2024).values
    assert set(np.unique(values)) <= set(range(18))
    assert (values > 0).mean() > 0.8
    with pytest.raises(ConfigError, match="nearest"):
        lczscale.open_cube(cube, ACROSS, crs="EPSG:4326", resampling="bilinear")
    with pytest.raises(ConfigError, match="needs a bbox"):
        lczscale.open_cube(cube, crs="EPSG:4326")
    with pytest.raises(ConfigError, match="only to a warped view"):
        lczscale.open_cube(cube, IN_EAST, resampling="mode")
    with pytest.raises(ConfigError, match="not a CRS"):
        lczscale.open_cube(cube, IN_EAST, crs="EPSG:99999999")


def _native(cube: str, bbox: tuple[float, float, float, float], zone: str) -> xr.Dataset:
    return lczscale.open_cube(cube, bbox, zone=zone, year=2024)


def test_cog_has_the_zone_grid_colour_table_and_cube_values(cube: str, tmp_path: Path) -> None:
    out = export(cube, IN_EAST, tmp_path / "east.tif", "cog", blocksize=128)
    ds = _native(cube, IN_EAST, "utm32")
    want = ds["lcz"].sel(time=2024).values
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32632
        z = EAST.zone.affine
        a = src.transform
        col, row = (a.c - z.c) / z.a, (a.f - z.f) / z.e
        assert col == int(col)
        assert row == int(row)
        assert a == z @ Affine.translation(col, row)
        assert a == ds.set_coords("spatial_ref").odc.geobox.affine
        assert (src.dtypes[0], src.nodata, src.count) == ("uint8", 0.0, 1)
        np.testing.assert_array_equal(src.read(1), want)
        cmap = src.colormap(1)
        for code, hexcolour in zip(classes.LCZ_CODES, classes.LCZ_PALETTE, strict=True):
            assert "#{:02X}{:02X}{:02X}".format(*cmap[code][:3]) == hexcolour
        assert "Local Climate Zone 2024" in (src.descriptions[0] or "")
        assert src.tags()["LCZ_CLASS_17"] == "G Water"
        # cloud-optimised: tiled, overviews, COG layout (IFDs first, then tile data)
        assert src.profile["tiled"]
        assert src.block_shapes[0] == (128, 128)
        levels = src.overviews(1)  # down to one block, as GDAL's COG driver does
        assert levels
        assert levels[0] == 2
        assert max(src.shape) / levels[-1] <= 128
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
        assert set(np.unique(overview)) <= set(np.unique(want))  # mode: no invented class
    with rasterio.open(out, OVERVIEW_LEVEL=0) as ov:
        assert ov.width == -(-want.shape[1] // 2)


def test_geotiff_is_tiled_without_overviews_and_year_is_selectable(
    cube: str, tmp_path: Path
) -> None:
    out = export(cube, IN_EAST, tmp_path / "east2023.tif", "geotiff", year=2023)
    want = lczscale.open_cube(cube, IN_EAST, zone="utm32", year=2023)["lcz"].values[0]
    with rasterio.open(out) as src:
        assert src.profile["tiled"]
        assert src.overviews(1) == []
        assert src.colormap(1)[17][:3] == classes.palette_rgb()[16]
        np.testing.assert_array_equal(src.read(1), want)
    with pytest.raises(CubeError, match="exists"):
        export(cube, IN_EAST, out, "geotiff")


def test_netcdf_reopens_with_values_and_crs(cube: str, tmp_path: Path) -> None:
    out = export(cube, IN_EAST, tmp_path / "east.nc", "netcdf")
    ds = _native(cube, IN_EAST, "utm32")
    with xr.open_dataset(out, mask_and_scale=False) as nc:
        assert nc.odc.crs.epsg == 32632
        assert nc["lcz"].dtype == np.uint8
        assert nc["lcz"].attrs["_FillValue"] == 0
        np.testing.assert_array_equal(nc["lcz"].values, ds["lcz"].values)
        np.testing.assert_array_equal(nc["confidence"].values, ds["confidence"].values)
        assert nc.odc.geobox.affine == ds.set_coords("spatial_ref").odc.geobox.affine
        assert "grid_mapping_name" in nc["spatial_ref"].attrs
        assert list(nc["lcz"].attrs["flag_values"]) == classes.LCZ_CODES
        assert json.loads(nc.attrs["lczscale:classes"])["palette"] == classes.LCZ_PALETTE


def test_cli_export_across_zones_in_lonlat(cube: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "across.tif"
    bbox = ",".join(map(str, ACROSS))
    assert main(["export", cube, "--bbox", bbox, "--format", "cog", "--out", str(out)]) == 2
    assert 'crs="EPSG:4326" (CLI: --crs EPSG:4326)' in capsys.readouterr().err
    assert main(["export", cube, "--bbox", bbox, "--crs", "EPSG:4326", "--format", "cog",
                 "--out", str(out)]) == 0
    stitched = lczscale.open_cube(cube, ACROSS, crs="EPSG:4326")
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 4326
        assert src.transform == stitched.odc.geobox.affine
        np.testing.assert_array_equal(src.read(1), stitched["lcz"].sel(time=2024).values)
        assert src.colormap(1)[1][:3] == classes.palette_rgb()[0]


def test_plot_fractions_and_confusion(cube: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bbox = ",".join(map(str, IN_EAST))
    png = tmp_path / "fractions.png"
    assert main(["plot", cube, "--bbox", bbox, "--fractions", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cm = np.zeros((17, 18), dtype=int)
    cm[np.arange(17), np.arange(1, 18)] = 50
    cm[2, 5] = 7
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"confusion": cm.tolist(), "miou": 0.9}))
    conf_png = tmp_path / "confusion.png"
    assert main(["plot", "--confusion", str(evaluation), "--out", str(conf_png)]) == 0
    assert conf_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["plot", "--confusion", str(evaluation), "--baseline", "--out",
                 str(conf_png)]) == 2
    assert "no 'baseline_confusion'" in capsys.readouterr().err
    assert main(["plot", "--out", str(conf_png)]) == 2
    assert "plot needs CUBE" in capsys.readouterr().err


def test_fraction_plot_draws_one_panel_per_class_present(cube: str, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from lczscale.browse.plot import plot_fractions

    frac = _native(cube, IN_EAST, "utm32").lcz.fractions(100)
    present = [c for c in range(1, 18) if (frac.sel({"class": c}).fillna(0) > 0).any()]
    figures = []
    orig = plt.Figure.savefig

    def keep(fig: plt.Figure, *a: object, **k: object) -> None:
        figures.append([ax.get_title() for ax in fig.axes if ax.get_images()])
        orig(fig, *a, **k)

    plt.Figure.savefig = keep  # type: ignore[method-assign]
    try:
        plot_fractions(frac, tmp_path / "f.png")
    finally:
        plt.Figure.savefig = orig  # type: ignore[method-assign]
    titles = figures[0]
    assert titles == [f"{classes.LCZ_LABELS[c - 1]} {classes.LCZ_CLASS_NAMES[c - 1]}"
                      for c in present]
    with pytest.raises(NoDataError):
        plot_fractions(frac.where(frac < 0), tmp_path / "empty.png")
