"""The synthetic world: deterministic, in the real formats, and honest about what needs context."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr

from lczscale.core.grid import Window
from lczscale.errors import ConfigError
from lczscale.products.counts import gaussian_mode_filter
from lczscale.synth import world as synth

SIZE_KM = 3.0
SHARD = 32  # one inner chunk per shard, so empty-chunk rules are visible at this small size
YEARS = (2023, 2024)
HAS_CUBE = importlib.util.find_spec("lczscale.io.cube.store") is not None


@pytest.fixture(scope="module")
def world3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list]:
    """Zurich, Basel (same zone) and Nairobi (south) on disk, and the same world in memory."""
    out = tmp_path_factory.mktemp("world3")
    summary = synth.write_world(
        out, cities=3, size_km=SIZE_KM, seed=0, years=YEARS, shard_size=SHARD,
        truth_cube=HAS_CUBE,
    )
    return out, summary, synth.make_world(cities=3, size_km=SIZE_KM, seed=0, years=YEARS)


def _attrs(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    return dict(node.attrs)


def _array(g: zarr.Group, name: str) -> zarr.Array:
    arr = g[name]
    assert isinstance(arr, zarr.Array)
    return arr


def _group(root: zarr.Group, name: str) -> zarr.Group:
    g = root[name]
    assert isinstance(g, zarr.Group)
    return g


def _group_window(g: zarr.Group) -> Window:
    """The zone group's grid as a window of the canonical zone (row, col from its transform)."""
    t = _attrs(g)["spatial:transform"]
    h, w = _attrs(g)["spatial:shape"]
    return Window(round((9_340_000.0 - t[5]) / 10), round((t[2] - 160_000.0) / 10), h, w)


# --------------------------------------------------------------------------------------------


def test_deterministic_and_seed_dependent() -> None:
    a = synth.make_world(cities=1, size_km=1.0, seed=3, years=(2024,))[0]
    b = synth.make_world(cities=1, size_km=1.0, seed=3, years=(2024,))[0]
    c = synth.make_world(cities=1, size_km=1.0, seed=4, years=(2024,))[0]
    assert np.array_equal(a.truth, b.truth)
    assert np.array_equal(a.material, b.material)
    assert np.array_equal(a.embeddings[2024], b.embeddings[2024])
    assert not np.array_equal(a.truth, c.truth)
    assert not np.allclose(a.embeddings[2024], c.embeddings[2024])


def test_city_does_not_depend_on_its_companions() -> None:
    one = synth.make_world(cities=1, size_km=1.0, years=(2024,))[0]
    two = synth.make_world(cities=2, size_km=1.0, years=(2024,))[0]
    assert np.array_equal(one.embeddings[2024], two.embeddings[2024])


def test_sites_and_windows() -> None:
    names = [s.name for s in synth.SITES]
    # appended only: a city's random streams are keyed by its index in SITES
    assert names[:7] == ["zurich", "basel", "nairobi", "london", "paris", "bogota", "sydney"]
    assert len(names) == 12
    zones = {}
    for city in synth.SITES:
        zone, win = synth.city_window(city, 200)
        zones[city.name] = zone.name
        assert (win.height, win.width) == (200, 200)
        # the window is centred on the city, to within one pixel
        lon, lat = zone.lonlat(Window(win.row + 100, win.col + 100, 1, 1))
        assert abs(lon[0, 0] - city.lon) < 2e-4
        assert abs(lat[0, 0] - city.lat) < 2e-4
    assert zones["zurich"] == zones["basel"] == "utm32"
    assert zones["nairobi"] == "utm37"
    assert zones["london"] == "utm30"
    # --cities 12: eleven zones (Zurich and Basel share one), north and south of the equator
    assert len(set(zones.values())) == 11
    assert {c.lat > 0 for c in synth.SITES} == {True, False}
    assert sum(c.lat < 0 for c in synth.SITES) >= 3


