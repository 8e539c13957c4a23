"""The planet dry run's stand-ins and its per-tile timing, importable on the Dask workers.

Only two things are not lczscale's own code in ``planet.py``'s run:

- :class:`LandStandInSource`, an embedding source over the stand-in land of ``land.py`` (the
  same availability the planning benchmark plans): it says which 4096 px shards hold land, as
  the TESSERA Zarr source would, and ``read`` returns a constant window with no I/O
  (zero-stride ``numpy`` views: no memory either, whatever the window);
- :class:`StandInRunner`, the real ``TileRunner`` with ``_predict`` replaced by "read the
  stand-in window, return class ``STAND_IN_CLASS`` everywhere at once".

Everything else a tile does runs as in a real map: the ledger's pending and done entries, the
chunk writes into the cube created over all land, the retries. Each worker process appends one
JSON line per tile it finished to its own file under the run's log folder (start and end time,
the stand-ins' seconds, the chunk writes' and the ledger's seconds), flushed at once, so a
worker killed mid-run loses no line of a tile it finished; ``planet.py`` derives the
per-tile overhead and the recomputed tiles from these lines.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lczscale.core.grid import Window, Zone, utm_zone
from lczscale.core.tiling import Availability, TileTask
from lczscale.execute.executor import Pass
from lczscale.execute.tile import MapContext, TileResult, TileRunner
from lczscale.execute.tile import tile_pass as real_tile_pass
from lczscale.infer.predict import TilePrediction
from lczscale.io.cube.sink import CubeSink
from lczscale.io.sources.protocol import EmbeddingWindow

LAYOUT = "planet-stand-in"
MARKER = "planet_stand_in.json"  # in the source folder: {"zones": [...]} the source holds
STAND_IN_CLASS = 6  # LCZ 6, open low-rise: what the stand-in model says everywhere
STAND_IN_CONFIDENCE = 200
BANDS = 128


def register() -> None:
    """Add the stand-in to the source registry (in the process that plans the run)."""
    from lczscale.io.sources.registry import LAYOUTS

    LAYOUTS[LAYOUT] = ("planet_parts", "LandStandInSource")


@functools.cache
def _fractions() -> np.ndarray:
    import land

    return land.land_fractions()


class LandStandInSource:
    """TESSERA-shaped embeddings (128 bands, UTM zones) of the stand-in land, with no I/O."""

    kind = "tessera"
    layout = LAYOUT
    grid_kinds = ("utm",)
    dimensions = BANDS
    dataset = "planet-stand-in"

    @property
    def years(self) -> list[int]:
        """The one year the dry run maps."""
        return [2024]

    def __init__(self, url: str, zones: list[str], limits: dict[str, int] | None = None) -> None:
        self.url = url
        self.zones = zones
        self.limits = limits or {}  # zone -> at most this many shards (the first, in order)

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None) -> str | None:
        """Never detected: the run names the layout."""
        return None

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None) -> LandStandInSource:
        """The zones the marker file lists."""
        spec = json.loads((Path(url) / MARKER).read_text())
        return cls(url, spec["zones"], spec.get("limits"))

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """The zones of the run (all 60 in the full run)."""
        return list(self.zones)

    def availability(self, zone: Zone, year: int, within: Window | None = None) -> Availability:
        """The land shards of ``zone``, as ``benchmarks/planning.py`` plans them."""
        import land

        found = land.zone_availability(zone, _fractions())
        limit = self.limits.get(zone.name)
        if limit is None or limit >= len(found.blocks):
            return found
        kept = frozenset(sorted(found.blocks)[:limit])
        return dataclasses.replace(found, blocks=kept, cells={
            b: grid for b, grid in found.cells.items() if b in kept})

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """A constant window: zero-stride views, no I/O and no memory."""
        shape = (window.height, window.width)
        return EmbeddingWindow(
            window=window,
            codes=np.broadcast_to(np.int8(1), (BANDS, *shape)),
            scales=np.broadcast_to(np.float32(0.01), shape),
            valid=np.broadcast_to(np.True_, shape),
            water=np.broadcast_to(np.False_, shape),
            dequantisation="per_pixel_scale",
        )

    def describe(self) -> dict[str, Any]:
        """Provenance."""
        return {"layout": LAYOUT, "zones": self.zones, "limits": self.limits,
                "dataset": self.dataset}


def zone_tiles(zone: str) -> int:
    """Land shards (= 4096 px tiles) of a zone."""
    return len(LandStandInSource("", [zone]).availability(utm_zone(int(zone[3:])), 2024).blocks)


class TimedSink:
    """The runner's real sink, with the seconds spent in chunk writes and in the ledger."""

    def __init__(self, sink: CubeSink) -> None:
        self.sink = sink
        self.chunks_s = 0.0
        self.ledger_s = 0.0

    def _ledger(self, method: str, key: str, entry: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(self.sink, method)(key, entry)
        finally:
            self.ledger_s += time.perf_counter() - t0

    def start(self, key: str, entry: dict[str, Any]) -> None:
        """Pending (timed as ledger)."""
        self._ledger("start", key, entry)

    def finish(self, key: str, entry: dict[str, Any]) -> None:
        """Done (timed as ledger)."""
        self._ledger("finish", key, entry)

    def write(self, zone: Zone, year: int, core: Window, lcz: np.ndarray,
              confidence: np.ndarray, probability: np.ndarray | None = None) -> None:
        """The tile's chunks (timed as chunk writes)."""
        t0 = time.perf_counter()
        try:
            self.sink.write(zone, year, core, lcz, confidence, probability)
        finally:
            self.chunks_s += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


class StandInRunner(TileRunner):
    """The real tile runner; only the model is a stand-in (a fixed class, at once)."""

    def __init__(self, ctx: MapContext, log_dir: str) -> None:
        super().__init__(ctx, device="cpu")
        self.timed = TimedSink(self.sink)
        self.sink = self.timed
        self.standin_s = 0.0
        self._log: IO[str] | None = None
        self._log_path = Path(log_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"

    @functools.cache  # noqa: B019 (one runner per worker process, for its whole life)
    def _outputs(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The stand-in model's answer for a core of this shape: made once, read-only."""
        lcz = np.full((height, width), STAND_IN_CLASS, np.uint8)
        confidence = np.full((height, width), STAND_IN_CONFIDENCE, np.uint8)
        lcz.flags.writeable = confidence.flags.writeable = False
        return lcz, confidence

    def _predict(self, zone: Zone, task: TileTask) -> tuple[TilePrediction, float]:
        t0 = time.perf_counter()
        self.source.read(zone, task.read, task.year)
        lcz, confidence = self._outputs(task.core.height, task.core.width)
        pred = TilePrediction(lcz=lcz, confidence=confidence, patches=0,
                              valid_pixels=task.core.size)
        self.standin_s += time.perf_counter() - t0
        return pred, 0.0

    def run(self, task: TileTask) -> TileResult:
        """The real ``run``, timed; one log line per tile it finished."""
        self.standin_s = self.timed.chunks_s = self.timed.ledger_s = 0.0
        started, t0 = time.time(), time.perf_counter()
        result = super().run(task)
        run_s = time.perf_counter() - t0
        if self._log is None:
            self._log = self._log_path.open("a")
        self._log.write(json.dumps({
            "key": task.key, "status": result.status, "pid": os.getpid(),
            "started": started, "ended": time.time(), "run_s": run_s,
            "standin_s": self.standin_s, "chunks_s": self.timed.chunks_s,
            "ledger_s": self.timed.ledger_s,
        }) + "\n")
        self._log.flush()
        return result


@dataclass(frozen=True)
class StandInFactory:
    """Makes each worker's ``StandInRunner`` (pickled to the workers with the pass)."""

    ctx: MapContext
    log_dir: str

    def __call__(self, gpu: str | None) -> StandInRunner:
        """The runner for one worker."""
        return StandInRunner(self.ctx, self.log_dir)


def stand_in_pass(log_dir: str) -> Any:
    """A replacement for ``lczscale.execute.tile.tile_pass``: the real pass (its task keys,
    its record of lost tiles) with the stand-in runner."""

    def tile_pass(ctx: MapContext) -> Pass[TileTask, TileResult]:
        return dataclasses.replace(real_tile_pass(ctx), make_runner=StandInFactory(ctx, log_dir))

    return tile_pass
