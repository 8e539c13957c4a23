"""What a map run would cost, from its plan alone: ``lczscale map --dry-run``.

``dry_run(cfg, workers)`` makes the run's real plan (``map_plan.prepare``: the source opened,
the checkpoint's metadata checked, the ledger read; nothing written, not even the lock) and adds
up what a user pays for before paying:

- **tiles and pixels**: the planned tiles and their core pixels (a tile per year of the run:
  ``map --years`` counts every year); the tiles the cube already holds with this run's
  provenance (``plan.skipped``, what the run would skip) and those to make; the **land
  share**: the share of the core pixels inside the blocks or inner chunks where the source
  says it has data (its ``availability``: listings and chunk indexes, at their granularity,
  so an upper bound of the valid pixels);
- **input bytes** the tiles to make would read (core + halo): from the sizes of the stored
  shards they touch, pro rata to the share of each shard a read window covers, where the source
  lists them (the Zarr layouts), else estimated as read-window pixels × (one byte per int8 code
  + the scale's bytes); ``input_bytes_basis`` says which;
- **coverage gaps**: the dClimate v1.1 Icechunk store's ``years_complete`` and registry (as
  ``lczscale coverage``), else what availability says: zones and tiles of the AOI with no data;
- **hours** for ``workers`` workers from the measured rates in the benchmark results
  (:mod:`lczscale.planning.rates`): per worker the slower of the model (patch px/s over the
  lattice patches that touch data: those the predictor evaluates) and the read (read-window
  px/s over the read windows' pixels with data; :mod:`lczscale.planning.workload`) bounds the
  run; device-hours = that time for all tiles to make, wall = device-hours ÷ workers (ideal
  scaling). Without a rate for the map's device type the other's is used and labelled so; with
  no stored rates the plan is still given and the hours are None.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from lczscale.config import MapConfig
from lczscale.config.clusters import KubernetesClusterConfig, SlurmClusterConfig, cluster_for_map
from lczscale.core.grid import Aoi, Window, zone_by_name, zones_for_aoi
from lczscale.core.grid import tiles_for_geometry as aoi_tiles
from lczscale.core.tiling import Availability, TileTask
from lczscale.core.tiling import patch_amplification as patch_amp
from lczscale.core.tiling import read_amplification as read_amp
from lczscale.errors import LczscaleError
from lczscale.io import input_digest
from lczscale.io.stores import store_filesystem
from lczscale.model.checkpoint import META_FILE, CheckpointMeta
from lczscale.planning.map_plan import MapPlan, prepare
from lczscale.planning.rates import Rate, model_rate, rates_path, read_lines, read_rate, store_kind
from lczscale.planning.workload import data_pixels, evaluated_patches

SCALE_BYTES = {"per_pixel_scale": 4, "sign_square": 0}  # float32 scale per pixel, or none


def dry_run(cfg: MapConfig, workers: int | None = None,
            rates: str | Path | None = None) -> dict[str, Any]:
    """The plan and projected cost of mapping ``cfg`` with ``workers`` workers (default: the
    map's own); ``rates``: a benchmark results file or folder (default: the repository's)."""
    if workers is not None and workers < 1:
        raise LczscaleError(f"--workers must be at least 1, got {workers}")
    path = rates_path(rates)
    lines = read_lines(path)
    plan = prepare(cfg)
    cfg = plan.cfg
    workers = workers or default_workers(cfg, plan.provenance["device_type"])
    aoi = _aoi(cfg)
    todo = plan.tasks
    avail = plan.availability
    data_px = sum(data_pixels(plan.availability_of(t), t.core) for t in plan.planned)
    pixels = sum(t.core.size for t in plan.planned)
    meta = _meta(cfg.model)
    bytes_in, basis = input_bytes(plan, todo, meta)
    gaps, gap_basis, coverage_rows = coverage_gaps(plan, aoi)
    out: dict[str, Any] = {
        "dry_run": True, "cube": cfg.out, "source": plan.source.url,
        "layout": plan.source.layout, "year": plan.year, "years": list(plan.years),
        "device_type": plan.provenance["device_type"],
        "tile_size": cfg.grid.tile_size, "patch_size": plan.lattice.patch,
        "stride": plan.lattice.stride,
        "tiles": len(plan.planned), "pixels": pixels,
        "land_share": data_px / pixels if pixels else None,
        "land_share_basis": _land_basis(plan.source.layout, avail),
        "done_tiles": plan.skipped, "todo_tiles": len(todo),
        "todo_pixels": sum(t.core.size for t in todo),
        "input_bytes": bytes_in, "input_bytes_basis": basis,
        "read_amplification": read_amp(todo) if todo else None,
        "patch_amplification": patch_amp(todo, plan.lattice) if todo else None,
        "tile_memory_bytes": plan.tile_bytes,
        "coverage_gaps": gaps, "coverage_basis": gap_basis,
    }
    if coverage_rows is not None:
        out["coverage"] = coverage_rows
    model_json = meta.model.model_dump(mode="json") if meta is not None else None
    model = model_rate(lines, plan.provenance["device_type"], cfg.inference.dtype,
                       cfg.inference.channels_last, plan.lattice.patch, cfg.stitch.batch_size,
                       model_json)
    read = read_rate(lines, plan.source.layout, store_kind(plan.source.url))
    return out | projection(plan, todo, workers, model, read, path)


def default_workers(cfg: MapConfig, device_type: str) -> int:
    """The workers the map itself would run on: 1 serially; on a cluster its workers (the
    adaptive maximum where it scales); locally one per GPU on CUDA, else ``workers``."""
    if cfg.executor == "serial":
        return 1
    cluster = cluster_for_map(cfg)
    adaptive = getattr(cluster, "adaptive", None)
    if adaptive is not None:
        return int(adaptive.maximum)
    if isinstance(cluster, SlurmClusterConfig):
        return max(1, cluster.jobs * cluster.processes)
    if isinstance(cluster, KubernetesClusterConfig):
        return max(1, cluster.workers)
    if device_type == "cuda" and getattr(cluster, "kind", None) == "local":
        import torch

        return max(1, torch.cuda.device_count())
    return int(getattr(cluster, "workers", cfg.workers))


def _aoi(cfg: MapConfig) -> Aoi | None:
    if cfg.bbox:
        return Aoi.from_bbox(cfg.bbox)
    if cfg.geojson:
        return Aoi.from_geojson(cfg.geojson)
    return None


def _meta(model: str) -> CheckpointMeta | None:
    """The checkpoint's metadata (``prepare`` has checked it), None where it cannot be read."""
    try:
        return CheckpointMeta.model_validate_json((Path(model) / META_FILE).read_bytes())
    except (OSError, ValueError):
        return None


