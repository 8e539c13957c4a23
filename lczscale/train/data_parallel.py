"""Who am I in a data-parallel run, and the few collectives training needs.

The same training code runs as one process, under torchrun (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``), under ``srun`` on SLURM (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``)
and as one task per Dask worker (which sets the torchrun variables itself). gloo on CPU, NCCL
on GPUs; each rank sees only its own GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from lczscale.errors import ConfigError
from lczscale.train.losses import GlobalSum, distributed_sum, local_sum


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (a single process: rank 0 of 1)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def global_sum(self) -> GlobalSum:
        """The (differentiable) sum over ranks that global batch norm and the loss use."""
        return distributed_sum if self.world > 1 else local_sum


def from_environment(env: dict[str, str] | None = None) -> Ranks:
    """Ranks from torchrun's variables, else from SLURM's (``srun``), else a single process."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" in env:
        return Ranks(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]),
                     int(env.get("LOCAL_RANK", "0")))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                     int(env.get("SLURM_LOCALID", "0")))
    return Ranks()


def slurm_rendezvous(env: dict[str, str]) -> None:
    """Fill MASTER_ADDR/MASTER_PORT for an ``srun`` launch (the first node of the job)."""
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_LAUNCH_NODE_IPADDR") or env.get("SLURM_NODELIST", "localhost")
        env["MASTER_ADDR"] = nodes.split(",")[0].split("[")[0]
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 2000))


def device_for(ranks: Ranks, wanted: str) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is wanted or available, else the CPU."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if wanted != "cpu" and torch.cuda.is_available():
        index = ranks.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def start(ranks: Ranks, device: torch.device, backend: str = "auto") -> None:
    """Join the process group (a no-op for one process)."""
    if ranks.world == 1 or dist.is_initialized():
        return
    if "SLURM_PROCID" in os.environ and "MASTER_ADDR" not in os.environ:
        env = dict(os.environ)
        slurm_rendezvous(env)
        os.environ.update({k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT")})
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world,
                            timeout=timedelta(minutes=30))


def stop() -> None:
    """Leave the process group, where one was started."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (a no-op for one process)."""
    if ranks.world > 1:
        dist.barrier()


def sum_array(ranks: Ranks, a: np.ndarray, device: torch.device) -> np.ndarray:
    """Element-wise sum of a numpy array over ranks (float64 or int64 kept)."""
    if ranks.world == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    dist.all_reduce(t)
    return t.cpu().numpy()
