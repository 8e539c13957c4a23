"""Every LCZ label format, written from the synthetic truth by ``synth.labels``, read back onto
the zone grid through one layer (``open_labels`` / ``read_labels``): the same map in any
encoding gives the identical array, patches and polygons give the truth exactly, the encoding
is reported, and bad input fails with an error naming the file and the values."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine

from lczscale.core.grid import Window, utm_zone
from lczscale.errors import ConfigError, SourceError
from lczscale.io.labels.encoding import class_value, decode
from lczscale.io.labels.reader import label_bounds, open_labels, read_labels, sniff
from lczscale.synth.labels import write_label_formats
from lczscale.synth.world import LCZ_COARSE_RES, SynthCity, make_world

ENCODINGS = {
    "global": "lcz 1-17",
    "geoclimate": "geoclimate 101-107 for A-G",
    "float_m1": "lcz 1-17; float with nodata -1",
    "float_nan": "lcz 1-17; float with NaN nodata",
    "int32": "lcz 1-17; int32 nodata -999",
    "generator": "lcz 1-17",
}


@pytest.fixture(scope="module")
def world() -> list[SynthCity]:
    """Zurich and Basel (utm32) and Nairobi (utm37, south: 327NN in So2Sat and GeoClimate)."""
    return make_world(cities=3, size_km=1.0, seed=0, years=())


@pytest.fixture(scope="module")
def formats(world: list[SynthCity], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_label_formats(tmp_path_factory.mktemp("labels"), world)


def _coarse_lookup(c: SynthCity, path: str) -> np.ndarray:
    """Independent coarse → fine reference: the 100 m cell under each 10 m pixel centre."""
    with rasterio.open(path) as ds:
        data, t = ds.read(1), ds.transform
    lon, lat = c.zone.lonlat(c.window, step=1)
    col = np.floor((lon - t.c) / t.a).astype(np.int64)
    row = np.floor((lat - t.f) / t.e).astype(np.int64)
    ok = (row >= 0) & (row < data.shape[0]) & (col >= 0) & (col < data.shape[1])
    return np.where(ok, data[np.clip(row, 0, data.shape[0] - 1),
                             np.clip(col, 0, data.shape[1] - 1)], 0)


# --------------------------------------------------------------------------------------------
# The coarse map in every encoding


def test_global_map_reads_as_nearest_of_the_coarse_cells(world: list[SynthCity],
                                                         formats: dict[str, Any]) -> None:
    for c in world:
        path = formats["coarse"][c.city.name]["global"]
        got = read_labels(path, c.zone, c.window)
        assert got.dtype == np.uint8
        assert got.shape == c.truth.shape
        assert (got == _coarse_lookup(c, path)).mean() > 0.999  # ties on cell edges only
        assert (got == c.truth).mean() > 0.5  # a 100 m map of a 10 m truth
        src = open_labels(path)
        assert src.encoding == "lcz 1-17"
        assert src.describe()["palette"] is True
        assert src.describe()["nodata_tag"] == 0.0


@pytest.mark.parametrize("key", sorted(ENCODINGS))
def test_every_encoding_gives_the_identical_array(world: list[SynthCity],
                                                  formats: dict[str, Any], key: str) -> None:
    for c in world:
        files = formats["coarse"][c.city.name]
        reference = read_labels(files["global"], c.zone, c.window)
        src = open_labels(files[key])
        assert src.encoding == ENCODINGS[key]
        got = src.read(c.zone, c.window)
        assert got.dtype == np.uint8
        assert np.array_equal(got, reference), (c.city.name, key)
        assert np.array_equal(read_labels(files[key], c.zone, c.window), reference)
        json.dumps(src.describe())


def test_generator_raster_uses_the_filtered_band(world: list[SynthCity],
                                                 formats: dict[str, Any]) -> None:
    c = world[0]
    files = formats["coarse"][c.city.name]
    src = open_labels(files["generator"])
    d = src.describe()
    assert d["band"] == 2
    assert d["band_choice"] == "named 'lczFilter'"
    assert d["bands"] == ["lcz", "lczFilter", "classProbability"]
    assert d["dtype"] == "int16"
    raw = open_labels(files["generator"], band=1).read(c.zone, c.window)
    filtered = src.read(c.zone, c.window)
    assert not np.array_equal(raw, filtered)
    assert (raw == filtered).mean() > 0.5
    with pytest.raises(SourceError, match=r"generator\.tif band 3.*no known LCZ encoding"):
        open_labels(files["generator"], band=3)  # classProbability: 0–100 %, not a class
    with pytest.raises(SourceError, match="band 4 does not exist"):
        open_labels(files["generator"], band=4)


def test_projected_copy_is_read_exactly(world: list[SynthCity], formats: dict[str, Any]) -> None:
    for c in world:
        path = formats["coarse"][c.city.name]["utm"]
        src = open_labels(path)
        assert src.crs == c.zone.crs
        assert src.encoding == "lcz 1-17"
        with rasterio.open(path) as ds:
            data, t = ds.read(1), ds.transform
        a = c.zone.affine
        x = a.c + (np.arange(c.window.col, c.window.col_stop) + 0.5) * a.a
        y = a.f + (np.arange(c.window.row, c.window.row_stop) + 0.5) * a.e
        cols = np.floor((x - t.c) / t.a).astype(int)
        rows = np.floor((y - t.f) / t.e).astype(int)
        assert np.array_equal(src.read(c.zone, c.window), data[rows][:, cols])
        # a second resampling of the same 100 m map: close to, not equal to, the original
        ref = read_labels(formats["coarse"][c.city.name]["global"], c.zone, c.window)
        assert (src.read(c.zone, c.window) == ref).mean() > 0.5


def test_window_partly_or_wholly_outside(world: list[SynthCity], formats: dict[str, Any]) -> None:
    c = world[0]
    w = c.window
    shifted = Window(w.row - 50, w.col - 50, w.height, w.width)
    for key in ("global", "int32", "utm"):
        path = formats["coarse"][c.city.name][key]
        got = read_labels(path, c.zone, shifted)
        full = read_labels(path, c.zone, Window(w.row - 50, w.col - 50, 150, 150))
        assert np.array_equal(got, full[:100, :100])
        far = Window(w.row + 100_000, w.col, 64, 64)
        assert not read_labels(path, c.zone, far).any()
    assert not read_labels(formats["so2sat"]["h5"], c.zone, far).any()


def test_fine_source_onto_a_coarse_zone_uses_mode(world: list[SynthCity], tmp_path: Path) -> None:
    c = world[0]
    path = tmp_path / "truth10m.tif"
    t = c.zone.window_geobox(c.window).affine
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8",
                       crs=c.zone.crs, transform=t, nodata=0) as ds:
        ds.write(c.truth, 1)
    coarse = utm_zone(int(c.zone.name[3:]), resolution=100.0)  # same lattice, 10× the pixel
    r0, c0 = -(-c.window.row // 10), -(-c.window.col // 10)
    win = Window(r0, c0, (c.window.row_stop // 10) - r0, (c.window.col_stop // 10) - c0)
    got = open_labels(str(path)).read(coarse, win)
    rs, cs = (win.row * 10 - c.window.row), (win.col * 10 - c.window.col)
    blocks = c.truth[rs : rs + win.height * 10, cs : cs + win.width * 10]
    blocks = blocks.reshape(win.height, 10, win.width, 10).transpose(0, 2, 1, 3)
    counts = np.stack([(blocks == k).sum(axis=(2, 3)) for k in range(18)], axis=-1)
    top = np.sort(counts, axis=-1)
    unique = top[..., -1] > top[..., -2]
    assert unique.mean() > 0.8
    assert np.array_equal(got[unique], counts.argmax(axis=-1)[unique])
    nearest = open_labels(str(path), resampling="nearest").read(coarse, win)
    assert not np.array_equal(nearest, got)


# --------------------------------------------------------------------------------------------
# So2Sat LCZ42


def test_so2sat_patches_land_on_their_footprints(world: list[SynthCity],
                                                 formats: dict[str, Any]) -> None:
    so = formats["so2sat"]
    src = open_labels(so["h5"])
    d = src.describe()
    assert src.kind == "so2sat"
    assert src.encoding == "so2sat one-hot (argmax+1)"
    assert d["epsg"] == [32632, 32737]
    assert d["cities"] == ["basel", "nairobi", "zurich"]
    assert d["patches"] == sum(len(p) for p in so["patches"].values())
    json.dumps(d)
    for c in world:
        expected = np.zeros_like(c.truth)
        for r, q, k in so["patches"][c.city.name]:
            block = c.truth[r : r + 32, q : q + 32]
            assert np.bincount(block.ravel(), minlength=18).argmax() == k  # majority class
            expected[r : r + 32, q : q + 32] = k
        assert expected.any()
        assert np.array_equal(src.read(c.zone, c.window), expected), c.city.name
        assert np.array_equal(read_labels(so["geo"], c.zone, c.window), expected)  # geo given


def test_so2sat_file_layout(formats: dict[str, Any]) -> None:
    with h5py.File(formats["so2sat"]["h5"]) as f:
        n = f["label"].shape[0]
        assert f["sen1"].shape == (n, 32, 32, 8)
        assert f["sen1"].dtype == "<f8"
        assert f["sen2"].shape == (n, 32, 32, 10)
        assert f["sen2"].dtype == "<f8"
        assert f["label"].shape == (n, 17)
        assert (np.asarray(f["label"]).sum(axis=1) == 1).all()
    with h5py.File(formats["so2sat"]["geo"]) as f:
        assert f["coord"].shape == (n, 6)
        assert f["tfw"].shape == (n, 6)
        assert f["epsg"].shape == (n, 1)
        assert f["city"].dtype.kind == "S"
        tfw = np.asarray(f["tfw"])
        assert (tfw[:, 0] == 10).all()
        assert (tfw[:, 3] == -10).all()
        south = np.asarray(f["epsg"])[:, 0] == 32737
        assert (tfw[south, 5] > 9_000_000).all()  # false northing, as So2Sat's Nairobi


def _so2sat_copy(formats: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    h5, geo = tmp_path / "testing.h5", tmp_path / "testing_geo.h5"
    shutil.copy(formats["so2sat"]["h5"], h5)
    shutil.copy(formats["so2sat"]["geo"], geo)
    return h5, geo


def test_so2sat_wrong_pixel_size_is_refused(formats: dict[str, Any], tmp_path: Path) -> None:
    h5, geo = _so2sat_copy(formats, tmp_path)
    with h5py.File(geo, "r+") as f:
        tfw = np.asarray(f["tfw"])
        tfw[3, 0], tfw[3, 3] = 30.0, -30.0  # a Landsat-sized pixel
        f["tfw"][...] = tfw
    with pytest.raises(SourceError, match=r"1 patch transform.*not 10 m.*first patch 3"):
        open_labels(h5)


def test_so2sat_without_geo_file_is_refused(formats: dict[str, Any], tmp_path: Path) -> None:
    h5, geo = _so2sat_copy(formats, tmp_path)
    geo.unlink()
    with pytest.raises(SourceError, match=r"no geolocation file .*testing_geo\.h5"):
        open_labels(h5)


def test_so2sat_mismatched_geo_file_is_refused(formats: dict[str, Any], tmp_path: Path) -> None:
    h5, geo = _so2sat_copy(formats, tmp_path)
    with h5py.File(geo, "r+") as f:
        coord = np.asarray(f["coord"])
        f["coord"][...] = coord[::-1]  # another city order
    with pytest.raises(SourceError, match="far from their tfw footprint"):
        open_labels(h5)
    with h5py.File(h5, "r+") as f:
        del f["label"]
        f["label"] = np.zeros((3, 10))
    with pytest.raises(SourceError, match=r"'label' has shape \(3, 10\)"):
        open_labels(h5)


def test_so2sat_soft_and_empty_labels(formats: dict[str, Any], tmp_path: Path) -> None:
    h5, _ = _so2sat_copy(formats, tmp_path)
    with h5py.File(h5, "r+") as f:
        lab = np.asarray(f["label"])
        lab[0] = 0.0  # no class: nodata
        lab[1] = lab[1] * 0.6 + 0.4 / 17  # soft, same argmax
        f["label"][...] = lab
    src = open_labels(h5)
    assert src.encoding == "so2sat soft labels (argmax+1)"
    assert src.describe()["unlabelled_patches"] == 1


# --------------------------------------------------------------------------------------------
# Training-area polygons


@pytest.mark.parametrize(
    ("key", "encoding", "class_from"),
    [
        ("geojson", "geoclimate 101-107 for A-G", "property 'LCZ_PRIMARY'"),
        ("kml", "lcz labels 1-10, A-G", "folder names"),
        ("kmz", "lcz labels 1-10, A-G", "ExtendedData 'LCZ'"),
    ],
)
def test_polygons_burn_back_to_the_truth(world: list[SynthCity], formats: dict[str, Any],
                                         key: str, encoding: str, class_from: str) -> None:
    for c in world:
        info = formats["polygons"][c.city.name]
        src = open_labels(info[key])
        assert src.kind == key
        assert src.encoding == encoding
        d = src.describe()
        assert d["class_from"] == class_from
        assert d["polygons"] == info["polygons"]
        json.dumps(d)
        got = src.read(c.zone, c.window)
        labelled = got > 0
        assert labelled.sum() == info["pixels"] > 0.2 * got.size
        assert np.array_equal(got[labelled], c.truth[labelled])
        assert np.array_equal(read_labels(info[key], c.zone, c.window), got)


def test_geojson_layout_is_geoclimate(world: list[SynthCity], formats: dict[str, Any]) -> None:
    path = formats["polygons"]["nairobi"]["geojson"]
    text = Path(path).read_text()
    assert text.startswith('{"type":"FeatureCollection","crs":{"type":"name","properties":'
                           '{"name":"urn:ogc:def:crs:EPSG::32737"}},"features":[')
    props = json.loads(text)["features"][0]["properties"]
    assert list(props) == ["ID_RSU", "LCZ_PRIMARY", "LCZ_SECONDARY", "MIN_DISTANCE",
                           "LCZ_UNIQUENESS_VALUE", "LCZ_EQUALITY_VALUE"]
    assert open_labels(path).crs == "EPSG:32737"
    assert label_bounds(path)[1] > 9_000_000


def _geojson(tmp_path: Path, features: list[dict[str, Any]], crs: str | None = None) -> Path:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path = tmp_path / "areas.json"  # the kind comes from the content, not the name
    path.write_text(json.dumps(doc))
    return path


def _square(x0: float, y0: float, size: float, **props: Any) -> dict[str, Any]:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def test_overlaps_of_different_classes_become_nodata(world: list[SynthCity],
                                                     tmp_path: Path) -> None:
    c = world[0]
    a = c.zone.affine
    x0 = a.c + c.window.col * 10.0
    y0 = a.f - c.window.row_stop * 10.0  # bottom edge of the window
    feats = [_square(x0, y0, 200, lcz=2), _square(x0 + 100, y0, 200, lcz="G"),
             _square(x0, y0 + 500, 200, lcz=5), _square(x0 + 100, y0 + 500, 200, lcz=5)]
    path = _geojson(tmp_path, feats, c.zone.crs)
    src = open_labels(path)
    assert src.encoding == "lcz labels 1-10, A-G"  # numbers for 1–10, a letter for G
    got = src.read(c.zone, c.window)
    bottom = got[-20:]  # rows of the first two squares
    assert (bottom[:, :10] == 2).all()
    assert (bottom[:, 10:20] == 0).all()
    assert (bottom[:, 20:30] == 17).all()
    middle = got[-70:-50]
    assert (middle[:, :30] == 5).all()  # same class overlapping: kept


def test_polygon_without_class_attribute(world: list[SynthCity], tmp_path: Path) -> None:
    c = world[0]
    a = c.zone.affine
    x0, y0 = a.c + c.window.col * 10.0, a.f - c.window.row_stop * 10.0
    path = _geojson(tmp_path, [_square(x0, y0, 100, LCZ=3), _square(x0, y0, 100, name="x")])
    with pytest.raises(SourceError, match=r"feature 1 .* has no 'LCZ' property"):
        open_labels(path)
    path = _geojson(tmp_path, [_square(x0, y0, 100, name="park")])
    with pytest.raises(SourceError, match=r"no property holds the LCZ class.*attribute=NAME"):
        open_labels(path)
    path = _geojson(tmp_path, [_square(x0, y0, 100, typology="A")], c.zone.crs)
    src = open_labels(path, attribute="typology")
    assert src.describe()["class_from"] == "property 'typology'"
    assert (src.read(c.zone, c.window) == 11).sum() == 100
    path = _geojson(tmp_path, [_square(x0, y0, 100, lcz=3), _square(x0, y0, 100, lcz=None)])
    assert open_labels(path).describe()["unclassified"] == 1


def test_unknown_class_values_are_named(world: list[SynthCity], tmp_path: Path) -> None:
    path = _geojson(tmp_path, [_square(0, 0, 1, lcz=v) for v in (3, "Z9", 18, 108, 18)])
    with pytest.raises(SourceError, match=r"areas\.json: class values 'Z9' \(1 features\), "
                                          r"108 \(1 features\), 18 \(2 features\)"):
        open_labels(path)
    path = _geojson(tmp_path, [_square(0, 0, 1, lcz=v) for v in (12, 105)])
    with pytest.raises(SourceError, match="both as 101–107 and as 11–17"):
        open_labels(path)


def _kml(body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?><kml xmlns="http://www.opengis.net/kml/2.2">'
            f"<Document><name>t</name>{body}</Document></kml>")


PLACEMARK = ("<Placemark><name>{name}</name>{ext}<Polygon><outerBoundaryIs><LinearRing>"
             "<coordinates>8.54,47.37,0 8.541,47.37,0 8.541,47.371,0 8.54,47.37,0</coordinates>"
             "</LinearRing></outerBoundaryIs></Polygon></Placemark>")


def _pm(name: str, ext: str = "") -> str:
    return PLACEMARK.format(name=name, ext=ext)


def test_kml_class_sources_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ta.kml"
    path.write_text(_kml(f"<Folder><name>Training areas</name><Folder><name>A: Dense trees</name>"
                         f"{_pm('a')}</Folder><Folder><name>3</name>{_pm('b')}</Folder></Folder>"))
    src = open_labels(path)
    assert src.kind == "kml"
    assert src.describe()["classes"] == {3: 1, 11: 1}
    ext = '<ExtendedData><Data name="lcz_class"><value>{}</value></Data></ExtendedData>'
    path.write_text(_kml(_pm("loose", ext.format("101"))))
    assert open_labels(path).describe()["classes"] == {11: 1}
    path.write_text(_kml(_pm("loose")))
    with pytest.raises(SourceError, match=r"placemark 'loose' has no LCZ class"):
        open_labels(path)
    path.write_text(_kml(f"<Folder><name>LCZ 2</name>{_pm('x', ext.format('B'))}</Folder>"))
    with pytest.raises(SourceError, match=r"'x' is in folder 'LCZ 2' but its 'lcz_class'"):
        open_labels(path)
    path.write_text('<?xml version="1.0"?><!DOCTYPE kml [<!ENTITY a "aaaa">]>'
                    + _kml(_pm("&a;")).split("?>", 1)[1])
    with pytest.raises(SourceError, match="entity declarations"):
        open_labels(path)
    bad = tmp_path / "bad.kmz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "no kml here")
    with pytest.raises(SourceError, match=r"holds no \.kml file"):
        open_labels(bad)


# --------------------------------------------------------------------------------------------
# Encodings and bad rasters


def _raster(path: Path, data: np.ndarray, **kw: Any) -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype.name, crs="EPSG:4326",
                       transform=Affine(LCZ_COARSE_RES, 0, 8.5, 0, -LCZ_COARSE_RES, 47.4),
                       **kw) as ds:
        ds.write(data)
    return path


def test_bad_rasters_are_refused_with_the_values(tmp_path: Path) -> None:
    data = np.full((8, 8), 6, dtype=np.uint8)
    data[0, :3] = 42
    with pytest.raises(SourceError, match=r"bad\.tif band 1 \(sample\): values 42 \(3 px\)"):
        open_labels(_raster(tmp_path / "bad.tif", data))
    f = np.full((8, 8), 2.5, dtype=np.float32)  # bilinear-resampled labels
    with pytest.raises(SourceError, match=r"2\.5 \(64 px\)"):
        open_labels(_raster(tmp_path / "f.tif", f))
    mixed = np.array([[12, 105]], dtype=np.int16)
    with pytest.raises(SourceError, match="A–G in two encodings"):
        open_labels(_raster(tmp_path / "m.tif", mixed))
    multi = np.ones((2, 4, 4), dtype=np.uint8)
    with pytest.raises(SourceError, match=r"none is named like an LCZ class band .*; pass band=N"):
        open_labels(_raster(tmp_path / "multi.tif", multi))
    assert open_labels(tmp_path / "multi.tif", band=2).describe()["band_choice"] == "given"
    with pytest.raises(SourceError, match="does not exist"):
        open_labels(tmp_path / "missing.tif")
    (tmp_path / "junk.bin").write_bytes(b"not a raster at all")
    with pytest.raises(SourceError, match="cannot read label raster"):
        open_labels(tmp_path / "junk.bin")


def test_float_nodata_undeclared_and_declared(tmp_path: Path) -> None:
    f = np.array([[1, 17, -1, np.nan]], dtype=np.float32)
    src = open_labels(_raster(tmp_path / "u.tif", f))
    assert src.encoding == "lcz 1-17; float with nodata -1"
    assert src.describe()["nodata_tag"] is None
    assert src.describe()["classes"] == [1, 17]
    assert open_labels(_raster(tmp_path / "n.tif", f, nodata=np.nan)).encoding == (
        "lcz 1-17; float with NaN nodata")
    u = np.array([[0, 3, 255]], dtype=np.uint8)
    assert open_labels(_raster(tmp_path / "b.tif", u, nodata=255)).encoding == (
        "lcz 1-17; uint8 nodata 255")


def test_decode_and_class_values() -> None:
    codes, conv = decode(np.array([0, 1, 10, 101, 107, -999]), (-999.0,), "x")
    assert codes.tolist() == [0, 1, 10, 11, 17, 0]
    assert conv == "geoclimate 101-107 for A-G"
    codes, conv = decode(np.array([3.0, np.nan, -1.0]), (-1.0,), "x")
    assert codes.tolist() == [3, 0, 0]
    assert conv is None
    for value, code in [(5, 5), (5.0, 5), ("5", 5), (104, 14), ("104", 14), ("A", 11),
                        ("g", 17), ("LCZ 2", 2), ("LCZ_A", 11), ("lcz-10", 10),
                        ("10 Heavy industry", 10), ("A: Dense trees", 11), ("Dense trees", 11),
                        ("Compact high-rise", 1), ("Bare soil or sand", 16), (np.int64(3), 3)]:
        got = class_value(value)
        assert got is not None, value
        assert got[0] == code, value
    for nothing in (None, "", 0, float("nan")):
        assert class_value(nothing) is None
    for bad in ("Z9", 18, 100, 2.5, True, "Training areas", -1):
        with pytest.raises(ValueError, match=re.escape(str(bad))):  # the value, for the message
            class_value(bad)


def test_kind_detection_by_content(formats: dict[str, Any]) -> None:
    assert sniff(b"\x89HDF\r\n\x1a\n....") == "so2sat"
    assert sniff(b"II*\x00") == "raster"
    assert sniff(b"MM\x00+") == "raster"
    assert sniff(b"\xef\xbb\xbf  {\"type\"") == "geojson"
    assert sniff(b'<?xml version="1.0"?>\n<kml xmlns=') == "kml"
    assert sniff(b"<VRTDataset rasterXSize") == "raster"
    assert sniff(b"PK\x03\x04") == "kmz"
    with pytest.raises(ConfigError, match=r"\['band'\] do not apply to a geojson"):
        open_labels(formats["polygons"]["zurich"]["geojson"], band=2)
    with pytest.raises(ConfigError, match="unknown label kind"):
        open_labels(formats["polygons"]["zurich"]["geojson"], kind="shapefile")  # type: ignore


def test_vrt_mosaic_and_cache_follows_the_file(world: list[SynthCity],
                                               formats: dict[str, Any], tmp_path: Path) -> None:
    from lczscale.synth.global_lcz_map import _write_vrt, coarse_labels

    parts = []
    for c in world[:2]:
        data, r0, c0 = coarse_labels(c)
        parts.append((Path(formats["coarse"][c.city.name]["global"]), r0, c0, *data.shape))
    r0, c0 = min(p[1] for p in parts), min(p[2] for p in parts)
    h = max(p[1] + p[3] for p in parts) - r0
    w = max(p[2] + p[4] for p in parts) - c0
    vrt = Path(formats["coarse"]["zurich"]["global"]).parent / "mosaic.vrt"
    _write_vrt(vrt, parts, (r0, c0, h, w))
    for c in world[:2]:
        ref = read_labels(formats["coarse"][c.city.name]["global"], c.zone, c.window)
        assert np.array_equal(read_labels(str(vrt), c.zone, c.window), ref)
    # read_labels keeps opened sources, but a rewritten file is opened afresh
    path = tmp_path / "changing.tif"
    c = world[0]
    shutil.copy(formats["coarse"][c.city.name]["global"], path)
    before = read_labels(str(path), c.zone, c.window)
    shutil.copy(formats["coarse"][c.city.name]["geoclimate"], path)
    assert np.array_equal(read_labels(str(path), c.zone, c.window), before)
    assert open_labels(path).encoding == "geoclimate 101-107 for A-G"


# --------------------------------------------------------------------------------------------
# Remote: a real S3 endpoint (moto's server) and plain HTTP reads of the same objects


@pytest.fixture(scope="module")
def remote(formats: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    from tests.servers import environment, s3_server

    with s3_server(tmp_path_factory.mktemp("moto")) as s3, environment(s3.env):
        s3.create_bucket("labels", public_read=True)
        files = {
            "tif": formats["coarse"]["zurich"]["global"],
            "generator": formats["coarse"]["zurich"]["generator"],
            "geojson": formats["polygons"]["zurich"]["geojson"],
            "kmz": formats["polygons"]["zurich"]["kmz"],
            "h5": formats["so2sat"]["h5"], "geo": formats["so2sat"]["geo"],
        }
        for path in files.values():
            s3.upload(Path(path), "labels", f"x/{Path(path).name}")
        yield {"s3": s3, "files": files}


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["s3", "http"])
def test_remote_sources_read_like_local_ones(world: list[SynthCity], remote: dict[str, Any],
                                             scheme: str) -> None:
    s3 = remote["s3"]
    c = world[0]
    for key, local in remote["files"].items():
        if key == "geo":
            continue
        name = Path(local).name
        url = f"s3://labels/x/{name}" if scheme == "s3" else s3.http_url("labels", f"x/{name}")
        src = open_labels(url)
        assert src.encoding == open_labels(local).encoding
        assert np.array_equal(src.read(c.zone, c.window), read_labels(local, c.zone, c.window))


def test_other_files_go_to_gdal(tmp_path: Path) -> None:
    import rasterio.shutil

    nc = tmp_path / "lcz_map"  # a netCDF LCZ map: no magic we know, so GDAL decides
    tif = _raster(tmp_path / "map.tif", np.array([[0, 3, 14], [17, 14, 2]], dtype=np.uint8))
    rasterio.shutil.copy(tif, nc, driver="netCDF")
    src = open_labels(nc)
    assert src.kind == "raster"
    assert src.describe()["classes"] == [2, 3, 14, 17]
    other = tmp_path / "other.h5"  # HDF5 without So2Sat's datasets (netCDF-4 is HDF5 too)
    with h5py.File(other, "w") as f:
        f["foo"] = np.zeros(3)
    with pytest.raises(SourceError, match=r"other\.h5"):
        open_labels(other)
    with pytest.raises(SourceError, match=r"without a 'label' dataset"):
        open_labels(other, kind="so2sat")
