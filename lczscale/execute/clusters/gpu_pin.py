"""One GPU per Dask worker: which device a worker may see (``CUDA_VISIBLE_DEVICES``).

Used two ways. On this machine the local cluster gives worker ``i`` the ``i``-th visible GPU
in its spec. In a SLURM job that runs several workers (``dask worker --nworkers N``, which names
them ``NAME-0`` … ``NAME-{N-1}``), SLURM hands the whole job its GPUs in one
``CUDA_VISIBLE_DEVICES``; this module, loaded as a nanny preload
(``--preload-nanny lczscale.execute.clusters.gpu_pin``), sets each worker's variable to its own
entry
before the worker process starts, so no worker can touch another's GPU and each uses
``cuda:0``. Nothing here imports torch: CUDA must not be initialised in the nanny.
"""

from __future__ import annotations

import os
from typing import Any


def worker_index(name: str) -> int:
    """The process index ``i`` that ``dask worker --nworkers N`` appends as ``NAME-i``."""
    tail = str(name).rsplit("-", 1)[-1]
    if not tail.isdigit():
        raise ValueError(
            f"worker name {name!r} does not end in -<index>; GPU pinning needs the names that "
            "`dask worker --nworkers N` gives (NAME-0 … NAME-{N-1})"
        )
    return int(tail)


def pinned_gpu(index: int, visible: str | None) -> str:
    """The one device worker ``index`` may see, out of ``visible`` (the parent's
    ``CUDA_VISIBLE_DEVICES``: indices or UUIDs); with nothing visible set, the index itself."""
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()]
    if not devices:
        return str(index)
    if index >= len(devices):
        raise ValueError(
            f"worker {index} has no GPU of its own: only {len(devices)} visible "
            f"(CUDA_VISIBLE_DEVICES={visible}); run at most one worker per GPU "
            "(slurm: processes = gpus_per_job)"
        )
    return devices[index]


def dask_setup(nanny: Any) -> None:
    """Nanny preload hook: pin the worker this nanny is about to start to its own GPU."""
    nanny.env["CUDA_VISIBLE_DEVICES"] = pinned_gpu(
        worker_index(str(nanny.name)), os.environ.get("CUDA_VISIBLE_DEVICES")
    )
