"""Scaling: map throughput with 1, 2, 4, … workers, efficiency = T(N) ÷ (N · T(1)).

The same synthetic city is mapped on a fresh LocalCluster of N worker processes (one Dask
thread and one torch thread each; one GPU each where there are GPUs) for every N, workers
warmed up (imports) before the clock starts. T is valid pixels per second of the map's wall
time. Lines ``scaling_point`` (one per N) and ``scaling`` (the curve).

SLURM: ``--slurm`` runs the same curve on a single-node SLURM cluster started on this machine
with ``deploy/slurm/start-local-slurm.sh`` (one 1-core job per worker, through the map's
``cluster`` YAML and ``lczscale.execute.clusters.start.open_cluster``). Without the flag, or where
those pieces or slurm-wlm are missing, the SLURM curve is reported as not run, with the reason.

    python benchmarks/scaling.py [--quick] [--workers 1 2 4] [--slurm]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from common import REPO, emit, model_summary, random_model, record, shared_world, workdir
from distributed import Client, LocalCluster
from throughput import _warm

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.run import run_map

SLURM_SCRIPT = REPO / "deploy" / "slurm" / "start-local-slurm.sh"


def worker_counts(quick: bool, wanted: list[int] | None) -> list[int]:
    if wanted:
        return sorted(set(wanted) | {1})
    top = torch.cuda.device_count() or (os.cpu_count() or 1)
    if quick:
        return [1, min(2, top)] if top > 1 else [1]
    counts, n = [1], 2
    while n < top:
        counts.append(n)
        n *= 2
    return sorted(set(counts) | {top})


def slurm_missing() -> str | None:
    """Why the SLURM curve cannot run here, or None."""
    if not SLURM_SCRIPT.exists():
        return f"{SLURM_SCRIPT.relative_to(REPO)} is missing"
    try:
        from lczscale.execute.clusters.start import open_cluster  # noqa: F401
    except ImportError:
        return "lczscale.execute.clusters.start.open_cluster is missing"
    if "cluster" not in MapConfig.model_fields:
        return "MapConfig has no 'cluster' field to name a SLURM cluster YAML"
    if not (shutil.which("slurmctld") and shutil.which("munged")):
        return "slurm-wlm and munge are not installed (apt-get install -y slurm-wlm munge)"
    return None


@contextlib.contextmanager
def local_slurm(directory: Path) -> Iterator[None]:
    """A single-node SLURM cluster for the block (``SLURM_CONF`` set for this process)."""
    subprocess.run(["bash", str(SLURM_SCRIPT), str(directory)], check=True)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(directory / "slurm.conf")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(directory)], check=False)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


def slurm_yaml(directory: Path, jobs: int) -> str:
    from lczscale.config.clusters import SlurmClusterConfig

    cfg = SlurmClusterConfig(cores=1, memory="3GiB", processes=1, jobs=jobs,
                             walltime="00:30:00", worker_lifetime=None, lifetime_stagger=None,
                             python=sys.executable, log_directory=str(directory / "logs"),
                             start_timeout="5m")
    path = directory / f"slurm-{jobs}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return str(path)


def curve(points: list[dict[str, Any]]) -> dict[str, Any]:
    t1 = points[0]["px_per_s"]
    for p in points:
        p["speedup"] = round(p["px_per_s"] / t1, 4)
        p["efficiency"] = round(p["px_per_s"] / (p["workers"] * t1), 4)
    return {"workers": [p["workers"] for p in points],
            "px_per_s": [p["px_per_s"] for p in points],
            "efficiency": [p["efficiency"] for p in points],
            "efficiency_at_max": points[-1]["efficiency"], "target": 0.9}


def run(quick: bool, workers: list[int] | None = None,
        slurm: bool = False) -> list[dict[str, Any]]:
    gpus = torch.cuda.device_count()
    device = "cuda" if gpus else "cpu"
    size_km = 4.0 if quick else 12.0
    world = shared_world(size_km) if quick else shared_world(size_km, ("tessera-zarr",))
    cfg = ModelConfig()
    root = workdir()
    model = random_model(root / "model-default", world["embeddings"], cfg)
    tile, patch, batch = (256, 128, 4) if quick else (512, 256, 8)
    settings = {"tile_size": tile, "patch_size": patch, "batch_size": batch, "dtype": "fp32",
                "threads_per_worker": 1, "device": device, "size_km": size_km,
                "source": "tessera-zarr (synthetic, local files)", "quick": quick,
                "model": model_summary(cfg)}

    def map_once(n: int, out: str, **where: Any) -> dict[str, Any]:
        map_cfg = MapConfig(source=world["embeddings"], model=model, out=out, executor="dask",
                            workers=n, grid=GridConfig(tile_size=tile), device=device,
                            stitch=StitchConfig(patch_size=patch, batch_size=batch), **where)
        report = run_map(map_cfg, progress=False)
        return {"workers": n, "px_per_s": round(report.valid_pixels / report.seconds, 1),
                "wall_s": round(report.seconds, 3), "tiles": report.computed,
                "failed": len(report.failed), "valid_pixels": report.valid_pixels}

    lines: list[dict[str, Any]] = []
    points = []
    for n in worker_counts(quick, workers):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=":0", env={"OMP_NUM_THREADS": "1"},
                          resources={"GPU": 1} if gpus else None) as cluster, \
                Client(cluster) as client:
            client.run(_warm)
            points.append(map_once(n, str(root / f"scaling-local-{n}.zarr"),
                                   scheduler_address=cluster.scheduler_address))
    summary = curve(points)
    lines += [record("scaling_point", cluster="local", **p, **settings) for p in points]
    lines.append(record("scaling", cluster="local", status="run", **summary, **settings))

    missing = "not requested (pass --slurm)" if not slurm else slurm_missing()
    if missing:
        lines.append(record("scaling", cluster="slurm", status="not run", reason=missing,
                            **settings))
        return lines
    spool = workdir() / "slurm"
    spool.mkdir(exist_ok=True)
    points = []
    with local_slurm(spool):
        for n in worker_counts(quick, workers):
            points.append(map_once(n, str(root / f"scaling-slurm-{n}.zarr"),
                                   cluster=slurm_yaml(spool, n)))
    summary = curve(points)
    lines += [record("scaling_point", cluster="slurm", **p, **settings) for p in points]
    lines.append(record("scaling", cluster="slurm", status="run", **summary, **settings))
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, nargs="+", help="worker counts (1 is always run)")
    ap.add_argument("--slurm", action="store_true", help="also the local SLURM cluster")
    a = ap.parse_args()
    for line in run(a.quick, a.workers, a.slurm):
        emit(line)
