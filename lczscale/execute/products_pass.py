"""The aggregation pass: 100 m products and the seam layer, made after a run's 10 m tiles.

The 10 m tile size (4096 by default) is not a multiple of 10 and the 100 m filter needs
neighbouring cells, so a tile cannot make its own 100 m cells. Instead, once the tiles are
written, the pass reads the 10 m ``lcz`` back from the cube in *blocks* of ``block_cells`` ×
``block_cells`` cells on the zone's cell lattice (each with a 2-cell = 20 px halo for the
filter), computes them with ``lczscale.products.cells`` and writes each block into its own chunk(s):
no two writers share a chunk, and no array bigger than a block is ever held. Because blocks sit
on the zone's lattice, the products do not depend on the tile size, the executor or the order.

Which blocks a run makes, and which of them a resume redoes, is planned in
``lczscale.planning.blocks``; this module makes them and the seam layer.

The seam layer: each block also counts, per 10 m tile, the adjacent pixel pairs whose
upper/left pixel it owns (border vs interior, valid pairs, class changes; see
``products.cells.seam_counts``) and keeps the counts in its ledger entry. Counts of disjoint
pairs add up, so the driver sums them over the blocks under each planned tile and alone writes
the seam arrays (small: one value per tile), again only when some block changed (ledger key
``products100m/<zone>/<year>/seam``).

The blocks run through the run's executor (``products_pass``), in-process or one Dask task per
block, exactly as the 10 m tiles do.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lczscale.config import FaultConfig, GridConfig, OutputsConfig
from lczscale.core.grid import Window, Zone, zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.execute.executor import Executor, Pass, SerialExecutor
from lczscale.execute.faults import describe, with_retries
from lczscale.io.cube import ledger
from lczscale.io.cube.outputs import (
    FACTOR,
    ensure_output_arrays,
    update_seam,
    write_cells,
)
from lczscale.io.cube.sink import ZarrCubeSink
from lczscale.io.cube.store import read_probability, read_window, zone_year
from lczscale.planning.blocks import (
    HALO_CELLS,
    LEDGER_PREFIX,
    SIGMA_CELLS,
    BlockTask,
    block_hash,
    plan_blocks,
)
from lczscale.planning.map_plan import MapPlan
from lczscale.products.cells import (
    N_CLASSES,
    SeamCounts,
    cell_products,
    probability_sums,
    seam_counts,
    seam_rates,
)

log = logging.getLogger(__name__)
SOFT_BAND_CELLS = 64  # cell rows of probabilities read at once: 17 × 640 × 5120 B = 56 MB


@dataclass(frozen=True)
class ProductsContext:
    """What a worker needs for a block: addresses and settings, never credentials."""

    cube_url: str
    grid: GridConfig
    outputs: OutputsConfig
    provenance_hash: str
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass(frozen=True)
class BlockResult:
    """One block's outcome, with its seam counts for the driver."""
    key: str
    zone: str
    year: int
    status: str = "done"  # or "failed"
    error: str = ""
    seam: dict[str, list[int]] = field(default_factory=dict)  # "ty_tx" → bc, bp, ic, ip
    seconds: float = 0.0


def run_block(task: BlockTask, ctx: ProductsContext) -> BlockResult:
    """Make one block: read its 10 m window, write its 100 m chunks, record it. A failure is
    recorded in the ledger and returned, never raised (one bad block never stops a run)."""
    t0 = time.perf_counter()
    try:
        zone = zone_by_name(task.zone, ctx.grid)
        read = task.read
        lcz = with_retries(
            lambda: read_window(ctx.cube_url, zone, task.year, read), ctx.faults)
        soft = _soft_counts(ctx, zone, task) if ctx.outputs.fractions_from == \
            "probabilities" else None
        made = cell_products(lcz, (read.row, read.col), FACTOR, HALO_CELLS, SIGMA_CELLS, soft)
        own = task.own(zone)
        counts = seam_counts(lcz, ctx.grid.tile_size, (read.row, read.col),
                             (own.row, own.col, own.height, own.width))
        seam = _seam_dict(counts)

        def write() -> None:
            g, t = zone_year(ctx.cube_url, task.zone, task.year, "r+")
            write_cells(g, t, task.cells, made.fractions, made.majority, made.filtered)

        with_retries(write, ctx.faults)
        entry = {
            "kind": LEDGER_PREFIX,
            "block": {"zone": task.zone, "year": task.year,
                      "cells": [task.cells.row, task.cells.col, task.cells.height,
                                task.cells.width]},
            "digest": task.digest,
            "provenance_hash": ctx.provenance_hash,
            "seam": seam,
            "worker": ledger.writer(),
            "finished_at": time.time(),
        }
        # Only after the chunks are written: a crash in between leaves the block not done.
        with_retries(lambda: ZarrCubeSink(ctx.cube_url).finish(task.key, entry), ctx.faults)
        return BlockResult(task.key, task.zone, task.year, seam=seam,
                           seconds=time.perf_counter() - t0)
    except Exception as exc:  # the block's own failure: record it, carry on with others
        return record_block_failure(ctx, task, exc)


