"""Planning a country from the dClimate TESSERA v1.1 Icechunk store, and reading it.

A replica of the store (``lczscale.synth.dclimate``'s zone groups: the real extents, the eight
arrays, ``write_empty_chunks=False``) is written to local disk for a country-sized AOI: every
2048 px shard of the zone groups the AOI touches whose WGS84 footprint meets the AOI holds a
``scales`` shard with one 256 × 256 inner chunk of data (at a position that varies from shard
to shard), and the Parquet registry beside it has one row per such shard (the 23 declared
columns). Planning is then what ``lczscale.planning.map_plan.prepare`` does with the source: open
it, ``availability(zone, year, zone.bounding_window(part))`` for each zone the AOI touches,
and ``plan_tasks`` at the default tile size (4096), in four modes:

- ``registry``: shards from the registry, refined to 256 px inner chunks from the shard
  indexes (one ranged read per shard);
- ``chunk_index``: the registry moved away, shards from Icechunk's chunk index;
- ``registry_no_refine`` / ``chunk_index_no_refine``: the same with
  ``tessera_icechunk.REFINE_LIMIT = 0`` (whole shards; no index reads).

Each mode runs ``repeat`` times (a fresh source each time) and the median is reported; also a
small AOI planned on the same replica (``sub_aoi``): the shard indexes read then show whether
refining reads only the shards under the AOI or every shard of the zone group.

Read throughput: one shard-aligned window full of data (int8 codes from quantised normals) is
written into the Icechunk store and the plain Zarr copy of the same small synthetic world
(``make_world`` + ``write_tessera_icechunk`` / ``write_tessera_plain_zarr``), and
``source.read`` of that window is timed from each, alternating; ``ratio`` = Icechunk MB/s ÷
plain Zarr MB/s within the same run (absolute times on a shared VM mean little).

    python benchmarks/store_planning.py [--quick] [--aoi france|switzerland] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from common import emit, record, workdir
from pyproj import Transformer

import lczscale.io.sources.tessera_icechunk as tic
from lczscale.config import GridConfig, ModelConfig, StitchConfig
from lczscale.core.grid import Aoi, Window, Zone, zones_for_aoi
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import plan_tasks
from lczscale.io.sources.dclimate_registry import meets_bbox
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.io.sources.tessera_dclimate_zarr import TesseraDclimateZarrSource
from lczscale.io.sources.tessera_icechunk import TesseraIcechunkSource
from lczscale.model.unet import receptive_field
from lczscale.synth.dclimate import (
    ICECHUNK_DIR,
    PLAIN_DIR,
    REGISTRY_DIR,
    REGISTRY_SCHEMA,
    TIME_YEARS,
    HemisphereGroup,
    shard_bbox_wgs84,
    write_tessera_icechunk,
    write_tessera_plain_zarr,
)
from lczscale.synth.dclimate.icechunk_store import _create_icechunk_group
from lczscale.synth.dclimate.spec import (
    ASSEMBLED_AT,
    CHUNK_PX,
    CODE_COMMIT,
    OPTICAL_MIN_OBS,
    ROOT_ATTRS,
    SHARD_PX,
)
from lczscale.synth.world import BUILD_VERSION, make_world

YEAR = 2024
# minlon, minlat, maxlon, maxlat
AOIS: dict[str, tuple[float, float, float, float]] = {
    "france": (-4.8, 42.3, 8.2, 51.1),  # mainland France: zones 30N, 31N, 32N
    "switzerland": (5.9, 45.8, 10.5, 47.8),  # zones 31N, 32N
    "zurich": (8.4, 47.3, 8.7, 47.5),  # a city inside both: zone 32N
}
SUB_AOI = {"france": "switzerland", "switzerland": "zurich"}
INNER = SHARD_PX // CHUNK_PX  # inner chunks per shard edge (8)
MODES = (("registry", True, True), ("chunk_index", False, True),
         ("registry_no_refine", True, False), ("chunk_index_no_refine", False, False))


# ---- the replica ------------------------------------------------------------------------------


def groups_for(bbox: tuple[float, float, float, float]) -> list[HemisphereGroup]:
    """The zone groups (``NNN``/``NNS``) of the zones the AOI touches, in its hemispheres."""
    zones = [z for z, _ in zones_for_aoi(Aoi.from_bbox(bbox), GridConfig())]
    hemis = [h for h, inside in (("N", bbox[3] > 0), ("S", bbox[1] < 0.2)) if inside]
    return [HemisphereGroup(int(z.name[3:]), h) for z in zones for h in hemis]


def shards_meeting(g: HemisphereGroup, bbox: tuple[float, float, float, float]
                   ) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """Shards (sy, sx) of group ``g`` whose WGS84 footprint (bbox of 64 samples per edge, as the
    registry's) meets ``bbox``, with that footprint."""
    lon = np.concatenate([np.linspace(bbox[0], bbox[2], 65), np.full(65, bbox[2]),
                          np.linspace(bbox[2], bbox[0], 65), np.full(65, bbox[0])])
    lat = np.concatenate([np.full(65, bbox[1]), np.linspace(bbox[1], bbox[3], 65),
                          np.full(65, bbox[3]), np.linspace(bbox[3], bbox[1], 65)])
    x, y = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(lon, lat)
    a, (h, w) = g.transform, g.shape
    cols = (np.asarray(x) - a[2]) / a[0]
    rows = (np.asarray(y) - a[5]) / a[4]
    pad = 1  # a shard whose bbox meets the AOI may lie just outside the projected outline
    sy0 = max(0, int(rows.min()) // SHARD_PX - pad)
    sy1 = min(h // SHARD_PX - 1, int(rows.max()) // SHARD_PX + pad)
    sx0 = max(0, int(cols.min()) // SHARD_PX - pad)
    sx1 = min(w // SHARD_PX - 1, int(cols.max()) // SHARD_PX + pad)
    keys = ("bbox_west", "bbox_south", "bbox_east", "bbox_north")
    out = {}
    for sy in range(sy0, sy1 + 1):
        for sx in range(sx0, sx1 + 1):
            box = shard_bbox_wgs84(g, sy * SHARD_PX, (sy + 1) * SHARD_PX,
                                   sx * SHARD_PX, (sx + 1) * SHARD_PX)
            if meets_bbox(dict(zip(keys, box, strict=True)), bbox):
                out[(sy, sx)] = box
    return out


def inner_of(sy: int, sx: int) -> tuple[int, int]:
    """The inner chunk (i, j) of shard (sy, sx) that holds data: varies from shard to shard."""
    k = (sy * 7919 + sx * 104729) % (INNER * INNER)
    return k // INNER, k % INNER


def registry_row(g: HemisphereGroup, sy: int, sx: int, box: tuple[float, ...]) -> dict[str, Any]:
    """One registry row (the 23 declared columns) for a shard with one embedded inner chunk."""
    n = CHUNK_PX * CHUNK_PX
    return {
        "tile": f"chunk_{sy}_{sx}", "run_id": f"{g.name}-{YEAR}-bench-a",
        "assembled_at": ASSEMBLED_AT, "embedded": True, "eligible_px": n,
        "chunk_px": SHARD_PX * SHARD_PX, "refused_px": 0, "refused_no_optical_px": 0,
        "refused_thin_px": 0, "refused_no_radar_px": 0, "px_with_any_optical": n,
        "obs_max": 40, "median_obs_where_any": 30.0, "median_obs_where_thin": None,
        "px_with_any_radar": n, "radar_rule_enforced": False,
        "optical_min_obs": OPTICAL_MIN_OBS, "bbox_west": box[0], "bbox_south": box[1],
        "bbox_east": box[2], "bbox_north": box[3], "code_version": BUILD_VERSION,
        "code_commit": CODE_COMMIT,
    }


def build_replica(out: Path, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
    """Write the replica store and its registry under ``out``; what was written, and how long
    each step took. Reused when ``out/build.json`` exists (a kept ``--workdir``)."""
    import icechunk

    done = out / "build.json"
    away = out / f"{REGISTRY_DIR}.away"
    if away.exists() and not (out / REGISTRY_DIR).exists():  # a run stopped mid-mode
        away.rename(out / REGISTRY_DIR)
    if done.exists():
        return dict(json.loads(done.read_text())) | {"reused": True}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    groups = groups_for(bbox)
    shards = {g.name: shards_meeting(g, bbox) for g in groups}
    footprint_s = time.perf_counter() - t0

    t = time.perf_counter()
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(out / ICECHUNK_DIR)))
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w", zarr_format=3, attributes=ROOT_ATTRS)
    for g in groups:
        _create_icechunk_group(root, g, [YEAR])
    session.commit(f"seed zone groups {', '.join(g.name for g in groups)}")
    seed_s = time.perf_counter() - t

    t = time.perf_counter()
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    ti = TIME_YEARS.index(YEAR)
    rng = np.random.default_rng(0)
    block = (0.01 + 0.001 * rng.random((CHUNK_PX, CHUNK_PX))).astype(np.float32)
    for g in groups:
        scales = root[f"{g.name}/scales"]
        assert isinstance(scales, zarr.Array)
        for sy, sx in sorted(shards[g.name]):
            i, j = inner_of(sy, sx)
            r0, c0 = sy * SHARD_PX + i * CHUNK_PX, sx * SHARD_PX + j * CHUNK_PX
            scales[ti, r0:r0 + CHUNK_PX, c0:c0 + CHUNK_PX] = block
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    session.commit(f"assemble {YEAR}: one inner chunk of scales per shard under the AOI")
    commit_s = time.perf_counter() - t

    t = time.perf_counter()
    for g in groups:
        rows = [registry_row(g, sy, sx, box) for (sy, sx), box in sorted(shards[g.name].items())]
        run_id = f"{g.name}-{YEAR}-bench-a"
        table = pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA).replace_schema_metadata(
            {"zone": g.name, "year": str(YEAR), "run_id": run_id})
        folder = out / REGISTRY_DIR / "parts" / f"zone={g.name}" / f"year={YEAR}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"{run_id}.parquet", compression="zstd")
    registry_s = time.perf_counter() - t
    info = {
        "groups": [g.name for g in groups],
        "shards": sum(map(len, shards.values())),
        "shards_per_group": {name: len(s) for name, s in shards.items()},
        "build_s": round(time.perf_counter() - t0, 2),
        "footprint_s": round(footprint_s, 2), "seed_s": round(seed_s, 2),
        "write_s": round(write_s, 2), "commit_s": round(commit_s, 2),
        "write_ms_per_shard": round(1000 * write_s / max(1, sum(map(len, shards.values()))), 2),
        "registry_s": round(registry_s, 3),
        "store_mib": round(du(out / ICECHUNK_DIR) / 2**20, 1),
        "registry_kib": round(du(out / REGISTRY_DIR) / 2**10, 1),
    }
    done.write_text(json.dumps(info))
    return info | {"reused": False}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- planning ---------------------------------------------------------------------------------


class Counts:
    """What the source did: shards found (and from where), shard indexes read."""

    def __init__(self) -> None:
        self.shards = 0
        self.index_reads = 0
        self.sources: set[str] = set()


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """The source's own methods, wrapped to count (a few calls per zone: no cost)."""
    counts = Counts()
    shards, masks = TesseraIcechunkSource._shards, TesseraIcechunkSource._masks
    registry = tic.embedded_shards

    def _shards(self: Any, *args: Any) -> Any:
        found = shards(self, *args)
        counts.shards += len(found)
        return found

    async def _masks(self: Any, part: Any, t: int, found: Any) -> Any:
        counts.index_reads += len(found)
        return await masks(self, part, t, found)

    def embedded_shards(*args: Any) -> Any:
        found = registry(*args)
        counts.sources.add("chunk_index" if found is None else "registry")
        return found

    TesseraIcechunkSource._shards = _shards  # type: ignore[method-assign, assignment]
    TesseraIcechunkSource._masks = _masks  # type: ignore[method-assign, assignment]
    tic.embedded_shards = embedded_shards  # type: ignore[assignment]
    try:
        yield counts
    finally:
        TesseraIcechunkSource._shards = shards  # type: ignore[method-assign, assignment]
        TesseraIcechunkSource._masks = masks  # type: ignore[method-assign, assignment]
        tic.embedded_shards = registry


@contextlib.contextmanager
def registry_moved(out: Path, present: bool) -> Iterator[None]:
    """The registry beside the store, or (``present`` False) moved out of the way."""
    here, away = out / REGISTRY_DIR, out / f"{REGISTRY_DIR}.away"
    if not present:
        here.rename(away)
    try:
        yield
    finally:
        if not present:
            away.rename(here)


@contextlib.contextmanager
def refine_limit(limit: int) -> Iterator[None]:
    before = tic.REFINE_LIMIT
    tic.REFINE_LIMIT = limit
    try:
        yield
    finally:
        tic.REFINE_LIMIT = before


def plan_once(url: str, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
    """``prepare``'s planning steps from a freshly opened source: seconds, shards, tiles."""
    grid, stitch = GridConfig(), StitchConfig()
    lattice = Lattice(stitch.patch_size, stitch.stride(receptive_field(ModelConfig())))
    aoi = Aoi.from_bbox(bbox)
    with counting() as counts:
        t0 = time.perf_counter()
        source = TesseraIcechunkSource.open(url)
        names = set(source.zone_names("utm"))
        t1 = time.perf_counter()
        availability = {zone.name: source.availability(zone, YEAR, zone.bounding_window(part))
                        for zone, part in zones_for_aoi(aoi, grid) if zone.name in names}
        t2 = time.perf_counter()
        tasks = plan_tasks(aoi, grid, lattice, YEAR, availability)
        t3 = time.perf_counter()
    return {"open_s": t1 - t0, "availability_s": t2 - t1, "plan_s": t3 - t2,
            "seconds": t3 - t0, "shards": counts.shards, "index_reads": counts.index_reads,
            "shards_from": sorted(counts.sources),
            "tiles": len(tasks), "zones": sorted(availability),
            "cells": sum(len(a.blocks) for a in availability.values()),
            "cell_px": sorted({a.block[0] for a in availability.values()}),
            "core_px": sum(task.core.size for task in tasks)}


def measure_planning(out: Path, aoi: str, replica: str, repeat: int,
                     build: dict[str, Any]) -> list[dict[str, Any]]:
    url = str(out / ICECHUNK_DIR)
    # the replica's shards whose footprint meets this AOI: all a planner needs to look at
    meeting = sum(len(shards_meeting(g, AOIS[aoi]).keys() & shards_meeting(g, AOIS[replica]))
                  for g in groups_for(AOIS[replica]))
    lines = []
    for mode, registry, refine in MODES:
        runs = []
        with registry_moved(out, registry), refine_limit(tic.REFINE_LIMIT if refine else 0):
            for _ in range(repeat):
                runs.append(plan_once(url, AOIS[aoi]))
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("open_s", "availability_s", "plan_s", "seconds")}
        last = runs[-1]
        lines.append(record(
            "store_planning", mode=mode, registry=registry, refine=refine, aoi=aoi,
            bbox=list(AOIS[aoi]), replica_aoi=replica, replica_shards=build["shards"],
            shards_meeting_aoi=meeting, shards=last["shards"], shards_from=last["shards_from"],
            index_reads=last["index_reads"], tiles=last["tiles"],
            zones=last["zones"], cells=last["cells"], cell_px=last["cell_px"],
            core_px=last["core_px"], **{k: round(v, 3) for k, v in med.items()},
            tiles_per_s=round(last["tiles"] / med["seconds"], 1),
            shards_per_s=round(last["shards"] / med["seconds"], 1),
            all_seconds=[round(r["seconds"], 3) for r in runs], repeat=repeat,
            tile_size=GridConfig().tile_size, year=YEAR, store="local files",
            source="tessera-icechunk replica (benchmarks/store_planning.py)"))
    return lines


# ---- read throughput --------------------------------------------------------------------------


def build_read_stores(out: Path, size: int) -> tuple[str, str, Zone, Window]:
    """The small world in both formats, plus one ``size``² window full of data written into
    both (same codes and scales); (Icechunk path, plain Zarr path, zone, zone window)."""
    import icechunk

    world = make_world(cities=1, size_km=2.0, seed=1, years=(YEAR,))
    city = world[0]
    zone = city.zone
    ice, plain = out / ICECHUNK_DIR, out / PLAIN_DIR
    if not (out / "dense.json").exists():
        if out.exists():
            shutil.rmtree(out)

        def render(c: Any, year: int) -> np.ndarray:
            return c.embeddings[year]  # type: ignore[no-any-return]

        write_tessera_icechunk(out, world, (YEAR,), render, 1)
        write_tessera_plain_zarr(out, world, (YEAR,), render, 1)
    g = HemisphereGroup(int(zone.name[3:]), "N")
    gw = g.window(zone)
    # the group shard holding the city's top-left pixel; its top-left ``size``² part
    sy = (city.window.row - gw.row) // SHARD_PX
    sx = (city.window.col - gw.col) // SHARD_PX
    window = Window(gw.row + sy * SHARD_PX, gw.col + sx * SHARD_PX, size, size)
    if (out / "dense.json").exists():
        return str(ice), str(plain), zone, window
    rng = np.random.default_rng(2)
    codes = np.empty((128, size, size), dtype=np.int8)
    scales = np.empty((size, size), dtype=np.float32)
    for r in range(0, size, 256):
        v = rng.standard_normal((128, min(256, size - r), size), dtype=np.float32)
        codes[:, r:r + 256], scales[r:r + 256] = quantise_per_pixel(v)
    del v
    t = TIME_YEARS.index(YEAR)
    r0, c0 = window.row - gw.row, window.col - gw.col
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(ice)))
    session = repo.writable_session("main")
    grp = zarr.open_group(session.store, mode="r+")[g.name]
    assert isinstance(grp, zarr.Group)
    grp["embeddings"][t, r0:r0 + size, c0:c0 + size] = np.moveaxis(codes, 0, -1)  # type: ignore[index]
    grp["scales"][t, r0:r0 + size, c0:c0 + size] = scales  # type: ignore[index]
    session.commit(f"a dense {size}² window for the read benchmark")
    pgrp = zarr.open_group(str(plain), mode="r+")[zone.name]
    assert isinstance(pgrp, zarr.Group)
    # the plain grid starts at the N group's top-left (N lies north of S)
    pgrp["embeddings"][t, :, r0:r0 + size, c0:c0 + size] = codes  # type: ignore[index]
    pgrp["scales"][t, r0:r0 + size, c0:c0 + size] = scales  # type: ignore[index]
    (out / "dense.json").write_text(json.dumps({"window": [window.row, window.col, size, size]}))
    return str(ice), str(plain), zone, window


def measure_read(out: Path, size: int, repeat: int) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    ice_url, plain_url, zone, window = build_read_stores(out, size)
    build_s = time.perf_counter() - t0
    sources: dict[str, TesseraIcechunkSource | TesseraDclimateZarrSource] = {
        "tessera-icechunk": TesseraIcechunkSource.open(ice_url),
        "tessera-dclimate-zarr": TesseraDclimateZarrSource.open(plain_url)}
    first = {name: s.read(zone, window, YEAR) for name, s in sources.items()}  # warm, check
    a, b = first.values()
    assert a.scales is not None and b.scales is not None  # per-pixel scales, both
    same = bool(np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
                and a.valid.all() and b.valid.all())
    nbytes = a.codes.nbytes
    del first, a, b
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(repeat):  # alternating, so both see the same neighbours
        for name, s in sources.items():
            t = time.perf_counter()
            got = s.read(zone, window, YEAR)
            seconds[name].append(time.perf_counter() - t)
            del got
    mbps = {name: nbytes / statistics.median(v) / 1e6 for name, v in seconds.items()}
    ratios = [p / q for p, q in zip(seconds["tessera-dclimate-zarr"],
                                    seconds["tessera-icechunk"], strict=True)]
    common = {"window": [window.height, window.width], "bytes": nbytes, "repeat": repeat,
              "identical": same, "store": "local files", "build_s": round(build_s, 1)}
    chunks = {"tessera-icechunk": "(y, x, band), 256 px chunks in 2048 px shards, zstd",
              "tessera-dclimate-zarr": "(band, y, x), 32 px chunks in 4096 px shards, blosc zstd"}
    lines = [record("store_read", layout=name, stored=chunks[name],
                    mb_per_s=round(mbps[name], 1),
                    mpx_per_s=round(window.size / statistics.median(v) / 1e6, 3),
                    seconds=[round(x, 3) for x in v], **common)
             for name, v in seconds.items()]
    lines.append(record("store_read_ratio", ratio=round(statistics.median(ratios), 3),
                        ratios=[round(r, 3) for r in ratios],
                        what="tessera-icechunk MB/s ÷ tessera-dclimate-zarr MB/s, per round",
                        **common))
    return lines


def quiet_icechunk() -> None:
    """Icechunk's Rust warnings (local storage and concurrent commits) off stderr, unless
    ``ICECHUNK_LOG`` asks for them (``RUST_LOG`` does not reach icechunk 2's logger)."""
    import icechunk

    if "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter("error")


# ---- the benchmark ----------------------------------------------------------------------------


def run(quick: bool, aoi: str | None = None, repeat: int = 3) -> list[dict[str, Any]]:
    quiet_icechunk()
    aoi = aoi or ("switzerland" if quick else "france")
    base = workdir() / f"store-planning-{aoi}"
    t0 = time.perf_counter()
    build = build_replica(base, AOIS[aoi])
    build_wall = time.perf_counter() - t0
    lines = [record("store_planning_build", aoi=aoi, bbox=list(AOIS[aoi]), **build,
                    build_wall_s=round(build_wall, 2), year=YEAR,
                    data="one 256x256 inner chunk of scales per shard")]
    lines += measure_planning(base, aoi, aoi, repeat, build)
    lines += measure_planning(base, SUB_AOI[aoi], aoi, repeat, build)
    size = 1024 if quick else 2048
    lines += measure_read(workdir() / f"store-read-{size}", size, repeat)
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Switzerland, a 1024 px read window")
    ap.add_argument("--aoi", choices=[a for a in AOIS if a in SUB_AOI])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for line in run(a.quick, a.aoi, a.repeat):
        emit(line)