# ---- tiles and land ----------------------------------------------------------------------


def _land_basis(layout: str, avail: dict[str, Availability]) -> str:
    cells = {a.cell or a.block for a in avail.values()}
    sizes = ", ".join(f"{h}x{w} px" for h, w in sorted(cells))
    return (f"{layout} availability (listings and chunk indexes, in cells of {sizes}): an "
            "upper bound of the valid pixels")


# ---- input bytes -------------------------------------------------------------------------


def input_bytes(plan: MapPlan, tasks: list[TileTask], meta: CheckpointMeta | None
                ) -> tuple[int, str]:
    """Bytes the ``tasks`` (of every year of the run) would read, and how that was found
    (shard sizes or an estimate)."""
    from_shards = _shard_bytes(plan, tasks)
    if from_shards is not None:
        return from_shards, ("shard sizes: each stored shard a read window (core + halo) "
                             "touches, as the source's store lists it, times the share of the "
                             "shard's pixels with data (availability) inside the window")
    dims = plan.source.dimensions
    deq = meta.input.dequantisation if meta is not None else "per_pixel_scale"
    scale = SCALE_BYTES.get(deq, 4)
    px = sum(t.read.size for t in tasks)
    return px * (dims + scale), (f"estimate: read-window pixels (core + halo) x ({dims} int8 "
                                 f"codes + {scale} B scale) per pixel; {plan.source.layout} "
                                 "does not list its shard sizes")


