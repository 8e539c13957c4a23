"""AlphaEarth COGs (bottom-up, UTM, indexed) pass the source conformance suite, in both
hemispheres; orientation, indexes, remote paths, masks and damaged files are handled."""

from __future__ import annotations

import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely

from lczscale.core.grid import Window, utm_zone
from lczscale.errors import NoDataError, SourceError
from lczscale.io.sources import registry as sources
from lczscale.io.sources.aef_cogs import AefCogSource, resolve_href
from lczscale.io.sources.aef_warp import sample_nearest
from lczscale.synth import world as synth
from lczscale.synth.aef import (
    aef_codes,
    mosaic_window,
    mosaic_zone,
    utm_reader,
    write_aef_cogs,
    write_cog,
    write_index,
)
from tests.conformance import SourceCase, SourceConformance
from tests.sources.reference import aef_dequantise as dequantise
from tests.sources.reference import aef_padded as padded

SEED = 5
YEARS = (2023, 2024)
FILE_PX = 512
CITIES = 3  # Zurich, Basel (utm32, north) and Nairobi (utm37, south: EPSG:32737 files)


@pytest.fixture(scope="module")
def world() -> list[synth.SynthCity]:
    return synth.make_world(cities=CITIES, size_km=1.0, seed=SEED, years=YEARS)


@pytest.fixture(scope="module")
def codes(world: list[synth.SynthCity]) -> dict[int, list[np.ndarray]]:
    """The AEF codes each writer was given, per year and city (computed in memory)."""
    return {y: [aef_codes(c, c.embeddings[y], SEED) for c in world] for y in YEARS}


def _write(out: Path, world: list[synth.SynthCity], bottom_up: bool) -> Path:
    write_aef_cogs(out, world, YEARS, lambda c, y: c.embeddings[y], SEED, file_px=FILE_PX,
                   bottom_up=bottom_up)
    return out / "aef"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, world: list[synth.SynthCity]) -> Path:
    return _write(tmp_path_factory.mktemp("aef-cogs"), world, bottom_up=True)


@pytest.fixture(scope="module")
def top_down_tree(tmp_path_factory: pytest.TempPathFactory,
                  world: list[synth.SynthCity]) -> Path:
    return _write(tmp_path_factory.mktemp("aef-cogs-topdown"), world, bottom_up=False)



class TestAefCogs(SourceConformance):
    @pytest.fixture(params=[(0, 2023), (0, 2024), (2, 2024)], ids=["zurich-2023",
                                                                   "zurich-2024", "nairobi-2024"])
    def case(self, tree: Path, world: list[synth.SynthCity], codes: dict[int, list[np.ndarray]],
             request: pytest.FixtureRequest) -> SourceCase:
        city, year = request.param
        c = world[city]
        extent, ref = padded(c.window, codes[year][city])
        return SourceCase(AefCogSource.open(str(tree)), c.zone, year, extent, dequantise(ref),
                          64, "sign_square")


# --------------------------------------------------------------------------------------------
# The files and indexes are in the published format


def test_files_are_aef_cogs(tree: Path) -> None:
    files = sorted(tree.glob("*/*/*.tiff"))
    assert files
    for f in files:
        year, zone = f.parent.parent.name, f.parent.name
        assert int(year) in YEARS
        assert re.fullmatch(r"\d{1,2}[NS]", zone)
        assert re.fullmatch(r"x[0-9a-z]{16}-\d{10}-\d{10}\.tiff", f.name)
        with rasterio.open(f) as ds:
            assert ds.count == 64
            assert set(ds.dtypes) == {"int8"}
            assert ds.nodata == -128
            assert ds.descriptions == tuple(f"A{i:02d}" for i in range(64))
            assert ds.block_shapes[0] == (256, 256)
            assert ds.compression.name == "zstd"
            assert ds.interleaving.name == "band"
            assert ds.overviews(1)
            assert ds.transform.e > 0, "bottom-up like the Source Cooperative files"
            assert ds.crs.to_epsg() == (32700 if zone.endswith("S") else 32600) + int(zone[:-1])


