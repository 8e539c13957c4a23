"""Pure planning: (grid, AOI, source availability) → ordered ``TileTask``s.

A task is small and frozen so that it pickles to a worker in a few hundred bytes; everything a
worker needs beyond it (the model, the source, the cube) is loaded once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from odc.geo import geom

from lczscale.core.grid import (
    Aoi,
    GridSpec,
    Window,
    Zone,
    tile_window,
    tiles_for_geometry,
    zone_by_name,
    zones_for_aoi,
)
from lczscale.core.stitch import Lattice
from lczscale.errors import ConfigError, NoDataError


@dataclass(frozen=True, order=True)
class TileTask:
    """One output tile: write ``core`` of ``zone`` for ``year``, reading ``read``."""

    zone: str
    year: int
    core: Window
    read: Window

    @property
    def key(self) -> str:
        """Stable name of the tile, used by the ledger."""
        return f"{self.zone}/{self.year}/{self.core.row}_{self.core.col}"


@dataclass(frozen=True)
class Availability:
    """Where a source has data in a zone.

    ``blocks`` are the stored blocks (shards) of ``block`` px, origin at zone pixel ``origin``.
    Where the source also says which of a block's inner chunks (``cell`` px) hold data,
    ``cells`` maps the block to a boolean grid of them, so all-water parts of a shard are not
    scheduled either.
    """

    block: tuple[int, int]
    origin: tuple[int, int]
    blocks: frozenset[tuple[int, int]]
    cell: tuple[int, int] | None = None
    cells: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def windows(self) -> list[Window]:
        """Zone windows of the blocks that hold data."""
        bh, bw = self.block
        return [
            Window(self.origin[0] + r * bh, self.origin[1] + c * bw, bh, bw)
            for r, c in sorted(self.blocks)
        ]

    def intersects(self, window: Window) -> bool:
        """Whether any of the tile's available data meets ``window``."""
        bh, bw = self.block
        r0 = (window.row - self.origin[0]) // bh
        r1 = (window.row_stop - 1 - self.origin[0]) // bh
        c0 = (window.col - self.origin[1]) // bw
        c1 = (window.col_stop - 1 - self.origin[1]) // bw
        if (r1 - r0 + 1) * (c1 - c0 + 1) <= len(self.blocks):
            hits = [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)
                    if (r, c) in self.blocks]
        else:
            hits = [(r, c) for r, c in self.blocks if r0 <= r <= r1 and c0 <= c <= c1]
        return any(self._cells_hit(b, window) for b in hits)

    def _cells_hit(self, block: tuple[int, int], window: Window) -> bool:
        mask = self.cells.get(block)
        if mask is None or self.cell is None:
            return True
        ch, cw = self.cell
        top = self.origin[0] + block[0] * self.block[0]
        left = self.origin[1] + block[1] * self.block[1]
        r0 = max(0, (window.row - top) // ch)
        r1 = (window.row_stop - 1 - top) // ch + 1
        c0 = max(0, (window.col - left) // cw)
        c1 = (window.col_stop - 1 - left) // cw + 1
        return bool(mask[r0:r1, c0:c1].any())


def tiles_with_data(zone: Zone, avail: Availability, tile_size: int) -> list[Window]:
    """Core windows of the tiles of a zone that overlap any data block (no AOI given)."""
    found: set[tuple[int, int]] = set()
    for block in avail.windows():
        inner = block.intersection(zone.full_window)
        if inner is None:
            continue
        for ty in range(inner.row // tile_size, (inner.row_stop - 1) // tile_size + 1):
            for tx in range(inner.col // tile_size, (inner.col_stop - 1) // tile_size + 1):
                found.add((ty, tx))
    return [tile_window(zone, t, tile_size) for t in sorted(found)]


def plan_tasks(
    aoi: Aoi | None,
    grid: GridSpec,
    lattice: Lattice,
    year: int,
    availability: dict[str, Availability],
) -> list[TileTask]:
    """Tasks for every tile of the AOI that has input data (the caller drops finished ones).

    ``availability`` maps zone names to where the source has data; zones it lacks have none.
    Without an AOI, every tile with data in every zone of ``availability`` is planned.
    Raises NoDataError when the AOI has no input at all, rather than producing an empty cube.
    """
    tasks: list[TileTask] = []
    touched: list[str] = []
    with_data = 0
    parts: list[tuple[Zone, geom.Geometry | None]]
    if aoi is None:
        parts = [(zone_by_name(name, grid), None) for name in sorted(availability)]
    else:
        parts = list(zones_for_aoi(aoi, grid))
    for zone, part in parts:
        touched.append(zone.name)
        avail = availability.get(zone.name)
        if avail is None:
            continue
        cores = (
            tiles_with_data(zone, avail, grid.tile_size)
            if part is None
            else tiles_for_geometry(zone, part, grid.tile_size)
        )
        for core in cores:
            if not avail.intersects(core):
                continue
            with_data += 1
            tasks.append(TileTask(zone.name, year, core, lattice.read_window(core)))
    if with_data == 0:
        where = "the source" if aoi is None else f"the AOI {tuple(round(v, 4) for v in aoi.bbox)}"
        raise NoDataError(
            f"{where} (zones {', '.join(touched)}) has no "
            f"embeddings for {year}; the source has data in zones "
            f"{', '.join(sorted(z for z, a in availability.items() if a.blocks)) or 'none'}"
            " — choose a bbox that overlaps them"
        )
    return tasks


def read_amplification(tasks: list[TileTask]) -> float:
    """Pixels read ÷ pixels written over ``tasks`` (≥ 1): what the halos cost in input.

    A tile reads every lattice patch that overlaps its core, whole, so its read window reaches
    up to one patch beyond the core on each side; neighbouring tiles read those halos again.
    """
    core = sum(t.core.size for t in tasks)
    if core == 0:
        raise ValueError("no tasks: the amplification of an empty plan is undefined")
    return sum(t.read.size for t in tasks) / core


def patch_amplification(tasks: list[TileTask], lattice: Lattice) -> float:
    """Patch pixels evaluated ÷ pixels written when every lattice patch over each core runs:
    the model's overlap ((patch/stride)² inside a tile) plus patches shared by two tiles."""
    core = sum(t.core.size for t in tasks)
    if core == 0:
        raise ValueError("no tasks: the amplification of an empty plan is undefined")
    patches = sum(len(lattice.origins(t.core)) for t in tasks)
    return patches * lattice.patch**2 / core


def check_disjoint_writes(tasks: list[TileTask], block: tuple[int, int],
                          zone_shapes: dict[str, tuple[int, int]]) -> None:
    """Refuse a plan in which two tasks would write into the same stored chunk (or shard).

    Zarr rewrites a whole chunk on every partial write, so two tasks touching one chunk could
    undo each other's pixels. Each core must start on a chunk boundary and end on one (or at the
    zone's edge), and no chunk may belong to two tasks. Checked before anything is written.
    """
    bh, bw = block
    owner: dict[tuple[str, int, int, int], str] = {}
    for task in tasks:
        core = task.core
        h, w = zone_shapes[task.zone]
        aligned = (
            core.row % bh == 0 and core.col % bw == 0
            and (core.row_stop % bh == 0 or core.row_stop == h)
            and (core.col_stop % bw == 0 or core.col_stop == w)
        )
        if not aligned:
            raise ConfigError(
                f"tile {task.key} ({core}) is not aligned to the cube's {bh}x{bw} px chunks: two "
                "tiles would share a chunk; use a grid.tile_size that is a multiple of the "
                "cube's chunk size"
            )
        for r in range(core.row // bh, -(-core.row_stop // bh)):
            for c in range(core.col // bw, -(-core.col_stop // bw)):
                cell = (task.zone, task.year, r, c)
                if cell in owner:
                    raise ConfigError(
                        f"tiles {owner[cell]} and {task.key} both write chunk {r},{c} of "
                        f"{task.zone}: the plan is inconsistent (a tile planned twice?)"
                    )
                owner[cell] = task.key


def check_halo(tasks: list[TileTask], radius: int, zone_shapes: dict[str, tuple[int, int]]
               ) -> None:
    """Refuse tasks whose read window gives core pixels less context than the receptive radius
    (except at the zone's own edge, where there is no more input to read)."""
    for task in tasks:
        c, r = task.core, task.read
        h, w = zone_shapes[task.zone]
        short = [
            side for side, margin, edge in (
                ("top", c.row - r.row, c.row == 0),
                ("left", c.col - r.col, c.col == 0),
                ("bottom", r.row_stop - c.row_stop, c.row_stop == h),
                ("right", r.col_stop - c.col_stop, c.col_stop == w),
            ) if margin < radius and not edge
        ]
        if short:
            raise ConfigError(
                f"tile {task.key} reads less than the model's receptive radius ({radius} px) "
                f"beyond its core on the {', '.join(short)}: the halo is too small; use a "
                "larger stitch.patch_size or leave stitch.overlap unset"
            )
