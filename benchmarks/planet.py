"""The planet run before paying for it: every land tile of one year through the real control plane.

``lczscale map`` (the real ``run_map``: writer lock, ``prepare``, cube creation, the
``DaskExecutor``'s waves, the runner plugin, the tile runner, the ledger's pending and done
entries, the chunk writes, the compaction at the end) maps all land at the default 4096 px
tile into a cube created over all 60 UTM zones. Only the source and the model are stand-ins
(``planet_parts.py``): the land of ``land.py`` as a TESSERA Zarr store would list it, read as a
constant window with no I/O, and a model that returns one class at once.

The cluster is real and separate from the client: a scheduler process and ``WORKERS`` worker
processes under their nannies, all on this machine. The map's client (the *driver*, a child
process running ``run_map`` against the scheduler's address) is what a user runs. While it
runs, with ``churn`` on:

- a worker process is killed (SIGKILL) at random, on average every ``kill_every`` seconds; its
  nanny starts a new one, which loads the model again (the runner plugin);
- at about half of the tiles the driver itself is killed (SIGKILL), and, once the tiles it left
  running on the workers have ended, started again: its ``prepare`` reads the ledger and plans
  only the tiles not done (``resume_plan_s`` is how long that took, with about half the land
  done).

Then every planned tile must have exactly one ``done`` ledger entry with the run's provenance
and its chunk (``lost`` counts those that do not; a sample of chunks is read back and checked),
and the resume must not have planned a tile that was done when it read the ledger
(``duplicated``). ``recomputed`` counts tiles finished twice because a kill caught them in
flight (their second write is the same bytes). Each worker process logs every tile it finished
(``planet_parts``), from which:

- ``overhead_ms``: per tile, everything but the stand-ins: the gap on the worker since its
  previous tile ended (the scheduler's and client's share: dispatch, results, waves) plus the
  tile runner's own time outside the stand-ins (ledger entries, chunk encoding and writing,
  checks). Gaps that span a kill are churn, not overhead, and are left out;
- ``control_ms``: the same without the chunk writes (``chunks_ms``): scheduling, ledger and
  bookkeeping alone;
- ``s_per_1000``: the seconds each successive 1,000 tiles took (flat means it scales);
  ``per_1000_growth`` compares the median of the last tenth with the first tenth, leaving out
  the thousand that spans the client's restart.

Client and scheduler resident memory are sampled every second against the tiles done
(``client_rss_growth``: the mean of the last 10 % of the run over the first 10 %, minus one;
per client process too).

    python benchmarks/planet.py [--quick] [--no-churn] [--workdir DIR] [--out FILE.jsonl]

``--quick`` maps the zones from UTM 31 eastwards until about 10,000 tiles; the full run maps
every land tile (101,339), which takes about an hour on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

QUICK_TILES = 10_000
WORKERS = 2
YEAR = 2024
TILE = 4096
TARGETS = {"overhead_ms_p50": 5.0, "client_rss_growth": 0.10, "per_1000_growth": 0.20,
           "lost": 0, "duplicated": 0}


# ---- the driver: the user's ``lczscale map`` client, in its own process -----------------------


def driver(work: Path) -> None:
    """Run the real ``run_map`` with the stand-in pass; events to ``events-<pid>.jsonl``."""
    import planet_parts

    import lczscale.execute.run as run_module
    from lczscale.config import MapConfig
    from lczscale.io.cube import ledger

    planet_parts.register()
    spec = json.loads((work / "driver.json").read_text())
    events = (work / f"events-{os.getpid()}.jsonl").open("a")

    def event(kind: str, **fields: Any) -> None:
        events.write(json.dumps({"event": kind, "t": time.time(), **fields}) + "\n")
        events.flush()

    real_prepare, real_compact = run_module.prepare, run_module.compact_after_run

    def timed_prepare(cfg: MapConfig) -> Any:
        t0 = time.perf_counter()
        plan = real_prepare(cfg)
        seconds = time.perf_counter() - t0
        done = {k for k, e in plan.ledger.items() if ledger.state(e) == ledger.DONE
                and e.get("provenance_hash") == plan.provenance_hash}
        todo = {t.key for t in plan.tasks}
        planned = [t.key for t in plan.planned]
        if not (work / "planned.json").exists():
            (work / "planned.json").write_text(json.dumps(planned))
        event("planned", prepare_s=round(seconds, 3), planned=len(planned), tasks=len(todo),
              done_before=len(done), redo=len(todo & done),
              unplanned=len(set(planned) - todo - done))
        return plan

    def timed_compact(url: str) -> Any:
        t0 = time.perf_counter()
        out = real_compact(url)
        event("compacted", compact_s=round(time.perf_counter() - t0, 3))
        return out

    run_module.prepare = timed_prepare
    run_module.compact_after_run = timed_compact
    run_module.tile_pass = planet_parts.stand_in_pass(str(work / "worklog"))
    cfg = MapConfig.model_validate(spec)
    proc = psutil.Process()
    count = 0

    def on_result(result: Any) -> None:
        nonlocal count
        count += 1
        if count % 20 == 0:
            event("progress", results=count, rss=proc.memory_info().rss)

    event("started")
    report = run_module.run_map(cfg, progress=False, on_result=on_result)
    summary = report.summary()
    event("finished", results=count, computed=summary["computed"], failed=summary["failed"],
          skipped=summary["skipped"], seconds=summary["seconds"])


# ---- the cluster and the churn -----------------------------------------------------------------


def child_env() -> dict[str, str]:
    """What every process of the run gets: the benchmarks on the path, no sampling profiler."""
    from lczscale.execute.clusters.worker_profiler import NO_PROFILER_ENV

    path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    return os.environ | NO_PROFILER_ENV | {
        "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE"}


class Cluster:
    """A scheduler process and worker processes (each under a nanny that restarts it)."""

    def __init__(self, work: Path, workers: int) -> None:
        from distributed import Client

        self.file = work / "scheduler.json"
        self.file.unlink(missing_ok=True)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        env = child_env()
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
             str(self.file), "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("w"))
        for _ in range(600):
            if self.file.exists() and self.file.stat().st_size:
                break
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        self.nannies = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
             str(self.file), "--nthreads", "1", "--memory-limit", "0", "--no-dashboard",
             "--name", f"planet-{i}", "--host", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=(logs / f"worker-{i}.log").open("w"))
            for i in range(workers)]
        self.client = Client(self.address)
        self.client.wait_for_workers(workers, timeout=300)
        self.workers = workers

    def worker_pids(self) -> dict[str, int]:
        """Live worker processes by address."""
        return dict(self.client.run(os.getpid))

    def busy(self) -> int:
        """Tasks still running or queued on the workers."""
        return sum(len(keys) for keys in self.client.processing().values())

    def close(self) -> None:
        """Stop everything."""
        self.client.close()
        for p in [*self.nannies, self.scheduler]:
            p.terminate()
        for p in [*self.nannies, self.scheduler]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 when it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class Events:
    """Follows a driver's events file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self.results = 0

    def poll(self) -> None:
        """Read what was added since the last poll."""
        if self.handle is None:
            if not self.path.exists():
                return
            self.handle = self.path.open()
        for line in self.handle.readlines():
            if line.endswith("\n"):
                got = json.loads(line)
                self.lines.append(got)
                self.results = max(self.results, got.get("results", 0))

    def first(self, kind: str) -> dict[str, Any]:
        """The first event of ``kind`` (empty if none)."""
        return first_event(self.lines, kind)