def test_index_columns_and_footprints(tree: Path, world: list[synth.SynthCity]) -> None:
    t = pq.read_table(tree / "aef_index.parquet")
    assert t.column_names == [
        "fid", "geometry", "crs", "path", "year", "utm_zone", "utm_west", "utm_south",
        "utm_east", "utm_north", "wgs84_west", "wgs84_south", "wgs84_east", "wgs84_north"]
    assert b"geo" in pq.read_metadata(tree / "aef_index.parquet").metadata
    rows = t.to_pylist()
    for r in rows:
        assert (tree / r["path"]).exists()
        assert r["utm_east"] - r["utm_west"] == FILE_PX * 10
        hemisphere = 327 if r["utm_zone"][-1] == "S" else 326
        assert r["crs"] == f"EPSG:{hemisphere}{r['utm_zone'][:-1]:0>2}"
        poly = shapely.from_wkb(r["geometry"])
        assert poly.bounds == pytest.approx(
            (r["wgs84_west"], r["wgs84_south"], r["wgs84_east"], r["wgs84_north"]))
    south = [r for r in rows if r["utm_zone"] == "37S"]
    assert south, "true southern northings"
    assert all(r["utm_north"] > 9_000_000 for r in south), "true southern northings"
    for c in world:  # every city centre lies in a footprint of each year
        for y in YEARS:
            assert any(shapely.from_wkb(r["geometry"]).contains(shapely.Point(c.city.lon,
                                                                            c.city.lat))
                       for r in rows if r["year"] == y)


def test_stac_geoparquet_index(tree: Path) -> None:
    t = pq.read_table(tree / "aef_index_stac_geoparquet.parquet")
    meta = pq.read_metadata(tree / "aef_index_stac_geoparquet.parquet").metadata
    assert b"geo" in meta
    assert b"stac-geoparquet" in meta
    hrefs = pc.struct_field(t.column("assets").combine_chunks(), ["data", "href"]).to_pylist()
    assert all(not h.startswith("/") and "://" not in h for h in hrefs), "relative hrefs"
    assert all((tree / h).exists() for h in hrefs)
    assert sorted(set(pc.year(t.column("datetime")).to_pylist())) == list(YEARS)
    assert set(t.column("proj:code").to_pylist()) == {"EPSG:32632", "EPSG:32737"}


# --------------------------------------------------------------------------------------------
# Discovery


def test_detected_and_described(tree: Path) -> None:
    layout, found = sources.detect_layout(str(tree))
    assert layout == "aef-cogs"
    assert "aef_index.parquet" in found
    assert "2023..2024" in found
    assert "32N" in found
    assert "37S" in found
    s = sources.open_source(str(tree))
    assert isinstance(s, AefCogSource)
    assert s.dataset == "alphaearth/v1"
    assert s.dimensions == 64
    assert s.years == list(YEARS)
    assert s.zone_names() == ["utm32", "utm37"]
    assert s.zone_names("global") == ["global"]
    # the provenance names the dataset and index, never a count of files or zones: adding
    # files elsewhere must not restale a cube made from this source
    assert not {"files", "zones", "years"} & set(s.describe())


def test_stac_index_alone_and_index_file_urls(tree: Path, tmp_path: Path,
                                              world: list[synth.SynthCity]) -> None:
    copy = tmp_path / "stac-only"
    shutil.copytree(tree, copy)
    (copy / "aef_index.parquet").unlink()
    layout, found = sources.detect_layout(str(copy))
    assert layout == "aef-cogs"
    assert "stac_geoparquet" in found
    ref = AefCogSource.open(str(tree))
    for url in (str(copy), str(copy / "aef_index_stac_geoparquet.parquet"),
                str(tree / "aef_index.parquet")):
        s = AefCogSource.open(url)
        for c in world:
            a, b = s.read(c.zone, c.window, 2024), ref.read(c.zone, c.window, 2024)
            np.testing.assert_array_equal(a.codes, b.codes)
            np.testing.assert_array_equal(a.valid, b.valid)


