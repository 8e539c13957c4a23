"""Exports of other products and of the 100 m products on the global LCZ map's lattice, and
``eval --at 100m`` against a raster on that lattice.

Expected values are computed here by brute force, independently of the code under test: every
10 m pixel's centre is projected with pyproj (not ``Zone.lonlat``), given the global cell
``floor(lon / r)``, ``floor(-lat / r)``, counted only in the UTM zone whose 6° band holds it,
and the cell's majority (ties → lowest code) and shares are taken from those counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window as RioWindow

from lczscale import classes
from lczscale.browse.global_grid import PIXEL_DEG, CubeCells, cells_of_bbox
from lczscale.cli import main
from lczscale.config import CubeConfig, GridConfig, OutputsConfig
from lczscale.core.grid import Window, Zone, utm_zone
from lczscale.io.cube.outputs import write_cells
from lczscale.io.cube.store import create_cube, read_window, write_tile, zone_year
from lczscale.products.cells import fractions_255
from lczscale.studies.global_grid_eval import mapped_blocks
from lczscale.studies.lcz_metrics import N, confusion

YEAR = 2024
R = PIXEL_DEG
SYDNEY_BOX = (151.2004, -33.8803, 151.2151, -33.8702)  # central Sydney, utm56 (150–156°E)
EDGE_BOX = (149.9952, -33.7203, 150.0047, -33.7131)  # across 150°E: utm55 | utm56
REPO = Path(__file__).resolve().parents[2]
REAL = REPO / ".." / "shared" / "realdata"  # beside the repository, never copied into it


@dataclass(frozen=True)
class Written:
    zone: Zone
    window: Window
    lcz: np.ndarray


def _blocky(shape: tuple[int, int], seed: int, lo: int, hi: int) -> np.ndarray:
    """Classes lo..hi constant over 3 × 3 px (so 100 m cells mix a few), 8 % nodata."""
    rng = np.random.default_rng(seed)
    h, w = -(-shape[0] // 3), -(-shape[1] // 3)
    codes = rng.integers(lo, hi + 1, size=(h, w)).astype(np.uint8)
    codes[rng.random((h, w)) < 0.08] = 0
    return np.kron(codes, np.ones((3, 3), dtype=np.uint8))[: shape[0], : shape[1]]


def _window(zone: Zone, bbox: tuple[float, float, float, float], pad: int) -> Window:
    t = Transformer.from_crs("EPSG:4326", zone.crs, always_xy=True)
    xs, ys = t.transform([bbox[0], bbox[2], bbox[0], bbox[2]], [bbox[1], bbox[1], bbox[3], bbox[3]])
    a = zone.affine
    cols, rows = (np.asarray(xs) - a.c) / a.a, (np.asarray(ys) - a.f) / a.e
    r0, c0 = int(np.floor(rows.min())) - pad, int(np.floor(cols.min())) - pad
    return Window(r0, c0, int(np.ceil(rows.max())) + pad - r0, int(np.ceil(cols.max())) + pad - c0)


def _write(url: str, parts: list[tuple[Zone, Window, tuple[int, int]]],
           outputs: OutputsConfig | None = None) -> list[Written]:
    create_cube(url, [z for z, _, _ in parts], [YEAR], GridConfig(tile_size=256), CubeConfig(),
                {}, outputs=outputs)
    out = []
    for i, (zone, win, (lo, hi)) in enumerate(parts):
        lcz = _blocky((win.height, win.width), 10 + i, lo, hi)
        conf = np.where(lcz > 0, 100 + lcz, 0).astype(np.uint8)
        prob = None
        if outputs is not None and outputs.probabilities:
            k = np.arange(1, 18, dtype=np.int64)[:, None, None]
            prob = np.where(lcz[None] > 0, (k * 13 + lcz[None].astype(np.int64) * 7) % 256, 0)
        write_tile(url, zone, YEAR, win, lcz, conf, probability=prob)
        out.append(Written(zone, win, lcz))
    return out


def _brute_counts(parts: list[Written], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 18) counts of the pixels whose pyproj-projected centres fall in each cell of an
    output grid on the lattice, each pixel in the zone whose band holds it."""
    col0, row0 = round(transform.c / R), round(-transform.f / R)
    h, w = shape
    counts = np.zeros((h, w, N), dtype=np.int64)
    for p in parts:
        a = p.zone.affine
        rows = np.arange(p.window.row, p.window.row_stop) + 0.5
        cols = np.arange(p.window.col, p.window.col_stop) + 0.5
        x, y = np.meshgrid(a.c + a.a * cols, a.f + a.e * rows)
        lon, lat = Transformer.from_crs(p.zone.crs, "EPSG:4326", always_xy=True).transform(x, y)
        gi = np.floor(lon / R).astype(int) - col0
        gj = np.floor(-lat / R).astype(int) - row0
        lo, hi = p.zone.lon_band
        keep = (p.lcz > 0) & (lon >= lo) & (lon < hi) & (gi >= 0) & (gi < w) & (gj >= 0) \
            & (gj < h)
        np.add.at(counts, (gj[keep], gi[keep], p.lcz[keep].astype(int)), 1)
    return counts


