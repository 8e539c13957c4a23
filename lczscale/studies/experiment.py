"""The studies' three experiments as one command each: train → map the held-out city → score.

- ``transfer``: train on every city but one (coarse labels), map the held-out city at 10 m and
  score it against the fine truth, beside the naive baseline (the coarse labels upsampled) and a
  per-pixel logistic regression trained on the *fine* truth of the training cities;
- ``reference``: the same, trained once on coarse and once on fine labels (does better
  reference data help?);
- ``year``: trained on one year's embeddings and on the test year's, both mapped in the test
  year (does a model survive phenology and sensor changes between years?).

Every score of one city is computed on the same pixels: the held-out city's labelled land pixels
(``compare``), plus the full ``evaluate`` of the cube (water and 100 m agreement included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from lczscale.config import (
    GridConfig,
    MapConfig,
    ModelConfig,
    StitchConfig,
    StrictSettings,
    auto_overlap,
)
from lczscale.errors import ConfigError
from lczscale.execute.run import run_map
from lczscale.io.cube.store import read_window
from lczscale.io.labels.reader import read_labels
from lczscale.io.sources.registry import open_source
from lczscale.model.unet import receptive_field
from lczscale.studies.evaluate import confusion, evaluate, scores
from lczscale.studies.pixel_baseline import fit_logistic, logistic_confusion
from lczscale.train.launch import run_training
from lczscale.train.regions import load_regions
from lczscale.train.settings import LabelSet, SplitConfig, TrainConfig, TrainJob

Kind = Literal["transfer", "reference", "year"]


class ExperimentConfig(StrictSettings):
    """One experiment: which source, which coarse and fine labels, which cities are held out."""
    kind: Kind
    source: str
    coarse: tuple[LabelSet, ...] = Field(min_length=2, description="coarse labels, per city")
    fine: tuple[LabelSet, ...] = Field((), description="fine labels per city (same names)")
    truth: str = Field(description="the fine reference cube the maps are scored against")
    holdout: tuple[str, ...] = Field((), description="cities tested in turn; default the last")
    year: int | None = Field(None, description="test year (default: the source's latest)")
    train_year: int | None = Field(None, description="kind 'year': the other training year")
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    nproc: int = Field(1, ge=1)
    tile_size: int = Field(512, ge=64)
    patch_size: int = Field(
        128, ge=16, description="mapping patch; raised to fit the model's receptive field")
    logistic: bool = True


def from_world(world_dir: str | Path, kind: Kind, **overrides: Any) -> ExperimentConfig:
    """An experiment on a synthetic world written by ``lczscale synth``."""
    w = json.loads((Path(world_dir) / "world.json").read_text())
    boxes = {c["name"]: tuple(c["bbox_lonlat"]) for c in w["cities"]}
    coarse = tuple(LabelSet(name=n, path=p, bbox=boxes[n]) for n, p in
                   w["coarse_per_city"].items())
    fine = tuple(LabelSet(name=n, path=w["truth"], bbox=boxes[n]) for n in boxes)
    base: dict[str, Any] = {"kind": kind, "source": w["embeddings"], "coarse": coarse,
                            "fine": fine, "truth": w["truth"], "year": max(w["years"])}
    if kind == "year":
        base["train_year"] = min(w["years"])
    return ExperimentConfig.model_validate(base | overrides)


def run_experiment(cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run every held-out city's trainings, maps and scores; write report.json and report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in cfg.coarse]
    holdout = cfg.holdout or (names[-1],)
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise ConfigError(f"holdout {unknown} is not a city of the experiment ({names})")
    fine = {f.name: f for f in cfg.fine}
    if (cfg.kind == "reference" or cfg.logistic) and set(fine) != set(names):
        raise ConfigError(f"kind {cfg.kind} needs fine labels for every city {names} (fine=)")
    if cfg.kind == "year" and cfg.train_year is None:
        raise ConfigError("kind 'year' needs train_year (the year to train on)")
    source = open_source(cfg.source)
    year = cfg.year if cfg.year is not None else max(source.years)
    results = []
    for city in holdout:
        runs = _runs(cfg, city, year, fine)
        rows: dict[str, Any] = {}
        for label, (labels, train_year) in runs.items():
            model_dir = out / city / label / "model"
            job = TrainJob(source=cfg.source, labels=labels, out=str(model_dir),
                           model=cfg.model, train=cfg.train.model_copy(update={
                               "year": train_year, "split": cfg.train.split.model_copy(
                                   update={"holdout_cities": (city,)})}))
            metrics = run_training(job, nproc=cfg.nproc, progress=progress, restart=True)
            cube = str(out / city / label / "lcz.zarr")
            _map(cfg, str(model_dir), cube, year, _city(cfg, city).bbox)
            rows[label] = {"cube": cube, "train": {k: v for k, v in metrics.items()
                                                   if k != "history"}}
        results.append(_score(cfg, city, year, rows, fine, source))
    report = {"kind": cfg.kind, "year": year, "config": cfg.model_dump(mode="json"),
              "cities": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    return report


def _city(cfg: ExperimentConfig, name: str) -> LabelSet:
    return next(c for c in cfg.coarse if c.name == name)


def _runs(cfg: ExperimentConfig, city: str, year: int, fine: dict[str, LabelSet]) -> dict[
        str, tuple[tuple[LabelSet, ...], int]]:
    coarse = cfg.coarse
    if cfg.kind == "transfer":
        return {"coarse": (coarse, year)}
    if cfg.kind == "reference":
        return {"coarse": (coarse, year), "fine": (tuple(fine[c.name] for c in coarse), year)}
    assert cfg.train_year is not None
    return {f"trained {cfg.train_year}": (coarse, cfg.train_year),
            f"trained {year}": (coarse, year)}


def _map(cfg: ExperimentConfig, model: str, cube: str, year: int,
         bbox: tuple[float, float, float, float] | None) -> None:
    if bbox is None:
        raise ConfigError("each held-out city needs a bbox (LabelSet.bbox) to be mapped")
    report = run_map(MapConfig(
        source=cfg.source, model=model, out=cube, bbox=bbox, year=year, executor="serial",
        grid=GridConfig(tile_size=cfg.tile_size),
        stitch=StitchConfig(patch_size=_map_patch(cfg), batch_size=4)), progress=False)
    if report.failed:
        raise ConfigError(f"mapping {cube} failed on {report.failed} tiles; see lczscale status")


def _map_patch(cfg: ExperimentConfig) -> int:
    """The mapping patch: ``cfg.patch_size``, or the smallest multiple of 32 that leaves a
    stride for the model's overlap (a deeper U-Net needs larger patches)."""
    need = 2 * auto_overlap(receptive_field(cfg.model))
    return max(cfg.patch_size, -(-need // 32) * 32)


def _score(cfg: ExperimentConfig, city: str, year: int, rows: dict[str, Any],
           fine: dict[str, LabelSet], source: Any) -> dict[str, Any]:
    """Scores of every run, the coarse baseline and the logistic regression on the same pixels."""
    coarse = _city(cfg, city)
    truth = LabelSet(name=city, path=cfg.truth, bbox=coarse.bbox)
    test = load_regions(source, (truth,), year, SplitConfig(val_fraction=0.0), None)
    cms: dict[str, np.ndarray] = {k: np.zeros((18, 18), np.int64) for k in [*rows, "baseline"]}
    for r in test:
        labels = r.labels.unpack()
        keep = labels > 0
        t = np.where(keep, labels, 0)
        for label, row in rows.items():
            cms[label] += confusion(read_window(row["cube"], r.zone, year, r.window), t)
        cms["baseline"] += confusion(read_labels(coarse.path, r.zone, r.window), t)
    if cfg.logistic:
        train_sets = tuple(fine[c.name] for c in cfg.coarse if c.name != city)
        regions = load_regions(source, train_sets, year, cfg.train.split, None)
        model, mean, std = fit_logistic(regions, seed=cfg.train.seed)
        cms["logistic (fine labels, per pixel)"] = logistic_confusion(model, mean, std, test)
    land = {k: _brief(scores(v)) for k, v in cms.items()}
    full = {label: {k: v for k, v in evaluate(row["cube"], cfg.truth, year=year,
                                              baseline=coarse.path, bbox=coarse.bbox).items()
                    if k not in ("confusion", "baseline_confusion")}
            for label, row in rows.items()}
    return {"city": city, "land_pixels": land, "evaluate": full,
            "train": {k: v["train"] for k, v in rows.items()}}


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("miou", "oa", "kappa", "pixels", "per_class_iou")}


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# lczscale experiment: {report['kind']} (test year {report['year']})", ""]
    for city in report["cities"]:
        lines += [f"## held-out city: {city['city']}", "",
                  "Scored on the held-out city's labelled land pixels against the fine truth:",
                  "", "| method | mIoU | OA | kappa | pixels |", "|---|---|---|---|---|"]
        for label, s in city["land_pixels"].items():
            name = {"baseline": "baseline: coarse labels upsampled"}.get(label, label)
            lines.append(f"| {name} | {s['miou']:.3f} | {s['oa']:.3f} | {s['kappa']:.3f} | "
                         f"{s['pixels']:,} |")
        lines += ["", "Whole-cube evaluation (water and 100 m agreement included):", "",
                  "| run | mIoU | baseline mIoU | 100 m agreement OA | val mIoU (train) |",
                  "|---|---|---|---|---|"]
        for label, ev in city["evaluate"].items():
            agree = (ev.get("agreement_100m") or {}).get("oa")
            val = city["train"][label].get("val_miou")
            lines.append(f"| {label} | {ev['miou']:.3f} | {ev['baseline_miou']:.3f} | "
                         f"{agree if agree is not None else '–'} | "
                         f"{val if val is not None else '–'} |")
        lines.append("")
    return "\n".join(lines)
