"""The same synthetic world written in each layout of a family, mapped with the same model,
gives the same LCZ cube: TESSERA Zarr == TESSERA NPY tiles; AlphaEarth COGs == the AlphaEarth
global mosaic on the pixels they share. Also through the CLI (``--layout``, detection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lczscale.cli import main
from lczscale.config import GridConfig
from lczscale.io.sources.registry import open_source
from lczscale.synth import world as synth
from tests.mapping import cube_window, map_source, random_model

pytestmark = pytest.mark.integration
YEAR = 2024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Zurich, Basel and Nairobi (south of the equator), 1.5 km each, in every layout."""
    root = tmp_path_factory.mktemp("families")
    summary = synth.write_world(root / "w", cities=3, size_km=1.5, seed=2, years=(YEAR,),
                                shard_size=64, truth_cube=False,
                                layouts=("tessera-zarr", "tessera-tiles", "aef-cogs",
                                         "aef-mosaic"))
    return {"root": root, "summary": summary, "dir": root / "w"}


def test_tessera_zarr_and_tiles_give_the_same_cube(world: dict[str, Any]) -> None:
    d: Path = world["dir"]
    model = random_model(world["root"] / "tessera-model", open_source(str(d / "embeddings.zarr")))
    cubes = {}
    for name, src in (("zarr", d / "embeddings.zarr"), ("tiles", d / "tiles")):
        out = str(world["root"] / f"tessera-{name}.zarr")
        report = map_source(str(src), model, out)
        assert report.computed > 0
        cubes[name] = out
    for city in world["summary"]["cities"]:
        r, c, h, w = city["window"]
        window = (r - 64, c - 64, h + 128, w + 128)
        a = cube_window(cubes["zarr"], city["zone"], window)
        b = cube_window(cubes["tiles"], city["zone"], window)
        for var in a:
            assert np.array_equal(a[var], b[var]), f"{city['name']} {var}"
        assert (a["lcz"] > 0).sum() > 0.5 * h * w


def test_alphaearth_cogs_and_mosaic_give_the_same_cube(world: dict[str, Any]) -> None:
    d: Path = world["dir"]
    cogs = open_source(str(d / "aef"))
    model = random_model(world["root"] / "aef-model", cogs)
    grid = GridConfig(kind="global", tile_size=128)
    out = {}
    for name, src in (("cogs", d / "aef"), ("mosaic", d / "aef-mosaic.zarr")):
        out[name] = str(world["root"] / f"aef-{name}.zarr")
        map_source(str(src), model, out[name], grid=grid)
    compared = 0
    for city in world["summary"]["cities"]:
        bbox = city["bbox_lonlat"]
        import lczscale

        a = lczscale.open_cube(out["cogs"], bbox=tuple(bbox), zone="global")
        b = lczscale.open_cube(out["mosaic"], bbox=tuple(bbox), zone="global")
        la, lb = a["lcz"].values, b["lcz"].values
        shared = (la > 0) & (lb > 0)
        assert shared.mean() > 0.5, city["name"]
        assert np.array_equal(la[shared], lb[shared]), city["name"]
        assert np.array_equal(a["confidence"].values[shared], b["confidence"].values[shared])
        compared += int(shared.sum())
    assert compared > 10_000


def test_cli_writes_a_layout_and_map_says_what_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", str(tmp_path / "w"), "--cities", "1", "--size-km", "1",
                 "--years", str(YEAR), "--layout", "tessera-tiles"]) == 0
    assert (tmp_path / "w" / "tiles" / "tessera_metadata.json").is_file()
    assert not (tmp_path / "w" / "embeddings.zarr").exists()
    model = random_model(tmp_path / "m", open_source(str(tmp_path / "w" / "tiles")))
    capsys.readouterr()
    code = main(["map", "--source", str(tmp_path / "w" / "tiles"), "--model", model,
                 "--out", str(tmp_path / "c.zarr"), "--executor", "serial", "--tile-size", "128",
                 "--patch-size", "64", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "kind tessera-tiles" in err
    assert "TESSERA" in err


def test_training_on_alphaearth_and_the_128d_model_refuses_it(world: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """AlphaEarth trains with its sign-square de-quantisation; a model trained on 128-d TESSERA
    refuses the 64-d AlphaEarth source with an error naming both."""
    from lczscale.config import ModelConfig
    from lczscale.errors import CheckpointError
    from lczscale.train.loop import train_job
    from lczscale.train.settings import LabelSet, TrainConfig, TrainJob

    d: Path = world["dir"]
    labels = (LabelSet(name="coarse", path=world["summary"]["coarse_labels"]),)
    small = ModelConfig(widths=(8, 16), convs_per_block=1)
    cfg = TrainConfig(steps=3, batch_size=2, patch_size=32, prefetch=0)
    metrics = train_job(TrainJob(source=str(d / "aef"), labels=labels, out=str(tmp_path / "aef"),
                                 train=cfg, model=small), progress=False)
    meta = json.loads((tmp_path / "aef" / "checkpoint.json").read_text())
    assert meta["input"]["dequantisation"] == "sign_square"
    assert meta["model"]["in_dim"] == 64
    assert np.isfinite(metrics["final_loss"])
    map_source(str(d / "aef"), str(tmp_path / "aef"), str(tmp_path / "aef.zarr"))

    train_job(TrainJob(source=str(d / "embeddings.zarr"), labels=labels,
                       out=str(tmp_path / "tessera"), train=cfg, model=small), progress=False)
    with pytest.raises(CheckpointError, match=r"128-d tessera.*64-d alphaearth"):
        map_source(str(d / "aef"), str(tmp_path / "tessera"), str(tmp_path / "refused.zarr"))
    assert not (tmp_path / "refused.zarr").exists()
