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

``--stream``: streamed training (the default, ``TrainConfig.data = "stream"``) against
in-memory training (``data = "memory"``), on 2 cities and on 12 cities of one synthetic world
(written once; the label sets are its per-city coarse labels). Each of the four configurations
trains the same fixed number of steps in a fresh child process, so its peak resident memory
(``ru_maxrss``: set-up, loop and validation) is its own. One line ``"name": "train_stream"``:
samples/s of each (over the training loop only), peak RSS of each, streamed ÷ in-memory
samples/s on the 12 cities (target ≥ 0.8) and the streamed peak RSS with 12 cities ÷ with 2
(target ≤ 1.1: memory flat in the labelled area), with the block reads and cache hits.

    python benchmarks/train_throughput.py --stream [--quick] [--steps N] [--size-km S]
        [--cache-mb N] [--read-block PX]   (default: TrainConfig's)
    python benchmarks/run.py --only train_stream [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import emit, record, set_workdir, workdir

from lczscale.config import ModelConfig
from lczscale.synth.world import write_world
from lczscale.train.launch import run_training
from lczscale.train.settings import LabelSet, TrainConfig, TrainJob, label_sets

HERE = Path(__file__).resolve().parent


def rank_counts(device: str, wanted: list[int] | None) -> list[int]:
    if wanted:
        return sorted(set(wanted) | {1})
    if device != "cuda":
        return [1, 2]
    gpus = torch.cuda.device_count()
    counts = {1, gpus} | {n for n in (2, 4, 8) if n <= gpus}
    return sorted(counts)


# ---- streamed vs in-memory training, 2 vs 12 cities (--stream) -------------------------------

STREAM_CITIES = (2, 12)
STREAM_DATA = ("stream", "memory")
BYTES_PER_PX = 132  # TESSERA in memory: 128 int8 codes + a float32 scale
TARGET_RATIO = 0.8  # streamed samples/s ≥ 0.8 × in-memory (12 cities)
TARGET_RSS_RATIO = 1.1  # streamed peak RSS, 12 cities ≤ 1.1 × 2 cities


def stream_settings(quick: bool, steps: int | None = None, size_km: float | None = None,
                    cache_mb: int | None = None, read_block: int | None = None
                    ) -> dict[str, Any]:
    """The sizes and settings of the --stream benchmark (quick: a 3 km world, 40 steps); the
    cache and block size are training's defaults unless given."""
    defaults = TrainConfig()
    return {"size_km": size_km or (3.0 if quick else 6.0), "steps": steps or (40 if quick else
            100), "batch_size": 8, "patch_size": 64, "prefetch": 2, "threads": 1,
            "cache_mb": cache_mb or defaults.cache_mb,
            "read_block": read_block or defaults.read_block, "device": "cpu",
            "model": {"widths": [16, 32, 64]}}


def stream_child(job_path: str) -> dict[str, Any]:
    """One configuration, in its own process: train the job, report samples/s and peak RSS."""
    from lczscale.train import loop

    job = TrainJob.model_validate_json(Path(job_path).read_text())
    # Instrumentation only (the loop is not changed): where set-up ends and the loop starts,
    # where the loop ends and validation starts, and the block cache's counts at each. It
    # wraps train.loop's BlockCache, _prefetched and validate; were they renamed, the marks
    # would be missing and the line falls back to the whole process's peak.
    marks: dict[str, Any] = {}
    caches: list[Any] = []
    cache_class, prefetched, validate = loop.BlockCache, loop._prefetched, loop.validate

    class SeenCache(cache_class):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            caches.append(self)

    def marked_prefetched(*args: Any, **kwargs: Any) -> Any:  # runs as the loop starts
        marks["rss_peak_setup"] = _rss_peak()
        if caches:  # streamed: the set-up's reads are the normalisation's sample
            marks["block_reads_setup"] = caches[0].stats.reads
        yield from prefetched(*args, **kwargs)

    def timed_validate(*args: Any, **kwargs: Any) -> Any:  # runs as the loop ends
        marks["rss_peak_loop"] = _rss_peak()  # set-up and training loop, before validation
        if caches:
            marks["block_reads_loop"] = caches[0].stats.reads - marks.get("block_reads_setup", 0)
        t = time.perf_counter()
        try:
            return validate(*args, **kwargs)
        finally:
            marks["seconds_validate"] = round(time.perf_counter() - t, 2)

    loop.BlockCache = SeenCache  # type: ignore[misc]
    loop._prefetched = marked_prefetched  # type: ignore[assignment]
    loop.validate = timed_validate  # type: ignore[assignment]
    rss_start = _rss_now()
    t0 = time.perf_counter()
    m = run_training(job, nproc=1, progress=False, restart=True)
    wall = time.perf_counter() - t0
    keep = ("samples_per_s", "seconds", "data_wait_fraction", "regions", "data", "block_reads",
            "cache_hits", "val_pixels", "index_pixels", "index_bytes")
    return {k: m[k] for k in keep if k in m} | marks | {
        "seconds_total": round(wall, 2),  # set-up (index or load), loop, validation, checkpoint
        "rss_start": rss_start,  # after the imports, before training
        "rss_peak": _rss_peak(),  # the whole process: set-up, loop, validation
    }


def _rss_peak() -> int:
    """This process's peak resident memory so far, bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run_child(job: TrainJob, directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench_job.json"
    path.write_text(job.model_dump_json())
    out = subprocess.run([sys.executable, str(HERE / "train_throughput.py"), "--stream-child",
                          str(path)], capture_output=True, text=True, cwd=HERE,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"training child failed ({out.returncode}): {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def stream_line(runs: dict[tuple[int, str], dict[str, Any]], settings: dict[str, Any],
                pixels: dict[int, int]) -> dict[str, Any]:
    """The ``train_stream`` line from the children's results, keyed (cities, "stream" |
    "memory"); ``pixels``: window pixels of each city count."""
    small, large = STREAM_CITIES
    sps = {k: float(r["samples_per_s"]) for k, r in runs.items()}
    rss = {k: int(r["rss_peak"]) for k, r in runs.items()}
    ratio = sps[large, "stream"] / sps[large, "memory"]
    rss_ratio = rss[large, "stream"] / rss[small, "stream"]
    loop_rss = {k: int(r.get("rss_peak_loop", r["rss_peak"])) for k, r in runs.items()}
    loop_ratio = loop_rss[large, "stream"] / loop_rss[small, "stream"]
    return record(
        "train_stream", **settings, cities=list(STREAM_CITIES),
        pixels={str(n): pixels[n] for n in STREAM_CITIES},
        embeddings_bytes={str(n): pixels[n] * BYTES_PER_PX for n in STREAM_CITIES},
        samples_per_s_streamed=sps[large, "stream"],
        samples_per_s_in_memory=sps[large, "memory"],
        samples_per_s_streamed_small=sps[small, "stream"],
        samples_per_s_in_memory_small=sps[small, "memory"],
        ratio_streamed_vs_memory=round(ratio, 3),
        ratio_streamed_vs_memory_small=round(sps[small, "stream"] / sps[small, "memory"], 3),
        rss_peak_small=rss[small, "stream"], rss_peak_large=rss[large, "stream"],
        rss_peak_small_in_memory=rss[small, "memory"],
        rss_peak_large_in_memory=rss[large, "memory"],
        rss_ratio_large_vs_small=round(rss_ratio, 3),
        rss_ratio_large_vs_small_in_memory=round(rss[large, "memory"] / rss[small, "memory"],
                                                 3),
        targets={"ratio_streamed_vs_memory": f">= {TARGET_RATIO}",
                 "rss_ratio_large_vs_small": f"<= {TARGET_RSS_RATIO}"},
        # the same up to the end of the training loop (validation, after it, not counted)
        rss_peak_loop={f"{n}-{d}": loop_rss[n, d] for n, d in sorted(runs)},
        rss_ratio_large_vs_small_loop=round(loop_ratio, 3),
        meets_throughput_target=ratio >= TARGET_RATIO,
        meets_memory_target=rss_ratio <= TARGET_RSS_RATIO,
        meets_memory_target_loop=loop_ratio <= TARGET_RSS_RATIO,
        block_reads={str(n): runs[n, "stream"].get("block_reads") for n in STREAM_CITIES},
        cache_hits={str(n): runs[n, "stream"].get("cache_hits") for n in STREAM_CITIES},
        runs={f"{n}-{d}": runs[n, d] for n, d in sorted(runs)},
    )


def run_stream(quick: bool, steps: int | None = None, size_km: float | None = None,
               cache_mb: int | None = None, read_block: int | None = None
               ) -> list[dict[str, Any]]:
    """Write the 12-city world once (in the run's work directory), train the four
    configurations each in a child process, and give the ``train_stream`` line."""
    settings = stream_settings(quick, steps, size_km, cache_mb, read_block)
    root = workdir() / f"world-train-stream-{settings['size_km']:g}km"
    if not (root / "world.json").exists():
        write_world(root, cities=max(STREAM_CITIES), size_km=settings["size_km"], seed=0,
                    years=(2024,), truth_cube=False, overwrite=True)
    world = json.loads((root / "world.json").read_text())
    names = [c["name"] for c in world["cities"]]
    pixels = {n: sum(c["window"][2] * c["window"][3] for c in world["cities"][:n])
              for n in STREAM_CITIES}
    train = {k: settings[k] for k in ("steps", "batch_size", "patch_size", "prefetch",
                                      "threads", "cache_mb", "read_block", "device")}
    runs: dict[tuple[int, str], dict[str, Any]] = {}
    for n in STREAM_CITIES:
        labels = tuple(LabelSet(name=name, path=world["coarse_per_city"][name])
                       for name in names[:n])
        for data in STREAM_DATA:
            out = workdir() / f"train-stream-{n}-{data}"
            job = TrainJob(source=str(root / "embeddings.zarr"), labels=labels, out=str(out),
                           train=TrainConfig.model_validate(train | {
                               "data": data, "log_every": train["steps"],
                               "checkpoint_every": train["steps"]}),
                           model=ModelConfig(widths=tuple(settings["model"]["widths"])))
            runs[n, data] = _run_child(job, out)
    return [stream_line(runs, settings | {"quick": quick, "source": "tessera-zarr "
                                          "(synthetic, local)", "year": 2024}, pixels)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="small world, small model, 20 steps (a smoke run)")
    ap.add_argument("--stream", action="store_true", help="streamed vs in-memory training, 2 vs "
                    "12 cities (one train_stream line)")
    ap.add_argument("--size-km", type=float, help="--stream: city size (3 quick, 6 full)")
    ap.add_argument("--cache-mb", type=int, help="--stream: the block cache, MiB (default: "
                    "TrainConfig's)")
    ap.add_argument("--read-block", type=int, help="--stream: px side of a cached block "
                    "(default: TrainConfig's)")
    ap.add_argument("--workdir", type=Path, help="--stream: keep the world and models here")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int, default=8, help="per rank")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--ranks", type=int, nargs="+", help="rank counts (1 is always run)")
    a = ap.parse_args()
    if a.workdir:
        set_workdir(a.workdir)
    if a.stream:
        for line in run_stream(a.quick, a.steps, a.size_km, a.cache_mb, a.read_block):
            emit(line)
        return
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
    if len(sys.argv) > 2 and sys.argv[1] == "--stream-child":
        print(json.dumps(stream_child(sys.argv[2])))
    else:
        main()
