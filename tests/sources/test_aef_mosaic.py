"""The AlphaEarth global mosaic (Zarr v3, EPSG:4326) passes the conformance suite, equals the
COGs read on the global grid bit for bit, and refuses stores it cannot read without resampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from pyproj import Transformer

from lczscale.core.grid import UTM_X0, UTM_Y_TOP, Window, utm_zone
from lczscale.errors import NoDataError, SourceError
from lczscale.io.sources import registry as sources
from lczscale.io.sources.aef_cogs import AefCogSource
from lczscale.io.sources.aef_mosaic import AefMosaicSource, decode_years
from lczscale.io.sources.aef_warp import nearest_utm_pixels, sample_nearest
from lczscale.io.sources.protocol import SIGN_SQUARE
from lczscale.synth import world as synth
from lczscale.synth.aef import MOSAIC_SHAPE, aef_codes, mosaic_window, mosaic_zone, utm_reader
from tests.conformance import SourceCase, SourceConformance

SEED = 7
YEARS = (2023, 2024)
CITIES = 3  # Zurich, Basel (north) and Nairobi (south)


@pytest.fixture(scope="module")
def world() -> list[synth.SynthCity]:
    return synth.make_world(cities=CITIES, size_km=1.0, seed=SEED, years=YEARS)


@pytest.fixture(scope="module")
def codes(world: list[synth.SynthCity]) -> dict[int, list[np.ndarray]]:
    return {y: [aef_codes(c, c.embeddings[y], SEED) for c in world] for y in YEARS}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both AEF layouts of one world, through ``write_world``'s layouts hook."""
    root = tmp_path_factory.mktemp("aef-mosaic")
    synth.write_world(root, cities=CITIES, size_km=1.0, seed=SEED, years=YEARS,
                      truth_cube=False, layouts=("aef-cogs", "aef-mosaic"))
    return root



def reference(world: list[synth.SynthCity], codes: list[np.ndarray], window: Window
              ) -> np.ndarray:
    """De-quantised nearest-neighbour samples of the in-memory UTM codes, NaN where none."""
    k, valid = sample_nearest(mosaic_zone(), window, utm_reader(world, codes), 64)
    out = SIGN_SQUARE[k.astype(np.int16) + 128]
    out[:, ~valid] = np.nan
    return out


class TestAefMosaic(SourceConformance):
    @pytest.fixture(params=[(0, 2023), (0, 2024), (2, 2024)], ids=["zurich-2023",
                                                                   "zurich-2024", "nairobi-2024"])
    def case(self, out: Path, world: list[synth.SynthCity], codes: dict[int, list[np.ndarray]],
             request: pytest.FixtureRequest) -> SourceCase:
        city, year = request.param
        window = mosaic_window(world[city], margin=12)
        return SourceCase(AefMosaicSource.open(str(out / "aef-mosaic.zarr")), mosaic_zone(),
                          year, window, reference(world, codes[year], window), 64,
                          "sign_square")