def _shard_bytes(plan: MapPlan, tasks: list[TileTask]) -> int | None:
    """Stored bytes under the read windows, for sources whose arrays can be listed (the Zarr
    layouts: the objects their ``input_digest`` names); None otherwise."""
    source = plan.source
    arrays_of = getattr(source, "_digest_arrays", None)
    locate = getattr(source, "_locate", None)
    if arrays_of is None or locate is None:
        return None
    total = 0.0
    for name, year in sorted({(t.zone, t.year) for t in tasks}):
        zone = zone_by_name(name, plan.cfg.grid)
        try:
            offset, t, _, _ = locate(zone, year)
            arrays = list(arrays_of(zone))
        except (KeyError, LczscaleError):
            return None
        for arr in arrays:
            listed = input_digest.listing(arr)
            if listed is None:
                return None
            _, root = store_filesystem(arr.store_path.store)
            shards = _Shards(arr, f"{root}/{arr.path}", (t,), offset, listed,
                             plan.availability_by_year[year][name])
            total += sum(shards.bytes_under(task.read) for task in tasks
                         if task.zone == name and task.year == year)
    return round(total)


class _Shards:
    """One array's stored shards in zone pixels: how many of their bytes a window reads,
    taking a shard's bytes to lie evenly over its pixels with data (pro rata by area where the
    source gives no finer availability than the shard)."""

    def __init__(self, arr: Any, prefix: str, lead: tuple[int, ...], offset: tuple[int, int],
                 listed: input_digest.Listing, avail: Availability) -> None:
        self.arr, self.prefix, self.lead, self.offset = arr, prefix, lead, offset
        self.listed, self.avail = listed, avail
        block = arr.shards or arr.chunks
        self.block = (int(block[-2]), int(block[-1]))
        self.extent = Window(offset[0], offset[1], int(arr.shape[-2]), int(arr.shape[-1]))
        self.data: dict[tuple[int, int], int] = {}

    def bytes_under(self, window: Window) -> float:
        """Bytes of the stored shards that ``window`` (zone pixels) reads."""
        inside = window.intersection(self.extent)
        if inside is None:
            return 0.0
        bh, bw = self.block
        r0, c0 = inside.row - self.offset[0], inside.col - self.offset[1]
        r1, c1 = r0 + inside.height, c0 + inside.width
        middle = [0] * (self.arr.ndim - 2 - len(self.lead))
        total = 0.0
        for r in range(r0 // bh, (r1 - 1) // bh + 1):
            for c in range(c0 // bw, (c1 - 1) // bw + 1):
                key = self.arr.metadata.encode_chunk_key((*self.lead, *middle, r, c))
                size = self.listed.get(f"{self.prefix}/{key}", input_digest.ABSENT)[0]
                shard = Window(self.offset[0] + r * bh, self.offset[1] + c * bw, bh, bw
                               ).intersection(self.extent)
                part = shard.intersection(inside) if shard is not None else None
                if size <= 0 or shard is None or part is None:
                    continue
                if (r, c) not in self.data:
                    self.data[(r, c)] = data_pixels(self.avail, shard)
                whole = self.data[(r, c)]
                share = (data_pixels(self.avail, part) / whole if whole
                         else part.size / shard.size)
                total += size * share
        return total


# ---- coverage ----------------------------------------------------------------------------


def coverage_gaps(plan: MapPlan, aoi: Aoi | None
                  ) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]] | None]:
    """(gaps, basis, the registry's coverage rows or None): the Icechunk store's coverage
    (``years_complete``, registry or chunk index) where it applies, else availability's zones
    and tiles of the AOI with no data."""
    gaps, basis = _availability_gaps(plan, aoi)
    if aoi is None or plan.source.layout != "tessera-icechunk":
        return gaps, basis, None
    from lczscale.io.sources.dclimate_coverage import coverage

    try:
        rows = [row | ({"year": year} if len(plan.years) > 1 else {})
                for year in plan.years for row in coverage(plan.source, aoi, year)]
    except LczscaleError as exc:
        return gaps, f"{basis} (coverage not available: {exc})", None
    for row in rows:
        missing = (row.get("tiles") or 0) - (row.get("embedded") or 0)
        if not row["complete"] or (row.get("embedded") is not None and missing > 0):
            gaps.append({"zone": row["zone"]} | ({"year": row["year"]} if "year" in row else {})
                        | {"from": row.get("from"),
                         "year_complete": row["complete"],
                         "years_complete": row.get("years_complete"),
                         "tiles": row.get("tiles"), "embedded": row.get("embedded"),
                         "refused_share": row.get("refused_share")})
    froms = sorted({str(r.get("from")) for r in rows if r.get("from")})
    return gaps, f"years_complete and {' / '.join(froms) or 'registry'}; {basis}", rows