def _soft_counts(ctx: ProductsContext, zone: Zone, task: BlockTask) -> np.ndarray:
    """``probability_sums`` of a block's own cells, read in bands of ``SOFT_BAND_CELLS`` cell
    rows so that the (17, rows, cols) probabilities of a 512-cell block never sit in memory
    whole (they are 17 bytes a pixel)."""
    cells = task.cells
    out = np.zeros((cells.height, cells.width, N_CLASSES + 1), dtype=np.int64)
    for top in range(0, cells.height, SOFT_BAND_CELLS):
        rows = min(SOFT_BAND_CELLS, cells.height - top)
        win = Window((cells.row + top) * FACTOR, cells.col * FACTOR, rows * FACTOR,
                     cells.width * FACTOR)
        def read(win: Window = win) -> tuple[np.ndarray, np.ndarray]:
            return (read_window(ctx.cube_url, zone, task.year, win),
                    read_probability(ctx.cube_url, zone, task.year, win))

        codes, prob = with_retries(read, ctx.faults)
        out[top:top + rows] = probability_sums(prob, codes, (win.row, win.col), FACTOR)
    return out


def record_block_failure(ctx: ProductsContext, task: BlockTask, exc: BaseException) -> BlockResult:
    """Record ``task`` as failed with ``exc``; the failed result to report."""
    info = describe(exc)
    log.warning("100 m block %s failed: %s: %s", task.key, info["error_type"], info["error"])
    entry = {"kind": LEDGER_PREFIX, "provenance_hash": ctx.provenance_hash,
             "digest": task.digest, "failed_at": time.time()} | info
    try:
        ZarrCubeSink(ctx.cube_url).fail(task.key, entry)
    except Exception:  # the ledger itself unreachable: the report still says it failed
        log.exception("could not record the failure of block %s", task.key)
    return BlockResult(task.key, task.zone, task.year, "failed",
                       f"{info['error_type']}: {info['error']}")


def _seam_dict(counts: SeamCounts) -> dict[str, list[int]]:
    """Non-empty per-tile counts as JSON-able ``"ty_tx": [bc, bp, ic, ip]``."""
    ty0, tx0 = counts.tile0
    out = {}
    arrays = (counts.border_changes, counts.border_pairs, counts.interior_changes,
              counts.interior_pairs)
    for (i, j), pairs in np.ndenumerate(counts.border_pairs + counts.interior_pairs):
        if pairs:
            out[f"{ty0 + i}_{tx0 + j}"] = [int(a[i, j]) for a in arrays]
    return out


@dataclass(frozen=True)
class BlockRunner:
    """Makes blocks on a worker (no model: the runner is the context)."""

    ctx: ProductsContext

    def __call__(self, _gpu: str | None) -> BlockRunner:
        """This runner, for any worker."""
        return self

    def run(self, task: BlockTask) -> BlockResult:
        """One block; its failure is a failed result."""
        return run_block(task, self.ctx)

    def lost(self, task: BlockTask, exc: BaseException) -> BlockResult:
        """A block whose worker died every time it ran it, recorded as failed."""
        return record_block_failure(self.ctx, task, exc)


def _block_key(task: BlockTask) -> str:
    return f"products-{task.key.replace('/', '-')}"


def products_pass(ctx: ProductsContext) -> Pass[BlockTask, BlockResult]:
    """The 100 m block pass of a run, for any executor."""
    runner = BlockRunner(ctx)
    return Pass("products", runner, _block_key, runner.lost)