def test_cogs_on_the_global_grid_equal_the_mosaic(out: Path, world: list[synth.SynthCity]
                                                  ) -> None:
    mosaic = AefMosaicSource.open(str(out / "aef-mosaic.zarr"))
    cogs = AefCogSource.open(str(out / "aef"))
    zone = mosaic_zone()
    for c in world:
        w = mosaic_window(c, margin=40)
        for window in (w, Window(w.row + 7, w.col + w.width // 2 - 300, 150, 333)):
            for year in YEARS:
                a, b = mosaic.read(zone, window, year), cogs.read(zone, window, year)
                np.testing.assert_array_equal(a.valid, b.valid)
                np.testing.assert_array_equal(a.codes, b.codes)
                assert a.valid.any()
                assert not a.valid.all()


def test_nearest_rule_is_the_projected_pixel_centre() -> None:
    """The shared rule against a direct per-pixel projection (other code path, scalars)."""
    zone = mosaic_zone()
    rng = np.random.default_rng(1)
    for lon, lat in ((8.54, 47.37), (36.82, -1.29), (11.9995, 10.0), (-74.08, 4.71)):
        a = zone.affine
        col, row = int((lon - a.c) / a.a), int((lat - a.f) / a.e)
        window = Window(row - 20, col - 20, 40, 40)
        number, rows, cols = nearest_utm_pixels(zone, window)
        for r, c in rng.integers(0, 40, (25, 2)):
            plon = a.c + a.a * (window.col + c + 0.5)
            plat = a.f + a.e * (window.row + r + 0.5)
            n = min(60, int((plon + 180) // 6) + 1)
            x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{32600 + n}",
                                        always_xy=True).transform(plon, plat)
            assert number[r, c] == n
            assert rows[r, c] == int(np.floor((UTM_Y_TOP - y) / 10))
            assert cols[r, c] == int(np.floor((x - UTM_X0) / 10))
        if lon == 11.9995:  # the window straddles the 12°E zone edge: both zones used
            assert set(np.unique(number)) == {32, 33}


def test_store_is_the_published_layout(out: Path) -> None:
    root = zarr.open_group(str(out / "aef-mosaic.zarr"), mode="r", zarr_format=3)
    arr = root["embeddings"]
    assert isinstance(arr, zarr.Array)
    assert arr.shape == (len(YEARS), 64, *MOSAIC_SHAPE) == (2, 64, 1_859_584, 4_009_984)
    assert arr.dtype == np.int8
    assert arr.fill_value == -128
    assert arr.shards == (1, 64, 4096, 4096)
    assert arr.chunks == (1, 64, 256, 256)
    assert arr.metadata.dimension_names == ("time", "band", "y", "x")  # type: ignore[union-attr]
    meta = json.loads((out / "aef-mosaic.zarr" / "embeddings" / "zarr.json").read_text())
    codecs = meta["codecs"][0]["configuration"]["codecs"]
    assert any(c["name"] == "zstd" for c in codecs)
    assert root.attrs["proj:code"] == "EPSG:4326" == root.attrs["crs"]
    assert {"x", "y", "time"} <= set(root.array_keys())
    shards = list((out / "aef-mosaic.zarr" / "embeddings" / "c").rglob("*"))
    assert 0 < len([p for p in shards if p.is_file()]) <= 6 * len(YEARS), "only city shards"
    import xarray as xr

    ds = xr.open_zarr(str(out / "aef-mosaic.zarr"), consolidated=False)
    assert ds["embeddings"].dims == ("time", "band", "y", "x")
    assert [t.year for t in ds.indexes["time"]] == list(YEARS)
    assert ds["x"][0] == pytest.approx(-180 + 360 / 4_007_520 / 2)


def test_detected_and_described(out: Path) -> None:
    layout, found = sources.detect_layout(str(out / "aef-mosaic.zarr"))
    assert layout == "aef-mosaic"
    assert "EPSG:4326" in found
    assert "64-d" in found
    s = sources.open_source(str(out / "aef-mosaic.zarr"))
    assert isinstance(s, AefMosaicSource)
    assert s.dataset == "alphaearth/v1" == AefCogSource.open(str(out / "aef")).dataset
    assert s.years == list(YEARS)
    assert s.zone_names() == ["global"]
    assert s.zone_names("utm") == []
    assert s.grid_kinds == ("global",)
    assert AefMosaicSource.detect(str(out / "aef")) is None


def test_not_claimed_geoemb_or_tessera_stores(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "geoemb.zarr"), mode="w", zarr_format=3)
    root.attrs.update({"geoemb:dimensions": 64, "proj:code": "EPSG:4326"})
    root.create_array("embeddings", shape=(1, 64, 8, 8), dtype="int8", fill_value=-128)
    assert AefMosaicSource.detect(str(tmp_path / "geoemb.zarr")) is None
    synth.write_world(tmp_path / "t", cities=1, size_km=0.4, seed=0, years=(2024,),
                      shard_size=64, truth_cube=False)
    assert AefMosaicSource.detect(str(tmp_path / "t" / "embeddings.zarr")) is None


def _copy(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(out / "aef-mosaic.zarr", dst)
    return dst


def _set_attrs(store: Path, **attrs: object) -> None:
    for meta in (store / "zarr.json", store / "embeddings" / "zarr.json"):
        doc = json.loads(meta.read_text())
        doc.setdefault("attributes", {}).update(attrs)
        meta.write_text(json.dumps(doc))


def test_equal_area_store_is_refused(out: Path, tmp_path: Path) -> None:
    store = _copy(out, tmp_path)
    _set_attrs(store, **{"proj:code": "EPSG:6933", "crs": "EPSG:6933"})
    assert AefMosaicSource.detect(str(store)) is not None  # recognised, then explained
    with pytest.raises(SourceError, match=r"EPSG:6933.*not EPSG:4326.*resampling"):
        AefMosaicSource.open(str(store))


def test_off_lattice_grid_is_refused(out: Path, tmp_path: Path) -> None:
    store = _copy(out, tmp_path)
    x = zarr.open_array(str(store / "x"), mode="r+")
    x[:] = x[:] + 0.3 * (360 / 4_007_520)  # a third of a pixel east
    with pytest.raises(SourceError, match="not on the AlphaEarth mosaic lattice"):
        AefMosaicSource.open(str(store))


def test_wrong_band_count_is_refused(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "m.zarr"), mode="w", zarr_format=3)
    root.attrs.update({"proj:code": "EPSG:4326"})
    root.create_array("embeddings", shape=(1, 32, 8, 8), dtype="int8", fill_value=-128)
    with pytest.raises(SourceError, match=r"32 bands.*64"):
        AefMosaicSource.open(str(tmp_path / "m.zarr"))


def test_partial_nodata_pixel_is_damage(out: Path, tmp_path: Path,
                                        world: list[synth.SynthCity]) -> None:
    store = _copy(out, tmp_path)
    w = mosaic_window(world[0])
    arr = zarr.open_array(str(store / "embeddings"), mode="r+")
    r, c = w.row + w.height // 2, w.col + w.width // 2
    arr[0, 9, r, c] = -128
    with pytest.raises(SourceError, match=rf"some bands but not all.*row {r}, col {c}"):
        AefMosaicSource.open(str(store)).read(mosaic_zone(), w, YEARS[0])


def test_years_from_time_coordinates() -> None:
    assert decode_years(np.array([2017, 2025]), {}, "t") == [2017, 2025]
    days = (np.array(["2018-01-01", "2024-01-01"], dtype="datetime64[D]")
            - np.datetime64("1970-01-01")).astype(np.int64)
    assert decode_years(days, {"units": "days since 1970-01-01"}, "t") == [2018, 2024]
    assert decode_years(np.array([0, 8759]), {"units": "hours since 2017-01-01 00:00:00"},
                        "t") == [2017, 2017]
    assert decode_years(np.array(["2019-06-01"], dtype="datetime64[s]"), {}, "t") == [2019]
    with pytest.raises(SourceError, match="neither years"):
        decode_years(np.array([3, 4]), {}, "t")


def test_other_zones_and_years(out: Path) -> None:
    s = AefMosaicSource.open(str(out / "aef-mosaic.zarr"))
    with pytest.raises(NoDataError, match="global"):
        s.read(utm_zone(32), Window(0, 0, 8, 8), 2024)
    with pytest.raises(NoDataError, match="2019"):
        s.read(mosaic_zone(), Window(0, 0, 8, 8), 2019)
