"""TESSERA NPY tiles pass the source conformance suite, give bit for bit the windows of the
Zarr store of the same world (north and south, across tile seams), and refuse bad input —
incomplete triples, damaged scales, wrong shapes, landmasks that disagree, mixed datasets —
with an error naming the file."""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from lczscale.core.grid import Window, Zone, utm_zone
from lczscale.errors import SourceError
from lczscale.io.sources.registry import detect_layout, open_source
from lczscale.io.sources.tessera_tiles import TesseraTilesSource, tile_footprint
from lczscale.synth import world as synth
from tests.conformance import SourceCase, SourceConformance
from tests.servers import S3_SECRET, environment, s3_server
from tests.sources.reference import tessera_reference

YEARS = (2023, 2024)
SEED, CITIES, SIZE_KM = 3, 3, 2.5  # Zurich (one tile), Basel (two, east-west), Nairobi (two,
# north-south, EPSG:32737)
EMB = "global_0.1_degree_representation"
MASKS = "global_0.1_degree_tiff_all"
ZURICH = "grid_8.55_47.35"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tessera-tiles")
    synth.write_world(out, cities=CITIES, size_km=SIZE_KM, seed=SEED, years=YEARS,
                      shard_size=256, truth_cube=False, layouts=("tessera-zarr", "tessera-tiles"))
    return out


@functools.cache
def reference(year: int, city: int) -> tuple[Zone, Window, np.ndarray]:
    return tessera_reference(SEED, CITIES, SIZE_KM, year, city)


class TestTesseraTiles(SourceConformance):
    @pytest.fixture(params=[(2023, 0), (2024, 2)], ids=["zurich-2023", "nairobi-2024"])
    def case(self, world: Path, request: pytest.FixtureRequest) -> SourceCase:
        year, city = request.param
        zone, window, expected = reference(year, city)
        return SourceCase(open_source(str(world / "tiles"), kind="tessera-tiles"), zone, year,
                          window, expected, 128, "per_pixel_scale")


def city_windows(world: Path, pad: int = 40) -> list[tuple[str, Zone, Window]]:
    doc = json.loads((world / "world.json").read_text())
    return [(c["name"], utm_zone(int(c["zone"][3:])),
             Window(c["window"][0] - pad, c["window"][1] - pad, c["window"][2] + 2 * pad,
                    c["window"][3] + 2 * pad)) for c in doc["cities"]]


def test_detected_and_described(world: Path) -> None:
    layout, found = detect_layout(str(world / "tiles"))
    assert layout == "tessera-tiles"
    assert "tessera/1.0/synthetic" in found
    assert "2023, 2024" in found
    assert "10 tiles" in found


def test_same_windows_as_the_zarr_store(world: Path) -> None:
    tiles = TesseraTilesSource.open(str(world / "tiles"))
    store = open_source(str(world / "embeddings.zarr"), kind="tessera-zarr")
    assert tiles.dataset == store.dataset == "tessera/1.0/synthetic"
    assert tiles.zone_names() == store.zone_names() == ["utm32", "utm37"]
    assert tiles.years == store.years == list(YEARS)
    for name, zone, window in city_windows(world):
        for year in YEARS:
            a, b = tiles.read(zone, window, year), store.read(zone, window, year)
            for field in ("codes", "scales", "valid", "water"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field),
                                              err_msg=f"{name} {year} {field}")
            assert a.valid.any()
            assert a.water.any()
            assert (~a.valid & ~a.water).any()


def test_files_are_in_the_geotessera_formats(world: Path) -> None:
    root = world / "tiles"
    manifest = pq.read_table(root / "manifest.parquet")
    assert manifest.column_names == ["version", "variant", "lon", "lat", "year", "grid_size",
                                     "scales_size", "grid_path", "scales_path", "grid_mtime",
                                     "scales_mtime"]
    assert manifest.num_rows == 10
    assert set(manifest.column("variant").to_pylist()) == {
        "synthetic"}
    meta = json.loads((root / "tessera_metadata.json").read_text())
    assert meta["dataset_version"] == "1.0"
    assert meta["dataset_version_path"] == "v1"
    assert meta["format"] == "npy"
    assert meta["tile_count"] == 10
    for key in ("dataset_variant", "dataset_path", "embeddings_subdir", "s3_embeddings_subdir",
                "source_url_prefix", "generated_at"):
        assert meta[key]
    name = "grid_36.85_-1.25"  # Nairobi, south of the equator: true northings, EPSG:32737
    with rasterio.open(root / MASKS / f"{name}.tiff") as src:
        assert src.crs.to_epsg() == 32737
        assert src.dtypes == ("uint8",)
        assert src.transform == tile_footprint(3685, -125)[1]
        assert 9_800_000 < src.transform.f < 10_000_000
        assert src.transform.f % 10 == 0
        shape = src.shape
    codes = np.load(root / EMB / "2024" / name / f"{name}.npy", mmap_mode="r")
    scales = np.load(root / EMB / "2024" / name / f"{name}_scales.npy", mmap_mode="r")
    assert codes.dtype == np.int8
    assert codes.shape == (*shape, 128)
    assert scales.dtype == np.float32
    assert scales.shape == shape


