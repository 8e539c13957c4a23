"""Start a training job with N ranks on this machine (torchrun / torch elastic), or in-process.

The job is written to ``MODEL_DIR/train_job.json`` and every rank reads it, so all ranks train
exactly the same job; ``python -m lczscale.train.launch JOB.json`` is the per-rank entry point
that torchrun, ``srun`` and the Dask launcher all run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lczscale.errors import ConfigError, LczscaleError
from lczscale.train import data_parallel as dist_
from lczscale.train.loop import train_job
from lczscale.train.settings import TrainJob

JOB_FILE = "train_job.json"


class TrainingFailed(LczscaleError):
    """A rank of a data-parallel run failed."""


def write_job(job: TrainJob) -> Path:
    """Write the job to ``train_job.json`` in its output directory, where ranks and resumed runs
    read it."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / JOB_FILE
    path.write_text(job.model_dump_json(indent=2))
    return path


def run_training(job: TrainJob, nproc: int = 1, progress: bool = True,
                 restart: bool = False) -> dict[str, Any]:
    """Train ``job`` with ``nproc`` local ranks; returns the metrics stored in the checkpoint."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be ≥ 1, got {nproc}")
    path = write_job(job)
    if nproc == 1:
        return train_job(job, progress=progress, restart=restart)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "lczscale.train.launch",
           str(path)] + (["--restart"] if restart else []) + ([] if progress else ["--quiet"])
    proc = subprocess.run(cmd, stdout=sys.stdout if progress else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise TrainingFailed(
            f"data-parallel training with {nproc} ranks failed (exit {proc.returncode}); the "
            f"last resumable state is kept in {job.out}/resume and a rerun continues from it.\n"
            f"{tail}"
        )
    meta = json.loads((Path(job.out) / "checkpoint.json").read_text())
    return dict(meta["metrics"])


def rank_main(argv: list[str]) -> int:
    """One rank: read the job file, train, leave the process group."""
    job = TrainJob.model_validate_json(Path(argv[0]).read_text())
    ranks = dist_.from_environment()
    try:
        train_job(job, ranks, progress="--quiet" not in argv, restart="--restart" in argv)
    finally:
        dist_.stop()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