def test_from_assets_reads_missing_crs_and_bounds_from_headers(
    tree: Path, world: list[synth.SynthCity]
) -> None:
    t = pq.read_table(tree / "aef_index_stac_geoparquet.parquet")
    hrefs = pc.struct_field(t.column("assets").combine_chunks(), ["data", "href"]).to_pylist()
    years = pc.year(t.column("datetime")).to_pylist()
    assets: list[dict[str, Any]] = [{"href": h, "year": y} for h, y in zip(hrefs, years,
                                                                         strict=True)]
    s = AefCogSource.from_assets("stac://aef-synthetic", assets, base_url=str(tree))
    clone = pickle.loads(pickle.dumps(s))
    ref = AefCogSource.open(str(tree))
    assert clone.years == ref.years
    assert len(clone.files) == len(ref.files)
    for c in world:
        a, b = clone.read(c.zone, c.window, 2023), ref.read(c.zone, c.window, 2023)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.valid, b.valid)
    with pytest.raises(SourceError, match="relative"):
        AefCogSource.from_assets("stac://aef-synthetic", assets)


def test_remote_and_absolute_paths_through_fsspec(tree: Path, world: list[synth.SynthCity]
                                                  ) -> None:
    """The tree served from another filesystem (fsspec memory://), with the index's paths
    relative, and rewritten as absolute URLs (as gs:// or s3:// paths in the real index)."""
    fs = fsspec.filesystem("memory")
    root = "/aef-remote-test"
    for p in tree.rglob("*"):
        if p.is_file():
            fs.pipe(f"{root}/{p.relative_to(tree).as_posix()}", p.read_bytes())
    t = pq.read_table(tree / "aef_index.parquet")
    absolute = t.set_column(t.column_names.index("path"), "path", pa.array(
        [f"memory://{root}/{p}" for p in t.column("path").to_pylist()]))
    with fs.open(f"{root}/abs/aef_index.parquet", "wb") as fh:
        pq.write_table(absolute, fh)
    ref = AefCogSource.open(str(tree))
    opened: list[AefCogSource] = []
    try:
        for url in (f"memory://{root}", f"memory://{root}/abs"):
            s = AefCogSource.open(url)
            opened.append(s)
            assert all(f.href.startswith(f"memory://{root}/") for f in s.files)
            for c in world:
                a, b = s.read(c.zone, c.window, 2024), ref.read(c.zone, c.window, 2024)
                np.testing.assert_array_equal(a.codes, b.codes)
                np.testing.assert_array_equal(a.valid, b.valid)
        many = world * 20  # rasterio's opener bridge is not thread-safe: reads take a lock
        with ThreadPoolExecutor(8) as pool:
            reads = list(pool.map(lambda c: opened[0].read(c.zone, c.window, 2023), many))
        for c, data in zip(many, reads, strict=True):
            np.testing.assert_array_equal(data.codes, ref.read(c.zone, c.window, 2023).codes)
    finally:
        for s in opened:
            s.close()
        fs.rm(root, recursive=True)


def test_resolve_href() -> None:
    base = "s3://bucket/aef/v1/annual"
    assert resolve_href("gs://alphaearth_foundations/a.tiff", base).startswith("gs://")
    assert resolve_href("https://data.source.coop/x.tiff", None) == "https://data.source.coop/x.tiff"
    assert resolve_href("/data/aef/x.tiff", base) == "/data/aef/x.tiff"
    assert resolve_href("2018/1N/x.tiff", base) == f"{base}/2018/1N/x.tiff"
    assert resolve_href("./2018/1N/x.tiff", base + "/") == f"{base}/2018/1N/x.tiff"


# --------------------------------------------------------------------------------------------
# Orientation and grids


def test_bottom_up_and_top_down_files_give_the_same_windows(
    tree: Path, top_down_tree: Path, world: list[synth.SynthCity]
) -> None:
    with rasterio.open(next(top_down_tree.glob("*/*/*.tiff"))) as ds:
        assert ds.transform.e < 0
    up, down = AefCogSource.open(str(tree)), AefCogSource.open(str(top_down_tree))
    for c in world:
        w = c.window
        for window in (w, Window(w.row - 300, w.col - 7, 700, 333)):  # across file edges
            a, b = up.read(c.zone, window, 2024), down.read(c.zone, window, 2024)
            np.testing.assert_array_equal(a.codes, b.codes)
            np.testing.assert_array_equal(a.valid, b.valid)
            assert a.valid.any()


