"""One tile, end to end on a worker: read with halo → predict → write chunk → ledger entry.

The ``MapContext`` travels to workers; it holds addresses and settings only, never credentials
(stores read those from the worker's environment) and never model weights (each worker loads
the checkpoint once).

Reads and writes are retried on transient I/O errors. Any other error is this tile's own (bad
input, a damaged chunk): it is recorded in the ledger as failed and returned as a failed
result, so one bad tile never stops a run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from lczscale.config import (
    FaultConfig,
    GridConfig,
    InferenceConfig,
    OutputsConfig,
    StitchConfig,
)
from lczscale.core.grid import Zone, zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.errors import ConfigError
from lczscale.execute.executor import Pass
from lczscale.execute.faults import describe, is_transient, with_retries
from lczscale.infer.predict import Predictor, TilePrediction
from lczscale.infer.tile_input import TileInput, row_bands
from lczscale.io.cube import ledger
from lczscale.io.cube.sink import CubeSink, ZarrCubeSink
from lczscale.io.sources.protocol import EmbeddingSource, EmbeddingWindow
from lczscale.planning.map_plan import MapPlan

T = TypeVar("T")


@dataclass(frozen=True)
class MapContext:
    """Everything a worker needs besides the task itself."""

    source_url: str
    source: EmbeddingSource  # pickles as its address and small metadata, never credentials
    model_dir: str
    cube_url: str
    grid: GridConfig
    stitch: StitchConfig
    device: str
    threads: int
    provenance_hash: str
    provenance_parts: dict[str, str] = field(default_factory=dict)
    device_type: str = ""  # what the provenance says tiles run on ("" = not checked)
    faults: FaultConfig = field(default_factory=FaultConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    # a run of several years: each year's (provenance hash, parts); the fields above are the
    # latest year's
    year_lineages: dict[int, tuple[str, dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: MapPlan) -> MapContext:
        """What every worker needs from a plan besides its tasks: addresses, settings, the
        provenance (the one place a context is made from a plan)."""
        cfg = plan.cfg
        return cls(
            source_url=cfg.source,
            source=plan.source,
            model_dir=cfg.model,
            cube_url=cfg.out,
            grid=cfg.grid,
            stitch=cfg.stitch,
            device=cfg.device,
            device_type=plan.provenance["device_type"],
            threads=cfg.threads_per_worker,
            provenance_hash=plan.provenance_hash,
            provenance_parts=plan.provenance_parts,
            faults=cfg.faults,
            inference=cfg.inference,
            outputs=cfg.outputs,
            year_lineages={y: (plan.lineage(y).hash, plan.lineage(y).parts)
                           for y in plan.years} if len(plan.years) > 1 else {},
        )

    def for_year(self, year: int) -> MapContext:
        """This context with ``year``'s provenance: what a tile of that year records."""
        found = self.year_lineages.get(year)
        if found is None or found[0] == self.provenance_hash:
            return self
        return replace(self, provenance_hash=found[0], provenance_parts=found[1])


@dataclass(frozen=True)
class TileResult:
    """One tile's outcome. ``read_s`` is the time the model waited for input (with read-ahead,
    the first band and any stall; without, the whole read); ``predict_s`` the rest."""

    key: str
    valid_pixels: int
    core_pixels: int
    patches: int
    read_s: float
    predict_s: float
    write_s: float
    worker: str = field(default="")
    status: str = "done"  # or "failed"
    error: str = ""
    attempts: int = 1

    @classmethod
    def failed(cls, key: str, core_pixels: int, error: str, worker: str = "",
               attempts: int = 1) -> TileResult:
        """A failed tile's result."""
        return cls(key, 0, core_pixels, 0, 0.0, 0.0, 0.0, worker, "failed", error, attempts)


log = logging.getLogger(__name__)


