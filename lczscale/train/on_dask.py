"""Data-parallel training on a Dask cluster: one rank per worker, joined by torch.distributed.

The cluster's GPU workers (those advertising a ``GPU`` resource) each run one rank; a cluster
without GPU workers runs one rank on every worker. Each rank is an ordinary Dask task pinned to
its worker: it sets the torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), runs :func:`lczscale.train.loop.train_job` exactly as a
torchrun rank would, and leaves the process group when it ends. Rendezvous is at the first
worker's host, on a port a small task found free there.

Requirements on the cluster:

* **workers are separate processes** (nanny-managed workers: ``LocalCluster(processes=True)``,
  ``dask worker``, dask-cuda), never threads of the client's process
  (``LocalCluster(processes=False)``): each rank joins its whole process to the process group
  (``torch.distributed.init_process_group``), so two ranks cannot share a process. This is
  checked before anything starts.
* every worker reads the job's ``source`` and ``out`` at the same paths (a shared filesystem):
  rank 0 writes resumable state to ``out/resume`` and the checkpoint to ``out``, and every rank
  resumes from ``out/resume``.
* credentials come from the workers' own environment: only the job (JSON, which refuses
  credentials in its URLs) travels in the tasks.
* while a rank runs it sets the variables above in its worker's environment (restored after);
  a worker running other tasks at the same time (``threads_per_worker > 1``) sees them.

GPUs: a worker that sees several GPUs uses ``cuda:LOCAL_RANK`` (its index among the picked
workers on its host), as torchrun ranks do; a worker whose ``CUDA_VISIBLE_DEVICES`` lists its own
GPU first (dask-cuda's convention: each worker of a host starts the list with a different GPU)
uses that first GPU. A rank task holds its worker's whole ``GPU`` resource, so no inference task
shares the GPU with it.

A rank that fails fails the run with :class:`DaskTrainingFailed` (which rank, which worker, the
error). The other ranks may then be blocked in a collective that cannot complete, and a running task
cannot be interrupted: the workers of ranks still running ``GRACE_S`` seconds later are restarted
by their nannies (a torchrun rank's process would simply exit). Without a nanny they stay busy
until the process group times out (30 min). The resumable state in ``out/resume`` is kept: a
rerun of the same job (``restart=False``) continues from it, with any number of ranks.

Known limit: ``DistributedDataParallel``'s reducer keeps its process group alive after
``destroy_process_group`` (its autograd hooks on the parameters form a reference cycle in C++), so
a finished rank's worker keeps that group's idle connections and the model's memory until the
worker restarts, and the peers of a failed rank may never see it leave (hence the restarts).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

from distributed import Client, Future, as_completed, wait
from distributed.comm import get_address_host

from lczscale.errors import ConfigError
from lczscale.train.launch import TrainingFailed
from lczscale.train.settings import TrainJob

log = logging.getLogger(__name__)
GRACE_S = 5.0
"""Seconds the other ranks get to fail by themselves once one rank failed, before the workers of
those still running are restarted."""
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DaskTrainingFailed(TrainingFailed):
    """A rank of a data-parallel run on Dask failed; ``rank`` and ``worker`` say which."""

    def __init__(self, message: str, rank: int, worker: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.worker = worker

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:
        return type(self), (str(self.args[0]), self.rank, self.worker)


def train_on_dask(client: Client, job: TrainJob, ranks: int | None = None,
                  restart: bool = False) -> dict[str, Any]:
    """Train ``job`` with one rank per worker of ``client``'s cluster; returns rank 0's metrics
    (those stored in the checkpoint rank 0 writes to ``job.out``).

    Workers: those advertising a ``GPU`` resource if there are any (and ``job.train.device`` is
    not ``cpu``), else all workers; in address order; the first ``ranks`` of them (default: all).
    ``restart`` discards resumable state in ``job.out/resume`` instead of resuming from it.
    """
    picked, gpu = pick_workers(client, job.train.device)
    world = len(picked) if ranks is None else ranks
    if world < 1:
        raise ConfigError(f"ranks must be ≥ 1, got {world}")
    if len(picked) < world:
        kind = "GPU workers" if gpu else "workers"
        raise ConfigError(
            f"{world} ranks need {world} Dask {kind} (one rank per worker) but the cluster has "
            f"{len(picked)}; ask for at most {len(picked)} ranks or add workers"
        )
    workers = [addr for addr, _ in picked[:world]]
    resources = dict(picked[:world])
    probes = _probe_workers(client, workers, job)
    master_addr = get_address_host(workers[0])
    master_port = probes[workers[0]]["port"]
    local_ranks = _local_ranks(workers)
    slots = _device_slots(workers, local_ranks, probes)
    payload = job.model_dump_json()
    futures: dict[Future, int] = {}
    run = uuid.uuid4().hex[:8]
    for rank, addr in enumerate(workers):
        env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_ranks[rank]),
               "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}
        future = client.submit(
            _rank_task, payload, env, slots[rank], restart,
            key=f"lczscale-train-rank{rank}-{run}", workers=[addr], allow_other_workers=False,
            pure=False, resources=resources[addr] or None,
        )
        futures[future] = rank
    return _rank0_result(client, futures, workers, job)


def pick_workers(client: Client, device: str = "auto") -> tuple[list[tuple[str, dict]], bool]:
    """``[(address, resources to hold)]`` of the workers ranks run on, in address order, and
    whether they are GPU workers."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before n_workers= (it listed every worker then)
        info = client.scheduler_info()
    workers = info.get("workers", {})
    if not workers:
        raise ConfigError("the Dask cluster has no workers; start some before training")
    gpus = {a: {"GPU": w["resources"]["GPU"]} for a, w in workers.items()
            if (w.get("resources") or {}).get("GPU")}
    if gpus and device != "cpu":
        return sorted(gpus.items()), True
    return sorted((a, {}) for a in workers), False