def test_planning_opens_no_file(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = TesseraTilesSource.open(str(world / "tiles"))
    for method in ("_rows", "_header", "_load_landmask"):
        monkeypatch.setattr(TesseraTilesSource, method, _refuse)
    for name, zone, window in city_windows(world, pad=0):
        avail = source.availability(zone, 2024, window)
        covered = np.zeros((window.height, window.width), dtype=bool)
        for block in avail.windows():
            if (inner := block.intersection(window)) is not None:
                covered[inner.relative_to(window)] = True
        assert covered.all(), name


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("planning must not open a tile")


# --------------------------------------------------------------------------------------------
# Damaged copies: hard links, and every edited file is replaced (never written in place).


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def edit_npy(path: Path, edit: Callable[[np.ndarray], np.ndarray | None],
             shape: tuple[int, ...] | None = None) -> None:
    """Replace a .npy by an edited copy, sparse like the original (only rows with data)."""
    old = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.name + ".tmp")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype, shape=shape or old.shape)
    rows = np.flatnonzero(np.asarray(old).reshape(old.shape[0], -1).any(axis=1))
    if len(rows) and shape is None:
        new[rows[0]:rows[-1] + 1] = old[rows[0]:rows[-1] + 1]
    out = edit(new)
    if out is not None:
        new[...] = out
    new.flush()
    del new, old
    tmp.replace(path)


def rewrite_landmask(path: Path, crs: str | None = None, shift: float = 0.0) -> None:
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read(1)
    if crs:
        profile["crs"] = crs
    profile["transform"] = Affine.translation(shift, 0) @ profile["transform"]
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def npy(root: Path, name: str, year: int = 2024, scales: bool = False) -> Path:
    return root / EMB / str(year) / name / f"{name}{'_scales' if scales else ''}.npy"


def basel(world: Path) -> tuple[Zone, Window]:
    _, zone, window = city_windows(world)[1]
    return zone, window


def test_overlap_goes_to_the_tile_whose_box_holds_the_pixel(world: Path, tmp_path: Path
                                                            ) -> None:
    """Basel spans tiles 7.55 and 7.65, whose UTM rectangles overlap by 21 columns."""
    zone, window = basel(world)
    truth = open_source(str(world / "embeddings.zarr"), kind="tessera-zarr").read(
        zone, window, 2024)
    lon, _ = zone.lonlat(window)
    east = lon >= 7.6
    negated = copy_tree(world / "tiles", tmp_path / "negated")
    edit_npy(npy(negated, "grid_7.65_47.55"), lambda a: np.negative(a, out=a))
    got = TesseraTilesSource.open(str(negated)).read(zone, window, 2024)
    np.testing.assert_array_equal(got.valid, truth.valid)
    np.testing.assert_array_equal(got.codes, np.where(east, -truth.codes, truth.codes))
    # Where the owner has no data, the neighbour that covers the pixel supplies it.
    blank = copy_tree(world / "tiles", tmp_path / "blank")
    edit_npy(npy(blank, "grid_7.65_47.55"), lambda a: np.zeros_like(a))
    edit_npy(npy(blank, "grid_7.65_47.55", scales=True), lambda a: np.zeros_like(a))
    got = TesseraTilesSource.open(str(blank)).read(zone, window, 2024)
    with rasterio.open(blank / MASKS / "grid_7.55_47.55.tiff") as src:
        west_edge = src.bounds.right
    x = zone.affine.c + zone.affine.a * (np.arange(window.col, window.col_stop) + 0.5)
    from_west = truth.valid & (~east | (x < west_edge)[None, :])
    np.testing.assert_array_equal(got.valid, from_west)
    assert (east & truth.valid & ~from_west).any()
    assert (east & from_west).any()
    np.testing.assert_array_equal(got.codes[:, from_west], truth.codes[:, from_west])


