"""Evaluation: bbox restriction, 100 m agreement on the zone lattice, report files and the CLI.

The map scored is the synthetic truth with a known perturbation, written as a cube, so every
expected number is computed here by hand from the arrays (``confusion`` / ``scores`` on the
cities' windows), not by the code under test reading the cubes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer

from lczscale.cli import main
from lczscale.config import CubeConfig, GridConfig
from lczscale.errors import CubeError
from lczscale.io.cube.store import create_cube, write_tile
from lczscale.io.labels.reader import read_labels
from lczscale.products.counts import block_counts, block_majority, complete, majority, merge
from lczscale.studies.evaluate import confusion, evaluate, scores
from lczscale.studies.report import write_eval_report
from lczscale.synth.world import SynthCity, make_world, write_world

YEAR = 2024
SCORE_KEYS = ("miou", "oa", "kappa", "per_class_iou", "pixels")


@dataclass(frozen=True)
class EvalWorld:
    truth: str
    truth64: str  # the same truth in 64 px chunks: 100 m cells straddle chunk edges
    coarse: str
    pred: str
    cities: list[SynthCity]
    preds: dict[str, np.ndarray]


def _cube(url: str, cities: list[SynthCity], tile: int, arrays: dict[str, np.ndarray]) -> str:
    zones = sorted({c.zone.name: c.zone for c in cities}.items())
    create_cube(url, [z for _, z in zones], [YEAR], GridConfig(tile_size=tile), CubeConfig(), {})
    for c in cities:
        a = arrays[c.city.name]
        write_tile(url, c.zone, YEAR, c.window, a, np.where(a > 0, 200, 0).astype(np.uint8))
    return url


@pytest.fixture(scope="module")
def ew(tmp_path_factory: pytest.TempPathFactory) -> EvalWorld:
    """Zurich and Basel (utm32), 1 km each, windows off the 10 px lattice; a map that is the
    truth with 30 % of pixels set to random classes and 2 % to nodata."""
    root = tmp_path_factory.mktemp("evalworld")
    summary = write_world(root, cities=2, size_km=1.0, seed=0, years=(YEAR,))
    cities = make_world(cities=2, size_km=1.0, seed=0, years=())
    assert any(c.window.row % 10 and c.window.col % 10 for c in cities)
    rng = np.random.default_rng(7)
    preds = {}
    for c in cities:
        p = c.truth.copy()
        flip = rng.random(p.shape) < 0.3
        p[flip] = rng.integers(1, 18, int(flip.sum()))
        p[rng.random(p.shape) < 0.02] = 0
        preds[c.city.name] = p
    truths = {c.city.name: c.truth for c in cities}
    return EvalWorld(
        truth=str(summary["truth"]),
        truth64=_cube(str(root / "truth64.zarr"), cities, 64, truths),
        coarse=str(summary["coarse_labels"]),
        pred=_cube(str(root / "pred.zarr"), cities, 128, preds),
        cities=cities, preds=preds,
    )


def _same_scores(got: dict, cm: np.ndarray) -> None:
    exp = scores(cm)
    assert {k: got[k] for k in SCORE_KEYS} == {k: exp[k] for k in SCORE_KEYS}
    assert got["confusion"] == cm[1:].tolist()


# --------------------------------------------------------------------------------------------
# Block majority on the zone lattice (hand-made arrays)

HAND = np.array([
    [3, 5, 0, 0],
    [5, 3, 0, 7],
    [0, 0, 17, 17],
    [0, 0, 2, 0],
], dtype=np.uint8)


def test_block_majority_ties_and_nodata() -> None:
    grid, first = block_majority(HAND, (0, 0), factor=2)
    # tie 3/5 → lower code; three nodata and one 7 → 7; all nodata → 0; 17,17,2 → 17
    assert first == (0, 0)
    assert grid.tolist() == [[3, 7], [0, 17]]
    assert majority(np.array([[0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
                              [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
                    ).tolist() == [4, 0]


def test_block_majority_follows_the_zone_lattice_not_the_array() -> None:
    grid, first = block_majority(HAND, (1, 1), factor=2)  # same pixels, one pixel further on
    assert first == (0, 0)
    assert grid.shape == (3, 3)
    assert grid[0, 0] == 3  # cell rows 0–1, cols 0–1 holds only HAND[0, 0]
    assert grid[1, 1] == 3  # HAND[1:3, 1:3] = [[3, 0], [0, 17]]: tie → 3
    assert grid[2, 2] == 0  # HAND[3, 3] only
    assert grid[0, 2] == 0
    assert grid[1, 2] == 7
    grid, first = block_majority(HAND, (-3, 5), factor=2)  # negative rows floor down
    assert first == (-2, 2)
    assert grid.shape == (3, 3)


def test_counts_do_not_depend_on_how_a_region_is_cut() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 18, (57, 63)).astype(np.uint8)
    origin = (13, 26)
    whole = block_counts(codes, origin, 10)
    cuts = [(slice(0, 21), slice(0, 40)), (slice(0, 21), slice(40, 63)),
            (slice(21, 57), slice(0, 17)), (slice(21, 57), slice(17, 63))]
    parts = [block_counts(codes[rs, cs], (origin[0] + rs.start, origin[1] + cs.start), 10)
             for rs, cs in cuts]
    merged = merge(parts)
    order = np.lexsort((whole.cols, whole.rows))
    assert np.array_equal(merged.rows, whole.rows[order])
    assert np.array_equal(merged.cols, whole.cols[order])
    assert np.array_equal(merged.counts, whole.counts[order])
    assert whole.counts.sum() == codes.size
    # rows 13..69 → cells 1..6, complete 2..6; cols 26..88 → cells 2..8, complete 3..7
    done = complete(whole, 10)
    assert set(zip(whole.rows[done].tolist(), whole.cols[done].tolist(), strict=True)) == {
        (r, c) for r in range(2, 7) for c in range(3, 8)
    }
    with pytest.raises(ValueError, match=r"0\.\.17"):
        block_counts(np.full((2, 2), 18), (0, 0), 10)


# --------------------------------------------------------------------------------------------
# bbox


def test_bbox_scores_exactly_one_city(ew: EvalWorld) -> None:
    per_city = []
    for c in ew.cities:
        got = evaluate(ew.pred, ew.truth, bbox=c.bbox_lonlat)
        _same_scores(got, confusion(ew.preds[c.city.name], c.truth))
        assert got["bbox"] == list(c.bbox_lonlat)
        per_city.append(got)
    whole = evaluate(ew.pred, ew.truth)
    assert whole["pixels"] == sum(r["pixels"] for r in per_city)
    assert all(whole["miou"] != r["miou"] for r in per_city)


def test_bbox_cuts_through_a_city_at_pixel_centres(ew: EvalWorld) -> None:
    c = ew.cities[0]
    minlon, minlat, maxlon, maxlat = c.bbox_lonlat
    mid = (minlon + maxlon) / 2
    got = evaluate(ew.pred, ew.truth, bbox=(minlon - 0.01, minlat - 0.01, mid, maxlat + 0.01))
    a, w = c.zone.affine, c.window
    cols, rows = np.meshgrid(np.arange(w.col, w.col_stop) + 0.5, np.arange(w.row, w.row_stop) + 0.5)
    lon, _ = Transformer.from_crs(c.zone.crs, "EPSG:4326", always_xy=True).transform(
        a.c + a.a * cols, a.f + a.e * rows)
    west = lon <= mid
    assert 0.3 < west.mean() < 0.7
    _same_scores(got, confusion(ew.preds[c.city.name][west], c.truth[west]))


@pytest.mark.parametrize("bbox", [(0.0, 0.0, 1.0, 1.0), (9.5, 47.0, 9.6, 47.1)])
def test_bbox_without_labelled_pixels_is_an_error(ew: EvalWorld, bbox: tuple) -> None:
    with pytest.raises(CubeError, match=rf"bbox \({bbox[0]}, {bbox[1]}.*covers no labelled"):
        evaluate(ew.pred, ew.truth, bbox=bbox)


# --------------------------------------------------------------------------------------------
# 100 m agreement


def _cells(c: SynthCity) -> int:
    """Lattice cells (10 px) holding a labelled truth pixel."""
    r, q = np.nonzero(c.truth)
    return len({(a, b) for a, b in zip((r + c.window.row) // 10, (q + c.window.col) // 10,
                                       strict=True)})


def test_agreement_of_the_truth_with_itself_and_with_its_coarse_map(ew: EvalWorld) -> None:
    cells = sum(_cells(c) for c in ew.cities)
    own = evaluate(ew.truth, ew.truth, coarse_reference=ew.truth)["agreement_100m"]
    assert own["cells"] == cells
    assert own["oa"] == 1.0
    assert own["miou"] == 1.0
    coarse = evaluate(ew.truth, ew.truth, baseline=ew.coarse)["agreement_100m"]
    assert coarse["reference"] == ew.coarse
    assert 0.9 * cells < coarse["cells"] <= cells
    # the reference is the truth's cell mode with ~10 % confusions, then filtered (synth)
    assert 0.4 < coarse["oa"] < 1.0
    assert coarse["miou"] < 1.0


def test_agreement_equals_the_majority_of_each_whole_city(ew: EvalWorld) -> None:
    cm = np.zeros((18, 18), dtype=np.int64)
    for c in ew.cities:
        scored = c.truth > 0
        ref = read_labels(ew.coarse, c.zone, c.window)
        origin = (c.window.row, c.window.col)
        gp, _ = block_majority(np.where(scored, ew.preds[c.city.name], 0), origin)
        gr, _ = block_majority(np.where(scored, ref, 0), origin)
        keep = (gp > 0) & (gr > 0)
        cm += confusion(gp[keep], gr[keep])
    exp = scores(cm)
    got = evaluate(ew.pred, ew.truth, baseline=ew.coarse)
    agree = got["agreement_100m"]
    assert (agree["cells"], agree["oa"], agree["miou"], agree["kappa"]) == (
        exp["pixels"], exp["oa"], exp["miou"], exp["kappa"])
    # the same truth cut into 64 px chunks (cells straddle chunk edges): identical result
    got64 = evaluate(ew.pred, ew.truth64, baseline=ew.coarse)
    assert {k: v for k, v in got64.items() if k != "truth"} == {
        k: v for k, v in got.items() if k != "truth"}
    base_cm = np.zeros((18, 18), dtype=np.int64)
    for c in ew.cities:
        base_cm += confusion(read_labels(ew.coarse, c.zone, c.window), c.truth)
    assert got["baseline_confusion"] == base_cm[1:].tolist()


def test_no_coarse_reference_no_agreement(ew: EvalWorld) -> None:
    got = evaluate(ew.pred, ew.truth)
    assert got["agreement_100m"] is None
    assert "baseline_confusion" not in got


# --------------------------------------------------------------------------------------------
# Report and CLI


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_report_files(ew: EvalWorld, tmp_path: Path) -> None:
    result = evaluate(ew.pred, ew.truth, baseline=ew.coarse)
    files = write_eval_report(result, tmp_path / "rep")
    assert sorted(files) == ["confusion.png", "confusion_baseline.png", "report.json",
                             "report.md"]
    assert json.loads(files["report.json"].read_text()) == result
    md = files["report.md"].read_text()
    assert f"| model | {result['miou']:.3f} | {result['oa']:.3f} | {result['kappa']:.3f} |" in md
    assert f"| baseline | {result['baseline_miou']:.3f} |" in md
    agree = result["agreement_100m"]
    assert f"| {agree['cells']} | {agree['oa']:.3f} |" in md
    iou_g, f1_g = result["per_class_iou"]["G"], result["f1"]["G"]
    lo, hi = result["f1_ci"]["G"]
    assert (f"| G | Water | {f1_g:.3f} | {lo:.3f}–{hi:.3f} | {iou_g:.3f} "
            f"| {result['baseline_per_class_iou']['G']:.3f} |") in md
    lo, hi = result["ci"]["oa_w"]
    assert f"| OA_w (weighted) | {result['oa_w']:.3f} | {lo:.3f}–{hi:.3f} |" in md
    for name in ("confusion.png", "confusion_baseline.png"):
        img = _png(files[name])
        assert min(img.shape[:2]) > 300
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # cells, text, colour bar
    model, base = _png(files["confusion.png"]), _png(files["confusion_baseline.png"])
    assert model.shape != base.shape or not np.array_equal(model, base)


def test_cli_eval_json_prints_one_object_and_writes_the_report(
    ew: EvalWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ew.cities[1]
    rep = tmp_path / "report"
    code = main(["eval", ew.pred, "--truth", ew.truth, "--baseline", ew.coarse, "--bbox",
                 ",".join(map(str, c.bbox_lonlat)), "--year", str(YEAR), "--report", str(rep),
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)  # the whole of stdout: one JSON object
    assert {"miou", "oa", "kappa", "per_class_iou", "baseline_miou", "agreement_100m"} <= set(
        result)
    _same_scores(result, confusion(ew.preds[c.city.name], c.truth))
    assert json.loads((rep / "report.json").read_text()) == result
    assert (rep / "confusion.png").stat().st_size > 10_000


def test_cli_eval_text_and_bad_bbox(ew: EvalWorld, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", ew.pred, "--truth", ew.truth, "--baseline", ew.coarse]) == 0
    out = capsys.readouterr().out
    assert "agreement at 100 m" in out
    assert "baseline" in out
    assert main(["eval", ew.pred, "--truth", ew.truth, "--bbox", "0,0,1,1"]) == 2
    assert "covers no labelled pixel" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Any label file as the reference: training-area polygons and a raster


def _inside_polygons(c: SynthCity, areas: list) -> np.ndarray:
    """Pixels of the city window whose centres lie in a training area (shapely, not rasterio)."""
    import shapely

    aff = c.zone.window_geobox(c.window).affine
    rows, cols = np.mgrid[0:c.window.height, 0:c.window.width]
    x, y = aff.c + aff.a * (cols + 0.5), aff.f + aff.e * (rows + 0.5)
    hit = np.zeros(x.shape, dtype=bool)
    for poly, _ in areas:
        hit |= shapely.contains_xy(poly, x, y)
    return hit


@pytest.fixture(scope="module")
def polygons(ew: EvalWorld, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """Both cities' LCZ Generator-style training areas in one GeoClimate GeoJSON (EPSG:326NN,
    codes 101–107 for A–G), and how many polygons it holds."""
    from lczscale.synth.labels import write_training_areas

    d = tmp_path_factory.mktemp("areas")
    features: list = []
    crs = None
    for c in ew.cities:
        doc = json.loads(Path(write_training_areas(d, c, seed=0)["geojson"]).read_text())
        features += doc["features"]
        crs = crs or doc["crs"]
        assert doc["crs"] == crs  # both cities in one UTM zone
    out = d / "areas.geojson"
    out.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": features}))
    return str(out), len(features)


def test_eval_against_training_polygons(ew: EvalWorld, polygons: tuple[str, int]) -> None:
    """The polygons are homogeneous areas of the truth: the reference pixels are the truth
    where a pixel centre lies in a polygon, and the bootstrap resamples the polygons."""
    from lczscale.synth.labels import training_areas

    path, n_polygons = polygons
    cm = np.zeros((18, 18), dtype=np.int64)
    for c in ew.cities:
        mask = _inside_polygons(c, training_areas(c, seed=0))
        assert 0 < mask.sum() < mask.size
        cm += confusion(ew.preds[c.city.name][mask], c.truth[mask])
    got = evaluate(ew.pred, path, bootstrap=100)
    _same_scores(got, cm)
    assert got["ci_units"] == "polygons"
    assert got["units"] == n_polygons
    assert got["replicates"] == 100
    for key in ("oa", "oa_u", "oa_bu", "oa_w", "miou", "kappa"):
        lo, hi = got["ci"][key]
        assert lo <= got[key] <= hi, key
        assert hi - lo > 0.001, key  # 30 % of the pixels are random: polygons differ
    assert set(got["f1"]) == set(got["f1_ci"]) == set(got["per_class_iou"])


def test_eval_against_a_raster_on_the_zone_grid(ew: EvalWorld, tmp_path: Path) -> None:
    """A GeoTIFF of one city's truth on its zone's 10 m lattice (nearest = identity): scored
    only where it has labels, the bootstrap over its 1 km blocks on the zone lattice."""
    import rasterio

    c = ew.cities[0]
    tif = tmp_path / "truth.tif"
    aff = c.zone.window_geobox(c.window).affine
    with rasterio.open(tif, "w", driver="GTiff", width=c.window.width, height=c.window.height,
                       count=1, dtype="uint8", crs=c.zone.crs, transform=aff) as f:
        f.write(c.truth, 1)
    got = evaluate(ew.pred, str(tif), bootstrap=50)
    _same_scores(got, confusion(ew.preds[c.city.name], c.truth))
    assert got["ci_units"] == "blocks of 1000 m"
    w = c.window
    labelled = np.argwhere(c.truth > 0) + (w.row, w.col)
    assert got["units"] == len({(r // 100, q // 100) for r, q in labelled})
    half = evaluate(ew.pred, str(tif), bootstrap=50, block_m=500.0)
    assert half["units"] == len({(r // 50, q // 50) for r, q in labelled}) > got["units"]


def test_cli_eval_any_reference_json_keys(
    ew: EvalWorld, polygons: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", ew.pred, "--truth", polygons[0], "--bootstrap", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"oa", "oa_u", "oa_bu", "oa_w", "miou", "kappa", "f1", "ci", "per_class_iou",
            "confusion"} <= set(result)
    assert set(result["ci"]) == {"oa", "oa_u", "oa_bu", "oa_w", "miou", "kappa"}
    assert main(["eval", ew.pred, "--truth", polygons[0], "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "OA_w" in out
    assert "bootstrap replicates over" in out
    assert "polygons" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--bootstrap", "-3"], "whole number"),
    (["--block-m", "0"], "metres > 0"),
    (["--truth", "nowhere.geojson"], "does not exist"),
])
def test_cli_eval_bad_options_exit_2(
    ew: EvalWorld, polygons: tuple[str, int], capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:
    argv = ["eval", ew.pred, "--truth", polygons[0], *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage error
        code = int(exc.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err
