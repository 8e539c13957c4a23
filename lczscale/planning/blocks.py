"""Which 100 m blocks a run makes: the blocks the planned tiles touch, and those to (re)do.

The 10 m tile size (4096 by default) is not a multiple of 10 and the 100 m filter needs
neighbouring cells, so the products are made in *blocks* of ``block_cells`` × ``block_cells``
cells on the zone's cell lattice, each with a 2-cell (20 px) halo. A block is redone only when
its ledger entry (key ``products100m/<zone>/<year>/<row>_<col>`` in cell units) is missing,
failed, or records another *digest*: a hash of the ledger stamps (finish time, provenance) of
every 10 m tile under its read window plus the pass's parameters. A tile (re)computed since the
block was made therefore triggers it, also after a crash between the two passes; a resume with
nothing new recomputes nothing. Pure planning: nothing here reads the cube's arrays or writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lczscale.config import GridConfig, OutputsConfig
from lczscale.core.grid import Window, Zone, zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.io.cube import ledger
from lczscale.io.cube.outputs import FACTOR, cells_shape
from lczscale.planning.map_plan import MapPlan, json_digest

LEDGER_PREFIX = "products100m"
HALO_CELLS = 2  # the filter's radius: a 5x5 window
SIGMA_CELLS = 1.0
PASS_VERSION = 1  # bump when the products' bytes change for the same 10 m map


@dataclass(frozen=True, order=True)
class BlockTask:
    """One block of 100 m cells (``cells`` in cell rows/cols) of a zone and year."""

    zone: str
    year: int
    cells: Window
    digest: str = field(compare=False)

    @property
    def key(self) -> str:
        """The block's ledger key, ``products100m/<zone>/<year>/<row>_<col>``."""
        return f"{LEDGER_PREFIX}/{self.zone}/{self.year}/{self.cells.row}_{self.cells.col}"

    @property
    def read(self) -> Window:
        """The 10 m window the block reads: its cells plus the halo, in zone pixels."""
        c = self.cells
        return Window((c.row - HALO_CELLS) * FACTOR, (c.col - HALO_CELLS) * FACTOR,
                      (c.height + 2 * HALO_CELLS) * FACTOR, (c.width + 2 * HALO_CELLS) * FACTOR)

    def own(self, zone: Zone) -> Window:
        """The zone pixels of its own cells (the pairs it counts start there)."""
        c = self.cells
        r0, c0 = c.row * FACTOR, c.col * FACTOR
        return Window(r0, c0, min(c.row_stop * FACTOR, zone.shape[0]) - r0,
                      min(c.col_stop * FACTOR, zone.shape[1]) - c0)


def params(grid: GridConfig, outputs: OutputsConfig) -> dict[str, Any]:
    """Everything besides the 10 m map that decides a block's bytes."""
    made = {"factor": FACTOR, "halo": HALO_CELLS, "sigma": SIGMA_CELLS,
            "block_cells": outputs.block_cells, "tile_size": grid.tile_size,
            "version": PASS_VERSION}
    # only when not the default, so the blocks of cubes made before the choice stay done
    soft = {"fractions_from": outputs.fractions_from} if outputs.fractions_from != "classes" \
        else {}
    return made | soft


block_hash = json_digest  # a block's stamps (or the seam layer's), as stored in the ledger


def _tile_key(zone: str, year: int, ty: int, tx: int, tile_size: int) -> str:
    return f"{zone}/{year}/{ty * tile_size}_{tx * tile_size}"  # as TileTask.key


def _tile_range(window: Window, zone: Zone, tile_size: int) -> tuple[range, range]:
    """Tile rows and columns of the tiles a window (clipped to the zone) touches."""
    r0, r1 = max(window.row, 0), min(window.row_stop, zone.shape[0])
    c0, c1 = max(window.col, 0), min(window.col_stop, zone.shape[1])
    if r1 <= r0 or c1 <= c0:
        return range(0), range(0)
    return (range(r0 // tile_size, (r1 - 1) // tile_size + 1),
            range(c0 // tile_size, (c1 - 1) // tile_size + 1))


def plan_blocks(
    planned: Sequence[TileTask],
    grid: GridConfig,
    outputs: OutputsConfig,
    entries: dict[str, dict[str, Any]],
) -> tuple[list[BlockTask], list[BlockTask]]:
    """(every block the planned tiles touch, those to (re)do) given the current ledger."""
    b = outputs.block_cells
    ts = grid.tile_size
    phash = block_hash(params(grid, outputs))
    by_zone: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    zones: dict[str, Zone] = {}
    for task in planned:
        zone = zones.setdefault(task.zone, zone_by_name(task.zone, grid))
        hc, wc = cells_shape(zone)
        halo = HALO_CELLS * FACTOR
        core = task.core
        rows = range(max(0, (core.row - halo) // FACTOR) // b,
                     (min(hc, -(-(core.row_stop + halo) // FACTOR)) - 1) // b + 1)
        cols = range(max(0, (core.col - halo) // FACTOR) // b,
                     (min(wc, -(-(core.col_stop + halo) // FACTOR)) - 1) // b + 1)
        by_zone[(task.zone, task.year)].update((r, c) for r in rows for c in cols)
    blocks: list[BlockTask] = []
    todo: list[BlockTask] = []
    for (name, year), indices in sorted(by_zone.items()):
        zone = zones[name]
        hc, wc = cells_shape(zone)
        for bi, bj in sorted(indices):
            cells = Window(bi * b, bj * b, min(b, hc - bi * b), min(b, wc - bj * b))
            probe = BlockTask(name, year, cells, "")
            trows, tcols = _tile_range(probe.read, zone, ts)
            stamps = []
            for ty in trows:
                for tx in tcols:
                    key = _tile_key(name, year, ty, tx, ts)
                    e = entries.get(key)
                    if e is not None and ledger.state(e) == ledger.DONE:
                        stamps.append([key, e.get("finished_at"), e.get("provenance_hash")])
            block = BlockTask(name, year, cells, block_hash([phash, stamps]))
            blocks.append(block)
            old = entries.get(block.key)
            if old is None or ledger.state(old) != ledger.DONE or old.get("digest") != block.digest:
                todo.append(block)
    return blocks, todo


def blocks_to_do(plan: MapPlan) -> int:
    """How many 100 m blocks a run of ``plan`` would make if none of its tiles changed (as
    when every tile is done): decides whether a run with no tiles to make still needs its
    cluster."""
    if not plan.cfg.outputs.fractions:
        return 0
    _, todo = plan_blocks(plan.planned, plan.cfg.grid, plan.cfg.outputs, plan.ledger)
    return len(todo)