def test_landmask_in_another_zone_is_refused(world: Path, tmp_path: Path) -> None:
    root = copy_tree(world / "tiles", tmp_path / "tiles")
    rewrite_landmask(root / MASKS / "grid_7.65_47.55.tiff", crs="EPSG:32633")
    source = TesseraTilesSource.open(str(root))  # the other tiles of utm32 are fine
    with pytest.raises(SourceError, match=r"CRS mismatch between tiles of utm32.*"
                                          r"grid_7\.65_47\.55\.tiff.*EPSG:32633"):
        source.read(*basel(world), 2024)
    _, zone, zurich = city_windows(world)[0]
    assert source.read(zone, zurich, 2024).valid.any()


def test_landmask_far_from_its_box_is_refused(world: Path, tmp_path: Path) -> None:
    root = copy_tree(world / "tiles", tmp_path / "tiles")
    rewrite_landmask(root / MASKS / "grid_7.65_47.55.tiff", shift=5000.0)
    with pytest.raises(SourceError, match=r"transform mismatch between tiles of utm32.*"
                                          r"grid_7\.65_47\.55\.tiff"):
        TesseraTilesSource.open(str(root)).read(*basel(world), 2024)


def test_landmask_off_the_lattice_is_mapped_nearest(world: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = copy_tree(world / "tiles", tmp_path / "tiles")
    rewrite_landmask(root / MASKS / "grid_7.65_47.55.tiff", shift=3.0)  # 0.3 px east
    zone, window = basel(world)
    with caplog.at_level(logging.WARNING):
        got = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    assert "grid_7.65_47.55 is not on utm32's 10 m lattice" in caplog.text
    want = TesseraTilesSource.open(str(world / "tiles")).read(zone, window, 2024)
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_array_equal(got.valid, want.valid)


# --------------------------------------------------------------------------------------------
# One small tile (Zurich, 0.5 km, two years) for the damaged-input tests


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Zone, Window]:
    out = tmp_path_factory.mktemp("tessera-tiles-small")
    summary = synth.write_world(out, cities=1, size_km=0.5, seed=1, years=YEARS,
                                truth_cube=False, layouts=("tessera-tiles",))
    c = summary["cities"][0]
    assert summary["layouts"]["tessera-tiles"]["tiles"] == [ZURICH]
    return out / "tiles", utm_zone(int(c["zone"][3:])), Window(*c["window"])


@pytest.fixture
def damaged(small: tuple[Path, Zone, Window], tmp_path: Path) -> tuple[Path, Zone, Window]:
    root, zone, window = small
    return copy_tree(root, tmp_path / "tiles"), zone, window


def read_2024(root: Path, zone: Zone, window: Window) -> None:
    TesseraTilesSource.open(str(root)).read(zone, window, 2024)


def test_npy_without_scales(damaged: tuple[Path, Zone, Window],
                            caplog: pytest.LogCaptureFixture) -> None:
    root, zone, window = damaged
    missing = npy(root, ZURICH, scales=True)
    missing.unlink()
    with caplog.at_level(logging.WARNING):
        source = TesseraTilesSource.open(str(root))
    assert str(missing) in caplog.text
    assert "#406" in caplog.text
    assert source.years == [2023]
    assert not source.availability(zone, 2024).blocks
    assert source.read(zone, window, 2023).valid.any()
    with pytest.raises(SourceError, match=rf"incomplete \(missing {missing}\)"):
        source.read(zone, window, 2024)
    gone = npy(root, ZURICH, 2023, scales=True)  # deleted after indexing
    gone.unlink()
    with pytest.raises(SourceError, match=rf"{gone} is missing"):
        source.read(zone, window, 2023)


def test_npy_without_landmask(damaged: tuple[Path, Zone, Window]) -> None:
    root, zone, window = damaged
    (root / MASKS / f"{ZURICH}.tiff").unlink()
    with pytest.raises(SourceError, match=rf"no complete TESSERA tile.*{ZURICH}\.tiff"):
        read_2024(root, zone, window)


