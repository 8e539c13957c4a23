"""The real Sydney LCZ references end to end: a synthetic embedding world placed over central
Sydney, a model trained on the LCZ Generator raster there, the map scored against the
GeoClimate (OpenStreetMap) polygons with the LCZ Generator's measures and their intervals.

The embeddings are synthetic, so the scores say nothing about accuracy: this checks the
plumbing on real references (their CRSs, encodings — GeoClimate's 101–107 for A–G — extents
and polygons), not skill. The files are read from the shared real-data folder beside the
repository, never copied into it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lczscale.cli import main

pytestmark = pytest.mark.integration

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "lcz-sydney"
RASTER = REAL / "rasterMD.tif"  # LCZ Generator output, EPSG:4326 on the global map's grid
POLYGONS = REAL / "sidney_rsu_lcz.geojson"  # GeoClimate RSUs, EPSG:32756, codes 1–10, 101–107
MEASURES = ("oa", "oa_u", "oa_bu", "oa_w", "miou", "kappa")


@pytest.fixture(scope="module")
def sydney(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real LCZ data folder {REAL} is absent; CI needs ../shared/realdata")
        pytest.skip(f"real LCZ data folder {REAL} is absent on this machine")
    return tmp_path_factory.mktemp("sydney")


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_train_on_the_generator_raster_and_score_on_geoclimate_polygons(
    sydney: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = sydney
    assert main(["synth", str(d / "w"), "--sites", "sydney", "--size-km", "2", "--years",
                 "2024"]) == 0
    world = _json(capsys)
    (city,) = world["cities"]
    assert (city["name"], city["zone"]) == ("sydney", "utm56")
    bbox = ",".join(f"{v:.6f}" for v in city["bbox_lonlat"])
    source = str(d / "w" / "embeddings.zarr")

    assert main(["train", "--source", source, "--labels", str(RASTER), "--bbox", bbox,
                 "--out", str(d / "m"), "--steps", "3", "--quiet"]) == 0
    meta = json.loads((d / "m" / "checkpoint.json").read_text())
    assert meta["train"]["labels"][0]["path"] == str(RASTER)
    assert meta["metrics"]["regions"] == 1, "the raster's labels under the city were read"
    capsys.readouterr()

    assert main(["map", "--source", source, "--model", str(d / "m"), "--out",
                 str(d / "lcz.zarr"), "--bbox", bbox, "--year", "2024", "--quiet"]) == 0
    assert not _json(capsys)["failed"]

    assert main(["eval", str(d / "lcz.zarr"), "--truth", str(POLYGONS), "--report",
                 str(d / "report"), "--bootstrap", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ci_units"] == "polygons"
    assert result["units"] > 100, "hundreds of RSUs lie in the 2 km city"
    assert result["pixels"] > 10_000
    for key in MEASURES:
        assert result[key] is not None, key
        lo, hi = result["ci"][key]
        assert lo <= result[key] <= hi, key
    assert set(result["f1"]) == set(result["f1_ci"])
    assert {"A", "B", "G"} & set(result["f1"]), "GeoClimate's 101–107 read as A–G"
    md = (d / "report" / "report.md").read_text()
    for name in ("OA_u (urban 1–10)", "OA_bu (built vs natural)", "OA_w (weighted)"):
        assert f"| {name} | {result[name.split()[0].lower()]:.3f} |" in md
    assert "bootstrap replicates over" in md
    assert (d / "report" / "confusion.png").stat().st_size > 10_000