def first_event(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The first of ``events`` of ``kind`` (empty if none)."""
    return next((e for e in events if e["event"] == kind), {})


def start_driver(work: Path, n: int) -> tuple[subprocess.Popen[bytes], Events]:
    """Start the ``n``-th driver process."""
    proc = subprocess.Popen([sys.executable, str(HERE / "planet.py"), "--driver", str(work)],
                            env=child_env(), stdout=(work / f"driver-{n}.out").open("w"),
                            stderr=(work / f"driver-{n}.err").open("w"))
    return proc, Events(work / f"events-{proc.pid}.jsonl")


def run_with_churn(work: Path, cluster: Cluster, churn: bool, kill_every: float,
                   seed: int = 22) -> dict[str, Any]:
    """Drive the run: drivers, worker kills, the client kill at half; samples and events."""
    rng = random.Random(seed)
    kills: list[dict[str, Any]] = []
    samples: list[tuple[float, int, int, int, int]] = []  # t, tiles, client, scheduler, driver
    drivers: list[Events] = []
    n = 0
    proc, ev = start_driver(work, n)
    drivers.append(ev)
    t_start = time.time()
    next_kill = time.time() + rng.expovariate(1 / kill_every)
    client_killed = False
    base = 0  # tiles finished by earlier drivers
    while True:
        time.sleep(1.0)
        ev.poll()
        now = time.time()
        done_so_far = base + ev.results
        samples.append((now, done_so_far, rss(proc.pid), rss(cluster.scheduler.pid), n))
        planned = ev.first("planned")
        if proc.poll() is not None:
            ev.poll()
            if proc.returncode != 0:
                err = (work / f"driver-{n}.err").read_text()[-3000:]
                raise RuntimeError(f"driver {n} exited {proc.returncode}: {err}")
            break
        if churn and not client_killed and planned and ev.results >= planned["tasks"] / 2:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append({"t": time.time(), "what": "client", "pid": proc.pid,
                          "tiles_done": done_so_far})
            client_killed = True
            deadline = time.time() + 120
            while cluster.busy() and time.time() < deadline:  # its tiles still running
                time.sleep(0.5)
            kills[-1]["drained_t"] = time.time()
            base = done_so_far
            n += 1
            proc, ev = start_driver(work, n)
            drivers.append(ev)
            continue
        if churn and now >= next_kill:
            pids = cluster.worker_pids()
            if len(pids) == cluster.workers:  # never two replacements at once
                address, pid = rng.choice(sorted(pids.items()))
                os.kill(pid, signal.SIGKILL)
                kills.append({"t": time.time(), "what": "worker", "pid": pid,
                              "address": address, "tiles_done": done_so_far})
            next_kill = now + rng.expovariate(1 / kill_every)
    return {"t_start": t_start, "t_end": time.time(), "kills": kills, "samples": samples,
            "drivers": [d.lines for d in drivers]}


# ---- what the run left: the ledger, the chunks, the worker logs ---------------------------------


def check_cube(cube: Path, planned: list[str], sample: int = 200) -> dict[str, Any]:
    """Lost tiles (no done entry with the run's provenance, or no chunk), a sample read back,
    and the ledger's size on disk."""
    import zarr

    from lczscale.io.cube import ledger
    from lczscale.io.cube.store import cube_attrs

    phash = cube_attrs(str(cube))["lczscale:provenance_hash"]
    t0 = time.perf_counter()
    entries = ledger.read_all(str(cube))
    read_s = time.perf_counter() - t0
    done = {k: e for k, e in entries.items()
            if ledger.state(e) == ledger.DONE and e.get("provenance_hash") == phash}
    no_entry = [k for k in planned if k not in done]
    no_chunk = []
    for key in planned:
        e = done.get(key)
        if e is None:
            continue
        row, col = e["core"][0] // TILE, e["core"][1] // TILE
        for name in ("lcz", "confidence"):
            if not (cube / e["zone"] / name / "c" / "0" / str(row) / str(col)).exists():
                no_chunk.append(key)
    rng = random.Random(7)
    wrong = 0
    root = zarr.open_group(str(cube), mode="r")
    for key in rng.sample(sorted(done), min(sample, len(done))):
        e = done[key]
        r, c = e["core"][:2]
        arr = root[f"{e['zone']}/lcz"]
        got = np.asarray(arr[0, r:r + 8, c:c + 8])
        wrong += int(not (got == 6).all())
    objects = size = 0
    for dirpath, _, names in os.walk(cube / "_ledger"):
        for name in names:
            objects += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return {"lost": len(set(no_entry) | set(no_chunk)), "no_done_entry": len(no_entry),
            "no_chunk": len(set(no_chunk)), "sample_checked": min(sample, len(done)),
            "sample_wrong": wrong, "ledger_objects": objects, "ledger_bytes": size,
            "ledger_read_all_s": round(read_s, 3)}


def worker_lines(work: Path) -> list[dict[str, Any]]:
    """Every tile every worker process finished."""
    lines = []
    for path in sorted((work / "worklog").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                lines.append(json.loads(line))
    return lines


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile, rounded for a JSON line (NaN-free: 0 for none)."""
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def overheads(lines: list[dict[str, Any]], kills: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-tile overhead figures from the worker logs (gaps spanning a kill left out)."""
    churn = sorted(k["t"] for k in kills) + sorted(k.get("drained_t", k["t"]) for k in kills)
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_pid.setdefault(line["pid"], []).append(line)
    overhead, control, chunks, ledger_ms, standin, gaps = [], [], [], [], [], []
    for tiles in by_pid.values():
        tiles.sort(key=lambda x: x["started"])
        for prev, tile in zip([None, *tiles[:-1]], tiles, strict=True):
            if prev is None:
                continue  # a process's first tile: its gap is the process's start-up
            if any(prev["ended"] <= t <= tile["started"] for t in churn):
                continue
            gap = max(0.0, tile["started"] - prev["ended"])
            inside = tile["run_s"] - tile["standin_s"]
            overhead.append(1e3 * (gap + inside))
            control.append(1e3 * (gap + inside - tile["chunks_s"]))
            chunks.append(1e3 * tile["chunks_s"])
            ledger_ms.append(1e3 * tile["ledger_s"])
            standin.append(1e3 * tile["standin_s"])
            gaps.append(1e3 * gap)
    out: dict[str, Any] = {"overhead_tiles": len(overhead)}
    for name, values in (("overhead", overhead), ("control", control), ("chunks", chunks),
                         ("ledger", ledger_ms), ("gap", gaps), ("standin", standin)):
        out[f"{name}_ms_p50"] = pct(values, 50)
        out[f"{name}_ms_p99"] = pct(values, 99)
    return out


def per_thousand(lines: list[dict[str, Any]], kills: list[dict[str, Any]]
                 ) -> tuple[list[float], float | None]:
    """Seconds per successive 1,000 finished tiles, and the growth of the last tenth's median
    over the first tenth's (the thousand spanning the client's restart left out)."""
    ended = sorted(line["ended"] for line in lines if line["status"] == "done")
    restarts = [(k["t"], k.get("drained_t", k["t"])) for k in kills if k["what"] == "client"]
    spans, clean = [], []
    previous = min((line["started"] for line in lines), default=0.0)
    for i in range(1000, len(ended) + 1, 1000):  # from the previous thousand's last tile
        t0, t1 = previous, ended[i - 1]
        previous = t1
        spans.append(round(t1 - t0, 2))
        clean.append(not any(t0 <= a <= t1 or t0 <= b <= t1 for a, b in restarts))
    kept = [s for s, ok in zip(spans, clean, strict=True) if ok]
    if len(kept) < 2:
        return spans, None
    tenth = max(1, len(kept) // 10)
    first, last = statistics.median(kept[:tenth]), statistics.median(kept[-tenth:])
    return spans, round(last / first - 1, 3)


def growth(samples: list[tuple[float, int, int, int, int]], column: int, total: int,
           driver: int | None = None) -> float | None:
    """Mean resident memory (``column`` of the samples) in the last 10 % of the tiles over the
    first 10 %, minus one; for one driver process only when ``driver`` is given."""
    rows = [s for s in samples if s[column] > 0 and (driver is None or s[4] == driver)]
    if driver is not None and rows:
        lo_t, hi_t = rows[0][1], rows[-1][1]
    else:
        lo_t, hi_t = 0, total
    span = hi_t - lo_t
    first = [s[column] for s in rows if s[1] <= lo_t + 0.1 * span and s[1] > lo_t]
    last = [s[column] for s in rows if s[1] >= hi_t - 0.1 * span]
    if not first or not last:
        return None
    return round(statistics.fmean(last) / statistics.fmean(first) - 1, 4)


# ---- the whole run -----------------------------------------------------------------------------


def prepare_inputs(work: Path, tiles: int | None) -> list[str]:
    """The stand-in source folder and the small model; the zones of the run. With ``tiles``,
    the zones from UTM 31 eastwards until that many tiles (the last zone cut short)."""
    import planet_parts
    from common import random_model

    from lczscale.config import ModelConfig

    planet_parts.register()
    zones = [f"utm{n:02d}" for n in range(1, 61)]
    limits: dict[str, int] = {}
    if tiles:
        order, zones, total = [f"utm{(30 + i) % 60 + 1:02d}" for i in range(60)], [], 0
        for z in order:
            if total >= tiles:
                break
            n = planet_parts.zone_tiles(z)
            zones.append(z)
            if total + n > tiles:
                limits[z] = tiles - total
            total += n
    source = work / "source"
    source.mkdir(parents=True, exist_ok=True)
    (source / planet_parts.MARKER).write_text(json.dumps({"zones": zones, "limits": limits}))
    model = random_model(work / "model", str(source),
                         ModelConfig(widths=(8, 16), convs_per_block=1), planet_parts.LAYOUT)
    (work / "driver.json").write_text(json.dumps({
        "source": str(source), "source_kind": planet_parts.LAYOUT, "model": model,
        "out": str(work / "cube.zarr"), "executor": "dask", "device": "cpu",
        "threads_per_worker": 1, "year": YEAR,
    }))
    return zones


def dry_run(work: Path, quick: bool, churn: bool = True, kill_every: float | None = None,
            tiles: int | None = None) -> dict[str, Any]:
    """The whole benchmark in ``work``; the ``planet_dry_run`` line's fields."""
    for stale in ("cube.zarr", "worklog", "planned.json"):
        path = work / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for old in work.glob("events-*.jsonl"):
        old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / "worklog").mkdir()
    zones = prepare_inputs(work, tiles or (QUICK_TILES if quick else None))
    kill_every = kill_every or (25.0 if quick else 90.0)
    cluster = Cluster(work, WORKERS)
    try:
        got = run_with_churn(work, cluster, churn, kill_every)
    finally:
        cluster.close()
    planned = json.loads((work / "planned.json").read_text())
    cube = check_cube(work / "cube.zarr", planned)
    lines = worker_lines(work)
    done_lines = [x for x in lines if x["status"] == "done"]
    first, resume = got["drivers"][0], got["drivers"][-1]
    last_plan = first_event(resume, "planned")  # the last client's (the resume's, with churn)
    resumed = last_plan if len(got["drivers"]) > 1 else {}

    spans, per_1000_growth = per_thousand(lines, got["kills"])
    samples = got["samples"]
    client_growth = growth(samples, 2, len(planned))
    per_client = [growth(samples, 2, len(planned), d) for d in range(len(got["drivers"]))]
    stride = max(1, len(samples) // 60)
    wall = got["t_end"] - got["t_start"]
    unique = len({x["key"] for x in done_lines})
    fields: dict[str, Any] = {
        "tiles": len(planned), "zones": len(zones), "tile_px": TILE, "workers": WORKERS,
        "threads_per_worker": 1, "year": YEAR, "churn": churn,
        "worker_kills": sum(k["what"] == "worker" for k in got["kills"]),
        "client_kills": sum(k["what"] == "client" for k in got["kills"]),
        "kill_every_s": kill_every,
        "lost": cube["lost"],
        "duplicated": int(resumed.get("redo", 0)),
        "recomputed": len(done_lines) - unique,
        "failed_results": sum(x["status"] != "done" for x in lines),
        **overheads(lines, got["kills"]),
        "client_rss_growth": client_growth,
        "client_rss_growth_per_client": per_client,
        "scheduler_rss_growth": growth(samples, 3, len(planned)),
        "rss_mib_by_tiles": [[s[1], round(s[2] / 2**20, 1), round(s[3] / 2**20, 1)]
                             for s in samples[::stride]],
        "s_per_1000": spans, "per_1000_growth": per_1000_growth,
        "first_plan_s": first_event(first, "planned").get("prepare_s"),
        "resume_plan_s": resumed.get("prepare_s"),
        "resume_done_before": last_plan.get("done_before"),
        "resume_tasks": last_plan.get("tasks"),
        "resume_unplanned": last_plan.get("unplanned"),
        "compact_s": first_event(resume, "compacted").get("compact_s"),
        "wall_s": round(wall, 1), "tiles_per_s": round(unique / wall, 2),
        **{k: v for k, v in cube.items() if k != "lost"},
        "source": "stand-in land (benchmarks/land.py), constant window, no I/O",
        "model": "stand-in: class 6 everywhere, at once",
        "targets": TARGETS,
    }
    fields["meets_targets"] = {
        "overhead_ms_p50": fields["overhead_ms_p50"] <= TARGETS["overhead_ms_p50"],
        "control_ms_p50": fields["control_ms_p50"] <= TARGETS["overhead_ms_p50"],
        "client_rss_growth": max(abs(g) for g in [client_growth or 0, *[
            p or 0 for p in per_client]]) <= TARGETS["client_rss_growth"],
        "per_1000_growth": per_1000_growth is not None
        and abs(per_1000_growth) <= TARGETS["per_1000_growth"],
        "lost_or_duplicated": fields["lost"] == 0 and fields["duplicated"] == 0,
    }
    return fields


def run(quick: bool, churn: bool = True) -> list[dict[str, Any]]:
    """The ``planet_dry_run`` line (for ``run.py``)."""
    from common import record, workdir

    return [record("planet_dry_run", quick=quick,
                   **dry_run(workdir() / "planet", quick, churn))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"about {QUICK_TILES:,} tiles")
    ap.add_argument("--tiles", type=int, help="this many tiles (UTM 31 eastwards)")
    ap.add_argument("--no-churn", action="store_true", help="no worker or client kills")
    ap.add_argument("--kill-every", type=float, help="mean seconds between worker kills")
    ap.add_argument("--workdir", type=Path, help="work folder (kept); default: temporary")
    ap.add_argument("--out", type=Path, help="also append the line to this .jsonl file")
    ap.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.driver:
        driver(a.driver)
        return
    from common import emit, record, set_workdir, workdir

    if a.workdir:
        set_workdir(a.workdir)
    line = record("planet_dry_run", quick=a.quick,
                  **dry_run(workdir() / "planet", a.quick, not a.no_churn, a.kill_every,
                                  a.tiles))
    emit(line)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
