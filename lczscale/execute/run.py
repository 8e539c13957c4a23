"""``lczscale map``: plan a run, check it, create/extend the cube, execute, report.

The provenance hash of a tile covers everything that decides its bytes (model, input dataset
and year, grid and lattice, thread count and device type, code version); a rerun skips exactly
the tiles whose ledger entry is done with the current hash. Each part is also hashed on its own
so that ``lczscale status`` can say *why* a tile is stale.

Before anything is written the plan is checked: no two tiles share a stored chunk, every
tile's halo covers the receptive radius, and one tile fits in a worker's memory.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lczscale.config import MapConfig, OutputsConfig
from lczscale.core.grid import Aoi, Window, zone_by_name, zones_for_aoi
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import TileTask, check_disjoint_writes, check_halo, plan_tasks
from lczscale.errors import ConfigError, CubeError, NoDataError
from lczscale.execute.tile import MapContext, TileResult
from lczscale.infer.predict import pick_device, tile_memory_bytes
from lczscale.io.cube import ledger
from lczscale.io.cube.lock import writer_lock
from lczscale.io.cube.store import create_cube, cube_attrs, half_created, is_cube, stored_block
from lczscale.io.sources.protocol import EmbeddingSource
from lczscale.io.sources.registry import open_source
from lczscale.io.stores import exists
from lczscale.model.checkpoint import check_input, load_checkpoint
from lczscale.model.unet import receptive_field
from lczscale.version import code_version


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
    products: dict[str, Any] | None = None  # the aggregation pass's summary, when it ran

    @property
    def failed(self) -> list[TileResult]:
        return [r for r in self.results if r.status != "done"]

    def summary(self) -> dict[str, Any]:
        return {
            "cube": self.cube,
            "year": self.year,
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


@dataclass
class MapPlan:
    cfg: MapConfig
    source: EmbeddingSource
    year: int
    lattice: Lattice
    provenance: dict[str, Any]
    provenance_hash: str
    provenance_parts: dict[str, str]
    # estimated peak memory of the largest tile, and of square tiles half, a quarter, … as big
    tile_bytes_by_size: dict[int, int]
    planned: list[TileTask]  # every tile of the AOI with data
    tasks: list[TileTask]  # those not done with the current provenance
    ledger: dict[str, dict[str, Any]]
    # per planned tile, the digest of the input objects it reads now (absent: not known)
    input_digests: dict[str, str] = field(default_factory=dict)

    @property
    def tile_bytes(self) -> int:
        """Estimated peak memory of the largest tile of the plan."""
        return self.tile_bytes_by_size[max(self.tile_bytes_by_size)]

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


def _open_source(cfg: MapConfig, aoi: Aoi | None) -> EmbeddingSource:
    """The configured source; with ``source_kind: stac`` the files a STAC search finds."""
    if cfg.source_kind != "stac":
        return open_source(cfg.source, cfg.source_kind, cfg.source_options, cfg.min_s2_obs)
    from lczscale.io.sources.aef_cogs import AefCogSource
    from lczscale.io.sources.stac_search import search_api, search_geoparquet

    if cfg.year is None or aoi is None:
        raise ConfigError("a STAC source needs --year and an AOI (--bbox or --geojson) to search")
    if cfg.source.endswith(".parquet"):
        assets = search_geoparquet(cfg.source, aoi.bbox, cfg.year)
    else:
        if not cfg.stac_collection:
            raise ConfigError("a STAC API source needs --collection (the collection id)")
        assets = search_api(cfg.source, cfg.stac_collection, aoi.bbox, cfg.year)
    return AefCogSource.from_assets(cfg.source, assets, cfg.source_options)


def prepare(cfg: MapConfig) -> MapPlan:
    """Everything up to (not including) the first write: checks, plan, provenance."""
    aoi = _aoi(cfg)
    stored = cube_attrs(cfg.out) if is_cube(cfg.out) and not half_created(cfg.out) else {}
    cfg = with_cube_outputs(with_cube_tile_size(cfg, stored), stored)
    source = _open_source(cfg, aoi)
    _, meta, model_hash = load_checkpoint(cfg.model)
    check_input(meta, source.dimensions, source.kind, source.dataset)
    if cfg.grid.kind not in source.grid_kinds:
        raise ConfigError(
            f"{source.layout} embeddings at {cfg.source} can be read on the "
            f"{' or '.join(source.grid_kinds)} grid, not grid.kind={cfg.grid.kind!r}; set "
            f"grid.kind to {source.grid_kinds[0]!r} so they are never resampled"
        )
    zone_names = source.zone_names(cfg.grid.kind)
    years = source.years
    year = cfg.year if cfg.year is not None else max(years)
    if year not in years:
        raise NoDataError(f"{cfg.source} has no year {year}; years available: {years}")
    lattice = Lattice(cfg.stitch.patch_size, cfg.stitch.stride(receptive_field(meta.model)))
    device_type = planned_device_type(cfg)
    provenance = {
        "model_hash": model_hash,
        "source": source.describe() | {"url": None},
        "year": year,
        "grid": cfg.grid.model_dump(mode="json"),
        "lattice": {"patch": lattice.patch, "stride": lattice.stride, "window": "sin2"},
        "threads": cfg.threads_per_worker if device_type == "cpu" else None,
        "device_type": device_type,
        "lczscale_version": code_version(),
    }
    numerics = inference_numerics(cfg, device_type)
    if numerics:  # only when set: the reference settings keep existing cubes' hashes
        provenance["inference"] = numerics
    phash = _hash(provenance)
    parts = {k: _hash(v)[:16] for k, v in provenance.items()}
    entries = ledger.read_all(cfg.out) if exists(cfg.out) else {}
    done = {k for k, e in entries.items()
            if e.get("provenance_hash") == phash and ledger.state(e) == ledger.DONE
            and (not cfg.outputs.probabilities or "probability" in e.get("outputs", ()))}
    within: dict[str, Window | None] = {}
    if aoi is not None:
        within = {z.name: z.bounding_window(part) for z, part in zones_for_aoi(aoi, cfg.grid)}
    if aoi is not None and not set(within) & set(zone_names):
        raise NoDataError(
            f"the AOI {tuple(round(v, 4) for v in aoi.bbox)} lies in zones "
            f"{', '.join(sorted(within))} but {cfg.source} has embeddings only in zones "
            f"{', '.join(zone_names)}; choose a bbox inside them"
        )
    availability = {
        name: source.availability(zone_by_name(name, cfg.grid), year, within.get(name))
        for name in zone_names
        if aoi is None or within.get(name) is not None
    }
    planned = plan_tasks(aoi, cfg.grid, lattice, year, availability)
    if not cfg.overwrite:
        check_lineage(cfg.out, planned, entries, phash, parts)
    shapes = {name: zone_by_name(name, cfg.grid).shape for name in {t.zone for t in planned}}
    block = (cfg.grid.tile_size, cfg.grid.tile_size)
    if is_cube(cfg.out) and not half_created(cfg.out):
        block = stored_block(cfg.out) or block
    check_disjoint_writes(planned, block, shapes)
    check_halo(planned, receptive_field(meta.model) // 2, shapes)
    largest = max(planned, key=lambda t: t.read.size)
    halo = (largest.read.height - largest.core.height, largest.read.width - largest.core.width)

    def tile_bytes(size: int) -> int:  # a square tile of ``size`` with the largest one's halo
        core = Window(0, 0, min(size, largest.core.height), min(size, largest.core.width))
        read = Window(0, 0, core.height + halo[0], core.width + halo[1])
        return tile_memory_bytes(read, core, source.dimensions, meta.model, cfg.stitch,
                                 device_type, cfg.inference, cfg.outputs.probabilities)

    sizes = [cfg.grid.tile_size >> k for k in range(8) if cfg.grid.tile_size >> k >= 256]
    tile_bytes_by_size = {size: tile_bytes(size) for size in sizes or [cfg.grid.tile_size]}
    digests = current_inputs(source, cfg, planned, year) if done else {}
    done = {k for k in done if k not in digests or entries[k].get("inputs") == digests[k]}
    todo = [t for t in planned if t.key not in done]
    return MapPlan(cfg, source, year, lattice, provenance, phash, parts, tile_bytes_by_size,
                   planned, todo, entries, digests)


def current_inputs(source: EmbeddingSource, cfg: MapConfig, planned: list[TileTask],
                   year: int) -> dict[str, str]:
    """The input digest of every planned tile as the source holds it now (one listing per
    array), so that a resume redoes exactly the tiles whose inputs changed; {} for sources
    that cannot tell (they are judged by the run's provenance alone)."""
    digests = getattr(source, "input_digests", None)
    if digests is None:
        return {}
    out: dict[str, str] = {}
    for name in sorted({t.zone for t in planned}):
        tasks = [t for t in planned if t.zone == name]
        found = digests(zone_by_name(name, cfg.grid), [t.read for t in tasks], year)
        if found is not None:
            out |= {t.key: found[t.read] for t in tasks}
    return out


def other_lineage(planned: list[TileTask], entries: dict[str, dict[str, Any]],
                  phash: str) -> dict[str, dict[str, Any]]:
    """Planned tiles the cube holds as done with another provenance: a run would overwrite
    good tiles of another model, code or settings."""
    return {t.key: entries[t.key] for t in planned
            if t.key in entries and ledger.state(entries[t.key]) == ledger.DONE
            and entries[t.key].get("provenance_hash") != phash}


def check_lineage(out: str, planned: list[TileTask], entries: dict[str, dict[str, Any]],
                  phash: str, parts: dict[str, str]) -> None:
    """Refuse (before anything is written) a run that would silently overwrite tiles made with
    another provenance, and so mix two lineages in one cube; ``--overwrite`` allows it."""
    others = other_lineage(planned, entries, phash)
    if not others:
        return
    changed: set[str] = set()
    for entry in others.values():
        then = entry.get("provenance_parts")
        changed |= ({k for k in {*parts, *then} if then.get(k) != parts.get(k)}
                    if isinstance(then, dict) else {"unknown (an older lczscale)"})
    raise CubeError(
        f"{len(others)} of the {len(planned)} tiles this run would write are already in {out} "
        f"with another provenance (differs in: {', '.join(sorted(changed)) or 'provenance'}); "
        "nothing was written — pass --overwrite to remap them with this run, or write to "
        "another --out"
    )


def planned_device_type(cfg: MapConfig) -> str:
    """The device type the tiles run on, part of the provenance. ``device: auto`` is decided
    where the work runs, not on the client: a SLURM or Kubernetes cluster whose workers are
    given GPUs maps on CUDA though the login node planning the run has none. Other clusters
    run on this machine (local) or are unknown until they answer (an address): there the
    client's own answer is used, and a worker that disagrees refuses its tiles."""
    if cfg.device != "auto" or cfg.executor != "dask":
        return pick_device(cfg.device).type
    from lczscale.execute.clusters.settings import KubernetesClusterConfig, SlurmClusterConfig
    from lczscale.execute.clusters.start import cluster_for_map

    cluster = cluster_for_map(cfg)
    if isinstance(cluster, SlurmClusterConfig):
        return "cuda" if cluster.gpus_per_job else "cpu"
    if isinstance(cluster, KubernetesClusterConfig):
        return "cuda" if cluster.worker_gpus else "cpu"
    return pick_device("auto").type


def with_cube_tile_size(cfg: MapConfig, attrs: dict[str, Any]) -> MapConfig:
    """``cfg`` with the tile size of the cube whose attributes are ``attrs`` when none is
    given: the tile size is part of the provenance, so a changed default must not make a
    resumed run redo every tile of a cube made before."""
    if "tile_size" in cfg.grid.model_fields_set:
        return cfg
    stored = (attrs.get("lczscale:layout") or {}).get("grid", {}).get("tile_size")
    if not stored or int(stored) == cfg.grid.tile_size:
        return cfg
    return cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"tile_size": int(stored)})})


