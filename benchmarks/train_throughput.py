"""Training throughput and data-parallel scaling: samples/s with 1 rank vs N ranks.

The same job (synthetic world, per-rank batch fixed, so N ranks train a global batch N times as
large: weak scaling) runs with each rank count through ``run_training`` (in-process for 1 rank,
torchrun for more). Per rank count: samples/s over the training loop (rank 0's clock, set-up and
validation excluded) and the data-wait fraction (time the loop waited for its next batch ÷ loop
time). The summary line gives samples/s(N) ÷ samples/s(1) and that ÷ N (scaling efficiency).

On a machine with CUDA the ranks use the GPUs (device cuda, rank counts up to the GPU count);
otherwise the CPU, one torch thread per rank (rank counts 1 and 2).

    python benchmarks/train_throughput.py [--quick] [--steps 60] [--batch-size 8]
        [--patch-size 64] [--device auto|cpu|cuda] [--ranks 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import emit

from lczscale.config import ModelConfig
from lczscale.synth.world import write_world
from lczscale.train.launch import run_training
from lczscale.train.settings import TrainConfig, TrainJob, label_sets


def rank_counts(device: str, wanted: list[int] | None) -> list[int]:
    if wanted:
        return sorted(set(wanted) | {1})
    if device != "cuda":
        return [1, 2]
    gpus = torch.cuda.device_count()
    counts = {1, gpus} | {n for n in (2, 4, 8) if n <= gpus}
    return sorted(counts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="small world, small model, 20 steps (a smoke run)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int, default=8, help="per rank")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--ranks", type=int, nargs="+", help="rank counts (1 is always run)")
    a = ap.parse_args()
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    steps = a.steps or (20 if a.quick else 60)
    model = ModelConfig(widths=(16, 32)) if a.quick else ModelConfig()
    counts = rank_counts(device, a.ranks)
    common: dict[str, Any] = {
        "benchmark": "train_throughput", "device": device, "steps": steps,
        "batch_size_per_rank": a.batch_size, "patch_size": a.patch_size,
        "threads_per_rank": a.threads, "model": model.model_dump(mode="json"),
        "source": "tessera-zarr (synthetic, local)",
    }
    rows: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_world(root / "world", cities=2, size_km=1.92 if a.quick else 4.0, seed=0,
                    years=(2024,), truth_cube=False)
        for n in counts:
            job = TrainJob(
                source=str(root / "world" / "embeddings.zarr"),
                labels=label_sets([str(root / "world" / "lcz_coarse")]),
                out=str(root / f"model-{n}"),
                train=TrainConfig(steps=steps, batch_size=a.batch_size, patch_size=a.patch_size,
                                  log_every=steps, checkpoint_every=steps, threads=a.threads,
                                  device=device),  # type: ignore[arg-type]
                model=model,
            )
            m = run_training(job, nproc=n, progress=False, restart=True)
            rows[n] = {"samples_per_s": m["samples_per_s"],
                       "data_wait_fraction": m["data_wait_fraction"], "seconds": m["seconds"]}
            emit(common | {"name": "train_ranks", "ranks": n,
                           "global_batch": n * a.batch_size} | rows[n])
    base = rows[1]["samples_per_s"]
    speedup = {str(n): round(r["samples_per_s"] / base, 3) for n, r in rows.items() if n > 1}
    emit(common | {
        "name": "train_scaling", "ranks": counts,
        "samples_per_s": {str(n): r["samples_per_s"] for n, r in rows.items()},
        "ratio_2_to_1": speedup.get("2"),
        "speedup": speedup,
        "efficiency": {n: round(s / int(n), 3) for n, s in speedup.items()},
        "data_wait_fraction": {str(n): r["data_wait_fraction"] for n, r in rows.items()},
    })


if __name__ == "__main__":
    main()
