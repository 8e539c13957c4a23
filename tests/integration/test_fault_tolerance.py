"""Fault tolerance through the real pieces: workers and whole runs die mid-way, models change,
tiles run twice — and the cube comes out byte for byte as a clean run makes it.

Every run here uses 256 px tiles (36 tiles over the two 6 km cities of the ``world`` fixture)
and one torch thread per worker, so that all runs do exactly the same CPU arithmetic and their
cubes can be compared bit for bit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from cube_compare import assert_same, cube_arrays
from distributed import Client, LocalCluster

import lczscale
from lczscale.config import GridConfig, MapConfig, dump_yaml
from lczscale.core.grid import Window, zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.execute.run import run_map
from lczscale.execute.tile import MapContext, TileRunner
from lczscale.io.cube import ledger
from lczscale.io.cube.store import cube_attrs, read_window, write_tile
from lczscale.model.checkpoint import load_checkpoint, model_hash, save_checkpoint
from lczscale.planning.map_plan import prepare

pytestmark = pytest.mark.integration

TILE = 256
REPO = Path(lczscale.__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def array_files(url: str) -> dict[str, bytes]:
    """Every stored file of the cube's ``lcz`` and ``confidence`` arrays (metadata and chunks)."""
    root = Path(url)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[1:2] in (("lcz",), ("confidence",))
    }


def assert_same_array_bytes(url: str, reference_url: str) -> None:
    got, want = array_files(url), array_files(reference_url)
    assert got.keys() == want.keys(), (
        f"stored chunk files differ: missing {sorted(want.keys() - got.keys())[:5]}, "
        f"extra {sorted(got.keys() - want.keys())[:5]}"
    )
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} stored files differ, e.g. {differ[:5]}"


def ledger_files(url: str | Path) -> int:
    """Ledger entries on disk now (cheap enough to poll; temporary files are not counted)."""
    root = Path(url) / ledger.LEDGER_DIR
    return sum(1 for _ in root.rglob("*.json")) if root.is_dir() else 0


def done_keys(url: str | Path, provenance_hash: str) -> set[str]:
    """Tiles whose ledger entry says done with ``provenance_hash``."""
    if not Path(url).exists():
        return set()
    return {
        k for k, e in ledger.read_all(str(url)).items()
        if e.get("state", "done") == "done" and e["provenance_hash"] == provenance_hash
    }