def test_twelve_cities() -> None:
    world = synth.make_world(cities=12, size_km=0.32, years=(2024,))
    assert [c.city.name for c in world] == [s.name for s in synth.SITES]
    assert [c.site for c in world] == list(range(12))
    assert len({c.zone.name for c in world}) == 11
    with pytest.raises(ConfigError, match=r"1\.\.12"):
        synth.make_world(cities=13, size_km=0.32)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cities"):
        synth.make_world(cities=99)
    with pytest.raises(ConfigError, match="multiple of 32"):
        synth.write_world(tmp_path, cities=1, size_km=0.5, shard_size=48, truth_cube=False)


def test_existing_output_is_not_overwritten_silently(tmp_path: Path) -> None:
    synth.write_world(tmp_path, cities=1, size_km=0.5, years=(2024,), truth_cube=False)
    with pytest.raises(ConfigError, match="overwrite"):
        synth.write_world(tmp_path, cities=1, size_km=0.5, years=(2024,), truth_cube=False)
    synth.write_world(tmp_path, cities=1, size_km=0.5, years=(2024,), truth_cube=False,
                      overwrite=True)


# --------------------------------------------------------------------------------------------
# TESSERA Zarr store


def test_store_follows_the_geoemb_convention(world3: tuple) -> None:
    out = world3[0]
    root = zarr.open_group(str(out / "embeddings.zarr"), mode="r", zarr_format=3)
    a = _attrs(root)
    assert [c["name"] for c in a["zarr_conventions"]] == ["geoemb:", "spatial:", "proj:"]
    assert a["zarr_conventions"][0]["uuid"] == "61c12cc5-0e28-4056-999a-480cf3fb7e4c"
    assert all({"uuid", "schema_url", "spec_url", "name", "description"} <= set(c)
               for c in a["zarr_conventions"])
    assert a["geoemb:type"] == "pixel"
    assert a["geoemb:dimensions"] == 128
    assert a["geoemb:model"] == "https://geotessera.org/model/1.0"
    assert len(a["geoemb:source_data"]) == 2
    assert a["geoemb:data_type"] == "int8"
    assert a["geoemb:gsd"] == 10.0
    assert a["geoemb:spatial_layout"] == "utm_zones"
    assert a["geoemb:build_version"] == "lczscale-synth-0.1"
    assert a["geoemb:quantization"] == {
        "method": "per_pixel_scale", "original_dtype": "float32", "quantized_dtype": "int8",
        "scale": {"type": "array", "array_name": "scales", "nodata": "+inf"},
    }
    assert a["lczscale:synthetic"] is True
    assert a["tessera:dataset_version"] == "1.0"
    assert a["tessera:dataset_variant"] == "synthetic"
    assert sorted(root.group_keys()) == ["utm32", "utm37"]

    for name, g in root.groups():
        ga = _attrs(g)
        assert ga["proj:code"] == f"EPSG:326{name[3:]}"
        assert ga["spatial:dimensions"] == ["y", "x"]
        assert ga["spatial:registration"] == "pixel"
        h, w = ga["spatial:shape"]
        t = ga["spatial:transform"]
        assert t[0] == 10
        assert t[4] == -10
        assert t[1] == t[3] == 0
        assert ga["spatial:bbox"] == [t[2], t[5] - 10 * h, t[2] + 10 * w, t[5]]
        assert (t[2] - 160_000) % 10 == 0
        assert (t[5] - 9_340_000) % 10 == 0
        emb, sc = _array(g, "embeddings"), _array(g, "scales")
        assert emb.dtype == np.int8
        assert emb.shape == (2, 128, h, w)
        assert emb.fill_value == 0
        assert emb.chunks == (1, 128, 32, 32)
        assert emb.shards == (1, 128, SHARD, SHARD)
        assert emb.metadata.dimension_names == ("time", "band", "y", "x")  # type: ignore[union-attr]
        assert sc.dtype == np.float32
        assert sc.shape == (2, h, w)
        assert np.isposinf(sc.fill_value)
        assert sc.shards == (1, SHARD, SHARD)
        assert sc.metadata.dimension_names == ("time", "y", "x")  # type: ignore[union-attr]
        coords = {k: np.asarray(_array(g, k)[:]) for k in ("time", "band", "x", "y")}
        assert coords["time"].dtype == np.int32
        assert list(coords["time"]) == list(YEARS)
        assert coords["band"].dtype == np.int32
        assert list(coords["band"]) == list(range(128))
        assert coords["x"].dtype == np.float64
        assert coords["x"].shape == (w,)
        assert coords["x"][0] == t[2] + 5
        assert np.all(np.diff(coords["x"]) == 10)
        assert coords["y"][0] == t[5] - 5
        assert np.all(np.diff(coords["y"]) == -10)
        for k in coords:
            assert _array(g, k).metadata.dimension_names == (k,)  # type: ignore[union-attr]
    # the southern city: EPSG:32637 with negative northings, as TESSERA writes it
    assert np.all(np.asarray(_array(_group(root, "utm37"), "y")[:]) < 0)


