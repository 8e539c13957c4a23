"""``lczscale map``: plan a run, create/extend the cube, execute, report.

The provenance hash of a tile covers everything that decides its bytes (model, input dataset
and year, grid and lattice, thread count and device type, code version); a rerun skips exactly
the tiles whose ledger entry carries the current hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import lczscale
from lczscale.config import MapConfig
from lczscale.errors import ConfigError, NoDataError
from lczscale.execute.tile import MapContext, TileResult
from lczscale.grid import Aoi, Window, zone_by_name, zones_for_aoi
from lczscale.io import ledger
from lczscale.io.cube import create_cube
from lczscale.io.source import EmbeddingSource
from lczscale.io.sources import open_source
from lczscale.io.stores import exists
from lczscale.model.checkpoint import check_input, load_checkpoint
from lczscale.model.predict import pick_device
from lczscale.model.unet import receptive_field
from lczscale.plan import TileTask, plan_tasks
from lczscale.stitch import Lattice


@dataclass
class MapReport:
    cube: str
    year: int
    computed: int
    skipped: int
    core_pixels: int
    valid_pixels: int
    seconds: float
    zones: list[str]
    results: list[TileResult]

    def summary(self) -> dict[str, Any]:
        return {
            "cube": self.cube,
            "year": self.year,
            "computed": self.computed,
            "skipped": self.skipped,
            "core_pixels": self.core_pixels,
            "valid_pixels": self.valid_pixels,
            "seconds": round(self.seconds, 3),
            "pixels_per_second": (
                round(self.core_pixels / self.seconds, 1) if self.seconds else None
            ),
            "zones": self.zones,
        }


@dataclass
class MapPlan:
    cfg: MapConfig
    source: EmbeddingSource
    year: int
    lattice: Lattice
    provenance: dict[str, Any]
    provenance_hash: str
    planned: list[TileTask]  # every tile of the AOI with data
    tasks: list[TileTask]  # those not done with the current provenance
    ledger: dict[str, dict[str, Any]]

    @property
    def skipped(self) -> int:
        return len(self.planned) - len(self.tasks)


def _aoi(cfg: MapConfig) -> Aoi | None:
    if cfg.bbox and cfg.geojson:
        raise ConfigError("give either bbox or geojson as the AOI, not both")
    if cfg.bbox:
        return Aoi.from_bbox(cfg.bbox)
    if cfg.geojson:
        return Aoi.from_geojson(cfg.geojson)
    return None


def prepare(cfg: MapConfig) -> MapPlan:
    """Everything up to (not including) the first write: checks, plan, provenance."""
    source = open_source(cfg.source)
    _, meta, model_hash = load_checkpoint(cfg.model)
    check_input(meta, source.dimensions, source.kind)
    if cfg.grid.kind != "utm" and source.kind == "tessera":
        raise ConfigError(
            "TESSERA embeddings are stored per UTM zone; use grid.kind='utm' (the default) "
            "so they are never resampled"
        )
    years = source.years
    year = cfg.year if cfg.year is not None else max(years)
    if year not in years:
        raise NoDataError(f"{cfg.source} has no year {year}; years available: {years}")
    lattice = Lattice(cfg.stitch.patch_size, cfg.stitch.stride(receptive_field(meta.model)))
    device_type = pick_device(cfg.device).type
    provenance = {
        "model_hash": model_hash,
        "source": source.describe() | {"url": None},
        "year": year,
        "grid": cfg.grid.model_dump(mode="json"),
        "lattice": {"patch": lattice.patch, "stride": lattice.stride, "window": "sin2"},
        "threads": cfg.threads_per_worker if device_type == "cpu" else None,
        "device_type": device_type,
        "lczscale_version": lczscale.__version__,
    }
    phash = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()
    entries = ledger.read_all(cfg.out) if exists(cfg.out) else {}
    done = {k for k, e in entries.items() if e["provenance_hash"] == phash}
    aoi = _aoi(cfg)
    within: dict[str, Window | None] = {}
    if aoi is not None:
        within = {z.name: z.bounding_window(part) for z, part in zones_for_aoi(aoi, cfg.grid)}
    if aoi is not None and not set(within) & set(source.zone_names()):
        raise NoDataError(
            f"the AOI {tuple(round(v, 4) for v in aoi.bbox)} lies in zones "
            f"{', '.join(sorted(within))} but {cfg.source} has embeddings only in zones "
            f"{', '.join(source.zone_names())}; choose a bbox inside them"
        )
    availability = {
        name: source.availability(zone_by_name(name, cfg.grid), year, within.get(name))
        for name in source.zone_names()
        if aoi is None or within.get(name) is not None
    }
    planned = plan_tasks(aoi, cfg.grid, lattice, year, availability)
    todo = [t for t in planned if t.key not in done]
    return MapPlan(cfg, source, year, lattice, provenance, phash, planned, todo, entries)


def run_map(cfg: MapConfig, progress: bool = True) -> MapReport:
    """Map the AOI into the cube at ``cfg.out`` (creating or resuming it)."""
    plan = prepare(cfg)
    zones = sorted({t.zone for t in plan.tasks})
    create_cube(
        cfg.out,
        [zone_by_name(z, cfg.grid) for z in zones],
        [plan.year],
        cfg.grid,
        cfg.cube,
        {
            "lczscale:run": cfg.model_dump(mode="json"),
            "lczscale:provenance": plan.provenance,
            "lczscale:provenance_hash": plan.provenance_hash,
        },
    )
    ctx = MapContext(
        source_url=cfg.source,
        source_kind=plan.source.kind,
        model_dir=cfg.model,
        cube_url=cfg.out,
        grid=cfg.grid,
        stitch=cfg.stitch,
        device=cfg.device,
        threads=cfg.threads_per_worker,
        provenance_hash=plan.provenance_hash,
    )
    t0 = time.perf_counter()
    results = _execute(cfg, plan.tasks, ctx, progress)
    seconds = time.perf_counter() - t0
    return MapReport(
        cube=cfg.out,
        year=plan.year,
        computed=len(results),
        skipped=plan.skipped,
        core_pixels=sum(r.core_pixels for r in results),
        valid_pixels=sum(r.valid_pixels for r in results),
        seconds=seconds,
        zones=zones,
        results=results,
    )


def _execute(
    cfg: MapConfig, tasks: list[TileTask], ctx: MapContext, show: bool
) -> list[TileResult]:
    if not tasks:
        return []
    columns = (
        TextColumn("[bold]map[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tiles"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show, transient=False) as bar:
        job = bar.add_task(cfg.executor, total=len(tasks))

        def advance(_: TileResult) -> None:
            bar.advance(job)

        if cfg.executor == "serial":
            from lczscale.execute.serial import run_serial

            return run_serial(tasks, ctx, on_result=advance)
        from lczscale.execute.dask import dask_client, run_dask

        with dask_client(
            cfg.workers, cfg.threads_per_worker, cfg.scheduler_address, cfg.device
        ) as client:
            if show and client.dashboard_link:
                bar.console.print(f"dask dashboard: {client.dashboard_link}")
            return run_dask(tasks, ctx, client, cfg.wave_size, on_result=advance)
