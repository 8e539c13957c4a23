"""Halo read amplification: bytes read ÷ core bytes, per tile and patch size.

From the plan: a block of tiles in the interior of a UTM zone is planned by the real planner
(``plan_tasks``) and ``read_amplification`` = Σ read-window pixels ÷ Σ core pixels (≥ 1).
``chunk_read_amplification`` rounds each read window out to TESSERA's 32 px inner chunks (what
storage actually returns); ``patch_amplification`` is the compute side: patch pixels evaluated
per core pixel. Measured: the same windows read from the synthetic TESSERA store, bytes counted
by the kernel (``rchar`` of /proc/self/io: every byte this process read, zarr's threads
included) for the read windows ÷ for the core windows alone.

A tile reads every lattice patch that overlaps its core, whole: the read window reaches
between (patch − stride) and patch pixels beyond each side of the core, about patch − stride/2
on average. That is what the cube's independence from tiling costs; larger tiles amortise it.

    python benchmarks/amplification.py [--quick]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common import YEAR, main_quick, record, shared_world

from lczscale.config import GridConfig, ModelConfig, StitchConfig
from lczscale.core.grid import Window, zone_by_name
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import (
    Availability,
    TileTask,
    patch_amplification,
    plan_tasks,
    read_amplification,
)
from lczscale.io.sources.registry import open_source
from lczscale.model.unet import receptive_field

TARGET = 1.15
DEFAULT_TILE = GridConfig().tile_size
DEFAULT_PATCH = StitchConfig().patch_size
INNER_CHUNK = 32  # TESSERA's inner chunk edge


def lattice_for(patch: int, cfg: ModelConfig | None = None) -> Lattice:
    stride = StitchConfig(patch_size=patch).stride(receptive_field(cfg or ModelConfig()))
    return Lattice(patch, stride)


def interior_tasks(tile: int, lattice: Lattice, rows: int = 32) -> list[TileTask]:
    """The plan for a block of whole tiles away from the zone's edges (utm32, mid-latitudes):
    ``rows`` tile rows, as many tile columns as fit (up to ``rows``)."""
    zone = zone_by_name("utm32", GridConfig(tile_size=tile))
    ty0 = 434_000 // tile  # ~45°N
    cols = min(rows, zone.shape[1] // tile - 2)
    blocks = frozenset((ty, tx) for ty in range(ty0, ty0 + rows) for tx in range(1, 1 + cols))
    avail = Availability((tile, tile), (0, 0), blocks)
    return plan_tasks(None, GridConfig(tile_size=tile), lattice, YEAR, {"utm32": avail})


def chunk_aligned(w: Window, chunk: int = INNER_CHUNK) -> Window:
    r0, c0 = w.row // chunk * chunk, w.col // chunk * chunk
    r1, c1 = -(-w.row_stop // chunk) * chunk, -(-w.col_stop // chunk) * chunk
    return Window(r0, c0, r1 - r0, c1 - c0)


def geometric(tile: int, patch: int) -> dict[str, Any]:
    lattice = lattice_for(patch)
    tasks = interior_tasks(tile, lattice)
    core = sum(t.core.size for t in tasks)
    halo = sum(t.read.height + t.read.width - t.core.height - t.core.width for t in tasks)
    amp = read_amplification(tasks)
    return {
        "tile_size": tile, "patch_size": patch, "stride": lattice.stride,
        "overlap": patch - lattice.stride, "tiles": len(tasks),
        "halo_mean_px": round(halo / (4 * len(tasks)), 1),
        "read_amplification": round(amp, 4),
        "chunk_read_amplification": round(
            sum(chunk_aligned(t.read).size for t in tasks) / core, 4),
        "patch_amplification": round(patch_amplification(tasks, lattice), 4),
        "default": tile == DEFAULT_TILE and patch == DEFAULT_PATCH,
        "target": TARGET, "meets_target": amp <= TARGET,
    }


def rchar() -> int | None:
    """Bytes this process has read through system calls (Linux), or None."""
    path = Path(f"/proc/{os.getpid()}/io")
    try:
        for line in path.read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measured(world: dict[str, Any], tile: int, patch: int) -> dict[str, Any] | None:
    """Read and core windows of tiles whose reads lie inside the city, through the source."""
    city = world["cities"][0]
    area = Window(*city["window"])
    lattice = lattice_for(patch)
    zone = zone_by_name(city["zone"], GridConfig(tile_size=tile))
    tasks = []
    for ty in range(area.row // tile, area.row_stop // tile + 1):
        for tx in range(area.col // tile, area.col_stop // tile + 1):
            core = Window(ty * tile, tx * tile, tile, tile)
            read = lattice.read_window(core)
            if read.intersection(area) == read:
                tasks.append(TileTask(zone.name, YEAR, core, read))
    if not tasks or rchar() is None:
        return None
    source = open_source(world["embeddings"], "tessera-zarr")

    def bytes_read(windows: list[Window]) -> int:
        source.read(zone, windows[0], YEAR)  # metadata opened before counting
        before = rchar()
        for w in windows:
            source.read(zone, w, YEAR)
        after = rchar()
        assert before is not None and after is not None
        return after - before

    core_bytes = bytes_read([t.core for t in tasks])
    read_bytes = bytes_read([t.read for t in tasks])
    return {
        "tile_size": tile, "patch_size": patch, "stride": lattice.stride, "tiles": len(tasks),
        "read_amplification": round(read_amplification(tasks), 4),
        "measured_read_amplification": round(read_bytes / core_bytes, 4),
        "bytes_read": read_bytes, "core_bytes": core_bytes,
        "source": "tessera-zarr (synthetic, local files, 32 px inner chunks, zstd)",
    }


def run(quick: bool) -> list[dict[str, Any]]:
    lines = [record("halo_amplification", **geometric(tile, patch))
             for tile in (512, 1024, 2048, 4096, 8192) for patch in (128, 256, 512)]
    world = shared_world(4.0 if quick else 12.0)
    pairs = [(64, 96), (128, 96)] if quick else [(128, 96), (256, 128), (512, 256)]
    for tile, patch in pairs:
        got = measured(world, tile, patch)
        if got is not None:
            lines.append(record("halo_amplification_measured", **got))
    return lines


if __name__ == "__main__":
    main_quick(run, __doc__)
