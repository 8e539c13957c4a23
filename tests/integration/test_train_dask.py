"""Data-parallel training on a Dask cluster (one rank per worker process) trains the same weights
as one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from lczscale.config import ModelConfig
from lczscale.errors import ConfigError
from lczscale.model.checkpoint import load_checkpoint
from lczscale.synth.world import write_world
from lczscale.train.loop import train_job
from lczscale.train.on_dask import (
    DaskTrainingFailed,
    _device_slots,
    _local_ranks,
    train_on_dask,
)
from lczscale.train.settings import TrainConfig, TrainJob, label_sets

pytestmark = pytest.mark.integration


def tiny_job(root: Path, out: Path, batch_size: int) -> TrainJob:
    return TrainJob(
        source=str(root / "embeddings.zarr"), labels=label_sets([str(root / "lcz_coarse")]),
        out=str(out),
        train=TrainConfig(steps=4, batch_size=batch_size, patch_size=32, log_every=1,
                          checkpoint_every=2, prefetch=1, threads=1, device="cpu"),
        model=ModelConfig(widths=(8, 16), convs_per_block=1),
    )


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask_train_world")
    write_world(root, cities=2, size_km=1.28, years=(2024,), truth_cube=False)
    return root


@pytest.fixture(scope="module")
def client() -> object:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def test_two_ranks_on_dask_train_the_weights_of_one_process(world_dir: Path, client: Client,
                                                            tmp_path: Path) -> None:
    metrics = train_on_dask(client, tiny_job(world_dir, tmp_path / "dask", 2))
    assert metrics["world_size"] == 2
    assert (tmp_path / "dask" / "resume").is_dir(), "rank 0 wrote resumable state"
    ref = train_job(tiny_job(world_dir, tmp_path / "one", 4), progress=False)
    assert ref["world_size"] == 1

    a, meta_a, _ = load_checkpoint(tmp_path / "dask")
    b, _, _ = load_checkpoint(tmp_path / "one")
    assert meta_a.train["world_size"] == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        # Adam divides by the gradient's running RMS, so a weight whose gradient is ~0 moves by
        # up to lr per step on summation-order noise alone: bound the worst weight by a fraction
        # of one step (lr 2e-3) and the typical one tightly.
        diff = (v.float() - sb[k].float()).abs()
        assert diff.max() < 5e-4, (k, float(diff.max()))
        assert diff.median() < 1e-5, (k, float(diff.max()))
    assert len(metrics["history"]) == len(ref["history"]) == 4
    for ra, rb in zip(metrics["history"], ref["history"], strict=True):
        assert ra["step"] == rb["step"]
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-4)
    assert metrics["val_pixels"] == ref["val_pixels"]


def test_more_ranks_than_workers_is_refused(world_dir: Path, client: Client,
                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"3 ranks need 3 Dask workers .* has 2"):
        train_on_dask(client, tiny_job(world_dir, tmp_path / "x", 2), ranks=3)
    assert not (tmp_path / "x").exists()


def test_threads_of_the_client_process_are_refused(world_dir: Path, tmp_path: Path) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c, \
            pytest.raises(ConfigError, match=r"thread of this .* process"):
        train_on_dask(c, tiny_job(world_dir, tmp_path / "x", 2))


def test_each_rank_gets_its_own_gpu() -> None:
    workers = ["tcp://a:1", "tcp://a:2", "tcp://b:1", "tcp://b:2"]
    assert _local_ranks(workers) == [0, 1, 0, 1]
    probes = {w: {"host": w[6], "visible": None} for w in workers}
    assert _device_slots(workers, [0, 1, 0, 1], probes) == [0, 1, 0, 1]
    # dask-cuda: every worker of host a lists its own GPU first
    probes["tcp://a:1"]["visible"], probes["tcp://a:2"]["visible"] = "0,1", "1,0"
    assert _device_slots(workers, [0, 1, 0, 1], probes) == [0, 0, 0, 1]
    probes["tcp://a:2"]["visible"] = "0,1"  # the same list everywhere: cuda:LOCAL_RANK
    assert _device_slots(workers, [0, 1, 0, 1], probes) == [0, 1, 0, 1]


def _fail_at_call(n: int) -> None:
    """In a worker process: the training loss raises on its ``n``-th call (0 = undo)."""
    import lczscale.train.loop as train
    import lczscale.train.losses as losses

    calls = [0]

    def loss(*args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] == n:
            raise RuntimeError("injected failure")
        return losses.segmentation_loss(*args, **kw)  # type: ignore[arg-type]

    train.segmentation_loss = loss if n else losses.segmentation_loss  # type: ignore[assignment]


def test_a_rank_failing_mid_run_fails_the_run_and_a_rerun_resumes(world_dir: Path, client: Client,
                                                                  tmp_path: Path) -> None:
    job = tiny_job(world_dir, tmp_path / "run", 2)
    second = sorted(client.scheduler_info(n_workers=-1)["workers"])[1]
    client.run(_fail_at_call, 3, workers=[second])  # rank 1, at step 3: after the state of step 2
    try:
        with pytest.raises(DaskTrainingFailed, match=r"(?s)failed on rank 1 of 2.*injected"
                           r".*kept in .*resume") as info:
            train_on_dask(client, job)
    finally:
        client.run(_fail_at_call, 0, workers=[second])
    assert info.value.rank == 1
    assert info.value.worker == second
    assert (tmp_path / "run" / "resume" / "step-00000002").is_dir()
    # the workers are free again, and the rerun continues from step 2
    metrics = train_on_dask(client, job)
    assert metrics["resumed_from"] == 2
    assert metrics["world_size"] == 2
    assert [r["step"] for r in metrics["history"]] == [1, 2, 3, 4]
