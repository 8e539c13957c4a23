"""One tile, end to end on a worker: read with halo → predict → write chunk → ledger entry.

The ``MapContext`` travels to workers; it holds addresses and settings only, never credentials
(stores read those from the worker's environment) and never model weights (each worker loads
the checkpoint once).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from lczscale.config import GridConfig, StitchConfig
from lczscale.grid import Zone, zone_by_name
from lczscale.io import ledger
from lczscale.io.cube import write_tile
from lczscale.io.source import EmbeddingSource
from lczscale.io.sources import open_source
from lczscale.model.predict import Predictor
from lczscale.plan import TileTask


@dataclass(frozen=True)
class MapContext:
    """Everything a worker needs besides the task itself."""

    source_url: str
    source_kind: str
    model_dir: str
    cube_url: str
    grid: GridConfig
    stitch: StitchConfig
    device: str
    threads: int
    provenance_hash: str


@dataclass(frozen=True)
class TileResult:
    key: str
    valid_pixels: int
    core_pixels: int
    patches: int
    read_s: float
    predict_s: float
    write_s: float
    worker: str = field(default="")


class TileRunner:
    """Holds the opened source and the loaded model for the life of a worker."""

    def __init__(self, ctx: MapContext, device: str | None = None) -> None:
        self.ctx = ctx
        self.source: EmbeddingSource = open_source(ctx.source_url, ctx.source_kind)
        self.predictor = Predictor.from_checkpoint(
            ctx.model_dir, ctx.stitch, device or ctx.device, ctx.threads
        )
        self._zones: dict[str, Zone] = {}
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def zone(self, name: str) -> Zone:
        if name not in self._zones:
            self._zones[name] = zone_by_name(name, self.ctx.grid)
        return self._zones[name]

    def run(self, task: TileTask) -> TileResult:
        zone = self.zone(task.zone)
        t0 = time.perf_counter()
        data = self.source.read(zone, task.read, task.year)
        t1 = time.perf_counter()
        pred = self.predictor.predict(zone, task.core, data)
        t2 = time.perf_counter()
        write_tile(self.ctx.cube_url, zone, task.year, task.core, pred.lcz, pred.confidence)
        entry: dict[str, Any] = {
            "zone": task.zone,
            "year": task.year,
            "core": [task.core.row, task.core.col, task.core.height, task.core.width],
            "provenance_hash": self.ctx.provenance_hash,
            "valid_pixels": pred.valid_pixels,
            "patches": pred.patches,
            "worker": self.name,
            "finished_at": time.time(),
        }
        ledger.record(self.ctx.cube_url, task.key, entry)  # only after the chunk is written
        t3 = time.perf_counter()
        return TileResult(
            task.key, pred.valid_pixels, task.core.size, pred.patches, t1 - t0, t2 - t1, t3 - t2,
            self.name,
        )
