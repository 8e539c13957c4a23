"""Maps through dask-jobqueue's SLURMCluster on a real single-node SLURM cluster (slurmctld,
slurmd, munged) started here by ``deploy/slurm/start-local-slurm.sh``: the cube is the
LocalCluster cube byte for byte, over TLS by default (temporary certificates written for the
jobs and removed after), and over TLS from certificate files with worker jobs that retire
mid-run and are replaced. And ``train.sbatch`` trains with one srun rank per task."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import worker_hooks
from cluster_maps import (
    all_done,
    assert_same_chunks,
    processes,
    tls_files,
    write_cluster,
)
from cube_compare import assert_same, cube_arrays

import lczscale
from lczscale.config.clusters import AddressClusterConfig, SlurmClusterConfig
from lczscale.execute.clusters.start import open_cluster
from lczscale.execute.run import run_map
from lczscale.planning.map_plan import prepare
from lczscale.train.launch import write_job
from lczscale.train.settings import LabelSet, TrainConfig, TrainJob

pytestmark = pytest.mark.integration

REPO = Path(lczscale.__file__).resolve().parent.parent
SCRIPTS = REPO / "deploy" / "slurm"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Path:
    """A running single-node SLURM cluster; SLURM_CONF points at it for this module (jobs
    inherit the environment, PYTHONPATH included, so workers import ``worker_hooks``)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        reason = (f"SLURM is not installed (no {', '.join(missing)}): "
                  "apt-get install slurm-wlm munge")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} — CI (.ci/run) must install it")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPTS / "start-local-slurm.sh"), str(root)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, f"SLURM did not start:\n{started.stdout}\n{started.stderr}"
    tests = str(Path(__file__).resolve().parents[1])
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(root / "slurm.conf"))
            mp.setenv("PYTHONPATH", os.pathsep.join(
                p for p in (str(REPO), tests, os.environ.get("PYTHONPATH")) if p))
            yield root
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-local-slurm.sh"), str(root)],
                       capture_output=True, timeout=120, check=False)


def slurm_config(root: Path, **kw: object) -> SlurmClusterConfig:
    """Two one-core worker jobs on the test node, as the map's LocalCluster has 2 workers."""
    base: dict = {
        "kind": "slurm", "partition": "debug", "walltime": "00:15:00", "cores": 1,
        "memory": "3GiB", "processes": 1, "jobs": 2, "worker_lifetime": None,
        "interface": "lo", "log_directory": str(root / "logs"),
        "local_directory": str(root / "work"), "start_timeout": "3m",
        "shared_temp_directory": str(root / "tls"),
    }
    return SlurmClusterConfig.model_validate(base | kw)


@pytest.fixture(scope="module")
def reference(dask_cube) -> str:
    """The cube of the default local cluster (2 worker processes): read-only."""
    assert not dask_cube.failed, dask_cube.summary["failures"]
    return dask_cube.url


def test_slurm_map_equals_the_local_cluster_cube(world, slurm, reference, tmp_path) -> None:
    """TLS by default: no certificate files named, so temporary ones are written for the jobs
    (the worker logs say tls://), and removed when the map's cluster closes."""
    cfg = slurm_config(slurm)
    assert cfg.security.tls
    assert not cfg.security.has_files
    cluster = write_cluster(cfg, tmp_path / "cluster.yaml")
    out = tmp_path / "slurm.zarr"
    report = run_map(world.map_config(out, executor="dask", cluster=cluster), progress=False)
    all_done(report)
    assert report.computed >= 4
    assert_same_chunks(str(out), reference)
    assert_same(cube_arrays(reference, world), cube_arrays(str(out), world))
    logs = list((slurm / "logs").glob("lczscale-worker-*.err"))
    assert logs, "no SLURM worker job"
    assert any("Start worker" in p.read_text() for p in logs), "no SLURM worker job"
    text = "".join(p.read_text() for p in logs)
    assert re.search(r"Start worker at:\s+tls://", text), text[-2000:]
    assert not re.search(r"Start worker at:\s+tcp://", text), "a plain worker joined"
    assert not list((slurm / "tls").iterdir()), "the temporary key outlived its cluster"


@pytest.mark.alone  # workers that live 15 s must get a tile done: not beside another test
def test_tls_slurm_jobs_that_retire_mid_run_are_replaced(world, slurm, reference,
                                                         tmp_path) -> None:
    """Scheduler, worker jobs and client talk TLS only. Workers live 15 ± 2 s; each tile takes
    over 2.5 s, so the first two jobs can make at most 12 of the 13 tiles. Their jobs end, new
    jobs are submitted, no tile is lost."""
    tls = tls_files(tmp_path / "tls")
    cfg = slurm_config(slurm, worker_lifetime="15s", lifetime_stagger="2s", security=tls)
    out = tmp_path / "lifetime.zarr"
    with open_cluster(cfg, device="cpu") as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        client.register_plugin(worker_hooks.SlowTiles(2.5))
        cluster = write_cluster(AddressClusterConfig(address=address, security=tls),
                                tmp_path / "address.yaml")
        report = run_map(world.map_config(out, executor="dask", cluster=cluster),
                         progress=False)
    all_done(report)
    assert len(processes(report.results)) > 2, "no replacement job made a tile"
    assert not prepare(world.map_config(out)).tasks, "every tile must be done"
    assert_same_chunks(str(out), reference)
    scripts = "".join(p.read_text() for p in (slurm / "logs").glob("lczscale-worker-*.err"))
    assert "tls://" in scripts


def test_train_sbatch_runs_one_rank_per_task(world, slurm, tmp_path) -> None:
    """``deploy/slurm/train.sbatch`` as written, on CPUs (no GPU on the test node): srun
    starts two ranks that find each other and train one model together."""
    job = TrainJob(source=world.source, labels=(LabelSet(name="coarse", path=world.coarse),),
                   out=str(tmp_path / "model"),
                   train=TrainConfig(steps=4, batch_size=2, patch_size=64, device="cpu"))
    path = write_job(job)
    done = subprocess.run(
        ["sbatch", "--wait", "--gpus-per-task=0", "--ntasks-per-node=2", "--cpus-per-task=1",
         "--mem-per-cpu=3G", "--time=10", f"--output={tmp_path}/train-%j.out",
         f"--error={tmp_path}/train-%j.out", str(SCRIPTS / "train.sbatch"), str(path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("train-*.out"))
    assert done.returncode == 0, f"{done.stderr}\n{logs[-4000:]}"
    metrics = json.loads((tmp_path / "model" / "checkpoint.json").read_text())["metrics"]
    assert metrics["world_size"] == 2, logs[-2000:]
