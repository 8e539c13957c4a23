"""The ledger and ``lczscale status`` at planet scale: one year of all land is ~101,000 tiles.

A real small cube is mapped first (a synthetic city, a small random-weight model, tiles of
256 px: a few tiles, serial), so that ``lczscale status`` has a recorded run to re-plan. Then
N synthetic ledger entries (100,000; ``--quick``: 10,000) are added, shaped like the *done*
entries ``execute/tile.py`` writes for 4096 px tiles (zone, year, core, provenance hash and
parts of the cube's own run, worker, input digest, valid pixels, patches, finish time), spread
over the 59 other UTM zones as a whole-land run spreads them, and timed:

- ``write_s``: writing them through the sink's ``finish`` (``ledger.record``: temporary file,
  fsync, rename, directory fsync), from ``WRITERS`` threads at once (workers finishing tiles);
- ``read_all_s``: ``ledger.read_all``, every entry, as ``status`` and ``prepare`` read them;
- ``status_s``: ``execute.status.cube_status`` on the cube, whole: it re-plans the recorded run
  (opens the source, loads the model, ``prepare``) and counts every entry;
  ``status_ledger_s`` is the part of it spent in ``ledger.read_all`` (both reads: ``status``'s
  own and ``prepare``'s), ``status_ledger_reads`` how many reads that was;
- ``skip_check_s``: the map's skip check in isolation, as ``prepare`` does it: read every entry
  and keep those done with the run's provenance (``done``);
- ``compact_s``: ``compaction.compact`` (a map run calls it at its end) folding the per-tile
  entries into per-(zone, year) snapshots; then every read above again (``*_compacted``).

The uncompacted figures are what every cube had before snapshots (one object per tile), and
what a ledger holds between compactions.

On S3 (moto's server on loopback) a sample of ``S3_SAMPLE`` entries is written, read and
compacted, and its figures scaled linearly to N (line ``ledger_scale_s3``, marked
``"extrapolated": true``); then N entries are written as compaction leaves them (one snapshot
per zone and year) and read, measured at N (``ledger_scale_s3_compacted``). moto, a Python
server on this busy machine, takes milliseconds per request; a real store is tens of
milliseconds away but serves many requests at once.

    python benchmarks/ledger_scale.py [--quick] [--no-s3]
"""

from __future__ import annotations

import argparse
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import emit, record, workdir

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.io.cube import compaction, ledger
from lczscale.io.cube.sink import ZarrCubeSink
from lczscale.io.cube.store import cube_attrs

FULL, QUICK = 100_000, 10_000
S3_SAMPLE = 2_000
WRITERS = 8
TILE_PX = 4096  # the synthetic entries' tiles: the default tile size
SMALL_MODEL = ModelConfig(widths=(8, 16), convs_per_block=1)  # the cube is the subject


def small_cube(root: Path) -> tuple[str, MapConfig]:
    """A real cube with a recorded run (a synthetic city mapped serially), and its config."""
    from common import random_model

    from lczscale.synth.world import write_world

    world = write_world(root / "world", cities=1, size_km=1.2, seed=6, years=(2024,),
                        shard_size=256, truth_cube=False, overwrite=True)
    model = random_model(root / "model", world["embeddings"], SMALL_MODEL)
    cfg = MapConfig.model_validate({
        "source": world["embeddings"], "model": model, "out": str(root / "cube.zarr"),
        "executor": "serial", "grid": GridConfig(tile_size=256),
        "stitch": StitchConfig(patch_size=64, batch_size=4)})
    report = run_map(cfg, progress=False)
    assert report.computed and not report.failed, report.summary()
    return cfg.out, cfg