def files_state(url: str | Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the cube: changes whenever anything writes to it."""
    root = Path(url)
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*") if p.is_file()
    }


def tile_config(world, out: Path | str, **kw: Any) -> MapConfig:
    kw = {"grid": GridConfig(tile_size=TILE), "threads_per_worker": 1} | kw
    return world.map_config(out, **kw)


def assert_nothing_failed(report_or_summary: Any) -> None:
    """Runs here must not fail tiles (``failed`` exists once runs record failed tiles)."""
    failed = (report_or_summary.get("failed") if isinstance(report_or_summary, dict)
              else getattr(report_or_summary, "failed", None))
    assert not failed, f"tiles failed: {failed}"


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def map_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lczscale.cli", "map", "--config", str(config), "--quiet",
            *extra]


def run_cli(cmd: list[str], timeout: float = 300) -> dict[str, Any]:
    """Run ``lczscale map`` to completion in a subprocess; its JSON summary."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=cli_env(), check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert_nothing_failed(summary)
    return summary


@dataclass(frozen=True)
class Reference:
    url: str
    cfg: MapConfig
    planned: frozenset[str]
    provenance_hash: str
    arrays: dict[str, np.ndarray] = field(repr=False)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Reference:
    """A clean, uninterrupted run: Dask, 2 worker processes, 1 thread each, 256 px tiles."""
    out = tmp_path_factory.mktemp("fault-ref") / "ref.zarr"
    cfg = tile_config(world, out, executor="dask", workers=2)
    report = run_map(cfg, progress=False)
    assert_nothing_failed(report)
    plan = prepare(cfg)
    planned = frozenset(t.key for t in plan.planned)
    assert report.computed == len(planned) >= 16, "need enough tiles to kill a run mid-way"
    assert done_keys(out, plan.provenance_hash) == planned
    chunks = [k for k in array_files(str(out)) if not k.endswith("zarr.json")]
    assert len(chunks) >= len(planned), "the byte comparison must see the stored chunks"
    return Reference(str(out), cfg, planned, plan.provenance_hash, cube_arrays(str(out), world))


# --------------------------------------------------------------------------------------------
# 1. A worker dies mid-run
# --------------------------------------------------------------------------------------------


async def _close_gracefully(dask_worker) -> None:
    await dask_worker.close_gracefully(restart=False, reason="test: clean worker exit")


class WorkerKiller(threading.Thread):
    """Watches the ledger; once ``after`` tiles are done, ends a worker that is running one.

    ``mode`` is how the worker ends:

    * ``"clean"`` — the worker leaves through Dask's own graceful shutdown,
      ``Worker.close_gracefully`` (what a worker does when its ``lifetime`` expires or when
      ``dask worker`` gets SIGTERM): it tells the scheduler it is retiring, so the scheduler
      moves its in-memory results, stops sending it tasks and reschedules the ones it holds;
      the worker then waits for its running tile to finish, closes its nanny (no restart) and
      its process exits with status 0. A bare ``sys.exit`` inside a task is *not* a clean exit
      for Dask: it raises SystemExit in the executor thread and only fails that task.
    * ``"sigkill"`` — SIGKILL of the worker process: no goodbye, the running tile stops
      wherever it is (possibly half-way through writing its chunk); the nanny notices, tells
      the scheduler, which reruns the worker's tasks elsewhere, and starts a new worker.
    """

    def __init__(self, client: Client, cluster: LocalCluster, cube: str, mode: str,
                 after: int = 2, timeout: float = 180.0) -> None:
        super().__init__(daemon=True, name=f"kill-worker-{mode}")
        self.client, self.cluster, self.cube, self.mode = client, cluster, cube, mode
        self.after, self.timeout = after, timeout
        self.pid: int | None = None
        self.address: str | None = None
        self.processing: tuple[str, ...] = ()
        self.done_at_kill: int | None = None
        self.process: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline and self.pid is None:
                if ledger_files(self.cube) >= self.after:
                    busy = {a: k for a, k in self.client.processing().items() if k}
                    if busy:
                        self._kill(*next(iter(busy.items())))
                        return
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _kill(self, address: str, keys: Any) -> None:
        pid = self.client.run(os.getpid, workers=[address])[address]
        nanny = next(n for n in self.cluster.workers.values() if n.worker_address == address)
        assert nanny.pid == pid
        self.process = nanny.process.process  # keeps the exit code once the process ended
        self.address, self.pid, self.processing = address, pid, tuple(map(str, keys))
        self.done_at_kill = ledger_files(self.cube)
        if self.mode == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            self.client.run(_close_gracefully, workers=[address], wait=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["clean", "sigkill"])
def test_a_worker_dying_mid_run_changes_nothing(world, reference, tmp_path, mode) -> None:
    out = tmp_path / f"{mode}.zarr"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        env={"OMP_NUM_THREADS": "1"},
    ) as cluster, Client(cluster) as client:
        cfg = tile_config(world, out, executor="dask", workers=2,
                          scheduler_address=cluster.scheduler_address)
        killer = WorkerKiller(client, cluster, str(out), mode)
        killer.start()
        report = run_map(cfg, progress=False)
        killer.join(timeout=60)
        assert killer.error is None, repr(killer.error)
        assert killer.pid is not None, "no worker was ended: the run finished first"
        assert wait_until(lambda: gone(killer.pid), 30), f"worker {killer.pid} still alive"
        assert wait_until(lambda: killer.process.exitcode is not None, 30)
        expected_exit = 0 if mode == "clean" else -signal.SIGKILL
        assert killer.process.exitcode == expected_exit
        if mode == "clean":
            assert killer.address not in client.scheduler_info()["workers"]

    planned = len(reference.planned)
    assert killer.processing, "the ended worker was running a tile"
    assert 0 < killer.done_at_kill < planned, "the worker must end mid-run"
    assert_nothing_failed(report)
    assert report.computed == planned
    assert report.skipped == 0
    assert done_keys(out, reference.provenance_hash) == reference.planned
    assert_same(reference.arrays, cube_arrays(str(out), world))
    assert_same_array_bytes(str(out), reference.url)


