"""Clusters of real worker processes on this machine: GPU routing, workers that retire mid-run,
TLS, and resuming on another cluster — each cube byte for byte the plain LocalCluster one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import worker_hooks
from cluster_maps import all_done, assert_same_chunks, pid_of, processes, tls_files, write_cluster
from distributed import Client, Nanny, Scheduler, SpecCluster

from lczscale.config.clusters import (
    AddressClusterConfig,
    LocalClusterConfig,
    SlurmClusterConfig,
)
from lczscale.execute.clusters.start import open_cluster
from lczscale.execute.run import run_map
from lczscale.planning.map_plan import prepare

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference(dask_cube) -> str:
    """The cube of the default local cluster (2 worker processes, `--workers 2`): read-only."""
    assert not dask_cube.failed, dask_cube.summary["failures"]
    assert dask_cube.computed >= 4
    return dask_cube.url


def test_inference_runs_only_on_gpu_workers_with_the_model_loaded_once(
    world, reference, tmp_path
) -> None:
    """One worker advertises GPU=1 (it computes on the CPU underneath), one does not: every
    tile must run on the first, which loads the model once for all of them."""
    def worker(**options: object) -> dict:
        return {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                          "env": {"OMP_NUM_THREADS": "1"}, **options}}

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    workers = {"gpu": worker(resources={"GPU": 1}), "cpu": worker()}
    out = tmp_path / "routed.zarr"
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.register_plugin(worker_hooks.CountModelLoads())
        report = run_map(world.map_config(out, executor="dask", device="cpu",
                                          scheduler_address=cluster.scheduler_address),
                         progress=False)
        address = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        pids = client.run(os.getpid)
        loads = client.run(worker_hooks.model_loads)
    all_done(report)
    assert report.computed >= 4
    assert {pid_of(w) for w in processes(report.results)} == {pids[address["gpu"]]}
    assert loads[address["gpu"]] == 1, f"model loaded {loads[address['gpu']]} times"
    assert_same_chunks(str(out), reference)


@pytest.mark.alone  # workers that live 15 s must get a tile done: not beside another test
def test_workers_that_retire_mid_run_lose_no_tile(world, reference, tmp_path) -> None:
    """Workers live 15 ± 2 s and are then restarted. Each tile takes over 2.5 s, so the two
    first workers can make at most 12 of the 13 tiles: some must come from restarted ones."""
    cfg = LocalClusterConfig(workers=2, worker_lifetime="15s", lifetime_stagger="2s")
    out = tmp_path / "lifetime.zarr"
    with open_cluster(cfg, device="cpu") as client:
        client.register_plugin(worker_hooks.SlowTiles(2.5))
        first = set(client.run(os.getpid).values())
        report = run_map(world.map_config(out, executor="dask",
                                          scheduler_address=client.scheduler.address),
                         progress=False)
    all_done(report)
    made_by = {pid_of(w) for w in processes(report.results)}
    assert made_by - first, "no tile came from a restarted worker: nobody retired mid-run"
    assert not prepare(world.map_config(out)).tasks, "every tile must be done"
    assert_same_chunks(str(out), reference)


def test_workers_run_without_the_sampling_profiler() -> None:
    """Dask's profiler calls sys._current_frames(), which can deadlock CPython < 3.12 (it froze
    map workers here mid-read); lczscale's clusters start without it whatever the config."""
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": True}), \
            open_cluster(LocalClusterConfig(workers=1), device="cpu") as client:
        got = client.run(lambda dask_worker: [k for k in dask_worker.periodic_callbacks
                                              if k.startswith("profile")])
        assert got, got
        assert all(v == [] for v in got.values()), got


def test_tls_cluster_makes_the_same_cube(world, reference, tmp_path) -> None:
    """Scheduler, workers and client talk TLS only; the map reaches it as an address cluster
    with the same certificates."""
    tls = tls_files(tmp_path / "tls")
    out = tmp_path / "tls.zarr"
    with open_cluster(LocalClusterConfig(workers=2, security=tls)) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        cluster = write_cluster(AddressClusterConfig(address=address, security=tls),
                                tmp_path / "address.yaml")
        report = run_map(world.map_config(out, executor="dask", cluster=cluster),
                         progress=False)
    all_done(report)
    assert report.computed >= 4
    assert_same_chunks(str(out), reference)


def test_a_run_resumed_on_another_cluster_skips_finished_tiles(
    world, reference, tmp_path
) -> None:
    """Where the work runs is not provenance: nothing is left to do, nothing is started."""
    slurm = write_cluster(SlurmClusterConfig(partition="elsewhere"), tmp_path / "c.yaml")
    cube = tmp_path / "ref.zarr"
    shutil.copytree(reference, cube)  # a run records itself in the cube: not in the shared one
    cfg = world.map_config(cube, executor="dask", cluster=slurm)
    plan = prepare(cfg)
    assert not plan.tasks
    assert plan.skipped == len(plan.planned) >= 4
    report = run_map(cfg, progress=False)  # would fail if it tried to reach SLURM
    assert report.computed == 0
    assert report.skipped == len(plan.planned)


def test_tls_refuses_a_plain_address(tmp_path: Path) -> None:
    from lczscale.errors import ConfigError

    tls = tls_files(tmp_path / "tls")
    with pytest.raises(ConfigError, match="give its tls:// address"), \
            open_cluster(AddressClusterConfig(address="tcp://127.0.0.1:1", security=tls)):
        pass