def test_absurd_scales(damaged: tuple[Path, Zone, Window]) -> None:
    root, zone, window = damaged
    edit_npy(npy(root, ZURICH, scales=True), lambda s: s * np.float32(1e4))
    with pytest.raises(SourceError, match=rf"\|value\| > 1000.*{ZURICH}_scales\.npy|"
                                          rf"{ZURICH}_scales\.npy.*\|value\| > 1000"):
        read_2024(root, zone, window)


@pytest.mark.parametrize("sentinel", [np.nan, np.inf])
def test_sentinel_scales_over_codes(damaged: tuple[Path, Zone, Window], sentinel: float
                                    ) -> None:
    root, zone, window = damaged

    def poison(s: np.ndarray) -> None:
        r, c = np.argwhere(s > 0)[7]
        s[r, c:c + 3] = sentinel

    edit_npy(npy(root, ZURICH, scales=True), poison)
    with pytest.raises(SourceError, match=r"corrupt TESSERA tile grid_8\.55_47\.35 year 2024 .*"
                                          r"3 pixels have a non-finite scale \(NaN or \+inf"):
        read_2024(root, zone, window)


def test_wrong_embedding_dimension(damaged: tuple[Path, Zone, Window]) -> None:
    root, zone, window = damaged
    path = npy(root, ZURICH)
    shape = np.load(path, mmap_mode="r").shape
    edit_npy(path, lambda a: None, shape=(*shape[:2], 64))
    with pytest.raises(SourceError, match=rf"{ZURICH}\.npy is int8 \({shape[0]}, {shape[1]}, "
                                          rf"64\).*int8 \({shape[0]}, {shape[1]}, 128\)"):
        read_2024(root, zone, window)


@pytest.mark.parametrize("keep", [0, 100, 10_000_000])
def test_truncated_npy(damaged: tuple[Path, Zone, Window], keep: int) -> None:
    root, zone, window = damaged
    path = npy(root, ZURICH)
    with open(path, "rb") as f:
        head = f.read(keep)
    path.unlink()
    path.write_bytes(head)
    what = "is truncated" if keep > 1000 else "is not a valid .npy file"
    with pytest.raises(SourceError, match=rf"{ZURICH}\.npy {what}"):
        read_2024(root, zone, window)


def test_mixed_dataset_versions(damaged: tuple[Path, Zone, Window]) -> None:
    root, _, _ = damaged
    table = pq.read_table(root / "manifest.parquet")
    variants = table.column("variant").to_pylist()
    variants[-1] = "cambridge"
    table = table.set_column(1, "variant", [variants])
    (root / "manifest.parquet").unlink()
    pq.write_table(table, root / "manifest.parquet")
    with pytest.raises(SourceError, match=r"mixes TESSERA dataset versions.*1\.0/cambridge"):
        TesseraTilesSource.open(str(root))


def test_metadata_and_manifest_of_different_datasets(damaged: tuple[Path, Zone, Window]
                                                     ) -> None:
    root, _, _ = damaged
    meta = root / "tessera_metadata.json"
    doc = json.loads(meta.read_text())
    meta.unlink()
    meta.write_text(json.dumps({**doc, "dataset_version": "1.1", "dataset_variant": "cambridge"}))
    with pytest.raises(SourceError, match=r"tessera_metadata\.json: 1\.1/cambridge.*"
                                          r"manifest\.parquet: 1\.0/synthetic"):
        TesseraTilesSource.open(str(root))


def three_d(scales: np.ndarray, factors: np.ndarray) -> Callable[[np.ndarray], None]:
    rows = np.flatnonzero(scales.any(axis=1))

    def fill(new: np.ndarray) -> None:
        sl = slice(rows[0], rows[-1] + 1)
        new[sl] = scales[sl, :, None] * factors
    return fill