def update_seams(
    planned: Iterable[TileTask],
    blocks: Sequence[BlockTask],
    results: Sequence[BlockResult],
    entries: dict[str, dict[str, Any]],
    ctx: ProductsContext,
) -> int:
    """Write the seam layer of the planned tiles from the blocks' counts; the number of tiles
    written. A tile any of whose blocks has no counts (failed) is left as it was."""
    fresh = {r.key: r.seam for r in results if r.status == "done"}
    ts = ctx.grid.tile_size
    b = ctx.outputs.block_cells
    by_zone: dict[tuple[str, int], list[BlockTask]] = defaultdict(list)
    for block in blocks:
        by_zone[(block.zone, block.year)].append(block)
    tiles_by_zone: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    for task in planned:
        tiles_by_zone[(task.zone, task.year)].add((task.core.row // ts, task.core.col // ts))
    written = 0
    for (name, year), zone_blocks in sorted(by_zone.items()):
        seams: dict[tuple[int, int], dict[str, list[int]]] = {}
        stamps = []
        for block in zone_blocks:
            seam = fresh.get(block.key)
            entry = entries.get(block.key)
            if seam is None and entry is not None and ledger.state(entry) == ledger.DONE \
                    and entry.get("digest") == block.digest:
                seam = entry.get("seam", {})
            if seam is not None:
                seams[(block.cells.row // b, block.cells.col // b)] = seam
                stamps.append([block.key, block.digest])
        seam_key = f"{LEDGER_PREFIX}/{name}/{year}/seam"
        tiles = sorted(tiles_by_zone[(name, year)])
        digest = block_hash([sorted(stamps), tiles])
        old = entries.get(seam_key)
        if old is not None and old.get("digest") == digest:
            continue
        zone = zone_by_name(name, ctx.grid)
        values: dict[tuple[int, int], tuple[float, float, float]] = {}
        for ty, tx in tiles:
            core = Window(ty * ts, tx * ts, min(ts, zone.shape[0] - ty * ts),
                          min(ts, zone.shape[1] - tx * ts))
            need = [(r, c)
                    for r in range(core.row // FACTOR // b, (core.row_stop - 1) // FACTOR // b + 1)
                    for c in range(core.col // FACTOR // b, (core.col_stop - 1) // FACTOR // b + 1)]
            if any(n not in seams for n in need):
                continue
            total = np.zeros(4, dtype=np.int64)
            for n in need:
                total += np.asarray(seams[n].get(f"{ty}_{tx}", [0, 0, 0, 0]), dtype=np.int64)
            one = SeamCounts((ty, tx), *(np.array([[v]], dtype=np.int64) for v in total))
            ratio, border, interior = seam_rates(one)
            values[(ty, tx)] = (float(ratio[0, 0]), float(border[0, 0]), float(interior[0, 0]))

        def write(values: dict[tuple[int, int], tuple[float, float, float]] = values,
                  name: str = name, year: int = year) -> None:
            g, t = zone_year(ctx.cube_url, name, year, "r+")
            update_seam(g, t, values)

        with_retries(write, ctx.faults)
        ZarrCubeSink(ctx.cube_url).finish(seam_key, {
            "kind": LEDGER_PREFIX, "digest": digest, "provenance_hash": ctx.provenance_hash,
            "tiles": len(values), "finished_at": time.time()})
        written += len(values)
    return written


def run_products(
    planned: Sequence[TileTask],
    ctx: ProductsContext,
    executor: Executor | None = None,
    on_result: Callable[[BlockResult], None] | None = None,
) -> dict[str, Any]:
    """The whole pass after a run's tiles: plan blocks from the ledger as it is now, run those
    to do, update the seam layer. Returns a summary for the run's report."""
    t0 = time.perf_counter()
    entries = ZarrCubeSink(ctx.cube_url).entries()
    blocks, todo = plan_blocks(planned, ctx.grid, ctx.outputs, entries)
    results = (executor or SerialExecutor()).run(products_pass(ctx), todo, on_result)
    seam_tiles = update_seams(planned, blocks, results, entries, ctx)
    failed = [r for r in results if r.status != "done"]
    return {
        "blocks": len(blocks),
        "computed": len(results) - len(failed),
        "skipped": len(blocks) - len(todo),
        "failed": len(failed),
        "failures": {r.key: r.error for r in failed[:50]},
        "seam_tiles_written": seam_tiles,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run_products_for_plan(plan: MapPlan, executor: Executor, show: bool) -> dict[str, Any]:
    """The pass for a map run: the arrays made where missing (a cube whose tiles were all done
    before ``--fractions`` was asked for gets them now), then ``run_products`` for each year of
    the run (a year's blocks record that year's provenance), summed."""
    cfg = plan.cfg
    for name in sorted({t.zone for t in plan.planned}):
        g, _ = zone_year(cfg.out, name, plan.year, "r+")
        ensure_output_arrays(g, zone_by_name(name, cfg.grid), cfg.grid, cfg.cube, cfg.outputs)
    columns = (TextColumn("[bold]100 m products[/bold]"), BarColumn(),
               TextColumn("{task.completed} blocks"), TimeElapsedColumn())
    summaries = []
    with Progress(*columns, disable=not show, transient=False,
                  console=Console(stderr=True)) as bar:  # stdout is for the report
        job = bar.add_task("products", total=None)
        for year in plan.years:
            ctx = ProductsContext(cfg.out, cfg.grid, cfg.outputs, plan.lineage(year).hash,
                                  cfg.faults)
            summaries.append(run_products([t for t in plan.planned if t.year == year], ctx,
                                          executor, on_result=lambda _: bar.update(job, advance=1)))
    if len(summaries) == 1:
        return summaries[0]
    total: dict[str, Any] = {k: sum(s[k] for s in summaries) for k in
                             ("blocks", "computed", "skipped", "failed", "seam_tiles_written")}
    failures = {k: v for s in summaries for k, v in s["failures"].items()}
    return total | {"failures": dict(list(failures.items())[:50]),
                    "seconds": round(sum(s["seconds"] for s in summaries), 3)}