# --------------------------------------------------------------------------------------------
# 2. The whole run dies mid-way
# --------------------------------------------------------------------------------------------


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` (the CLI, its scheduler and its worker processes)."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.mark.timeout(400)
def test_killing_the_whole_run_then_rerunning_computes_only_the_rest(
    world, reference, tmp_path
) -> None:
    out = tmp_path / "killed.zarr"
    config = tmp_path / "map.yaml"
    config.write_text(dump_yaml(reference.cfg.model_copy(update={"out": str(out)})))
    cmd = map_command(config, "--out", str(out), "--executor", "dask", "--workers", "2")
    planned = len(reference.planned)

    log = tmp_path / "killed-run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=sink, stderr=sink,
                                start_new_session=True)
    try:
        started = wait_until(lambda: ledger_files(out) >= 3 or proc.poll() is not None, 240)
        assert started, f"no 3 tiles were done in time:\n{log.read_text()[-4000:]}"
        assert proc.poll() is None, (
            f"the run ended (exit {proc.poll()}) before it could be killed:\n"
            f"{log.read_text()[-4000:]}"
        )
        members = session_processes(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert len(members) >= 3, f"client and 2 worker processes expected, got {members}"
    assert wait_until(lambda: not session_processes(proc.pid), 30), (
        f"processes of the killed run survive: {session_processes(proc.pid)}"
    )

    before = files_state(out)
    done_before = done_keys(out, reference.provenance_hash)
    time.sleep(3)  # an orphaned worker would go on writing tiles and ledger entries
    assert files_state(out) == before, "something still writes to the cube after the kill"
    assert done_keys(out, reference.provenance_hash) == done_before
    assert 0 < len(done_before) < planned, "the run must be killed mid-way"

    summary = run_cli(cmd)
    assert summary["computed"] == planned - len(done_before)
    assert summary["skipped"] == len(done_before)
    assert done_keys(out, reference.provenance_hash) == reference.planned
    assert_same(reference.arrays, cube_arrays(str(out), world))
    assert_same_array_bytes(str(out), reference.url)


# --------------------------------------------------------------------------------------------
# 3. A changed model recomputes everything; nothing changed recomputes nothing
# --------------------------------------------------------------------------------------------


def retrain_in_place(directory: Path) -> None:
    """Stand-in for retraining: perturb every weight and save over the checkpoint."""
    model, meta, _ = load_checkpoint(directory)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    save_checkpoint(directory, model, meta.model_copy(update={"step": meta.step + 1}))


@pytest.mark.timeout(400)
def test_a_changed_model_recomputes_every_tile_and_nothing_changed_none(world, tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(world.model, model)
    out = tmp_path / "c.zarr"
    cfg = world.map_config(out, model=str(model), executor="serial")
    config = tmp_path / "map.yaml"
    config.write_text(dump_yaml(cfg))
    cmd = map_command(config, "--out", str(out), "--model", str(model), "--executor", "serial")

    first = run_cli(cmd)
    planned = first["computed"]
    assert planned >= 4
    assert first["skipped"] == 0
    old_hash, old_arrays = model_hash(model), cube_arrays(str(out), world)

    retrain_in_place(model)
    assert model_hash(model) != old_hash
    # another model over the cube's tiles: refused, nothing changed, unless --overwrite
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                             env=cli_env(), check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{planned} of the {planned} tiles" in refused.stderr
    assert "differs in: model_hash" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert_same(old_arrays, cube_arrays(str(out), world))
    second = run_cli([*cmd, "--overwrite"])
    assert second["computed"] == planned
    assert second["skipped"] == 0
    history = cube_attrs(str(out))["lczscale:history"]
    assert [h["overwrote"] for h in history] == [0, planned]
    cfg = cfg.model_copy(update={"overwrite": True})
    new_hash = prepare(cfg).provenance_hash
    assert done_keys(out, new_hash) == {t.key for t in prepare(cfg).planned}
    new_arrays = cube_arrays(str(out), world)
    assert any(not np.array_equal(old_arrays[k], new_arrays[k]) for k in old_arrays), (
        "the tiles were not rewritten with the new model"
    )

    third = run_cli(cmd)
    assert third["computed"] == 0
    assert third["skipped"] == planned
    assert_same(new_arrays, cube_arrays(str(out), world))


# --------------------------------------------------------------------------------------------
# 4. The same tile run twice at the same time
# --------------------------------------------------------------------------------------------


def _run_tile_at_once(ctx: MapContext, task: TileTask, barrier: Any, results: Any) -> None:
    """In a fresh process: load everything, wait for the twin, then run the tile."""
    try:
        runner = TileRunner(ctx)
        barrier.wait(timeout=120)
        t0 = time.time()
        result = runner.run(task)
        results.put((os.getpid(), t0, time.time(), result.valid_pixels, None))
    except BaseException as exc:
        results.put((os.getpid(), 0.0, 0.0, 0, repr(exc)))
        raise


@pytest.mark.timeout(300)
def test_the_same_tile_run_twice_at_once_leaves_the_cube_unchanged(reference, tmp_path) -> None:
    out = tmp_path / "twice.zarr"
    shutil.copytree(reference.url, out)
    cfg = reference.cfg.model_copy(update={"out": str(out)})
    entries = ledger.read_all(str(out))
    key = max(entries, key=lambda k: entries[k]["valid_pixels"])
    entry = entries[key]
    assert entry["valid_pixels"] > 0

    # Forget the tile: no ledger entry, empty chunks. The twins must write it back exactly.
    zone = zone_by_name(entry["zone"], cfg.grid)
    row, col, h, w = entry["core"]
    core = Window(row, col, h, w)
    (out / ledger.LEDGER_DIR / f"{key}.json").unlink()
    zeros = np.zeros((h, w), np.uint8)
    write_tile(str(out), zone, entry["year"], core, zeros, zeros)
    assert not read_window(str(out), zone, entry["year"], core).any()

    plan = prepare(cfg)
    assert [t.key for t in plan.tasks] == [key]
    task = plan.tasks[0]
    ctx = MapContext.from_plan(plan)
    mp = multiprocessing.get_context("spawn")
    barrier, results = mp.Barrier(2), mp.Queue()
    twins = [mp.Process(target=_run_tile_at_once, args=(ctx, task, barrier, results))
             for _ in range(2)]
    for p in twins:
        p.start()
    try:
        runs = [results.get(timeout=240) for _ in twins]
    finally:
        for p in twins:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(err is None for *_, err in runs), runs
    assert [p.exitcode for p in twins] == [0, 0]
    assert len({pid for pid, *_ in runs}) == 2
    starts, ends = [r[1] for r in runs], [r[2] for r in runs]
    assert max(starts) < min(ends), f"the two runs did not overlap: {runs}"
    assert {r[3] for r in runs} == {entry["valid_pixels"]}

    assert_same_array_bytes(str(out), reference.url)
    assert done_keys(out, reference.provenance_hash) == reference.planned
    assert not prepare(cfg).tasks
    for var in ("lcz", "confidence"):
        got = read_window(str(out), zone, entry["year"], core, var)
        want = read_window(reference.url, zone, entry["year"], core, var)
        assert np.array_equal(got, want), var



# --------------------------------------------------------------------------------------------
# 6. The device the provenance names is the device that made the tile
# --------------------------------------------------------------------------------------------


def test_gpu_cluster_plans_cuda_and_a_worker_on_another_device_refuses_its_tiles(
        reference, tmp_path) -> None:
    """``device: auto`` is decided for the workers, not the client: a SLURM cluster given GPUs
    plans CUDA even from a login node without one; a worker that would run on another device
    type fails its tiles with the fix (set the device) instead of recording CPU bytes as CUDA
    work, and nothing already in the cube changes."""
    out = tmp_path / "gpu.zarr"
    shutil.copytree(reference.url, out)
    slurm = tmp_path / "slurm.yaml"
    slurm.write_text("kind: slurm\nprocesses: 1\ngpus_per_job: 1\n")
    cfg = reference.cfg.model_copy(update={"out": str(out), "cluster": str(slurm),
                                           "device": "auto", "overwrite": True})
    plan = prepare(cfg)
    assert plan.provenance["device_type"] == "cuda"
    assert plan.provenance["threads"] is None
    assert {t.key for t in plan.tasks} == reference.planned  # CUDA bytes differ: all to redo
    cpu_slurm = tmp_path / "cpu.yaml"
    cpu_slurm.write_text("kind: slurm\nprocesses: 1\n")
    cpu_plan = prepare(cfg.model_copy(update={"cluster": str(cpu_slurm)}))
    assert cpu_plan.provenance["device_type"] == "cpu"

    task = plan.tasks[0]
    result = TileRunner(MapContext.from_plan(plan), device="cpu").run(task)
    assert result.status == "failed", result
    assert "planned for cuda" in result.error
    assert "set device to 'cpu'" in result.error
    assert ledger.read_all(str(out))[task.key]["provenance_hash"] == plan.provenance_hash
    assert_same_array_bytes(str(out), reference.url)