def _brute_majority(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.shape[:2], dtype=np.uint8)
    for (i, j), _ in np.ndenumerate(out):
        c = counts[i, j, 1:]
        if c.sum():
            out[i, j] = 1 + min(k for k in range(17) if c[k] == c.max())
    return out


@pytest.fixture(scope="module")
def sydney(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Written]]:
    zone = utm_zone(56)
    url = str(tmp_path_factory.mktemp("gg") / "sydney.zarr")
    parts = _write(url, [(zone, _window(zone, SYDNEY_BOX, 40), (1, 17))],
                   OutputsConfig(probabilities=True, fractions=True))
    return url, parts


def _export(url: str, out: Path, *extra: str, bbox: tuple[float, ...] = SYDNEY_BOX) -> int:
    return main(["export", url, "--bbox", ",".join(map(str, bbox)), "--format", "geotiff",
                 "--out", str(out), *extra])


def _on_lattice(src: rasterio.io.DatasetReader, bbox: tuple[float, ...]) -> None:
    a = src.transform
    assert (a.a, a.e, a.b, a.d) == (R, -R, 0.0, 0.0)
    col, row = a.c / R, a.f / R
    assert abs(col - round(col)) < 1e-9
    assert abs(row - round(row)) < 1e-9
    assert src.crs.to_epsg() == 4326
    west, south, east, north = src.bounds
    assert west <= bbox[0] < west + R
    assert east - R < bbox[2] <= east
    assert south <= bbox[1] < south + R
    assert north - R < bbox[3] <= north


def test_lcz_100m_on_the_global_grid_is_the_brute_force_majority(
        sydney: tuple[str, list[Written]], tmp_path: Path) -> None:
    url, parts = sydney
    out = tmp_path / "maj.tif"
    assert _export(url, out, "--product", "lcz_100m", "--grid", "global-lcz-map") == 0
    with rasterio.open(out) as src:
        _on_lattice(src, SYDNEY_BOX)
        got = src.read(1)
        assert src.count == 1
        assert src.nodata == 0
        assert src.colormap(1)[17][:3] == classes.palette_rgb()[16]
        assert src.tags()["LCZ_GRID"] == "global-lcz-map"
        want = _brute_majority(_brute_counts(parts, src.transform, src.shape))
    assert want.all()
    assert len(np.unique(want)) > 5
    np.testing.assert_array_equal(got, want)


def test_fractions_on_the_global_grid_sum_to_255_and_match_brute_force(
        sydney: tuple[str, list[Written]], tmp_path: Path) -> None:
    url, parts = sydney
    out = tmp_path / "frac.tif"
    bbox = (151.194, -33.886, 151.221, -33.864)  # reaches past the written pixels
    assert _export(url, out, "--product", "lcz_fraction_100m", "--grid", "global-lcz-map",
                   bbox=bbox) == 0
    with rasterio.open(out) as src:
        _on_lattice(src, bbox)
        got = src.read().astype(np.int64)
        assert src.count == 17
        assert src.nodata is None
        assert list(src.descriptions) == [f"LCZ {lab}" for lab in classes.LCZ_LABELS]
        counts = _brute_counts(parts, src.transform, src.shape)
    total = counts[..., 1:].sum(-1)
    assert (total == 0).any()
    assert (total > 0).any()
    np.testing.assert_array_equal(got.sum(0), np.where(total > 0, 255, 0))
    exact = counts[..., 1:].transpose(2, 0, 1) * 255 / np.maximum(total, 1)
    assert np.abs(got - exact).max() < 1  # largest remainder: within one unit of the share
    np.testing.assert_array_equal(got, np.moveaxis(fractions_255(counts), -1, 0))