class TileRunner:
    """Holds the opened source and the loaded model for the life of a worker."""

    def __init__(self, ctx: MapContext, device: str | None = None) -> None:
        self.ctx = ctx
        self.source: EmbeddingSource = ctx.source
        self.predictor = Predictor.from_checkpoint(
            ctx.model_dir, ctx.stitch, device or ctx.device, ctx.threads, ctx.inference
        )
        # One reader thread per runner: it puts the next bands of a tile in order while the
        # model runs on the bands already in (see infer.tile_input); the reads themselves run
        # on a fetch pool, ``read_concurrency`` of them in flight at once.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="lczscale-read")
        self._concurrency = ctx.inference.read_concurrency
        self._fetch = ThreadPoolExecutor(self._concurrency, thread_name_prefix="lczscale-fetch")
        self._zones: dict[str, Zone] = {}
        self._attempts = 0
        self.name = ledger.writer()
        self.sink: CubeSink = ZarrCubeSink(ctx.cube_url)

    @property
    def _probabilities(self) -> bool:
        return self.ctx.outputs.probabilities

    def zone(self, name: str) -> Zone:
        """The zone ``name`` of the run's grid (built once per runner)."""
        if name not in self._zones:
            self._zones[name] = zone_by_name(name, self.ctx.grid)
        return self._zones[name]

    def run(self, task: TileTask) -> TileResult:
        """Make one tile; never raises for the tile's own failures (they are recorded)."""
        self._attempts = 0
        try:
            return self._run(task)
        except Exception as exc:  # the tile's own failure: record it, carry on with others
            return record_failure(self.ctx.for_year(task.year), task, exc, self.name,
                                  self._attempts)

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn`` retried on transient errors; the most tries any step took is remembered
        (also when the last try fails) for the ledger."""
        tries = 0

        def counted() -> T:
            nonlocal tries
            tries += 1
            self._attempts = max(self._attempts, tries)
            return fn()

        return with_retries(counted, self.ctx.faults)

    def _predict(self, zone: Zone, task: TileTask) -> tuple[TilePrediction, float]:
        """The tile's prediction and the seconds the model waited for its input."""
        if not self.ctx.inference.read_ahead:
            t0 = time.perf_counter()
            data = self._retry(lambda: self.source.read(zone, task.read, task.year))
            waited = time.perf_counter() - t0
            return self.predictor.predict(zone, task.core, data, self._probabilities), waited
        # The reader keeps two bands (or as many as it reads at once) ahead of the model, no
        # more: a tile's input then costs a few bands of memory however large the tile.
        ahead = max(2, self._concurrency) * self.ctx.inference.band_rows
        tile = self.predictor.start_tile(zone, task.read, ahead)
        reading = self._reader.submit(self._read_bands, zone, task, tile)
        try:
            pred = self.predictor.predict_tile(task.core, tile, self._probabilities)
        finally:
            tile.cancel()  # a no-op once every band is in; stops the reader after a failure
            wait_for([reading])  # never two tiles' reads at once
        return pred, tile.waited_s

    def _read_bands(self, zone: Zone, task: TileTask, tile: TileInput) -> None:
        """Reader thread: the read window band by band, the next ``read_concurrency`` bands read
        at once on the fetch pool (each retried on its own) and put in order."""
        bands = iter(row_bands(task.read, self.ctx.inference.band_rows))
        in_flight: deque[Future[EmbeddingWindow]] = deque()
        try:
            while not tile.cancelled:
                while len(in_flight) < self._concurrency:
                    band = next(bands, None)
                    if band is None:
                        break
                    in_flight.append(self._fetch.submit(
                        self._retry, partial(self.source.read, zone, band, task.year)))
                if not in_flight:
                    return
                tile.put(in_flight.popleft().result())
        except BaseException as exc:  # handed to the model thread, which raises it
            tile.fail(exc)
        finally:
            for future in in_flight:  # never a read of this tile running into the next one
                future.cancel()
            wait_for(in_flight)
            tile.reader_finished()

    def _run(self, task: TileTask) -> TileResult:
        check_device(self.ctx, self.predictor.device.type, self.name)
        zone = self.zone(task.zone)
        t1 = time.perf_counter()
        # what this tile reads, as the store holds it before the read (per-tile staleness)
        digest = getattr(self.ctx.source, "input_digest", None)
        inputs = None if digest is None else self._retry(
            lambda: digest(zone, task.read, task.year))
        pred, waited = self._predict(zone, task)
        t2 = time.perf_counter()
        # Pending before any chunk is overwritten, done only after every output is written:
        # a crash in between leaves the tile not done (the sink's rules).
        ctx = self.ctx.for_year(task.year)  # the provenance of the tile's own year
        pending = tile_entry(ctx, task, self.name) | {"started_at": time.time()}
        self._retry(lambda: self.sink.start(task.key, pending))
        self._retry(lambda: self.sink.write(
            zone, task.year, task.core, pred.lcz, pred.confidence, probability=pred.probability,
        ))
        entry = tile_entry(ctx, task, self.name) | {
            "inputs": inputs,
            "valid_pixels": pred.valid_pixels,
            "patches": pred.patches,
            "finished_at": time.time(),
        }
        if pred.probability is not None:  # what else the tile wrote (a resume checks it)
            entry["outputs"] = ["probability"]
        self._retry(lambda: self.sink.finish(task.key, entry))
        t3 = time.perf_counter()
        return TileResult(
            task.key, pred.valid_pixels, task.core.size, pred.patches, waited,
            t2 - t1 - waited, t3 - t2, self.name, attempts=self._attempts,
        )