def _availability_gaps(plan: MapPlan, aoi: Aoi | None) -> tuple[list[dict[str, Any]], str]:
    if aoi is None:
        return [], "availability (no AOI: only the tiles with data are planned)"
    grid = plan.cfg.grid
    with_data = set(plan.source.zone_names(grid.kind))
    planned = Counter((t.zone, t.year) for t in plan.planned)
    gaps: list[dict[str, Any]] = []
    for zone, part in zones_for_aoi(aoi, grid):
        n = sum(1 for _ in aoi_tiles(zone, part, grid.tile_size))
        if zone.name not in with_data:
            gaps.append({"zone": zone.name, "from": "availability", "tiles": n,
                         "tiles_without_data": n, "why": "the source has no data in this zone"})
            continue
        for year in plan.years:
            if planned[(zone.name, year)] < n:
                gaps.append({"zone": zone.name, "from": "availability", "tiles": n,
                             "tiles_without_data": n - planned[(zone.name, year)],
                             "why": f"no embeddings for {year} under these tiles"})
    return gaps, "availability: tiles of the AOI where the source lists no data"


# ---- hours -------------------------------------------------------------------------------


def projection(plan: MapPlan, tasks: list[TileTask], workers: int, model: Rate | None,
               read: Rate | None, path: Path | None) -> dict[str, Any]:
    """Device-hours, wall hours and the bound for ``tasks`` on ``workers`` workers: the
    patches the predictor evaluates at the model rate, the read windows' pixels with data at
    the read rate, whichever takes longer."""
    lattice = plan.lattice
    patches = sum(evaluated_patches(plan.availability_of(t), t.core, lattice) for t in tasks)
    patch_px = patches * lattice.patch ** 2
    read_px = sum(data_pixels(plan.availability_of(t), t.read) for t in tasks)
    device_type = plan.provenance["device_type"]
    notes: list[str] = []
    out: dict[str, Any] = {
        "workers": workers, "gpu_hours": None, "wall_hours": None, "bound": None,
        "hours_device": None, "compute_hours": None, "read_hours": None,
        "patches": patches, "patch_pixels": patch_px, "read_pixels": read_px,
        "rates": {"model": model.as_dict() if model else None,
                  "read": read.as_dict() if read else None},
        "rates_from": str(path) if path is not None else None,
    }
    if model is None:
        notes.append("no stored rates: no hours projected" if path is None else
                     f"no stored model_forward rate in {path}: no hours projected")
        return out | {"notes": notes}
    if model.device_type != device_type:
        words = {"cuda": "GPU", "cpu": "CPU"}
        notes.append(f"no {words[device_type]} rate stored: projected with the "
                     f"{words[model.device_type]} rate ({model.device}), labelled as such")
    elif device_type == "cpu":
        notes.append("the map runs on CPU: gpu_hours are CPU worker-hours")
    off = [k for k, same in model.matches.items() if not same and k != "device_type"]
    if off:
        notes.append("the model rate was measured with other " + ", ".join(off) +
                     " than this map's (see rates.model.settings)")
    compute_s = patch_px / model.value
    # one reader's time, then with the run's concurrent band reads per worker (each reader is
    # assumed to keep its own rate: an object store serves many requests at once)
    one_reader_s = read_px / read.value if read is not None else None
    concurrency = plan.cfg.inference.read_concurrency
    read_s = one_reader_s / concurrency if one_reader_s is not None else None
    out["read_concurrency"] = concurrency
    out["readers_needed"] = (max(1, math.ceil(one_reader_s / compute_s))
                             if one_reader_s is not None and compute_s > 0 else None)
    if read is None:
        notes.append(f"no stored read rate for layout {plan.source.layout}: compute bound "
                     "assumed")
    elif not read.matches.get("store", True):
        notes.append(f"no read rate stored for a {store_kind(plan.source.url)} store of "
                     f"{plan.source.layout}: the {read.settings.get('store')} rate is used")
    notes.append("compute: the lattice patches over each core that touch data, read: the read "
                 "windows' pixels with data (both from availability, so upper bounds); wall = "
                 "device-hours / workers (ideal scaling)")
    if read is not None:
        notes.append(f"read: {concurrency} band read(s) in flight per worker "
                     "(inference.read_concurrency), each at the stored one-reader rate; "
                     "readers_needed: how many keep the model busy")
    seconds = max(compute_s, read_s or 0.0)
    bound = "read" if read_s is not None and read_s > compute_s else "compute"
    hours = seconds / 3600
    return out | {"gpu_hours": hours, "wall_hours": hours / workers, "bound": bound,
                  "hours_device": model.device_type, "compute_hours": compute_s / 3600,
                  "read_hours": read_s / 3600 if read_s is not None else None, "notes": notes}