def test_store_holds_quantised_embeddings_and_sentinels(world3: tuple) -> None:
    out, _, world = world3
    root = zarr.open_group(str(out / "embeddings.zarr"), mode="r", zarr_format=3)
    for i, c in enumerate(world):
        g = _group(root, c.zone.name)
        rs, cs = c.window.relative_to(_group_window(g))
        assert c.nodata.any() == (i == 0)  # the no-data strip is in the first city only
        if i == 0:
            assert 0.02 < c.nodata.mean() < 0.04
        assert c.water.any()
        for t, year in enumerate(YEARS):
            codes = np.asarray(_array(g, "embeddings")[t, :, rs, cs])
            scales = np.asarray(_array(g, "scales")[t, rs, cs])
            assert np.isnan(scales[c.water]).all()
            assert np.isposinf(scales[c.nodata]).all()
            assert np.isfinite(scales[c.valid]).all()
            assert (scales[c.valid] > 0).all()
            assert not codes[:, ~c.valid].any()
            emb = c.embeddings[year][:, c.valid]
            deq = codes[:, c.valid].astype(np.float32) * scales[c.valid]
            assert np.all(np.abs(deq - emb) <= scales[c.valid] / 2 * (1 + 1e-5) + 1e-6)
            assert np.abs(emb).max() == pytest.approx(127 * scales[c.valid].max(), rel=1e-5)
            assert emb.min() > -20
            assert emb.max() < 50


def test_quantise_round_trip() -> None:
    v = np.random.default_rng(0).normal(5, 10, (128, 7, 9)).astype(np.float32)
    codes, scale = synth.quantise(v)
    assert codes.dtype == np.int8
    assert scale.dtype == np.float32
    assert np.abs(codes).max() == 127
    assert np.all(np.abs(codes * scale - v) <= scale / 2 * (1 + 1e-5))