def with_cube_outputs(cfg: MapConfig, attrs: dict[str, Any]) -> MapConfig:
    """``cfg`` with the outputs the cube whose attributes are ``attrs`` already holds added: a
    tile or block recomputed by a later run must not leave stale probabilities or 100 m
    products behind. Outputs never change ``lcz``, so they are not part of the provenance."""
    stored = attrs.get("lczscale:outputs")
    if not stored:
        return cfg
    merged = OutputsConfig.model_validate(stored).union(cfg.outputs)
    return cfg if merged == cfg.outputs else cfg.model_copy(update={"outputs": merged})


def inference_numerics(cfg: MapConfig, device_type: str) -> dict[str, Any]:
    """The inference settings that change the cube's bytes (dtype, channels-last, compile, and
    on a GPU a batch size chosen from free memory); empty for the reference settings."""
    numerics = cfg.inference.numerics()
    if device_type == "cuda" and cfg.stitch.batch_size == "auto":
        numerics["batch_size"] = "auto"
    return numerics


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


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


def map_context(plan: MapPlan) -> MapContext:
    """What every worker needs besides its tasks: addresses, settings, the provenance."""
    cfg = plan.cfg
    return MapContext(
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
    )


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
    ctx = map_context(plan)
    products: dict[str, Any] | None = None
    overwritten = len(other_lineage(plan.tasks, plan.ledger, plan.provenance_hash))
    with _executor(cfg, plan, progress, on_result) as (execute, client):
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
            history={"provenance_hash": plan.provenance_hash, "tiles": len(plan.tasks),
                     "overwrote": overwritten, "overwrite": cfg.overwrite,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            # Off, the cube is exactly what it was before outputs existed (no attribute either).
            outputs=cfg.outputs if cfg.outputs.probabilities or cfg.outputs.fractions else None,
        )
        t0 = time.perf_counter()
        results = execute(plan.tasks, ctx)
        seconds = time.perf_counter() - t0
        if cfg.outputs.fractions:
            from lczscale.execute.products_pass import run_products_for_plan

            products = run_products_for_plan(plan, client, progress)
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
    )


