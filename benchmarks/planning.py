"""Planning cost for all land tiles of one year, at the default tile size: time and memory.

The source's answer to "where is there data?" is a stand-in (``land.py``: the Earth's land
area on the real UTM zone grid, as a TESSERA Zarr store would list it for a whole-year plan:
4096 px shards, each with its grid of 32 px inner chunks). Planning is then what ``prepare``
does after asking the source: ``plan_tasks`` over all 60 zones, the disjoint-writes and halo
checks, the largest tile's memory estimate and the ledger filter (an empty ledger here).

Runs in a child process so that memory is this work's alone: ``index_mib`` is the resident
memory the availability index adds, ``plan_peak_mib`` the peak the planning adds on top of it,
``peak_mib`` their sum (target < 2 GB, with ``plan_s`` < 30 s).

    python benchmarks/planning.py [--quick] [--keep-all-masks | --drop-full-masks]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent


class PeakRss:
    """Samples this process's resident memory every few ms; ``peak`` is the largest seen."""

    def __init__(self, every: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self._every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def child(all_masks: bool) -> dict[str, Any]:
    """The measurement itself (in the child process)."""
    import land

    from lczscale.config import GridConfig, ModelConfig, StitchConfig
    from lczscale.core.grid import utm_zone
    from lczscale.core.stitch import Lattice
    from lczscale.core.tiling import check_disjoint_writes, check_halo, plan_tasks
    from lczscale.infer.predict import tile_memory_bytes
    from lczscale.model.unet import receptive_field

    grid, stitch, model = GridConfig(), StitchConfig(), ModelConfig()
    rf = receptive_field(model)
    lattice = Lattice(stitch.patch_size, stitch.stride(rf))
    fractions = land.land_fractions()
    proc = psutil.Process()
    base = proc.memory_info().rss
    t0 = time.perf_counter()
    availability = {f"utm{n:02d}": land.zone_availability(utm_zone(n), fractions,
                                                          all_masks=all_masks)
                    for n in range(1, 61)}
    index_s = time.perf_counter() - t0
    indexed = proc.memory_info().rss
    land_px = 0.0  # no grid: the whole shard holds data
    for avail in availability.values():
        for block in avail.blocks:
            grid_of = avail.cells.get(block)
            land_px += land.SHARD**2 * (1.0 if grid_of is None else float(grid_of.mean()))
    steps: dict[str, float] = {}
    with PeakRss() as peak:
        t = time.perf_counter()
        tasks = plan_tasks(None, grid, lattice, 2024, availability)
        steps["plan_tasks_s"] = time.perf_counter() - t
        shapes = {name: utm_zone(int(name[3:])).shape for name in availability}
        t = time.perf_counter()
        check_disjoint_writes(tasks, (grid.tile_size, grid.tile_size), shapes)
        steps["check_disjoint_writes_s"] = time.perf_counter() - t
        t = time.perf_counter()
        check_halo(tasks, rf // 2, shapes)
        steps["check_halo_s"] = time.perf_counter() - t
        t = time.perf_counter()
        largest = max(tasks, key=lambda task: task.read.size)
        tile_memory_bytes(largest.read, largest.core, 128, model, stitch)
        done: set[str] = set()  # a fresh run: nothing in the ledger
        todo = [task for task in tasks if task.key not in done]
        steps["estimate_and_ledger_s"] = time.perf_counter() - t
    plan_s = sum(steps.values())
    masks = sum(len(a.cells) for a in availability.values())
    return {
        "tiles": len(todo), "zones": len(availability),
        "blocks": sum(len(a.blocks) for a in availability.values()), "masks": masks,
        "masks_mib": round(masks * (land.SHARD // land.INNER) ** 2 / 2**20, 1),
        "all_masks": all_masks,
        "land_px": round(land_px), "land_km2": round(land_px * 1e-4),
        "core_px": sum(task.core.size for task in todo),
        "index_s": round(index_s, 2), "plan_s": round(plan_s, 3),
        **{k: round(v, 3) for k, v in steps.items()},
        "index_mib": round((indexed - base) / 2**20, 1),
        "plan_peak_mib": round((peak.peak - indexed) / 2**20, 1),
        "peak_mib": round((peak.peak - base) / 2**20, 1),
        "targets": {"plan_s": 30, "peak_mib": 2000 / 1.048576},
        "tile_size": grid.tile_size, "patch_size": stitch.patch_size,
        "stride": lattice.stride, "year": 2024,
        "source": "stand-in land availability (benchmarks/land.py), TESSERA Zarr layout",
    }


def run(quick: bool, all_masks: bool | None = None) -> list[dict[str, Any]]:
    """One child run per mask variant (quick: the source's behaviour only, full blocks
    without a mask; the other keeps a mask per block, as the source did before)."""
    from common import record

    variants = [False] if quick or all_masks is False else [False, True]
    if all_masks is True:
        variants = [True]
    lines = []
    for keep in variants:
        flag = "--keep-all-masks" if keep else "--drop-full-masks"
        out = subprocess.run([sys.executable, str(HERE / "planning.py"), "--child", flag],
                             capture_output=True, text=True, check=True, cwd=HERE)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        got["meets_targets"] = got["plan_s"] < 30 and got["peak_mib"] * 2**20 < 2e9
        lines.append(record("planning", **got))
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--keep-all-masks", dest="all_masks", action="store_true", default=None,
                       help="a mask per stored shard, as the TESSERA Zarr source gave before")
    group.add_argument("--drop-full-masks", dest="all_masks", action="store_false",
                       help="masks only for shards that are not all land, as the source gives")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.all_masks is True)))
    else:
        from common import emit

        for line in run(a.quick, a.all_masks):
            emit(line)