def test_confidence_and_probability_on_the_native_grid(
        sydney: tuple[str, list[Written]], tmp_path: Path) -> None:
    url, (part,) = sydney
    for product, bands in (("confidence", 1), ("probability", 17)):
        out = tmp_path / f"{product}.tif"
        assert _export(url, out, "--product", product) == 0
        with rasterio.open(out) as src:
            assert src.count == bands
            assert src.crs.to_epsg() == 32656
            a, z = src.transform, part.zone.affine
            row, col = round((a.f - z.f) / z.e), round((a.c - z.c) / z.a)
            assert a == z @ Affine.translation(col, row)
            win = Window(row, col, src.height, src.width)
            got = src.read()
        if product == "confidence":
            np.testing.assert_array_equal(got[0], read_window(url, part.zone, YEAR, win,
                                                              "confidence"))
            continue
        lcz = read_window(url, part.zone, YEAR, win).astype(np.int64)
        assert lcz.any()
        k = np.arange(1, 18)[:, None, None]
        np.testing.assert_array_equal(got, np.where(lcz[None] > 0, (k * 13 + lcz * 7) % 256, 0))
        with rasterio.open(out) as src:
            assert src.descriptions[16] == "LCZ G"
            assert src.nodata is None


def test_native_100m_products_come_from_the_cube(sydney: tuple[str, list[Written]],
                                                 tmp_path: Path) -> None:
    url, (part,) = sydney
    w = part.window
    cells = Window(w.row // 10, w.col // 10, -(-w.row_stop // 10) - w.row // 10,
                   -(-w.col_stop // 10) - w.col // 10)
    rng = np.random.default_rng(3)
    maj = rng.integers(1, 18, (cells.height, cells.width)).astype(np.uint8)
    filt = np.roll(maj, 1, axis=1)
    frac = rng.integers(0, 256, (17, cells.height, cells.width)).astype(np.uint8)
    g, t = zone_year(url, part.zone.name, YEAR, "r+")
    write_cells(g, t, cells, frac, maj, filt)
    out = tmp_path / "n100.tif"
    assert _export(url, out, "--product", "lcz_100m") == 0
    with rasterio.open(out) as src:
        z = part.zone.affine
        a = src.transform
        assert (a.a, a.e) == (10 * z.a, 10 * z.e)
        r0, c0 = round((a.f - z.f) / (10 * z.e)), round((a.c - z.c) / (10 * z.a))
        assert (a.c, a.f) == (z.c + 10 * z.a * c0, z.f + 10 * z.e * r0)
        got = src.read(1)
        assert src.colormap(1)[1][:3] == classes.palette_rgb()[0]
    rs = slice(r0 - cells.row, r0 - cells.row + got.shape[0])
    cs = slice(c0 - cells.col, c0 - cells.col + got.shape[1])
    np.testing.assert_array_equal(got, filt[rs, cs])
    assert _export(url, out, "--product", "lcz_fraction_100m", "--overwrite") == 0
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), frac[:, rs, cs])


def test_bad_export_requests_exit_2_with_one_line(
        sydney: tuple[str, list[Written]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, parts = sydney
    bare = str(tmp_path / "bare.zarr")
    _write(bare, [(parts[0].zone, parts[0].window, (1, 17))])
    capsys.readouterr()
    cases = [
        ([bare, "--product", "probability"], "map --probabilities"),
        ([bare, "--product", "lcz_100m"], "map --fractions"),
        ([url, "--product", "lcz_100m", "--grid", "global-lcz-map", "--crs", "EPSG:4326"],
         "--grid global-lcz-map is its own grid"),
        ([url, "--product", "lcz", "--grid", "global-lcz-map"], "drop --grid"),
        ([url, "--product", "lcz_100m", "--crs", "EPSG:4326"], "never warped"),
    ]
    for args, words in cases:
        cube, *rest = args
        assert _export(cube, tmp_path / "bad.tif", *rest) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert words in err, err
    with pytest.raises(SystemExit) as exc:
        _export(url, tmp_path / "bad.tif", "--grid", "global-lcz-map-v2")
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _write_reference(path: Path, values: np.ndarray, transform: Affine) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0],
                       count=1, dtype="uint8", crs="EPSG:4326", transform=transform,
                       nodata=0) as dst:
        dst.write(values, 1)


