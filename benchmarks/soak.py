"""Soak: thousands of small tiles through the Dask executor, worker memory must stay flat.

A planetary run pushes hundreds of thousands of tiles through each worker; a leak of a few
hundred KB per tile ends it. This maps one synthetic world repeatedly (each pass into a new
cube, so every tile is really computed) on one LocalCluster that lives for the whole soak, and
samples every worker's RSS every ``--sample-every`` tiles. Growth is the mean RSS of the last
quarter of the samples over that of the first quarter, minus one (target < 0.10).

    python benchmarks/soak.py [--tiles 2000] [--workers 2] [--tile-size 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from common import emit, random_model
from distributed import Client, LocalCluster

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.execute.tile import TileResult
from lczscale.synth.world import write_world

# Two levels, one conv per block: receptive field 11 px, so 32 px patches are allowed and a
# 64 px tile costs milliseconds — the soak measures the executor, not the model.
SOAK_MODEL = ModelConfig(widths=(8, 16), convs_per_block=1)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def soak(root: Path, tiles: int, workers: int, tile_size: int, sample_every: int) -> dict:
    world = write_world(root / "world", cities=2, size_km=6.0, seed=3, years=(2024,),
                        truth_cube=False)
    random_model(root / "model", world["embeddings"], SOAK_MODEL)
    samples: list[tuple[int, dict[str, int]]] = []
    done = failed = 0
    passes = 0
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env={"OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as client:

        def count(result: TileResult) -> None:
            nonlocal done, failed
            done += 1
            failed += result.status != "done"
            if done % sample_every == 0:
                samples.append((done, client.run(_rss)))

        while done < tiles:
            cfg = MapConfig(
                source=world["embeddings"], model=str(root / "model"),
                out=str(root / f"cube{passes}.zarr"), executor="dask", workers=workers,
                scheduler_address=cluster.scheduler_address,
                grid=GridConfig(tile_size=tile_size), stitch=StitchConfig(patch_size=32),
            )
            run_map(cfg, progress=False, on_result=count)
            passes += 1
    wall = time.perf_counter() - t0
    per_sample = [statistics.mean(rss.values()) for _, rss in samples]
    quarter = max(1, len(per_sample) // 4)
    first, last = statistics.mean(per_sample[:quarter]), statistics.mean(per_sample[-quarter:])
    return {
        "benchmark": "soak", "tiles": done, "failed": failed, "passes": passes,
        "workers": workers, "tile_size": tile_size, "patch_size": 32,
        "model": SOAK_MODEL.model_dump(mode="json"), "wall_s": round(wall, 1),
        "tiles_per_s": round(done / wall, 1), "samples": len(samples),
        "rss_first_quarter_mib": round(first / 2**20, 1),
        "rss_last_quarter_mib": round(last / 2**20, 1),
        "rss_growth": round(last / first - 1, 4),
        "rss_max_mib": round(max(max(r.values()) for _, r in samples) / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--sample-every", type=int, default=50)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    if a.dir:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        emit(soak(Path(a.dir), a.tiles, a.workers, a.tile_size, a.sample_every))
        return
    with tempfile.TemporaryDirectory() as tmp:
        emit(soak(Path(tmp), a.tiles, a.workers, a.tile_size, a.sample_every))


if __name__ == "__main__":
    main()