def test_global_grid_read_is_the_nearest_utm_pixel(
    tree: Path, world: list[synth.SynthCity], codes: dict[int, list[np.ndarray]]
) -> None:
    s = AefCogSource.open(str(tree))
    zone = mosaic_zone()
    for c in world:
        window = mosaic_window(c, margin=20)
        data = s.read(zone, window, 2023)
        ref_codes, ref_valid = sample_nearest(zone, window, utm_reader(world, codes[2023]), 64)
        np.testing.assert_array_equal(data.valid, ref_valid)
        np.testing.assert_array_equal(data.codes, ref_codes)
        assert data.valid.mean() > 0.5
        assert not data.valid.all()
        assert not data.codes[:, ~data.valid].any()
    avail = s.availability(zone, 2023)
    assert avail.block == (4096, 4096)
    for c in world:
        assert avail.intersects(mosaic_window(c))


def test_availability_uses_the_index_only(tree: Path, world: list[synth.SynthCity],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = pickle.loads(pickle.dumps(AefCogSource.open(str(tree))))

    def no_pixels(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("availability opened a COG")

    monkeypatch.setattr(rasterio, "open", no_pixels)
    for c in world:
        avail = s.availability(c.zone, 2024, c.window)
        assert avail.intersects(c.window)
        assert not avail.intersects(Window(c.window.row + 50_000, c.window.col, 64, 64))


def test_missing_year_and_zone(tree: Path, world: list[synth.SynthCity]) -> None:
    s = AefCogSource.open(str(tree))
    with pytest.raises(NoDataError, match="2019"):
        s.read(world[0].zone, world[0].window, 2019)
    empty = s.read(utm_zone(33), Window(0, 0, 8, 8), 2023)
    assert not empty.valid.any()
    assert not empty.codes.any()


# --------------------------------------------------------------------------------------------
# Bad input fails loudly, naming the file


def _single_file_tree(root: Path, data: np.ndarray, *, dtype: str = "int8") -> Path:
    """An index over one 256 px COG at a 10 m-aligned spot of utm32 (Zurich area)."""
    west, north = 460_000.0, 5_250_000.0
    rel = "2024/32N/xbadfile000000000-0000000000-0000000000.tiff"
    write_cog(root / rel, data, "EPSG:32632", west, north, dtype=dtype)
    size = data.shape[1] * 10.0
    write_index(root / "aef_index.parquet", [{"path": rel, "year": 2024, "crs": "EPSG:32632",
                                              "bounds": (west, north - size, west + size,
                                                         north)}])
    return root


def test_partial_nodata_in_a_pixel_is_damage(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(-127, 128, (64, 256, 256)).astype(np.int8)
    data[:, :10] = -128  # a whole no-data strip is fine …
    data[5, 100, 40] = -128  # … one band of one pixel is not
    s = AefCogSource.open(str(_single_file_tree(tmp_path, data)))
    f = s.files[0]
    zone = utm_zone(32)
    win = f.window_in(zone)
    top = s.read(zone, Window(win.row, win.col, 50, 256), 2024)
    assert not top.valid[:10].any()
    assert top.valid[10:].all()
    assert not top.codes[:, :10].any()
    with pytest.raises(SourceError, match=r"xbadfile.*some bands but not all.*row "
                                          rf"{win.row + 100}, col {win.col + 40}"):
        s.read(zone, win, 2024)


@pytest.mark.parametrize(("bands", "dtype"), [(32, "int8"), (64, "uint8")])
def test_wrong_embedding_dimension_or_dtype_is_refused(tmp_path: Path, bands: int,
                                                      dtype: str) -> None:
    root = _single_file_tree(tmp_path, np.zeros((bands, 256, 256), dtype=dtype), dtype=dtype)
    with pytest.raises(SourceError, match=r"xbadfile.*64 int8 bands"):
        AefCogSource.open(str(root))


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "deleted"])
def test_damaged_cog_names_the_file(tree: Path, tmp_path: Path, world: list[synth.SynthCity],
                                    damage: str) -> None:
    copy = tmp_path / "damaged"
    shutil.copytree(tree, copy)
    s = AefCogSource.open(str(copy))
    c = world[2]  # Nairobi: not the file open() checks first
    f = next(f for f in s.files if f.year == 2024 and f.number == 37
             and f.window_in(c.zone).intersection(c.window) is not None)
    path = Path(f.href)
    blob = path.read_bytes()
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"")
    fresh = pickle.loads(pickle.dumps(s))
    with pytest.raises(SourceError, match=re.escape(path.name)):
        fresh.read(c.zone, c.window, 2024)