def synthetic_entries(n: int, attrs: dict[str, Any], skip_zone: str,
                      year: int = 2024) -> Iterator[tuple[str, dict[str, Any]]]:
    """``n`` done tile entries as a 4096 px run writes them, over the zones but ``skip_zone``
    (the real cube's, whose tiles the recorded run plans)."""
    zones = [f"utm{z:02d}" for z in range(1, 61) if f"utm{z:02d}" != skip_zone]
    phash = attrs.get("lczscale:provenance_hash", "0" * 64)
    provenance = attrs.get("lczscale:provenance", {})
    import hashlib
    import json

    parts = {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16]
             for k, v in provenance.items()}
    now = time.time()
    for i in range(n):
        zone = zones[i % len(zones)]
        row, col = divmod(i // len(zones), 40)
        core = [row * TILE_PX, col * TILE_PX, TILE_PX, TILE_PX]
        yield f"{zone}/{year}/{core[0]}_{core[1]}", {
            "zone": zone, "year": year, "core": core, "provenance_hash": phash,
            "provenance_parts": parts, "worker": f"node-{i % 64:03d}:{4000 + i % 7}",
            "inputs": f"{i:016x}", "valid_pixels": TILE_PX * TILE_PX - i % 1000,
            "patches": 324, "finished_at": now + i * 0.01,
        }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@contextmanager
def ledger_reads() -> Iterator[list[float]]:
    """Seconds of each ``ledger.read_all`` call made inside the block (status, prepare)."""
    real = ledger.read_all
    spent: list[float] = []

    def counted(*args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
        out, seconds = timed(lambda: real(*args, **kwargs))
        spent.append(seconds)
        return out

    ledger.read_all = counted  # type: ignore[assignment]
    try:
        yield spent
    finally:
        ledger.read_all = real  # type: ignore[assignment]


def write_entries(sink: ZarrCubeSink, entries: list[tuple[str, dict[str, Any]]]) -> float:
    """Seconds to finish every entry through the sink from ``WRITERS`` threads."""
    def finish(item: tuple[str, dict[str, Any]]) -> None:
        sink.finish(*item)

    with ThreadPoolExecutor(WRITERS) as pool:
        _, seconds = timed(lambda: list(pool.map(finish, entries)))
    return seconds


def skip_check(cfg: MapConfig, phash: str) -> set[str]:
    """The map's skip check as ``prepare`` makes it: every entry read, the done ones kept."""
    entries = ledger.read_all(cfg.out)
    return {k for k, e in entries.items()
            if e.get("provenance_hash") == phash and ledger.state(e) == ledger.DONE
            and (not cfg.outputs.probabilities or "probability" in e.get("outputs", ()))}


def reads(url: str, cfg: MapConfig, n: int, real_tiles: int) -> dict[str, Any]:
    """read_all, status and the skip check on the cube as it is now."""
    from lczscale.execute.status import cube_status

    entries, read_s = timed(lambda: ledger.read_all(url))
    assert len(entries) == n + real_tiles, (len(entries), n, real_tiles)
    with ledger_reads() as spent:
        status, status_s = timed(lambda: cube_status(url))
    assert status["done"] == n + real_tiles, status
    phash = cube_attrs(url)["lczscale:provenance_hash"]
    done, skip_s = timed(lambda: skip_check(cfg, phash))
    assert len(done) == n + real_tiles
    return {"read_all_s": round(read_s, 3), "status_s": round(status_s, 3),
            "status_ledger_s": round(sum(spent), 3), "status_ledger_reads": len(spent),
            "skip_check_s": round(skip_s, 3)}


def local(n: int) -> dict[str, Any]:
    """Every figure on local disk for ``n`` synthetic entries over a real small cube."""
    root = workdir() / f"ledger-{uuid.uuid4().hex[:8]}"
    try:
        url, cfg = small_cube(root)
        real_tiles = len(ledger.read_all(url))
        attrs = cube_attrs(url)
        zone = next(iter(ledger.read_all(url).values()))["zone"]
        entries = list(synthetic_entries(n, attrs, zone))
        write_s = write_entries(ZarrCubeSink(url), entries)
        line: dict[str, Any] = {
            "entries": n, "real_tiles": real_tiles, "store": "local", "writers": WRITERS,
            "write_s": round(write_s, 2), "write_entries_per_s": round(n / write_s, 1),
            "bytes_per_entry": round(ledger_bytes(url) / (n + real_tiles)),
        } | reads(url, cfg, n, real_tiles)
        folded, compact_s = timed(lambda: compaction.compact(url))
        line |= {"compact_s": round(compact_s, 3), "compacted": folded}
        line |= {f"{k}_compacted": v for k, v in reads(url, cfg, n, real_tiles).items()}
        line |= {"format": "snapshots + per-tile log", "targets": {"status_s": 10},
                 "meets_target": line["status_s_compacted"] < 10}
        return line
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ledger_bytes(url: str) -> int:
    return sum(p.stat().st_size for p in (Path(url) / ledger.LEDGER_DIR).rglob("*")
               if p.is_file())


def s3(n: int, sample: int) -> list[dict[str, Any]]:
    """A sample of ``sample`` entries written to, read from and compacted on moto's S3 server,
    scaled to ``n``; and ``n`` entries read as compaction leaves them."""
    from tests.servers import environment, s3_server

    root = workdir() / f"moto-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    try:
        with s3_server(root) as server, environment(server.env):
            server.create_bucket("ledger")
            url = "s3://ledger/cube.zarr"
            entries = list(synthetic_entries(sample, {}, ""))
            write_s = write_entries(ZarrCubeSink(url), entries)
            got, read_s = timed(lambda: ledger.read_all(url))
            assert len(got) == sample
            scale = n / sample
            line: dict[str, Any] = {
                "store": "s3 (moto, loopback)", "sample_entries": sample, "entries": n,
                "extrapolated": True, "writers": WRITERS,
                "sample_write_s": round(write_s, 3), "sample_read_all_s": round(read_s, 3),
                "write_s": round(write_s * scale, 1), "read_all_s": round(read_s * scale, 1),
                "format": "snapshots + per-tile log",
            }
            _, compact_s = timed(lambda: compaction.compact(url))
            again, read2_s = timed(lambda: ledger.read_all(url))
            assert again == got
            line |= {"sample_compact_s": round(compact_s, 3),
                     "sample_read_all_s_compacted": round(read2_s, 3),
                     "compact_s": round(compact_s * scale, 1)}
            return [line, s3_compacted("s3://ledger/full.zarr", n)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def s3_compacted(url: str, n: int) -> dict[str, Any]:
    """``read_all`` of ``n`` entries on S3 as compaction leaves them (one snapshot per zone
    and year, written here directly): measured at ``n``, not extrapolated."""
    folders: dict[str, dict[str, Any]] = {}
    for key, entry in synthetic_entries(n, {}, ""):
        folders.setdefault(ledger.folder_of(key), {})[key] = {"key": key, "state": "done",
                                                              **entry}
    for folder, entries in folders.items():
        ledger.put_atomically(ledger.snapshot_url(url, folder),
                              ledger.snapshot_bytes(folder, entries))
    got, read_s = timed(lambda: ledger.read_all(url))
    assert len(got) == n
    return {"store": "s3 (moto, loopback)", "entries": n, "extrapolated": False,
            "snapshots": len(folders), "read_all_s_compacted": round(read_s, 3),
            "format": "snapshots + per-tile log"}


def run(quick: bool, with_s3: bool = True) -> list[dict[str, Any]]:
    """The local line at N entries, and the S3 sample scaled to N."""
    n = QUICK if quick else FULL
    lines = [record("ledger_scale", quick=quick, **local(n))]
    if with_s3:
        sample, *compacted = s3(n, S3_SAMPLE)
        lines.append(record("ledger_scale_s3", quick=quick, **sample))
        lines += [record("ledger_scale_s3_compacted", quick=quick, **c) for c in compacted]
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-s3", action="store_true", help="local disk only")
    a = ap.parse_args()
    for result in run(a.quick, not a.no_s3):
        emit(result)
