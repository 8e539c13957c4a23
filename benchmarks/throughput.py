"""End-to-end mapping throughput vs model-only, measured in one run on one machine.

end-to-end: the wall time of mapping a synthetic city on a running Dask cluster (read with
halo → de-quantise → predict → blend → write → ledger), after an untimed one-tile map has
warmed the workers up (imports, the model, the store's metadata). model-only: the time the
bare forward pass needs for exactly the patches the map evaluated (seconds per patch measured
on the same workers, concurrently, with the same batch size, thread count and device, just
before and just after the map; times the patches each worker evaluated). ``ratio`` =
px_per_s ÷ model_px_per_s: how much of everything else hides behind model compute (target
≥ 0.9). Pixels are the pixels that got a class (valid input); ``core_px_per_s`` counts every
pixel of the tiles written, no-data included.

The map runs with the default read-ahead (bands read on a thread while the model runs, line
``end_to_end``) and with one whole read before compute (``end_to_end_no_read_ahead``),
alternating, 3 times each (quick: 2 and 1); a line reports the fastest run of its kind (the
least disturbed on a shared machine) and ``ratio_all_runs`` lists every run's ratio.

    python benchmarks/throughput.py [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from common import emit, model_summary, random_model, record, shared_world, workdir
from distributed import Client, LocalCluster

from lczscale.config import GridConfig, InferenceConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.core.tiling import patch_amplification, read_amplification
from lczscale.execute.run import MapReport, run_map
from lczscale.infer.predict import pick_device, pinned_threads
from lczscale.model.unet import LczUNet, location_channels
from lczscale.planning.map_plan import prepare


def model_forward_seconds(cfg: ModelConfig, patch: int, batch: int, threads: int,
                          patches: int, device: str = "cpu") -> float:
    """Seconds the bare forward pass takes for ``patches`` patches (after one warm-up)."""
    dev = torch.device(device)
    model = LczUNet(cfg).eval().to(dev)
    x = torch.randn(batch, cfg.in_dim + location_channels(cfg), patch, patch, device=dev)
    with pinned_threads(threads), torch.inference_mode():
        model(x[:1])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        done = 0
        while done < patches:
            # GPU batches are padded to the batch size in a map; CPU ones are not
            n = batch if dev.type == "cuda" else min(batch, patches - done)
            model(x[:n])
            done += min(batch, patches - done)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0


def _warm() -> None:
    """Import what a tile needs on a worker before the clock starts."""
    import lczscale.execute.tile
    import lczscale.io.sources.tessera_zarr  # noqa: F401


def settings(cfg: MapConfig, workers: int, device: str, quick: bool) -> dict[str, Any]:
    """The sizes and settings of a map run, with the halo and amplification of its plan."""
    plan = prepare(cfg)
    tasks = plan.planned
    halo = (sum(t.read.height + t.read.width - t.core.height - t.core.width for t in tasks)
            / (4 * len(tasks)))
    return {
        "workers": workers, "threads_per_worker": cfg.threads_per_worker, "device": device,
        "tile_size": cfg.grid.tile_size, "halo_mean_px": round(halo, 1),
        "patch_size": cfg.stitch.patch_size, "stride": plan.lattice.stride,
        "batch_size": cfg.stitch.batch_size, "dtype": cfg.inference.dtype,
        "channels_last": cfg.inference.channels_last, "read_ahead": cfg.inference.read_ahead,
        "band_rows": cfg.inference.band_rows, "source": "tessera-zarr (synthetic, local files)",
        "read_amplification": round(read_amplification(tasks), 4),
        "patch_amplification": round(patch_amplification(tasks, plan.lattice), 4),
        "quick": quick,
    }


def figures(report: MapReport, model_wall: float, patches: int) -> dict[str, Any]:
    e2e = report.valid_pixels / report.seconds
    model_only = report.valid_pixels / model_wall
    return {
        "px_per_s": round(e2e, 1), "model_px_per_s": round(model_only, 1),
        "ratio": round(e2e / model_only, 4), "km2_per_hour": round(e2e * 3600 * 1e-4, 2),
        "core_px_per_s": round(report.core_pixels / report.seconds, 1),
        "tiles": report.computed, "failed": len(report.failed),
        "valid_pixels": report.valid_pixels, "core_pixels": report.core_pixels,
        "patches": patches, "wall_s": round(report.seconds, 3),
        "model_wall_s": round(model_wall, 3),
        "read_wait_s": round(sum(r.read_s for r in report.results), 3),
        "predict_s": round(sum(r.predict_s for r in report.results), 3),
        "write_s": round(sum(r.write_s for r in report.results), 3),
    }


def run(quick: bool, workers: int | None = None) -> list[dict[str, Any]]:
    device = pick_device("auto").type
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    n = workers or (gpus or min(2, os.cpu_count() or 1))
    size_km = 4.0 if quick else 16.0
    world = shared_world(size_km) if quick else shared_world(size_km, ("tessera-zarr",))
    cfg = ModelConfig()
    root = workdir()
    model = random_model(root / "model-default", world["embeddings"], cfg)
    tile, patch, batch = (256, 128, 4) if quick else (1024, 256, 8)
    probe = 6 if quick else 16  # patches per worker in each model-only measurement
    lines: list[dict[str, Any]] = []
    on = "cuda" if gpus else "cpu"
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env={"OMP_NUM_THREADS": "1"},
                      resources={"GPU": 1} if gpus else None) as cluster, \
            Client(cluster) as client:
        client.run(_warm)

        def per_patch() -> float:
            """Seconds per patch of the bare model, the slowest worker's."""
            got = client.run(model_forward_seconds, cfg, patch, batch, 1, probe, on)
            return max(got.values()) / probe

        # The same tile size with one band per eighth of a tile, as the defaults (2048, 256).
        variants = {"end_to_end": InferenceConfig(band_rows=max(32, tile // 8)),
                    "end_to_end_no_read_ahead": InferenceConfig(read_ahead=False)}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        sizes: dict[str, dict[str, Any]] = {}
        # an untimed map of one tile first: workers load the model and open the store
        west, south, east, north = world["cities"][0]["bbox_lonlat"]
        cx, cy = (west + east) / 2, (south + north) / 2
        run_map(MapConfig(source=world["embeddings"], model=model, workers=n,
                          out=str(Path(root) / "warm-up.zarr"), executor="dask",
                          scheduler_address=cluster.scheduler_address,
                          bbox=(cx - 1e-4, cy - 1e-4, cx + 1e-4, cy + 1e-4),
                          grid=GridConfig(tile_size=tile), device=on,
                          stitch=StitchConfig(patch_size=patch, batch_size=batch)),
                progress=False)
        # alternating, as the machine's load drifts; quick: read-ahead twice, the other once
        names = list(variants)
        schedule = [names[0], names[1], names[0]] if quick else names * 3
        for rep, name in enumerate(schedule):
            inference = variants[name]
            map_cfg = MapConfig(
                source=world["embeddings"], model=model,
                out=str(Path(root) / f"{name}-{rep}.zarr"), executor="dask", workers=n,
                scheduler_address=cluster.scheduler_address, grid=GridConfig(tile_size=tile),
                stitch=StitchConfig(patch_size=patch, batch_size=batch),
                inference=inference, device=on,
            )
            sizes[name] = settings(map_cfg, n, device, quick)
            before = per_patch()  # model-only just before and after the map
            report = run_map(map_cfg, progress=False)
            after = per_patch()
            patches = sum(r.patches for r in report.results)
            model_wall = (before + after) / 2 * -(-patches // n)
            runs[name].append(figures(report, model_wall, patches))
        for name, got in runs.items():
            best = max(got, key=lambda f: f["px_per_s"])  # the least disturbed run
            lines.append(record(
                name, **sizes[name], **best, runs=len(got),
                ratio_all_runs=[f["ratio"] for f in got], model_probe_patches=probe,
                model=model_summary(cfg)))
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, help="default: the GPUs, else min(2, CPUs)")
    a = ap.parse_args()
    for line in run(a.quick, a.workers):
        emit(line)
