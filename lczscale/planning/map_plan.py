"""Plan a map run before anything is written: the tiles, their provenance, what is done.

``prepare`` turns a ``MapConfig`` into a ``MapPlan``: the source opened and checked against the
model, the AOI's tiles on the fixed global grid, the provenance hash that decides each tile's
bytes (model, input dataset and year, grid and lattice, thread count and device type, code
version; each part also hashed on its own so that ``lczscale status`` can say *why* a tile is
stale), and the tiles a rerun still has to make. Before the plan is returned it is checked: no
two tiles share a stored chunk, every tile's halo covers the receptive radius, and no planned
tile would overwrite one made with another provenance. Nothing here writes or runs: the
executors in ``lczscale.execute`` run the plan they are given.

A run maps one year or several (``MapConfig.years``): the plan then holds a tile task per tile
and year, each year checked against its own provenance (which names the year), so one pass and
one ledger make each year exactly as a run of that year alone would, and a resume finds every
year's done tiles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lczscale.config import MapConfig, OutputsConfig
from lczscale.config.clusters import KubernetesClusterConfig, SlurmClusterConfig, cluster_for_map
from lczscale.core.grid import Aoi, Window, zone_by_name, zones_for_aoi
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import (
    Availability,
    TileTask,
    check_disjoint_writes,
    check_halo,
    plan_tasks,
)
from lczscale.errors import ConfigError, NoDataError
from lczscale.infer.predict import pick_device, tile_memory_bytes
from lczscale.io.cube import ledger
from lczscale.io.cube.store import cube_attrs, half_created, is_cube, stored_block
from lczscale.io.sources.protocol import EmbeddingSource
from lczscale.io.sources.registry import open_source
from lczscale.io.stores import exists
from lczscale.model.checkpoint import check_input, load_checkpoint
from lczscale.model.unet import receptive_field
from lczscale.planning.lineage import check_lineage, current_inputs
from lczscale.version import code_version


@dataclass(frozen=True)
class Lineage:
    """What makes one year's tiles: the provenance, its hash, and each part's own hash."""
    provenance: dict[str, Any]
    hash: str
    parts: dict[str, str]


@dataclass
class MapPlan:
    """A checked run: its source, provenance, every tile and those still to make.

    A run maps one year or several (``years``; a tile task per tile and year, one ledger).
    The provenance includes the year, so each year has its own ``lineages[year]``;
    ``year``, ``provenance``, ``provenance_hash`` and ``provenance_parts`` are the latest
    year's (the only year's in a one-year run), ``availability`` the latest year's too
    (``availability_by_year`` has every year's)."""
    cfg: MapConfig
    source: EmbeddingSource
    year: int
    lattice: Lattice
    provenance: dict[str, Any]
    provenance_hash: str
    provenance_parts: dict[str, str]
    # estimated peak memory of the largest tile, and of square tiles half, a quarter, … as big
    tile_bytes_by_size: dict[int, int]
    planned: list[TileTask]  # every tile of the AOI with data, of every year
    tasks: list[TileTask]  # those not done with the current provenance
    ledger: dict[str, dict[str, Any]]
    # per planned tile, the digest of the input objects it reads now (absent: not known)
    input_digests: dict[str, str] = field(default_factory=dict)
    # what the source said it holds, per zone of the AOI (listings and chunk indexes)
    availability: dict[str, Availability] = field(default_factory=dict)
    years: tuple[int, ...] = ()  # every year of the run, ascending (default: ``year`` alone)
    lineages: dict[int, Lineage] = field(default_factory=dict)
    availability_by_year: dict[int, dict[str, Availability]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.years:
            self.years = (self.year,)
        if self.year not in self.lineages:
            self.lineages[self.year] = Lineage(self.provenance, self.provenance_hash,
                                               self.provenance_parts)
        self.availability_by_year.setdefault(self.year, self.availability)

    def lineage(self, year: int) -> Lineage:
        """The provenance of ``year``'s tiles; for a year outside the run, the one this run
        would give it (its settings with that year: what ``lczscale status`` compares a tile
        of another year with)."""
        if year not in self.lineages:
            provenance = self.provenance | {"year": year}
            return Lineage(provenance, json_digest(provenance),
                           {k: json_digest(v)[:16] for k, v in provenance.items()})
        return self.lineages[year]

    def availability_of(self, task: TileTask) -> Availability:
        """Where the source has data in ``task``'s zone and year."""
        return self.availability_by_year[task.year][task.zone]

    @property
    def tile_bytes(self) -> int:
        """Estimated peak memory of the largest tile of the plan."""
        return self.tile_bytes_by_size[max(self.tile_bytes_by_size)]

    @property
    def skipped(self) -> int:
        """Planned tiles already done with this provenance."""
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

    years = cfg.years or ((cfg.year,) if cfg.year is not None else ())
    if not years or aoi is None:
        raise ConfigError("a STAC source needs --year (or --years) and an AOI (--bbox or "
                          "--geojson) to search")
    if not cfg.source.endswith(".parquet") and not cfg.stac_collection:
        raise ConfigError("a STAC API source needs --collection (the collection id)")
    assets = []
    for year in years:
        if cfg.source.endswith(".parquet"):
            assets += search_geoparquet(cfg.source, aoi.bbox, year)
        else:
            assets += search_api(cfg.source, str(cfg.stac_collection), aoi.bbox, year)
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
    run_years = cfg.map_years(source.years)
    missing = [y for y in run_years if y not in source.years]
    if missing:
        raise NoDataError(f"{cfg.source} has no year {', '.join(map(str, missing))}; years "
                          f"available: {source.years}")
    lattice = Lattice(cfg.stitch.patch_size, cfg.stitch.stride(receptive_field(meta.model)))
    device_type = planned_device_type(cfg)
    lineages = {y: year_lineage(cfg, source, model_hash, lattice, device_type, y)
                for y in run_years}
    entries = ledger.read_all(cfg.out) if exists(cfg.out) else {}
    within: dict[str, Window | None] = {}
    if aoi is not None:
        within = {z.name: z.bounding_window(part) for z, part in zones_for_aoi(aoi, cfg.grid)}
    if aoi is not None and not set(within) & set(zone_names):
        raise NoDataError(
            f"the AOI {tuple(round(v, 4) for v in aoi.bbox)} lies in zones "
            f"{', '.join(sorted(within))} but {cfg.source} has embeddings only in zones "
            f"{', '.join(zone_names)}; choose a bbox inside them"
        )
    availability: dict[int, dict[str, Availability]] = {}
    planned: list[TileTask] = []
    for year in run_years:  # a tile task per tile and year: one pass, one ledger
        availability[year] = {
            name: source.availability(zone_by_name(name, cfg.grid), year, within.get(name))
            for name in zone_names
            if aoi is None or within.get(name) is not None
        }
        of_year = plan_tasks(aoi, cfg.grid, lattice, year, availability[year])
        if not cfg.overwrite:  # each year against its own provenance
            check_lineage(cfg.out, of_year, entries, lineages[year].hash, lineages[year].parts)
        planned += of_year
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
    done = {t.key for t in planned if _done(entries.get(t.key), lineages[t.year].hash, cfg)}
    digests: dict[str, str] = {}
    for year in run_years if done else ():
        digests |= current_inputs(source, cfg, [t for t in planned if t.year == year], year)
    done = {k for k in done if k not in digests or entries[k].get("inputs") == digests[k]}
    todo = [t for t in planned if t.key not in done]
    last = run_years[-1]
    latest = lineages[last]
    return MapPlan(cfg, source, last, lattice, latest.provenance, latest.hash, latest.parts,
                   tile_bytes_by_size, planned, todo, entries, digests, availability[last],
                   run_years, lineages, availability)


def _done(entry: dict[str, Any] | None, phash: str, cfg: MapConfig) -> bool:
    """Whether a tile's ledger entry is done with the provenance ``phash`` and every output
    the run asks for."""
    return (entry is not None and entry.get("provenance_hash") == phash
            and ledger.state(entry) == ledger.DONE
            and (not cfg.outputs.probabilities or "probability" in entry.get("outputs", ())))


def year_lineage(cfg: MapConfig, source: EmbeddingSource, model_hash: str, lattice: Lattice,
                 device_type: str, year: int) -> Lineage:
    """The provenance of one year's tiles (model, input dataset and year, grid and lattice,
    thread count and device type, code version, non-reference inference numerics), its hash
    and each part's hash: the same for a year whether it is mapped alone or with others."""
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
    return Lineage(provenance, json_digest(provenance),
                   {k: json_digest(v)[:16] for k, v in provenance.items()})


def planned_device_type(cfg: MapConfig) -> str:
    """The device type the tiles run on, part of the provenance. ``device: auto`` is decided
    where the work runs, not on the client: a SLURM or Kubernetes cluster whose workers are
    given GPUs maps on CUDA though the login node planning the run has none. Other clusters
    run on this machine (local) or are unknown until they answer (an address): there the
    client's own answer is used, and a worker that disagrees refuses its tiles."""
    if cfg.device != "auto" or cfg.executor != "dask":
        return pick_device(cfg.device).type
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


def json_digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON: provenance and block digests alike."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