def test_3d_scales_equal_across_bands_collapse_exactly(damaged: tuple[Path, Zone, Window]
                                                       ) -> None:
    root, zone, window = damaged
    want = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    path = npy(root, ZURICH, scales=True)
    s = np.load(path)
    edit_npy(path, three_d(s, np.ones(128, np.float32)), shape=(*s.shape, 128))
    got = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    for field in ("codes", "scales", "valid", "water"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_3d_scales_that_vary_are_requantised(damaged: tuple[Path, Zone, Window]) -> None:
    root, zone, window = damaged
    want = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    path = npy(root, ZURICH, scales=True)
    s = np.load(path)
    factors = np.linspace(0.5, 1.5, 128, dtype=np.float32)
    edit_npy(path, three_d(s, factors), shape=(*s.shape, 128))
    got = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    np.testing.assert_array_equal(got.valid, want.valid)
    assert got.scales is not None
    assert want.scales is not None
    exact = want.codes.astype(np.float32) * (want.scales[None] * factors[:, None, None])
    error = np.abs(got.codes.astype(np.float32) * got.scales[None] - exact)
    assert (error <= got.scales[None] * 0.5 * (1 + 1e-5) + 1e-6).all()
    assert (error[:, got.valid] > 0).any()


def test_mirror_layout(small: tuple[Path, Zone, Window], tmp_path: Path) -> None:
    """The public tree: npy/{dataset_dir}/{year}/… with its manifest, landmasks/{version}/."""
    root, zone, window = small
    base = tmp_path / "tessera"
    shutil.copytree(root / EMB, base / "npy" / "v1-synthetic", copy_function=os.link)
    os.link(root / "manifest.parquet", base / "npy" / "v1-synthetic" / "manifest.parquet")
    shutil.copytree(root / MASKS, base / "landmasks" / "v1", copy_function=os.link)
    want = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    for url in (base / "npy" / "v1-synthetic", base):
        layout, found = detect_layout(str(url))
        assert layout == "tessera-tiles"
        assert "npy/v1-synthetic" in found
        source = TesseraTilesSource.open(str(url))
        assert source.dataset == "tessera/1.0/synthetic"
        got = source.read(zone, window, 2024)
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.valid, want.valid)


# --------------------------------------------------------------------------------------------
# Object stores: a tile cut down to the city and the tile centre (its landmask transform moved
# with it), served by moto's S3 server, read over s3:// (listing) and plain HTTP (manifest).


def crop_tree(src: Path, dst: Path, zone: Zone, window: Window) -> Path:
    """A copy of a one-tile tree cut to the city window plus the tile centre."""
    mask = src / MASKS / f"{ZURICH}.tiff"
    with rasterio.open(mask) as f:
        profile, land, t = f.profile, f.read(1), f.transform
    row0, col0 = zone.pixel_offset(t)
    x, y = Transformer.from_crs("EPSG:4326", zone.crs, always_xy=True).transform(8.55, 47.35)
    c_col, c_row = ~t @ (x, y)
    r0 = int(min(window.row - row0, c_row)) - 8
    r1 = int(max(window.row_stop - row0, c_row)) + 8
    k0 = int(min(window.col - col0, c_col)) - 8
    k1 = int(max(window.col_stop - col0, c_col)) + 8
    for rel in ("tessera_metadata.json", "manifest.parquet"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)
    for year in YEARS:
        for scales in (False, True):
            out = npy(dst, ZURICH, year, scales)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, np.load(npy(src, ZURICH, year, scales), mmap_mode="r")[r0:r1, k0:k1])
    profile.update(width=k1 - k0, height=r1 - r0,
                   transform=t @ Affine.translation(k0, r0), blockxsize=64, blockysize=64)
    (dst / MASKS).mkdir(parents=True)
    with rasterio.open(dst / MASKS / f"{ZURICH}.tiff", "w", **profile) as out_mask:
        out_mask.write(land[r0:r1, k0:k1], 1)
    return dst


@pytest.mark.integration
def test_s3_and_http(small: tuple[Path, Zone, Window], tmp_path: Path) -> None:
    root, zone, window = small
    cropped = crop_tree(root, tmp_path / "cropped", zone, window)
    want = TesseraTilesSource.open(str(root)).read(zone, window, 2024)
    got = TesseraTilesSource.open(str(cropped)).read(zone, window, 2024)  # landmask decides
    np.testing.assert_array_equal(got.codes, want.codes)
    with s3_server(tmp_path) as s3, environment(s3.env):
        s3.create_bucket("public", public_read=True)
        urls = {"listing": s3.upload(cropped, "public", "tiles"),
                "manifest": s3.http_url("public", "tiles")}
        for indexed_by, url in urls.items():
            source = open_source(url)
            assert source.layout == "tessera-tiles"
            assert source.describe()["indexed_by"] == indexed_by
            clone = pickle.loads(pickle.dumps(source))
            assert S3_SECRET.encode() not in pickle.dumps(source)
            for s in (source, clone):
                data = s.read(zone, window, 2024)
                for field in ("codes", "scales", "valid", "water"):
                    np.testing.assert_array_equal(getattr(data, field), getattr(want, field))
