"""Data-parallel training for real: torchrun with 2 gloo ranks equals 1 rank with the doubled
batch, each rank reading only the blocks under its own samples; a training process killed with
SIGKILL resumes to the same weights; the CLI's city hold-out; an experiment end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lczscale.cli import main
from lczscale.config import ModelConfig
from lczscale.io.sources.registry import open_source
from lczscale.model.checkpoint import load_checkpoint
from lczscale.synth.world import write_world
from lczscale.train.launch import run_training
from lczscale.train.regions import index_regions
from lczscale.train.sampler import (
    NORMALISATION_PATCHES,
    NORMALISATION_STREAM,
    PatchSampler,
    rank_indices,
)
from lczscale.train.settings import TrainConfig, TrainJob, label_sets
from lczscale.train.stream import BlockCache

pytestmark = pytest.mark.integration
SMALL = ModelConfig(widths=(8, 16), convs_per_block=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train-world")
    summary = write_world(root / "w", cities=3, size_km=1.28, seed=1, years=(2023, 2024))
    return {"root": root, "summary": summary, "source": str(root / "w" / "embeddings.zarr"),
            "coarse": str(root / "w" / "lcz_coarse")}


def _job(world: dict[str, Any], out: Path, batch: int, steps: int = 4, **kw: Any) -> TrainJob:
    cfg = TrainConfig(steps=steps, batch_size=batch, patch_size=32, log_every=1,
                      checkpoint_every=2, prefetch=1, **kw)
    return TrainJob(source=world["source"], labels=label_sets([world["coarse"]]), out=str(out),
                    train=cfg, model=SMALL)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def test_two_ranks_equal_one_rank_with_the_doubled_batch(world: dict[str, Any],
                                                         tmp_path: Path) -> None:
    one = run_training(_job(world, tmp_path / "one", batch=4), nproc=1, progress=False)
    two = run_training(_job(world, tmp_path / "two", batch=2), nproc=2, progress=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k
    # the weights moved: the comparison is not between two untrained models
    fresh = run_training(_job(world, tmp_path / "fresh", batch=4, steps=1), progress=False)
    assert fresh["world_size"] == 1
    c = _weights(tmp_path / "fresh")
    assert any(not torch.allclose(a[k].float(), c[k].float(), atol=1e-3) for k in a)
    # reduced loss and train mIoU agree step by step (ranks saw disjoint halves of one batch)
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h1["step"] == h2["step"]
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-4)
        assert h1["train_miou"] == pytest.approx(h2["train_miou"], abs=1e-3)
    assert one["val_miou"] == pytest.approx(two["val_miou"], abs=1e-3)
    # each torchrun rank read exactly the blocks under its own samples (its training halves
    # and its share of the normalisation patches), the one rank their union
    own = [_blocks_under_samples(_job(world, tmp_path / "two", batch=2), r, 2) for r in (0, 1)]
    assert [r["blocks"] for r in two["reads_per_rank"]] == [len(b) for b in own]
    assert own[0] != own[1]
    assert [r["blocks"] for r in one["reads_per_rank"]] == [len(own[0] | own[1])]
    assert all(r["calls"] <= r["blocks"] for r in two["reads_per_rank"])
    assert 0 < one["index_bytes"] < one["index_pixels"] / 10, "the index is held packed"


def _blocks_under_samples(job: TrainJob, rank: int, world_size: int) -> set[tuple[str, int, int]]:
    """The cache blocks under the samples rank ``rank`` of ``world_size`` draws in ``job``."""
    cfg, source = job.train, open_source(job.source)
    regions = index_regions(source, job.labels, max(source.years), cfg.split,
                            cfg.loss.boundary_ignore)
    cache = BlockCache(source, max(source.years), block=cfg.read_block)
    sampler = PatchSampler(regions, cfg.patch_size, cfg.seed, cache=cache)
    specs = [sampler.spec(i) for step in range(1, cfg.steps + 1)
             for i in rank_indices(step, cfg.batch_size, rank, world_size)]
    specs += [sampler.spec(j, NORMALISATION_STREAM)
              for j in range(rank, NORMALISATION_PATCHES, world_size)]
    return {(regions[ri].zone.name, br, bc) for ri, r0, c0, _, _ in specs
            for br, bc in cache.blocks_under(sampler.patch_window(ri, r0, c0))}


def _cli_train(world: dict[str, Any], out: Path, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lczscale.cli", "train", "--source", world["source"], "--labels",
         world["coarse"], "--out", str(out), "--config", str(config), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_killed_run_resumes_to_the_same_weights(world: dict[str, Any], tmp_path: Path) -> None:
    cfg = {"steps": 60, "batch_size": 2, "patch_size": 32, "checkpoint_every": 10,
           "log_every": 5}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    # the model config of the CLI is the default one; keep it, the run is still short
    full = _cli_train(world, tmp_path / "full", tmp_path / "train.yaml")
    assert full.wait(timeout=600) == 0, full.stderr.read() if full.stderr else ""

    victim = _cli_train(world, tmp_path / "killed", tmp_path / "train.yaml")
    deadline = time.monotonic() + 600
    while not list((tmp_path / "killed" / "resume").glob("step-*")):
        assert victim.poll() is None, "training ended before its first resumable state"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "checkpoint.json").exists(), "killed too late"
    resumed = subprocess.run(
        [sys.executable, "-m", "lczscale.cli", "train", "--source", world["source"], "--labels",
         world["coarse"], "--out", str(tmp_path / "killed"), "--config",
         str(tmp_path / "train.yaml"), "--quiet"],
        capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads(resumed.stdout)
    assert metrics["resumed_from"] >= 10
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the same out dir with other settings refuses to resume into a mix of two runs
    cfg["lr"] = 1e-3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", "--source", world["source"], "--labels", world["coarse"], "--out",
                 str(tmp_path / "killed"), "--config", str(tmp_path / "other.yaml"), "--quiet"])
    assert code == 2


def test_cli_holdout_city(world: dict[str, Any], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"steps": 2, "batch_size": 2,
                                                     "patch_size": 32}))
    code = main(["train", "--source", world["source"], "--labels", world["coarse"], "--out",
                 str(tmp_path / "m"), "--config", str(tmp_path / "t.yaml"), "--holdout-city",
                 "nairobi", "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "m" / "checkpoint.json").read_text())
    assert meta["train"]["cities"] == ["basel", "zurich"]
    assert meta["train"]["train"]["split"]["holdout_cities"] == ["nairobi"]
    capsys.readouterr()
    code = main(["train", "--source", world["source"], "--labels", world["coarse"], "--out",
                 str(tmp_path / "m2"), "--holdout-city", "bern", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bern" in err
    assert "not among the label sets" in err
    assert not (tmp_path / "m2").exists()


@pytest.mark.parametrize("kind", ["transfer", "reference", "year"])
def test_experiment_end_to_end(world: dict[str, Any], tmp_path: Path, kind: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each run trains without the held-out city, maps it, and is scored on the same pixels as
    the coarse baseline and the per-pixel logistic regression."""
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"steps": 3, "batch_size": 2,
                                                     "patch_size": 32, "prefetch": 0}))
    code = main(["experiment", kind, "--world", str(world["root"] / "w"), "--out",
                 str(tmp_path / "x"), "--train-config", str(tmp_path / "t.yaml"), "--holdout",
                 "basel", "--json", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    (city,) = report["cities"]
    runs = {"transfer": ["coarse"], "reference": ["coarse", "fine"],
            "year": ["trained 2023", "trained 2024"]}[kind]
    assert city["city"] == "basel"
    assert list(city["evaluate"]) == runs
    land = city["land_pixels"]
    assert set(land) == {*runs, "baseline", "logistic (fine labels, per pixel)"}
    pixels = {s["pixels"] for s in land.values()}
    assert len(pixels) == 1
    assert pixels.pop() > 10_000
    for s in land.values():
        assert 0 <= s["miou"] <= 1
    # coarse labels of the same world are informative (well above chance for 16 classes), if
    # noisy: the synthetic reference carries ~10 % confusions and the LCZ_Filter smoothing
    assert land["baseline"]["miou"] > 0.3
    for label in runs:
        meta = json.loads((tmp_path / "x" / "basel" / label / "model" / "checkpoint.json")
                          .read_text())
        assert "basel" not in meta["train"]["cities"]
        assert meta["train"]["year"] == (2023 if label == "trained 2023" else 2024)
        ev = city["evaluate"][label]
        assert ev["bbox"] is not None
        assert {"oa_u", "oa_bu", "oa_w", "f1", "ci"} <= set(ev)
    md = (tmp_path / "x" / "report.md").read_text()
    assert "held-out city: basel" in md
    assert "logistic" in md
