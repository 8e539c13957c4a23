"""Model-only vs end-to-end mapping throughput, measured in one run on one machine.

model-only: the time the model's forward pass alone needs for exactly the patches the map run
evaluated (patches × seconds per patch, measured in this process with the same batch size and
thread count, divided by the worker count). end-to-end: the wall time of mapping the same tiles
on a running Dask cluster (read with halo → de-quantise → predict → blend → write → ledger).
The ratio says how much of the rest of the pipeline hides behind model compute.

    python benchmarks/throughput.py [--size-km 8] [--workers 2] [--tile-size 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import emit
from distributed import Client, LocalCluster

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.io.sources import open_source
from lczscale.model.checkpoint import InputSpec, save_untrained
from lczscale.model.predict import pinned_threads
from lczscale.model.unet import LczUNet, location_channels
from lczscale.synth import write_world


def random_model(directory: Path, source_url: str, cfg: ModelConfig) -> None:
    """A checkpoint with random weights: throughput does not depend on the weights' values."""
    source = open_source(source_url)
    save_untrained(directory, cfg, InputSpec(kind="tessera", dataset=source.dataset,
                                             dimensions=cfg.in_dim,
                                             dequantisation="per_pixel_scale"))


def model_forward_seconds(cfg: ModelConfig, patch: int, batch: int, threads: int,
                          patches: int) -> float:
    """Seconds the bare forward pass takes for ``patches`` patches (after one warm-up)."""
    model = LczUNet(cfg).eval()
    x = torch.randn(batch, cfg.in_dim + location_channels(cfg), patch, patch)
    with pinned_threads(threads), torch.inference_mode():
        model(x[:1])
        t0 = time.perf_counter()
        done = 0
        while done < patches:
            n = min(batch, patches - done)
            model(x[:n])
            done += n
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-km", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    cfg = ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = write_world(root / "world", cities=1, size_km=a.size_km, seed=0,
                            years=(2024,), truth_cube=False)
        source = world["embeddings"]
        random_model(root / "model", source, cfg)
        stitch = StitchConfig(patch_size=a.patch_size, batch_size=a.batch_size)
        with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            client.run(lambda: None)  # workers are up before the clock starts
            map_cfg = MapConfig(
                source=source, model=str(root / "model"), out=str(root / "cube.zarr"),
                executor="dask", workers=a.workers, scheduler_address=cluster.scheduler_address,
                grid=GridConfig(tile_size=a.tile_size), stitch=stitch,
                threads_per_worker=a.threads,
            )
            report = run_map(map_cfg, progress=False)
            patches = sum(r.patches for r in report.results)
            # model-only on the same workers, concurrently, for the same number of patches
            share = -(-patches // a.workers)
            seconds = client.run(model_forward_seconds, cfg, a.patch_size, a.batch_size,
                                 a.threads, share)
        model_wall = max(seconds.values())
        per_patch = model_wall / share
        e2e = report.core_pixels / report.seconds
        model_only = report.core_pixels / model_wall
        emit({
            "benchmark": "throughput",
            "workers": a.workers, "threads_per_worker": a.threads, "tile_size": a.tile_size,
            "patch_size": a.patch_size, "batch_size": a.batch_size, "dtype": "float32",
            "model": cfg.model_dump(mode="json"), "source": "tessera-zarr (synthetic, local)",
            "tiles": report.computed, "core_pixels": report.core_pixels,
            "valid_pixels": report.valid_pixels, "patches": patches,
            "patch_pixels_per_core_pixel": round(patches * a.patch_size**2 / report.core_pixels,
                                                 3),
            "model_patch_px_per_s_per_worker": round(a.patch_size**2 / per_patch, 1),
            "model_only_px_per_s": round(model_only, 1),
            "end_to_end_px_per_s": round(e2e, 1),
            "end_to_end_km2_per_hour": round(e2e * 3600 * 1e-4, 2),
            "ratio_end_to_end_to_model_only": round(e2e / model_only, 3),
            "read_s": round(sum(r.read_s for r in report.results), 2),
            "predict_s": round(sum(r.predict_s for r in report.results), 2),
            "write_s": round(sum(r.write_s for r in report.results), 2),
            "wall_s": round(report.seconds, 2),
        })


if __name__ == "__main__":
    main()