def test_index_without_required_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"path": ["a.tiff"], "year": [2024]}), tmp_path / "aef_index.parquet")
    with pytest.raises(SourceError, match="lacks columns"):
        AefCogSource.open(str(tmp_path))


def test_stac_items_of_the_written_index_feed_from_assets(
    tree: Path, world: list[synth.SynthCity]
) -> None:
    """The STAC discovery path: items of the written stac-geoparquet (read by rustac, the
    reference implementation) become StacAssets (lon/lat bbox, no UTM bounds), then a source
    that reads like the index's. (``stac.search_geoparquet`` needs DuckDB's spatial extension,
    downloaded at run time, so the bbox filter is done here.)"""
    stac = pytest.importorskip("lczscale.io.sources.stac_search")
    rustac = pytest.importorskip("rustac")
    index = tree / "aef_index_stac_geoparquet.parquet"
    c = world[2]
    lon0, lat0, lon1, lat1 = c.bbox_lonlat
    items = [it for it in rustac.read_sync(str(index))["features"]
             if it["properties"]["datetime"].startswith("2024")
             and it["bbox"][0] < lon1 and it["bbox"][2] > lon0
             and it["bbox"][1] < lat1 and it["bbox"][3] > lat0]
    assets = stac.assets_of(items, str(index))
    assert assets
    assert all(a.year == 2024 and a.href.startswith(str(tree)) for a in assets)
    s = AefCogSource.from_assets(str(index), assets)
    assert {f.zone_label for f in s.files} == {"37S"}
    a, b = s.read(c.zone, c.window, 2024), AefCogSource.open(str(tree)).read(c.zone, c.window,
                                                                             2024)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.valid, b.valid)


def test_gcs_cogs_without_credentials_say_what_to_do(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A gs:// COG (the Google index's paths) is read through GDAL's /vsigs/; without
    credentials GDAL refuses before any request, and the error names what to set."""
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GS_ACCESS_KEY_ID", "GS_SECRET_ACCESS_KEY",
                "GS_OAUTH2_REFRESH_TOKEN", "GS_NO_SIGN_REQUEST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CPL_GS_CREDENTIALS_FILE", str(tmp_path / "no.boto"))  # not ~/.boto
    monkeypatch.setenv("CPL_MACHINE_IS_GCE", "NO")
    href = "gs://alphaearth_foundations/satellite_embedding/v1/annual/2024/32N/x.tiff"
    write_index(tmp_path / "aef_index.parquet", [{
        "path": href, "year": 2024, "crs": "EPSG:32632",
        "bounds": (460_000.0, 5_247_440.0, 462_560.0, 5_250_000.0)}])
    with pytest.raises(SourceError, match=r"gs://alphaearth_foundations/.*x\.tiff was refused "
                       r".*GOOGLE_APPLICATION_CREDENTIALS.*LCZSCALE_GCS_BILLING_PROJECT") as err:
        AefCogSource.open(str(tmp_path))
    assert "\n" not in str(err.value)


def test_other_parquet_files_are_not_claimed(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tile": ["a"], "year": [2024]}), tmp_path / "manifest.parquet")
    assert AefCogSource.detect(str(tmp_path / "manifest.parquet")) is None
    assert AefCogSource.detect(str(tmp_path)) is None
