"""The ``.lcz`` xarray accessor: registration, colours, fractions on the zone lattice, warps
that never blend classes, and the plot's colours and legend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

import lczscale
from lczscale import classes
from lczscale.errors import ConfigError, NoDataError
from lczscale.products.counts import block_counts, block_majority
from tests.small_cubes import WEST, build, codes

ROOT = Path(__file__).resolve().parents[2]
BBOX = (5.975, 47.503, 5.995, 47.517)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build(tmp_path_factory.mktemp("accessor") / "cube.zarr", [WEST])


@pytest.fixture(scope="module")
def ds(cube: str) -> xr.Dataset:
    return lczscale.open_cube(cube, BBOX, zone="utm31")


def _origin(ds: xr.Dataset) -> tuple[int, int]:
    """Zone (row, col) of the Dataset's first pixel."""
    a = ds.odc.geobox.affine if "spatial_ref" in ds.coords else ds.set_coords(
        "spatial_ref").odc.geobox.affine
    z = WEST.zone.affine
    return int(round((a.f - z.f) / z.e)), int(round((a.c - z.c) / z.a))


@pytest.mark.parametrize("how", ["import", "open_cube"])
def test_accessor_registered_by_its_module_or_by_open_cube(cube: str, how: str) -> None:
    """What ``lczscale.open_cube`` returns always has ``.lcz``, as does anything once
    ``lczscale.browse.accessor`` is imported; ``import lczscale`` alone stays light, and the cube
    reader (``lczscale.io``) does not reach forward to the accessor layer."""
    use = ("import lczscale.browse.accessor" if how == "import"
           else f"ds = lczscale.open_cube({cube!r}, zone='utm31'); assert hasattr(ds, 'lcz')")
    code = (
        "import sys\n"
        "import lczscale\n"
        "light = 'xarray' not in sys.modules\n"
        "import lczscale.io.cube.store\n"
        "assert 'lczscale.browse.accessor' not in sys.modules, 'io.cube imports the accessor'\n"
        f"{use}\n"
        "import xarray as xr\n"
        "assert hasattr(xr.Dataset, 'lcz') and hasattr(xr.DataArray, 'lcz')\n"
        "print(light)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_to_rgb_is_the_official_palette_with_white_nodata(ds: xr.Dataset) -> None:
    rgb = ds.lcz.to_rgb()
    lcz = ds["lcz"].sel(time=2024).values
    assert rgb.dims == ("y", "x", "band")
    assert rgb.dtype == np.uint8
    assert rgb.shape == (*lcz.shape, 3)
    assert list(rgb["band"].values) == ["red", "green", "blue"]
    values = rgb.values
    palette = classes.palette_rgb()
    present = [int(c) for c in np.unique(lcz)]
    assert 0 in present
    assert len(present) > 3
    for c in present:
        want = (255, 255, 255) if c == 0 else palette[c - 1]
        assert (values[lcz == c] == want).all(), c
    older = ds.lcz.to_rgb(year=2023).values  # another year: other codes, other colours
    assert not np.array_equal(older, values)
    assert np.array_equal(ds["lcz"].lcz.to_rgb().values, values)  # the DataArray accessor


def test_fractions_count_cells_of_the_zone_lattice(ds: xr.Dataset) -> None:
    frac = ds.lcz.fractions(100)
    lcz = ds["lcz"].sel(time=2024).values
    r0, c0 = _origin(ds)
    bc = block_counts(lcz, (r0, c0), 10)
    valid = bc.counts[:, 1:].sum(axis=1)
    assert frac.dims == ("class", "y", "x")
    assert frac.dtype == np.float32
    assert list(frac["class"].values) == classes.LCZ_CODES
    assert list(frac["label"].values) == classes.LCZ_LABELS
    shares = frac.values.reshape(17, -1).T
    assert shares.shape[0] == len(bc.rows)
    ok = valid > 0
    np.testing.assert_allclose(shares[ok], bc.counts[ok, 1:] / valid[ok, None], rtol=1e-6)
    np.testing.assert_allclose(shares[ok].sum(axis=1), 1.0, rtol=1e-5)
    assert np.isnan(shares[~ok]).all()
    # cell edges on the zone's 100 m lattice (zone origin 160 000 m, 9 340 000 m)
    a = frac.odc.geobox.affine
    assert (a.a, a.e) == (100.0, -100.0)
    assert (a.c - 160_000.0) % 100 == 0
    assert (9_340_000.0 - a.f) % 100 == 0
    assert frac.odc.crs == ds.set_coords("spatial_ref").odc.crs


def test_fractions_do_not_depend_on_the_bbox(cube: str, ds: xr.Dataset) -> None:
    """A cell means the same ground whatever window it was read in."""
    other = lczscale.open_cube(cube, (5.9773, 47.5047, 5.9911, 47.5133), zone="utm31")
    a, b = ds.lcz.fractions(100), other.lcz.fractions(100)
    inner_x = b["x"].values[1:-1]  # cells not cut by the smaller window's edge
    inner_y = b["y"].values[1:-1]
    xa = a.sel(x=inner_x, y=inner_y).values
    xb = b.sel(x=inner_x, y=inner_y).values
    np.testing.assert_array_equal(xa, xb)


def test_majority_is_the_block_majority(ds: xr.Dataset) -> None:
    maj = ds.lcz.majority(50)
    lcz = ds["lcz"].sel(time=2024).values
    want, _ = block_majority(lcz, _origin(ds), 5)
    assert maj.dtype == np.uint8
    np.testing.assert_array_equal(maj.values, want)


def test_fractions_need_a_whole_multiple_of_the_pixel(ds: xr.Dataset) -> None:
    with pytest.raises(ConfigError, match="whole multiple of the pixel size 10"):
        ds.lcz.fractions(15)


@pytest.mark.parametrize("resampling", ["bilinear", "average", "cubic"])
def test_reproject_refuses_blending_classes(ds: xr.Dataset, resampling: str) -> None:
    with pytest.raises(ConfigError, match="nearest"):
        ds.lcz.reproject("EPSG:4326", resampling=resampling)


def test_reproject_mode_to_aligned_coarse_cells_is_exact(ds: xr.Dataset) -> None:
    """40 m cells on the zone lattice hold one 4 × 4 block each: mode must return it."""
    out = ds.lcz.reproject(WEST.zone.crs, 40, resampling="mode")
    assert set(out.data_vars) == {"lcz", "confidence"}
    a = out.odc.geobox.affine
    rows = ((np.arange(out.sizes["y"]) + 0.5) * 4 + (a.f - 9_340_000.0) / -10).astype(int)
    cols = ((np.arange(out.sizes["x"]) + 0.5) * 4 + (a.c - 160_000.0) / 10).astype(int)
    want = codes(WEST, rows[:, None], cols[None, :], 2024)
    got = out["lcz"].sel(time=2024).values
    inside = np.zeros_like(want, dtype=bool)  # cells wholly inside the opened window
    r0, c0 = _origin(ds)
    h, w = ds.sizes["y"], ds.sizes["x"]
    inside[(rows // 4 * 4 >= r0)[:, None] & (rows // 4 * 4 + 4 <= r0 + h)[:, None]
           & (cols // 4 * 4 >= c0)[None, :] & (cols // 4 * 4 + 4 <= c0 + w)[None, :]] = True
    assert inside.sum() > 100
    np.testing.assert_array_equal(got[inside], want[inside])
    conf = out["confidence"].sel(time=2024).values
    assert ((conf == 0) == (got == 0)).all()  # confidence follows lcz's nodata


def test_reproject_nearest_to_lonlat_samples_the_zone(ds: xr.Dataset) -> None:
    from pyproj import Transformer

    out = ds["lcz"].lcz.reproject("EPSG:4326")
    assert out.odc.crs.epsg == 4326
    assert out.dims == ("time", "y", "x")
    got = out.sel(time=2024).values
    lon, lat = np.meshgrid(out["x"].values, out["y"].values)
    x, y = Transformer.from_crs(4326, WEST.zone.crs, always_xy=True).transform(lon, lat)
    z = WEST.zone.affine
    col, row = (x - z.c) / z.a, (y - z.f) / z.e
    r0, c0 = _origin(ds)
    # away from 4-px block edges (GDAL's approximate transformer errs by < 0.125 px)
    clear = ((row % 4 > 0.3) & (row % 4 < 3.7) & (col % 4 > 0.3) & (col % 4 < 3.7)
             & (row >= r0 + 1) & (row < r0 + ds.sizes["y"] - 1)
             & (col >= c0 + 1) & (col < c0 + ds.sizes["x"] - 1))
    want = codes(WEST, np.floor(row[clear]).astype(int), np.floor(col[clear]).astype(int))
    assert clear.sum() > 1000
    np.testing.assert_array_equal(got[clear], want)


def test_every_variable_carries_its_crs_for_odc_geo_and_rioxarray(cube: str,
                                                                  ds: xr.Dataset) -> None:
    import rioxarray  # noqa: F401  (registers .rio)
    from pyproj import CRS

    epsg = CRS.from_user_input(WEST.zone.crs).to_epsg()
    for name in ("lcz", "confidence"):
        assert ds[name].odc.crs.epsg == epsg, name
        assert ds[name].odc.geobox == ds.odc.geobox, name
        assert ds[name].rio.crs.to_epsg() == epsg, name
    moved = ds["lcz"].odc.reproject("EPSG:4326", resampling="nearest")  # from the variable
    assert moved.odc.crs.epsg == 4326
    # plain xarray, as the README shows it
    raw = xr.open_zarr(cube, group="utm31", decode_coords="all", consolidated=False)
    assert raw["lcz"].odc.crs.epsg == epsg
    assert raw["lcz"].rio.crs.to_epsg() == epsg


def test_plot_uses_the_official_colours_and_a_legend_of_classes_present(
    ds: xr.Dataset,
) -> None:
    ax = ds.lcz.plot(title="test")
    try:
        lcz = ds["lcz"].sel(time=2024).values
        present = [int(c) for c in np.unique(lcz) if c > 0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"{classes.LCZ_LABELS[c - 1]}  {classes.LCZ_CLASS_NAMES[c - 1]}"
                          for c in present]
        im = ax.get_images()[0]
        for c in present:
            rgba = im.cmap(im.norm(c))
            assert tuple(round(v * 255) for v in rgba[:3]) == classes.palette_rgb()[c - 1]
        assert im.cmap(im.norm(0))[3] == 0.0  # nodata transparent
        assert ax.get_title() == "test"
    finally:
        plt.close(ax.figure)


def test_clear_errors_for_missing_variable_or_year(ds: xr.Dataset) -> None:
    with pytest.raises(NoDataError, match="no 'lcz' variable"):
        ds[["confidence"]].lcz.fractions()
    with pytest.raises(NoDataError, match="no year 1999"):
        ds.lcz.to_rgb(year=1999)