def summary_lines(r: dict[str, Any]) -> list[str]:
    """A short human summary of a dry run's result."""
    def num(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}g}"

    share = "n/a" if r["land_share"] is None else f"{r['land_share']:.1%}"
    lines = [
        f"dry run of {r['cube']}: nothing written",
        f"plan      {r['tiles']} tile(s) of {r['tile_size']} px"
        + (f" over {len(r['years'])} years" if len(r.get("years") or ()) > 1 else "")
        + f", {r['pixels']:,} px, land share "
        f"{share}; {r['done_tiles']} already done with this provenance, {r['todo_tiles']} to "
        "make",
        f"input     {_bytes(r['input_bytes'])} to read ({r['input_bytes_basis'].split(':')[0]})",
        f"coverage  {len(r['coverage_gaps']) or 'no'} gap(s) found; from {r['coverage_basis']}",
    ]
    lines += [f"          {g['zone']}: " + ", ".join(f"{k} {v}" for k, v in g.items()
                                                     if k != "zone") for g in r["coverage_gaps"]]
    kind = "GPU" if r["hours_device"] == "cuda" else "CPU"
    lines.append(f"workers   {r['workers']} ({r['device_type']})")
    if r["gpu_hours"] is not None:
        lines.append(f"hours     {num(r['gpu_hours'])} {kind} worker-hours, {num(r['wall_hours'])}"
                     f" h wall, {r['bound']}-bound")
    for what, rate in r["rates"].items():
        if rate:
            lines.append(f"rate      {what}: {rate['value']:,.0f} {rate['unit']}; "
                         f"{rate['benchmark']} on {rate['device']}, {_shown(rate['file'])} line "
                         f"{rate['line']}, git {rate['git_sha']}")
    lines += [f"note      {n}" for n in r.get("notes", [])]
    return lines


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _bytes(n: int) -> str:
    if n <= 0:
        return "0 B"
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    k = min(len(units) - 1, int(math.log10(n) // 3))
    return f"{n / 1000 ** k:.3g} {units[k]}"
