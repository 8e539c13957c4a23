"""Mapping the dClimate TESSERA v1.1 layouts end to end: the Icechunk store and its plain Zarr
copy give byte-identical cubes (one dataset), land without an embedding is nodata (0) and never
water, a year missing from ``years_complete`` exits 2 before anything is written, a model of
geotessera's v1.0 store is refused, and training reads both layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lczscale.cli import main
from lczscale.errors import CheckpointError
from lczscale.io.sources.registry import open_source
from lczscale.synth import world as synth
from tests.mapping import cube_window, map_source, random_model

pytestmark = pytest.mark.integration
YEAR = 2024
LAYOUTS = ("tessera-icechunk", "tessera-dclimate-zarr")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("v11-maps")
    summary = synth.write_world(root / "w", cities=3, size_km=1.0, seed=2, years=(2023, YEAR),
                                truth_cube=False, layouts=("tessera-zarr", *LAYOUTS))
    model = random_model(root / "model", open_source(summary["layouts"]["tessera-dclimate-zarr"]))
    cubes = {}
    for layout in LAYOUTS:
        cubes[layout] = str(root / f"{layout}.zarr")
        report = map_source(summary["layouts"][layout], model, cubes[layout], year=YEAR)
        assert report.computed > 0
    return {"root": root, "summary": summary, "model": model, "cubes": cubes,
            **summary["layouts"]}


def test_icechunk_and_plain_copy_give_byte_identical_cubes(world: dict[str, Any]) -> None:
    for city in world["summary"]["cities"]:  # Zurich, Basel, Nairobi (zone 37 south)
        r, c, h, w = city["window"]
        window = (r - 64, c - 64, h + 128, w + 128)
        a = cube_window(world["cubes"]["tessera-icechunk"], city["zone"], window)
        b = cube_window(world["cubes"]["tessera-dclimate-zarr"], city["zone"], window)
        for var in a:
            assert np.array_equal(a[var], b[var]), f"{city['name']} {var}"
        assert (a["lcz"] > 0).sum() > 0.9 * h * w


def test_land_without_an_embedding_is_nodata_and_water_is_the_models(
        world: dict[str, Any]) -> None:
    c = synth.make_world(cities=3, size_km=1.0, seed=2, years=(YEAR,))[0]
    w = c.window
    got = {k: np.squeeze(v) for k, v in cube_window(
        world["cubes"]["tessera-icechunk"], c.zone.name, (w.row, w.col, w.height, w.width)
    ).items()}
    assert c.nodata.any()
    assert (got["lcz"][c.nodata] == 0).all()
    assert (got["confidence"][c.nodata] == 0).all()
    assert (got["lcz"][~c.nodata] > 0).all()
    # water has no marker in v1.1: the model classifies it; nothing forces class 17 at 255
    assert not ((got["lcz"][c.water] == 17) & (got["confidence"][c.water] == 255)).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_year_not_in_years_complete_exits_2_and_writes_nothing(
        world: dict[str, Any], layout: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import icechunk
    import zarr

    src = Path(world[layout])
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    if layout == "tessera-icechunk":
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(copy)))
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="r+")["32N"].attrs["years_complete"] = [YEAR]
        session.commit("2023 was never filled")
    else:
        root = zarr.open_group(str(copy), mode="r+", zarr_format=3)
        groups = dict(root["utm32"].attrs["geotessera:source_groups"])  # type: ignore[arg-type]
        groups["32N"] = dict(groups["32N"]) | {"years_complete": [YEAR]}
        root["utm32"].attrs["geotessera:source_groups"] = groups
        with pytest.warns(UserWarning, match="Consolidated"):
            zarr.consolidate_metadata(str(copy))
    bbox = ",".join(str(v) for v in world["summary"]["cities"][0]["bbox_lonlat"])
    out = tmp_path / "cube.zarr"
    code = main(["map", "--source", str(copy), "--model", world["model"], "--out", str(out),
                 "--year", "2023", "--bbox", bbox, "--executor", "serial", "--tile-size", "256",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "zone 32N has no complete year 2023" in err
    assert f"[{YEAR}]" in err
    assert not out.exists()


def test_a_model_of_geotessera_v10_is_refused_on_v11(world: dict[str, Any],
                                                     tmp_path: Path) -> None:
    v10 = random_model(tmp_path / "v10", open_source(world["tessera-zarr"]))
    with pytest.raises(CheckpointError, match=r"tessera/1\.0/synthetic.*tessera/1\.1/dclimate"):
        map_source(world["tessera-icechunk"], v10, str(tmp_path / "c.zarr"))


def test_cli_maps_with_source_kind_and_min_s2_obs(world: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    city = world["summary"]["cities"][1]  # Basel: no not-processed swath
    bbox = ",".join(str(v) for v in city["bbox_lonlat"])
    out = tmp_path / "thin.zarr"
    code = main(["map", "--source", world["tessera-icechunk"], "--source-kind",
                 "tessera-icechunk", "--model", world["model"], "--out", str(out), "--year",
                 str(YEAR), "--bbox", bbox, "--executor", "serial", "--tile-size", "256",
                 "--min-s2-obs", "40", "--quiet"])
    assert code == 0, capsys.readouterr().err
    r, c, h, w = city["window"]
    thin = cube_window(str(out), city["zone"], (r, c, h, w))["lcz"]
    full = cube_window(world["cubes"]["tessera-icechunk"], city["zone"], (r, c, h, w))["lcz"]
    assert 0 < (thin == 0).sum() < (full > 0).sum()
    import zarr

    attrs = json.dumps(dict(zarr.open_group(str(out), mode="r").attrs))
    assert '"min_s2_obs": 40' in attrs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_reads_both_layouts(world: dict[str, Any], layout: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"steps": 2, "batch_size": 2,
                                                     "patch_size": 32, "year": YEAR}))
    labels = world["summary"]["coarse_labels"]
    code = main(["train", "--source", world[layout], "--labels", labels, "--out",
                 str(tmp_path / "m"), "--config", str(tmp_path / "t.yaml"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "m" / "checkpoint.json").read_text())
    assert meta["input"]["dataset"] == open_source(world[layout]).dataset


def test_coverage_says_whether_an_aoi_is_covered(world: dict[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    zurich, _, nairobi = world["summary"]["cities"]
    bbox = ",".join(str(v) for v in zurich["bbox_lonlat"])
    assert main(["coverage", "--source", world["tessera-icechunk"], "--year", str(YEAR),
                 "--bbox", bbox, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["zone"] == "32N"
    assert row["complete"]
    assert row["from"] == "registry"
    assert row["embedded"] == row["tiles"] == 1
    assert 0 < row["refused_share"] < 0.01
    south = ",".join(str(v) for v in nairobi["bbox_lonlat"])
    assert main(["coverage", "--source", world["tessera-icechunk"], "--year", "2019",
                 "--bbox", south]) == 1
    assert "37S 2019: NOT complete (years_complete [2023, 2024])" in capsys.readouterr().out
    assert main(["coverage", "--source", world["tessera-dclimate-zarr"], "--year", "2024",
                 "--bbox", bbox]) == 2
    assert main(["coverage", "--source", world["tessera-icechunk"], "--year", "2024",
                 "--bbox", bbox, "--source-options", "{token: abc}"]) == 2
    assert "looks like a credential" in capsys.readouterr().err