def test_water_and_unwritten_chunks_are_not_stored(world3: tuple) -> None:
    out, _, world = world3
    root = zarr.open_group(str(out / "embeddings.zarr"), mode="r", zarr_format=3)
    water_only = 0
    for name, g in root.groups():
        gw = _group_window(g)
        has_land = np.zeros(gw.height * gw.width, dtype=bool).reshape(gw.height, gw.width)
        for c in world:
            if c.zone.name == name:
                has_land[c.window.relative_to(gw)] = ~c.water
        for t in range(len(YEARS)):
            for arr in ("embeddings", "scales"):
                base = out / "embeddings.zarr" / name / arr / "c" / str(t)
                stored = {
                    tuple(int(v) for v in p.relative_to(base).parts[-2:])
                    for p in base.rglob("*") if p.is_file()
                }
                expected = {
                    (r, q)
                    for r in range(-(-gw.height // SHARD))
                    for q in range(-(-gw.width // SHARD))
                    if has_land[r * SHARD : (r + 1) * SHARD, q * SHARD : (q + 1) * SHARD].any()
                }
                if arr == "embeddings":  # what planning lists: never an all-water chunk
                    assert stored == expected, (name, arr)
                else:  # +inf-filled scales store water-only chunks (NaN ≠ fill) as TESSERA does
                    # (planning counts scales only in blocks whose embeddings shard is lost)
                    assert stored >= expected, (name, arr)
        for c in world:
            if c.zone.name == name:
                rs, cs = c.window.relative_to(gw)
                r0, r1 = -(-rs.start // SHARD), rs.stop // SHARD
                c0, c1 = -(-cs.start // SHARD), cs.stop // SHARD
                for r in range(r0, r1):
                    for q in range(c0, c1):
                        block = has_land[r * SHARD : (r + 1) * SHARD, q * SHARD : (q + 1) * SHARD]
                        water_only += int(not block.any())
    assert water_only > 0  # the lakes really do fill whole chunks


# --------------------------------------------------------------------------------------------
# Coarse labels in the global LCZ map's format


def _check_lcz_geotiff(path: Path | str) -> None:
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 4326
        assert ds.count == 1
        assert ds.dtypes[0] == "uint8"
        assert ds.res == pytest.approx((0.000898315284120, 0.000898315284120), rel=1e-12)
        # the origin sits on the global map's lattice from (-180, 90)
        col = (ds.transform.c + 180) / 0.000898315284120
        row = (90 - ds.transform.f) / 0.000898315284120
        assert abs(col - round(col)) < 1e-6
        assert abs(row - round(row)) < 1e-6
        assert ds.nodata == 0
        assert ds.descriptions == ("LCZ_Filter",)
        cmap = ds.colormap(1)
        assert cmap[2] == (0xD9, 0x08, 0x1C, 255)
        assert cmap[17] == (0x65, 0x6B, 0xFA, 255)
        assert len(cmap) >= 18
        if ds.driver == "GTiff":
            assert ds.profile["tiled"]
            assert ds.compression is not None
        data = ds.read(1)
        assert data.max() <= 17
        assert (data > 0).any()


def test_coarse_labels_format(world3: tuple, tmp_path: Path) -> None:
    out, summary, world = world3
    # three cities on two continents: per-city GeoTIFFs and a VRT mosaic over them
    assert summary["coarse_labels"].endswith("lcz_coarse.vrt")
    assert not (out / "lcz_coarse.tif").exists()
    for p in summary["coarse_per_city"].values():
        _check_lcz_geotiff(p)
    with rasterio.open(summary["coarse_labels"]) as vrt:
        assert vrt.crs.to_epsg() == 4326
        assert vrt.nodata == 0
        for c in world:
            with rasterio.open(summary["coarse_per_city"][c.city.name]) as part:
                win = rasterio.windows.from_bounds(*part.bounds, transform=vrt.transform)
                win = win.round_offsets().round_lengths()
                assert np.array_equal(vrt.read(1, window=win), part.read(1))
    # two neighbouring cities: one small mosaic GeoTIFF
    small = synth.write_world(tmp_path, cities=2, size_km=1.0, years=(2024,), truth_cube=False)
    assert small["coarse_labels"] == str((tmp_path / "lcz_coarse.tif").resolve())
    _check_lcz_geotiff(small["coarse_labels"])


def test_coarse_labels_are_the_filtered_mode_of_the_truth_with_errors(world3: tuple) -> None:
    """The written reference is the mode of the 10 m truth per cell, with a tenth of the cells
    in patches taken for a neighbouring type, then Gaussian-filtered like the global map's
    LCZ_Filter band."""
    _, summary, world = world3
    for c in world:
        with rasterio.open(summary["coarse_per_city"][c.city.name]) as ds:
            written, t = ds.read(1), ds.transform
        mode, r0, c0 = synth.coarse_mode(c)
        assert (r0, c0) == (round((90.0 - t.f) / -t.e), round((t.c + 180.0) / t.a))
        noisy = synth.reference_errors(mode, np.random.default_rng(0), rate=0.1)
        labelled = mode > 0
        changed = (noisy != mode)[labelled].mean()
        assert 0.05 < changed <= 0.1  # a type confused with itself (water) stays
        assert set(zip(mode[noisy != mode].tolist(), noisy[noisy != mode].tolist(),
                       strict=True)) <= {(a, int(synth.CONFUSED_WITH[a])) for a in range(1, 18)}
        np.testing.assert_array_equal(synth.reference_errors(mode, np.random.default_rng(0),
                                                             rate=0.0), mode)
        filtered = gaussian_mode_filter(mode, sigma=1.0)
        assert 0 < (written != filtered)[labelled].mean() < 0.2  # errors survive the filter
        assert (written == filtered)[labelled].mean() > 0.8
        lon, lat = c.zone.lonlat(c.window)
        col = np.floor((lon - t.c) / t.a).astype(np.int64)
        row = np.floor((lat - t.f) / t.e).astype(np.int64)
        cell = (row * mode.shape[1] + col).ravel()
        counts = np.bincount(cell * 18 + c.truth.ravel(), minlength=mode.size * 18)
        counts = counts.reshape(mode.size, 18)
        total = counts.sum(axis=1)
        full = total >= 0.9 * total.max()  # cells wholly inside the city window
        mode_ok = counts[np.arange(mode.size), mode.ravel()] == counts.max(axis=1)
        assert mode_ok[full].mean() > 0.9, c.city.name


# --------------------------------------------------------------------------------------------
# Truth cube and summary


@pytest.mark.skipif(not HAS_CUBE, reason="lczscale.io.cube.store is not there yet")
def test_truth_cube_holds_the_truth(world3: tuple) -> None:
    from lczscale.io.cube.store import read_window

    _, summary, world = world3
    for c in world:
        got = read_window(summary["truth"], c.zone, YEARS[-1], c.window)
        assert np.array_equal(got, c.truth)
        conf = read_window(summary["truth"], c.zone, YEARS[-1], c.window, "confidence")
        assert (conf == 255).all()


def test_world_json(world3: tuple) -> None:
    out, summary, world = world3
    saved = json.loads((out / "world.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["years"] == list(YEARS)
    for entry, c in zip(saved["cities"], world, strict=True):
        assert entry["name"] == c.city.name
        assert entry["zone"] == c.zone.name
        w = c.window
        assert entry["window"] == [w.row, w.col, w.height, w.width]
        minlon, minlat, maxlon, maxlat = entry["bbox_lonlat"]
        assert minlon < c.city.lon < maxlon
        assert minlat < c.city.lat < maxlat
    hist = np.bincount(np.concatenate([c.truth.ravel() for c in world]), minlength=18)
    assert saved["class_histogram"] == {str(k): int(v) for k, v in enumerate(hist) if v}
    assert set(saved["class_histogram"]) == {str(k) for k in range(1, 18)}  # all 17 classes


# --------------------------------------------------------------------------------------------
# Honesty: compact vs open midrise needs spatial context


def _box_mean(e: np.ndarray, r: int) -> np.ndarray:
    k = 2 * r + 1
    p = np.pad(e.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="edge")
    cs = np.pad(p.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    h, w = e.shape[1:]
    return (cs[:, k:k + h, k:k + w] - cs[:, :h, k:k + w] - cs[:, k:k + h, :w] + cs[:, :h, :w]) / (
        k * k
    )


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Balanced accuracy (classes 2 vs 5) of a nearest-centroid classifier."""
    c2, c5 = x[train & (y == 2)].mean(0), x[train & (y == 5)].mean(0)
    is2 = ((x - c2) ** 2).sum(1) < ((x - c5) ** 2).sum(1)
    return float((is2[~train & (y == 2)].mean() + (~is2[~train & (y == 5)]).mean()) / 2)


def test_roof_pixels_alone_cannot_tell_compact_from_open_midrise() -> None:
    roof = synth.MATERIALS.index("roof_midrise")
    pixel, context, labels, objects = [], [], [], []
    for c in synth.make_world(cities=2, size_km=SIZE_KM, years=(2024,)):
        e = c.embeddings[2024]
        sel = (c.material == roof) & (c.mix_share == 0) & np.isin(c.truth, (2, 5))
        pixel.append(e[:, sel].T)
        context.append(_box_mean(e, 2)[:, sel].T)
        labels.append(c.truth[sel])
        objects.append(c.objects[sel])
    y = np.concatenate(labels)
    train = np.concatenate(objects) % 2 == 0  # split by building, so no building is in both
    assert (y == 2).sum() > 500
    assert (y == 5).sum() > 100
    assert _nearest_centroid_accuracy(np.concatenate(pixel), y, train) <= 0.60
    assert _nearest_centroid_accuracy(np.concatenate(context), y, train) >= 0.80