def check_device(ctx: MapContext, device_type: str, worker: str) -> None:
    """Refuse to make a tile on another device type than the provenance names: its bytes
    would be recorded as made on the planned device, and a resume would trust them."""
    if ctx.device_type and device_type != ctx.device_type:
        raise ConfigError(
            f"worker {worker} runs the model on {device_type}, but this run was planned for "
            f"{ctx.device_type} (device: {ctx.device!r}, decided on the client); set device "
            f"to {device_type!r} in the map config (--device {device_type}) so the cube's "
            "provenance names the device that made it"
        )


def tile_entry(ctx: MapContext, task: TileTask, worker: str) -> dict[str, Any]:
    """The ledger fields every entry of a tile has, done or failed."""
    return {
        "zone": task.zone,
        "year": task.year,
        "core": [task.core.row, task.core.col, task.core.height, task.core.width],
        "provenance_hash": ctx.provenance_hash,
        "provenance_parts": ctx.provenance_parts,
        "worker": worker,
    }


def record_failure(
    ctx: MapContext, task: TileTask, exc: BaseException, worker: str, attempts: int = 1,
    advice: str = "",
) -> TileResult:
    """Record ``task`` as failed with ``exc`` in the ledger; the failed result to report."""
    info = describe(exc)
    info["error"] += advice
    log.warning("tile %s failed: %s: %s", task.key, info["error_type"], info["error"])
    entry = tile_entry(ctx, task, worker) | info | {
        "transient": is_transient(exc), "attempts": attempts, "failed_at": time.time(),
    }
    try:
        ZarrCubeSink(ctx.cube_url).fail(task.key, entry)
    except OSError as write_error:  # e.g. the disk is full: report it, never a traceback
        log.error("tile %s: its failure could not be recorded in the ledger either (%s)",
                  task.key, write_error)
        info["error"] += f" (and the ledger entry could not be written: {write_error})"
    return TileResult.failed(task.key, task.core.size, f"{info['error_type']}: {info['error']}",
                             worker, attempts)


@dataclass(frozen=True)
class TileRunnerFactory:
    """Makes a worker's ``TileRunner``: on the worker's own GPU when it has one and the run
    asks for ``auto`` or ``cuda``, else on the run's device."""

    ctx: MapContext

    def __call__(self, gpu: str | None) -> TileRunner:
        """The runner for one worker (``gpu``: its own CUDA device, if any)."""
        device = gpu if gpu and self.ctx.device in ("auto", "cuda") else self.ctx.device
        return TileRunner(self.ctx, device=device)


def _tile_key(task: TileTask) -> str:
    return f"tile-{task.key}"


@dataclass(frozen=True)
class LostTile:
    """The result of a tile whose worker died every time it ran it, recorded as failed."""

    ctx: MapContext

    def __call__(self, task: TileTask, exc: BaseException) -> TileResult:
        """Record ``task`` as failed with the advice that fits ``exc``."""
        advice = ""
        if type(exc).__name__ == "KilledWorker":
            advice = (
                " — the tile's worker died every time (out of memory, a crash in native code, "
                "or preemption); see the worker logs, try a smaller --tile-size"
            )
        return record_failure(self.ctx.for_year(task.year), task, exc, "client",
                              advice=advice)


def tile_pass(ctx: MapContext) -> Pass[TileTask, TileResult]:
    """The 10 m tile pass of a run, for any executor."""
    return Pass("tile", TileRunnerFactory(ctx), _tile_key, LostTile(ctx), device_bound=True)
