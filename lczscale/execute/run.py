"""``lczscale map``: plan a run, check it fits its executor, create/extend the cube, run its passes.

Planning (``lczscale.planning``) decides every tile, its provenance and what is already done;
this module takes the writer lock, starts the executor the config asks for (serial, or Dask on a
local, SLURM, Kubernetes or existing cluster), checks that one tile fits a worker's memory,
creates or extends the cube, and runs the 10 m tile pass (the tiles of every year of the run in
one pass) and then, if asked, the 100 m products pass through that one executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lczscale.config import MapConfig
from lczscale.config.clusters import cluster_for_map
from lczscale.core.grid import zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.errors import ConfigError
from lczscale.execute.cluster_executor import DaskExecutor
from lczscale.execute.clusters.start import open_cluster
from lczscale.execute.executor import Executor, SerialExecutor
from lczscale.execute.products_pass import run_products_for_plan
from lczscale.execute.tile import MapContext, TileResult, tile_pass
from lczscale.io.cube.compaction import compact_after_run
from lczscale.io.cube.lock import writer_lock
from lczscale.io.cube.store import create_cube
from lczscale.planning.blocks import blocks_to_do
from lczscale.planning.lineage import other_lineage
from lczscale.planning.map_plan import MapPlan, prepare


@dataclass
class MapReport:
    """What a map run did: tiles computed, skipped and failed, pixels, time."""
    cube: str
    year: int  # the latest year mapped (the only one in a one-year run)
    computed: int
    skipped: int
    core_pixels: int
    valid_pixels: int
    seconds: float
    zones: list[str]
    results: list[TileResult]
    products: dict[str, Any] | None = None  # the aggregation pass's summary, when it ran
    years: tuple[int, ...] = ()  # every year the run mapped (default: ``year`` alone)

    @property
    def failed(self) -> list[TileResult]:
        """The tiles that did not finish."""
        return [r for r in self.results if r.status != "done"]

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready fields (what ``lczscale map`` prints)."""
        return {
            "cube": self.cube,
            "year": self.year,
            "years": list(self.years or (self.year,)),
            "computed": self.computed,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "failures": {r.key: r.error for r in self.failed[:50]},
            "core_pixels": self.core_pixels,
            "valid_pixels": self.valid_pixels,
            "seconds": round(self.seconds, 3),
            "pixels_per_second": (
                round(self.core_pixels / self.seconds, 1) if self.seconds else None
            ),
            "zones": self.zones,
        } | ({"products": self.products} if self.products is not None else {})



def check_memory(plan: MapPlan, limits: list[int], where: str) -> None:
    """Refuse to start when one tile would need more than the allowed share of a worker's
    memory; say which tile size would fit."""
    known = [m for m in limits if m > 0]
    if not known:
        return
    allowed = plan.cfg.faults.tile_memory_fraction * min(known)
    if plan.tile_bytes <= allowed:
        return
    tile = plan.cfg.grid.tile_size
    fitting = [s for s, need in plan.tile_bytes_by_size.items() if need <= allowed]
    advice = (f"use --tile-size {max(fitting)} or give workers more memory" if fitting else
              "give workers more memory (no tile size down to 256 px fits)")
    raise ConfigError(
        f"one {tile} px tile needs about {_size(plan.tile_bytes)} but {where} "
        f"{_size(min(known))} (at most {plan.cfg.faults.tile_memory_fraction:.0%} of "
        f"it per tile); {advice}"
    )


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@contextmanager
def open_executor(cfg: MapConfig, needed: bool = True) -> Iterator[Executor]:
    """The executor a map run asks for: serial, or Dask on the cluster the config names
    (started here, stopped on exit). With ``needed`` False (nothing to run) no cluster is
    started and the serial executor stands in."""
    if cfg.executor == "serial" or not needed:
        yield SerialExecutor()
        return
    with open_cluster(cluster_for_map(cfg), cfg.device, cfg.faults.allowed_failures,
                      cfg.threads_per_worker) as client:
        yield DaskExecutor(client, cfg.wave_size)