def _eval(url: str, ref: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", url, "--truth", str(ref), "--at", "100m", "--json",
                 "--bootstrap", "20", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_at_100m_against_rasters_on_the_lattice(
        sydney: tuple[str, list[Written]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, parts = sydney
    own = tmp_path / "own.tif"
    assert _export(url, own, "--product", "lcz_100m", "--grid", "global-lcz-map") == 0
    with rasterio.open(own) as src:
        pred, transform = src.read(1), src.transform
    same = _eval(url, own, capsys)
    assert (same["oa"], same["miou"], same["kappa"], same["at"]) == (1.0, 1.0, 1.0, "100m")
    assert same["grid"] == "global-lcz-map"
    assert same["cells"] == int((pred > 0).sum())
    assert same["oa_w"] == 1.0
    assert same["ci"]["oa"] == [1.0, 1.0]

    # A reference reaching past the cube's pixels (8 cells ~ 700 m > the 400 m written beyond
    # the bbox: labelled there, the cube not), some cells changed, one unlabelled; scored
    # against the brute-force majority.
    rng = np.random.default_rng(5)
    truth = rng.integers(1, 18, (pred.shape[0] + 16, pred.shape[1] + 16)).astype(np.uint8)
    changed = pred.copy()
    flip = rng.random(pred.shape) < 0.25
    changed[flip] = rng.integers(1, 18, int(flip.sum()))
    changed[0, 0] = 0
    truth[8:-8, 8:-8] = changed
    ref_transform = transform @ Affine.translation(-8, -8)
    ref = tmp_path / "changed.tif"
    _write_reference(ref, truth, ref_transform)
    got = _eval(url, ref, capsys)
    full = _brute_majority(_brute_counts(parts, ref_transform, truth.shape))
    assert full[0, 0] == 0
    assert (full[8:-8, 8:-8] == pred).all()
    scored = (full > 0) & (truth > 0)
    cm = confusion(full[scored], truth[scored])
    assert got["confusion"] == cm[1:, :].tolist()
    assert got["cells"] == int(scored.sum()) > int(((pred > 0) & (changed > 0)).sum())
    assert got["oa"] == round(float(np.trace(cm[1:, 1:]) / cm.sum()), 4) < 1

    # The same reference half a pixel off the lattice is refused.
    for flag in ("--baseline", "--report"):
        capsys.readouterr()
        assert main(["eval", url, "--truth", str(ref), "--at", "100m", flag, str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert f"{flag} belongs to the 10 m evaluation" in err
    capsys.readouterr()
    assert main(["eval", url, "--truth", str(ref), "--at", "100m", "--bootstrap", "0"]) == 0
    assert f"({got['cells']} cells)" in capsys.readouterr().out

    off = tmp_path / "off.tif"
    _write_reference(off, truth, transform @ Affine.translation(-4.5, -2))
    capsys.readouterr()
    assert main(["eval", url, "--truth", str(off), "--at", "100m"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "not on the global LCZ map's lattice" in err
    assert "pixel size" in err
    assert "origin" in err


def test_a_cell_across_a_utm_zone_edge_counts_each_pixel_once(tmp_path: Path) -> None:
    west, east = utm_zone(55), utm_zone(56)
    url = str(tmp_path / "edge.zarr")
    # each zone mapped well past its band, with classes that tell the zones apart
    parts = _write(url, [(west, _window(west, EDGE_BOX, 30), (1, 8)),
                         (east, _window(east, EDGE_BOX, 30), (9, 17))])
    out = tmp_path / "edge.tif"
    assert _export(url, out, "--product", "lcz_fraction_100m", "--grid", "global-lcz-map",
                   bbox=EDGE_BOX) == 0
    with rasterio.open(out) as src:
        _on_lattice(src, EDGE_BOX)
        got = src.read()
        counts = _brute_counts(parts, src.transform, src.shape)
        edge_col = int(np.floor(150.0 / R)) - round(src.transform.c / R)
    np.testing.assert_array_equal(got, np.moveaxis(fractions_255(counts), -1, 0))
    # the cell holding 150°E mixes both zones; the cells beside it hold one zone only
    assert (got[:8, :, edge_col].sum(0) > 0).all()
    assert (got[8:, :, edge_col].sum(0) > 0).all()
    assert got[8:, :, edge_col - 1].sum() == 0
    assert got[:8, :, edge_col + 1].sum() == 0
    # 10 m pixels per cell: about 100, as many as one zone alone would give (not doubled)
    per_cell = counts[..., 1:].sum(-1)[1:-1, 1:-1]
    assert 75 < per_cell.mean() < 105
    out2 = tmp_path / "edge_maj.tif"
    assert _export(url, out2, "--product", "lcz_100m", "--grid", "global-lcz-map",
                   bbox=EDGE_BOX) == 0
    with rasterio.open(out2) as src:
        np.testing.assert_array_equal(src.read(1), _brute_majority(counts))


def test_cells_of_bbox_snaps_outward_to_the_lattice() -> None:
    c = cells_of_bbox((151.2, -33.88, 151.21, -33.87))
    west, south, east, north = c.bounds
    assert west <= 151.2 < west + R
    assert east - R < 151.21 <= east
    assert south <= -33.88 < south + R
    assert north - R < -33.87 <= north
    assert abs(100 / (2 * np.pi * 6378137 / 360) - R) < 1e-18  # Earth Engine's 100 m


@pytest.mark.skipif(not REAL.is_dir() and not os.environ.get("CI"),
                    reason=f"real LCZ data folder {REAL} is absent on this machine")
def test_sydney_lcz_generator_raster_lies_on_the_lattice(
        sydney: tuple[str, list[Written]], capsys: pytest.CaptureFixture[str]) -> None:
    """The evidence for the lattice: an LCZ Generator GeoTIFF made in Earth Engine (lczexplore's
    rasterMD.tif) has the same pixel size and its origin on whole multiples of it; so eval
    --at 100m takes it as it is (its lczFilter band, int16) and scores every cell."""
    if not REAL.is_dir():
        pytest.fail(f"real LCZ data folder {REAL} is absent; CI needs ../shared/realdata")
    path = REAL / "lcz-sydney" / "rasterMD.tif"
    with rasterio.open(path) as src:
        a = src.transform
        assert src.crs.to_epsg() == 4326
        assert (a.a, a.e) == (R, -R)
        col, row = a.c / R, a.f / R
        assert (round(col), round(row)) == (167485, -37326)
        assert abs(col - round(col)) < 1e-6
        assert abs(row - round(row)) < 1e-6
        assert (a.c, a.f) == (150.45433536075805, -33.53051629504526)
        box = cells_of_bbox(SYDNEY_BOX)  # the bbox snapped outward, as eval --bbox takes it
        window = RioWindow(box.col - 167485, box.row - 37326, box.width, box.height)
        reference = src.read(2, window=window)
        cells = _brute_counts(sydney[1], src.window_transform(window), reference.shape)
    got = _eval(sydney[0], path, capsys, "--bbox", ",".join(map(str, SYDNEY_BOX)))
    assert got["reference_band"] == 2
    assert got["year"] == YEAR
    assert got["cells"] == int(((cells[..., 1:].sum(-1) > 0) & (reference > 0)).sum()) > 150


def test_counts_do_not_depend_on_blocks_and_only_mapped_blocks_are_read(
        sydney: tuple[str, list[Written]]) -> None:
    url, parts = sydney
    cube = CubeCells(url)
    region = cells_of_bbox((151.15, -33.93, 151.27, -33.82))  # past the stored chunks
    whole = cube.counts(region)
    np.testing.assert_array_equal(whole, _brute_counts(parts, region.affine,
                                                       (region.height, region.width)))
    pieced = np.zeros_like(whole)
    for b in region.blocks(7):
        pieced[b.row - region.row:b.row - region.row + b.height,
               b.col - region.col:b.col - region.col + b.width] = cube.counts(b)
    np.testing.assert_array_equal(pieced, whole)
    mapped = mapped_blocks(cube, region, side=7)
    assert 0 < len(mapped) < len(list(region.blocks(7)))
    covered = np.zeros(whole.shape[:2], dtype=bool)
    for b in mapped:
        covered[b.row - region.row:b.row - region.row + b.height,
                b.col - region.col:b.col - region.col + b.width] = True
    assert covered[whole[..., 1:].sum(-1) > 0].all()
