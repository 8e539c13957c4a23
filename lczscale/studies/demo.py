"""The embedded default main job: synthetic world → train → map → cube → pictures + report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lczscale.browse.plot import plot_confusion, plot_cube, plot_cube_fractions
from lczscale.config import GridConfig, MapConfig, OutputsConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.studies.evaluate import evaluate
from lczscale.synth.world import write_world
from lczscale.train.launch import run_training
from lczscale.train.settings import TrainConfig, TrainJob, label_sets


def run_demo(directory: Path, workers: int = 2, quick: bool = False) -> Path:
    """Run the whole pipeline in ``directory``; returns the path of the Markdown report."""
    directory.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    world = write_world(directory / "world", cities=2, size_km=2.0 if quick else 4.0, seed=0)
    timings["synth"] = time.perf_counter() - t
    source = str(directory / "world" / "embeddings.zarr")
    coarse = str(world["coarse_labels"])
    model_dir = str(directory / "model")

    t = time.perf_counter()
    job = TrainJob(source=source, labels=label_sets([str(directory / "world" / "lcz_coarse")]),
                   out=model_dir,
                   train=TrainConfig(steps=40 if quick else 300, batch_size=8, patch_size=64))
    train_metrics = run_training(job, restart=True)
    timings["train"] = time.perf_counter() - t

    cube = str(directory / "lcz.zarr")
    t = time.perf_counter()
    report = run_map(MapConfig(
        source=source, model=model_dir, out=cube, executor="dask", workers=workers,
        grid=GridConfig(tile_size=1024), stitch=StitchConfig(patch_size=256, batch_size=4),
        outputs=OutputsConfig(fractions=True),  # + 100 m fractions, 100 m map, seam layer
    ))
    timings["map"] = time.perf_counter() - t

    scores = evaluate(cube, str(directory / "world" / "truth.zarr"), baseline=coarse)
    pictures = []
    for city in world["cities"]:
        bbox = tuple(city["bbox_lonlat"])
        png = directory / f"map_{city['name'].lower()}.png"
        plot_cube(cube, png, bbox=bbox)  # type: ignore[arg-type]
        truth_png = directory / f"truth_{city['name'].lower()}.png"
        plot_cube(str(directory / "world" / "truth.zarr"), truth_png, bbox=bbox)  # type: ignore
        pictures += [png.name, truth_png.name]
        if city is world["cities"][0]:
            frac_png = directory / f"fractions_{city['name'].lower()}.png"
            plot_cube_fractions(cube, frac_png, bbox=bbox)  # type: ignore[arg-type]
            pictures.append(frac_png.name)
    plot_confusion(scores["confusion"], directory / "confusion.png",
                   title="10 m model vs truth (rows: truth)")
    pictures.append("confusion.png")
    summary: dict[str, Any] = {
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "train": {k: v for k, v in train_metrics.items() if k != "history"},
        "map": report.summary(),
        "eval": {k: v for k, v in scores.items() if k != "confusion"},
        "pictures": pictures,
    }
    (directory / "report.json").write_text(json.dumps(summary, indent=2))
    return _markdown(directory, summary)


def _markdown(directory: Path, s: dict[str, Any]) -> Path:
    ev = s["eval"]
    lines = [
        "# lczscale demo report",
        "",
        f"Cube: `{s['map']['cube']}` — {s['map']['computed']} tiles, "
        f"{s['map']['core_pixels']:,} px in {s['map']['seconds']} s "
        f"({s['map']['pixels_per_second']:,} px/s).",
        f"Timings (s): {s['timings_s']}",
        "",
        "| | mIoU | OA | kappa |",
        "|---|---|---|---|",
        f"| 10 m model (trained on 100 m labels) | {ev['miou']:.3f} | {ev['oa']:.3f} "
        f"| {ev['kappa']:.3f} |",
        f"| baseline: 100 m labels upsampled | {ev['baseline_miou']:.3f} | "
        f"{ev['baseline_oa']:.3f} | {ev['baseline_kappa']:.3f} |",
        "",
        "Per-class IoU (model / baseline):",
        "",
        "| LCZ | model | baseline |",
        "|---|---|---|",
    ]
    for label, iou in ev["per_class_iou"].items():
        base = ev["baseline_per_class_iou"].get(label, 0.0)
        lines.append(f"| {label} | {iou:.3f} | {base:.3f} |")
    lines += ["", "Pictures: " + ", ".join(s["pictures"]), ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