def run_map(
    cfg: MapConfig,
    progress: bool = True,
    on_result: Callable[[TileResult], None] | None = None,
) -> MapReport:
    """Map the AOI into the cube at ``cfg.out`` (creating or resuming it).

    Tiles that fail are recorded in the ledger and listed in the report's ``failed``; the run
    still makes every other tile. ``on_result`` is called in this process as each tile ends.
    """
    with writer_lock(cfg.out, "lczscale map"):
        return _run_locked(cfg, progress, on_result)


def _run_locked(
    cfg: MapConfig, progress: bool, on_result: Callable[[TileResult], None] | None
) -> MapReport:
    plan = prepare(cfg)
    cfg = plan.cfg  # with the outputs the cube already holds
    zones = sorted({t.zone for t in plan.tasks})
    products: dict[str, Any] | None = None
    overwritten = sum(len(other_lineage([t for t in plan.tasks if t.year == y], plan.ledger,
                                        plan.lineage(y).hash)) for y in plan.years)
    # 100 m blocks left to make need the cluster too, though no tile is (a resume that only
    # adds --fractions): they must not run in this process
    with open_executor(cfg, bool(plan.tasks or blocks_to_do(plan))) as executor:
        check_memory(plan, executor.memory_limits(), executor.where)
        create_cube(
            cfg.out,
            [zone_by_name(z, cfg.grid) for z in zones],
            list(plan.years),
            cfg.grid,
            cfg.cube,
            {
                "lczscale:run": cfg.model_dump(mode="json"),
                "lczscale:provenance": plan.provenance,
                "lczscale:provenance_hash": plan.provenance_hash,
            },
            history={"provenance_hash": plan.provenance_hash, "tiles": len(plan.tasks),
                     "overwrote": overwritten, "overwrite": cfg.overwrite,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            | ({"years": {str(y): plan.lineage(y).hash for y in plan.years}}
               if len(plan.years) > 1 else {}),
            # Off, the cube is exactly what it was before outputs existed (no attribute either).
            outputs=cfg.outputs if cfg.outputs.probabilities or cfg.outputs.fractions else None,
        )
        t0 = time.perf_counter()
        results = run_tiles(executor, plan.tasks, MapContext.from_plan(plan), cfg.executor,
                            progress, on_result)
        seconds = time.perf_counter() - t0
        if cfg.outputs.fractions:
            products = run_products_for_plan(plan, executor, progress)
    compact_after_run(cfg.out)  # still under the lock, no tile in flight: ledger snapshots
    return MapReport(
        cube=cfg.out,
        year=plan.year,
        computed=sum(r.status == "done" for r in results),
        skipped=plan.skipped,
        core_pixels=sum(r.core_pixels for r in results),
        valid_pixels=sum(r.valid_pixels for r in results),
        seconds=seconds,
        zones=zones,
        results=results,
        products=products,
        years=plan.years,
    )


def run_tiles(
    executor: Executor, tasks: list[TileTask], ctx: MapContext, label: str, show: bool,
    on_result: Callable[[TileResult], None] | None = None,
) -> list[TileResult]:
    """The tile pass on ``executor`` with a progress bar on stderr (stdout is the report's)."""
    if not tasks:
        return []
    columns = (
        TextColumn("[bold]map[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tiles"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show, transient=False,
                  console=Console(stderr=True)) as bar:
        job = bar.add_task(label, total=len(tasks), failed=0)
        failed = 0

        def advance(result: TileResult) -> None:
            nonlocal failed
            failed += result.status != "done"
            bar.update(job, advance=1, failed=failed)
            if on_result is not None:
                on_result(result)

        if show and executor.dashboard_link:
            bar.console.print(f"dask dashboard: {executor.dashboard_link}")
        return executor.run(tile_pass(ctx), tasks, on_result=advance)