def _probe_workers(client: Client, workers: list[str], job: TrainJob) -> dict[str, dict]:
    """One small task per worker: its process id, GPUs, and (on the first) a free port."""
    futures = [client.submit(_probe, i == 0, workers=[a], allow_other_workers=False, pure=False)
               for i, a in enumerate(workers)]
    found = dict(zip(workers, client.gather(futures), strict=True))
    here = (socket.gethostname(), os.getpid())
    seen: dict[tuple[str, int], str] = {}
    for addr, p in found.items():
        proc = (p["host"], p["pid"])
        if proc == here:
            raise ConfigError(
                f"Dask worker {addr} is a thread of this (the client's) process; training needs "
                "one process per rank: start the cluster with processes=True (the default) or "
                "with `dask worker`"
            )
        if proc in seen:
            raise ConfigError(
                f"Dask workers {seen[proc]} and {addr} are threads of one process; training "
                "needs one process per rank: start the cluster with processes=True"
            )
        seen[proc] = addr
        if job.train.device == "cuda" and not p["cuda"]:
            raise ConfigError(f"train.device is cuda but Dask worker {addr} sees no CUDA device; "
                              "use device auto or cpu, or GPU workers")
    return found


def _probe(find_port: bool) -> dict[str, Any]:
    import torch

    port = None
    if find_port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    return {"host": socket.gethostname(), "pid": os.getpid(), "port": port,
            "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _local_ranks(workers: list[str]) -> list[int]:
    """Each worker's index among the workers on its host."""
    count: dict[str, int] = {}
    out = []
    for addr in workers:
        host = get_address_host(addr)
        out.append(count.get(host, 0))
        count[host] = out[-1] + 1
    return out


def _device_slots(workers: list[str], local_ranks: list[int],
                  probes: dict[str, dict]) -> list[int]:
    """The CUDA index each rank uses in its own process: its local rank, except on hosts whose
    workers each list a different GPU first in CUDA_VISIBLE_DEVICES (each worker's own GPU)."""
    by_host: dict[str, list[str | None]] = {}
    for addr in workers:
        visible = probes[addr]["visible"]
        by_host.setdefault(probes[addr]["host"], []).append(
            visible.split(",")[0].strip() if visible else None)
    pinned = {h for h, firsts in by_host.items()
              if None not in firsts and len(set(firsts)) == len(firsts)}
    return [0 if probes[a]["host"] in pinned else lr
            for a, lr in zip(workers, local_ranks, strict=True)]


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (child processes started inside inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rank_task(payload: str, env: dict[str, str], device_slot: int,
               restart: bool) -> dict[str, Any]:
    """One rank, run in a worker process: train, then always leave the process group."""
    import torch

    from lczscale.train import data_parallel as dist_
    from lczscale.train.loop import train_job

    job = TrainJob.model_validate_json(payload)
    threads = torch.get_num_threads()
    with environment({k: env[k] for k in RANK_VARIABLES}):
        found = dist_.from_environment()
        ranks = dist_.Ranks(found.rank, found.world, device_slot)
        try:
            return train_job(job, ranks, progress=False, restart=restart)
        except BaseException as exc:
            # The worker keeps the exception, and through its traceback's frames the training
            # data and model, until the task is released: free them now.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            dist_.stop()
            gc.collect()
            torch.set_num_threads(threads)


def _rank0_result(client: Client, futures: dict[Future, int], workers: list[str],
                  job: TrainJob, grace: float = GRACE_S) -> dict[str, Any]:
    """Rank 0's metrics once every rank has finished; the first failure fails the run."""
    results: dict[int, dict[str, Any]] = {}
    failed: Future | None = None
    try:
        for future in as_completed(list(futures)):
            if future.status != "finished":
                failed = future
                break
            results[futures[future]] = future.result()
        if failed is None:
            return results[0]
        rest = [f for f in futures if not f.done()]
        with contextlib.suppress(TimeoutError):  # the peers' collectives may fail by themselves
            if rest:
                wait(rest, timeout=grace)
    finally:
        running = [f for f in futures if not f.done()]
        client.cancel(running)
    # name the cause, not a peer whose collective broke because the cause's rank left
    errored = [f for f in futures if f.status == "error"]
    failed = min(errored, key=lambda f: (_peer_left(f.exception()), futures[f]), default=failed)
    rank = futures[failed]
    exc = failed.exception() if failed.status == "error" else RuntimeError(
        f"its task was {failed.status}")
    others = sorted(futures[f] for f in futures if f is not failed and f.status == "error")
    also = f" (ranks {others} failed too)" if others else ""
    note = _free_workers(client, sorted(futures[f] for f in running), workers) if running else ""
    raise DaskTrainingFailed(
        f"data-parallel training on Dask failed on rank {rank} of {len(futures)} (worker "
        f"{workers[rank]}){also}: {type(exc).__name__}: {exc}\nThe last resumable state is kept "
        f"in {job.out}/resume; rerunning the same job (without restart) continues from it.{note}",
        rank, workers[rank],
    ) from exc


PEER_LEFT = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited", "Socket Timeout")


def _peer_left(exc: BaseException | None) -> bool:
    """Whether a rank failed only because another rank left the process group."""
    return exc is not None and any(p in str(exc) for p in PEER_LEFT)


def _free_workers(client: Client, ranks: list[int], workers: list[str]) -> str:
    """Restart the workers of ranks still blocked in a collective with a failed rank (a task
    cannot be interrupted; its worker process can be restarted by its nanny)."""
    addrs = [workers[r] for r in ranks]
    try:
        client.restart_workers(addrs, raise_for_error=True)
    except Exception as exc:
        log.warning("could not restart Dask workers %s: %s", addrs, exc)
        return (f"\nRanks {ranks} were still waiting for the failed rank and their workers "
                f"could not be restarted ({type(exc).__name__}: {exc}): they stay busy until "
                "the process group times out (30 min).")
    return (f"\nRanks {ranks} were still waiting for the failed rank: their workers {addrs} "
            "were restarted.")