Execute = Callable[[list[TileTask], MapContext], list[TileResult]]


@contextmanager
def _executor(
    cfg: MapConfig, plan: MapPlan, show: bool, on_result: Callable[[TileResult], None] | None
) -> Iterator[tuple[Execute, Any]]:
    """Start the executor (a Dask client or nothing), check the plan fits it, and yield a
    function that runs tasks with a progress bar, with the client (None: in-process)."""
    columns = (
        TextColumn("[bold]map[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tiles"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    from lczscale.execute.products_pass import blocks_to_do

    with ExitStack() as stack:
        # 100 m blocks left to make need the cluster too, though no tile is (a resume that
        # only adds --fractions): they must not run in this process
        if cfg.executor == "serial" or not (plan.tasks or blocks_to_do(plan)):
            check_memory(plan, [psutil.virtual_memory().total], "this machine has")
            client = None
        else:
            from lczscale.execute.clusters.start import cluster_for_map, open_cluster
            from lczscale.execute.dask_waves import worker_memory_limits

            client = stack.enter_context(open_cluster(
                cluster_for_map(cfg), cfg.device, cfg.faults.allowed_failures,
                cfg.threads_per_worker,
            ))
            check_memory(plan, worker_memory_limits(client), "the smallest Dask worker has")

        def execute(tasks: list[TileTask], ctx: MapContext) -> list[TileResult]:
            if not tasks:
                return []
            with Progress(*columns, disable=not show, transient=False,
                          console=Console(stderr=True)) as bar:  # stdout is for the report
                job = bar.add_task(cfg.executor, total=len(tasks), failed=0)
                failed = 0

                def advance(result: TileResult) -> None:
                    nonlocal failed
                    failed += result.status != "done"
                    bar.update(job, advance=1, failed=failed)
                    if on_result is not None:
                        on_result(result)

                if client is None:
                    from lczscale.execute.serial import run_serial

                    return run_serial(tasks, ctx, on_result=advance)
                from lczscale.execute.dask_waves import run_dask

                if show and client.dashboard_link:
                    bar.console.print(f"dask dashboard: {client.dashboard_link}")
                return run_dask(tasks, ctx, client, cfg.wave_size, on_result=advance)

        yield execute, client
