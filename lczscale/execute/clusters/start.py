"""Start the Dask cluster a map runs on, from a cluster config: local, slurm, kubernetes, address.

``open_cluster`` is the one place that builds a cluster; the map only ever sees a ``Client``.
What makes the cube's bytes is kept identical on every platform:

* **one Dask thread per worker.** The predictor sets torch's process-wide thread count for
  each tile; two tiles at once in one process would race on it. More cores per worker go to
  torch's intra-op threads (``threads``, the map's ``threads_per_worker``), which is also
  exported as ``OMP_NUM_THREADS`` to every worker.
* **one GPU per worker.** Each GPU worker sees exactly one device through
  ``CUDA_VISIBLE_DEVICES`` (so it computes on ``cuda:0``) and advertises the resource
  ``GPU=1``; ``run_dask`` then sends inference only to such workers.

Local: worker ``i`` gets the ``i``-th visible GPU in its nanny spec (with dask-cuda installed,
its ``LocalCUDACluster`` is used instead: it puts each worker's own GPU first in its list). With
no GPU (or ``device: cpu``) there are ``workers`` CPU workers.

SLURM (dask-jobqueue): each job books ``cores`` CPUs, ``memory`` and ``--gres=gpu:N`` and runs
``processes`` workers, over TLS unless the config says ``security: {tls: false}`` (temporary
certificates in ``shared_temp_directory`` when it names no files). SLURM gives the whole job
its N GPUs in one ``CUDA_VISIBLE_DEVICES``; with N > 1 the nanny preload
``lczscale.execute.clusters.gpu_pin`` hands worker ``NAME-i`` (names from
``dask worker --nworkers N``)
the ``i``-th of them before its process starts. Workers retire
gracefully at ``worker_lifetime`` ± ``lifetime_stagger``, before the walltime kills them, and
their job ends; the cluster always runs adaptively (fixed size = ``jobs × processes``) with an
adaptive policy that resubmits ended jobs, so retired, walltime-killed or preempted jobs are
replaced and their tiles rerun elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import Client, Nanny, Scheduler, SpecCluster
from distributed.deploy.adaptive import Adaptive
from distributed.security import Security

from lczscale.config.clusters import (
    AddressClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
    SecurityConfig,
    SlurmClusterConfig,
)
from lczscale.errors import ConfigError, LczscaleError
from lczscale.execute.clusters.gpu_pin import pinned_gpu
from lczscale.execute.clusters.worker_profiler import NO_PROFILER, NO_PROFILER_ENV

JOB_NAME = "lczscale-worker"


class ClusterStartError(LczscaleError):
    """The cluster's workers did not come up."""


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def security(cfg: SecurityConfig) -> Security | None:
    """A distributed ``Security`` requiring TLS for every role, or None when TLS is off.

    From the PEM files the config names (one certificate/key pair serves client, scheduler and
    workers; distributed checks it against the CA, not against host names), else temporary:
    a fresh self-signed CA/certificate/key held in memory (``Security.temporary()``), which
    only a cluster started here can share with its workers.
    """
    if not cfg.tls:
        return None
    if not cfg.has_files:
        temporary: Security = Security.temporary()  # require_encryption=True
        return temporary
    files = {"ca_file": cfg.ca_file, "cert_file": cfg.cert_file, "key_file": cfg.key_file}
    missing = [f"{k}={v}" for k, v in files.items() if not v or not Path(v).is_file()]
    if missing:
        raise ConfigError(
            f"security.tls is on but these files are missing here: {', '.join(missing)}; the "
            "PEM files must exist on every machine (a shared file system on SLURM), or leave "
            "ca_file/cert_file/key_file unset for temporary certificates"
        )
    cert, key = cfg.cert_file, cfg.key_file
    return Security(
        tls_ca_file=cfg.ca_file, tls_client_cert=cert, tls_client_key=key,
        tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
        tls_worker_key=key, require_encryption=True,
    )


@contextmanager
def open_cluster(
    cfg: Any, device: str = "auto", allowed_failures: int = 3, threads: int | None = None
) -> Iterator[Client]:
    """Start (or connect to) the cluster ``cfg`` describes; a client to it; close on exit.

    ``threads`` is the torch/OMP thread count of every worker (default: the local config's
    ``threads_per_worker``, else 1). ``allowed_failures`` is set on schedulers started here;
    one started elsewhere takes it from its own ``distributed.scheduler.allowed-failures``.
    """
    n: int = threads if threads else int(getattr(cfg, "threads_per_worker", 1))
    opened: AbstractContextManager[Client]
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        if isinstance(cfg, LocalClusterConfig):
            opened = _local(cfg, device, n)
        elif isinstance(cfg, SlurmClusterConfig):
            opened = _slurm(cfg, n)
        elif isinstance(cfg, KubernetesClusterConfig):
            from lczscale.execute.clusters.kubernetes_cluster import open_kube_cluster

            opened = open_kube_cluster(cfg, device=device, allowed_failures=allowed_failures,
                                       threads=n)
        elif isinstance(cfg, AddressClusterConfig):
            opened = _address(cfg)
        else:
            raise ConfigError(f"unknown cluster config {type(cfg).__name__}")
        with opened as client:
            yield client


# -- local ------------------------------------------------------------------------------------


def local_worker_specs(
    cfg: LocalClusterConfig, threads: int, gpus: list[str], sec: Security | None = None
) -> dict[int, dict[str, Any]]:
    """Nanny specs of a local cluster: one per GPU id in ``gpus`` (that GPU only, ``GPU=1``),
    else ``cfg.workers`` CPU workers; one Dask thread each."""
    protocol = "tls://" if sec is not None else "tcp://"
    specs: dict[int, dict[str, Any]] = {}
    for i in range(len(gpus) or cfg.workers):
        env = {"OMP_NUM_THREADS": str(threads)}
        options: dict[str, Any] = {
            "nthreads": 1, "memory_limit": cfg.memory_limit, "host": "127.0.0.1",
            "protocol": protocol, "security": sec, "env": env, "dashboard": False,
            "silence_logs": logging.WARNING, "config": NO_PROFILER,
        }
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            options["resources"] = {"GPU": 1}
        if cfg.worker_lifetime:
            options.update(lifetime=cfg.worker_lifetime, lifetime_restart=True,
                           lifetime_stagger=cfg.lifetime_stagger or "0s")
        specs[i] = {"cls": Nanny, "options": options}
    return specs


def visible_gpus(count: int, visible: str | None) -> list[str]:
    """The ids of this machine's ``count`` usable GPUs, honouring ``CUDA_VISIBLE_DEVICES``."""
    return [pinned_gpu(i, visible) for i in range(count)]


@contextmanager
def _local(cfg: LocalClusterConfig, device: str, threads: int) -> Iterator[Client]:
    sec = security(cfg.security)
    gpus = visible_gpus(gpu_count() if device != "cpu" else 0,
                        os.environ.get("CUDA_VISIBLE_DEVICES"))
    cluster: Any
    if gpus and _has_dask_cuda():
        from dask_cuda import LocalCUDACluster

        lifetime = ({"lifetime": cfg.worker_lifetime, "lifetime_restart": True,
                     "lifetime_stagger": cfg.lifetime_stagger or "0s"}
                    if cfg.worker_lifetime else {})
        with dask.config.set(NO_PROFILER):  # the nannies take the config they start with
            cluster = LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=gpus, threads_per_worker=1, memory_limit=cfg.memory_limit,
                resources={"GPU": 1}, security=sec, protocol="tls://" if sec else None,
                dashboard_address=":0", **lifetime,
            )
    else:
        scheduler = {"cls": Scheduler, "options": {
            "host": "127.0.0.1", "dashboard_address": ":0", "security": sec,
            "protocol": "tls://" if sec else "tcp://"}}
        with dask.config.set(NO_PROFILER):  # the scheduler's event-loop sampler too
            cluster = SpecCluster(workers=local_worker_specs(cfg, threads, gpus, sec),
                                  scheduler=scheduler, security=sec,
                                  silence_logs=logging.WARNING)
    with cluster, Client(cluster, security=sec) as client:
        yield client


def _has_dask_cuda() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        return False
    return True


# -- SLURM ------------------------------------------------------------------------------------


def slurm_seconds(walltime: str) -> float:
    """Seconds of a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", walltime.strip())
    if not m:
        raise ConfigError(
            f"slurm.walltime {walltime!r} is not a SLURM time (e.g. 01:00:00 or 1-12:00:00)"
        )
    days, a, b, c = (int(v) if v is not None else None for v in m.groups())
    assert a is not None
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + (b or 0) * 60 + c
    return a * 60 + (b or 0)  # MM[:SS]


def check_lifetime(cfg: SlurmClusterConfig) -> None:
    """Workers must retire before the walltime kills them mid-tile."""
    if not cfg.worker_lifetime:
        return
    try:
        latest = parse_timedelta(cfg.worker_lifetime) + parse_timedelta(
            cfg.lifetime_stagger or "0s")
    except ValueError as exc:
        raise ConfigError(f"slurm.worker_lifetime/lifetime_stagger: {exc} (use e.g. '55m')") \
            from exc
    wall = slurm_seconds(cfg.walltime)
    if latest >= wall:
        raise ConfigError(
            f"slurm.worker_lifetime {cfg.worker_lifetime} + lifetime_stagger "
            f"{cfg.lifetime_stagger} reaches the walltime {cfg.walltime}: workers would be "
            "killed instead of retiring; make the lifetime a few minutes shorter than walltime"
        )


def slurm_job_kwargs(cfg: SlurmClusterConfig, threads: int = 1) -> dict[str, Any]:
    """Keyword arguments of dask-jobqueue's ``SLURMCluster`` for ``cfg``.

    dask-jobqueue's ``cores`` is the Dask threads of a job, ``job_cpu`` what SLURM books: one
    thread per worker, all ``cfg.cores`` booked for torch. With TLS on and no certificate files
    the ``security`` is temporary (in memory) and ``shared_temp_directory`` is where
    dask-jobqueue writes the workers' copy (0600 files the job scripts name, never the PEM text).
    """
    check_lifetime(cfg)
    sec = security(cfg.security)
    args: list[str] = []
    if cfg.worker_lifetime:
        args += ["--lifetime", cfg.worker_lifetime,
                 "--lifetime-stagger", cfg.lifetime_stagger or "0s"]
    directives = list(cfg.job_extra_directives)
    if cfg.gpus_per_job:
        directives.append(f"--gres=gpu:{cfg.gpus_per_job}")
        args += ["--resources", "GPU=1"]
        if cfg.processes > 1:
            args += ["--preload-nanny", "lczscale.execute.clusters.gpu_pin"]
    kwargs = {
        "queue": cfg.partition, "account": cfg.account, "walltime": cfg.walltime,
        "cores": cfg.processes, "processes": cfg.processes, "job_cpu": cfg.cores,
        "memory": cfg.memory, "job_extra_directives": directives, "worker_extra_args": args,
        "interface": cfg.interface, "local_directory": cfg.local_directory,
        "log_directory": cfg.log_directory, "python": cfg.python or sys.executable,
        "job_script_prologue": [f"export OMP_NUM_THREADS={threads}",
                                *(f"export {k}={v}" for k, v in NO_PROFILER_ENV.items()),
                                *cfg.job_script_prologue],
        "job_name": JOB_NAME, "security": sec, "protocol": "tls://" if sec else None,
        "shebang": "#!/usr/bin/env bash",
    }
    if sec is not None and not cfg.security.has_files:
        kwargs["shared_temp_directory"] = tls_directory(cfg)
    return kwargs


def tls_directory(cfg: SlurmClusterConfig) -> str:
    """``shared_temp_directory`` as an absolute path (``~`` and variables expanded here: the
    job scripts name the files by this path)."""
    return os.path.abspath(os.path.expanduser(os.path.expandvars(cfg.shared_temp_directory)))


def _placeholder_security(directory: str) -> Security:
    """What the job scripts of a temporary-TLS cluster point at: the files dask-jobqueue
    writes into ``directory`` (their random suffixes shown as XXXXXXXX)."""
    def name(key: str) -> str:
        return os.path.join(directory, f".dask-jobqueue.worker.{key}.XXXXXXXX")
    return Security(tls_ca_file=name("ca_file"), tls_worker_cert=name("cert"),
                    tls_worker_key=name("key"), require_encryption=True)


def slurm_job_script(cfg: SlurmClusterConfig, threads: int = 1,
                     scheduler: str = "tcp://SCHEDULER:8786") -> str:
    """The sbatch script of one worker job, rendered without a scheduler or SLURM."""
    from dask_jobqueue.slurm import SLURMJob

    kwargs = slurm_job_kwargs(cfg, threads)
    directory = kwargs.pop("shared_temp_directory", None)
    if directory is not None:  # never the in-memory key: the files its workers will read
        kwargs["security"] = _placeholder_security(directory)
    if kwargs["security"] is not None:
        scheduler = scheduler.replace("tcp://", "tls://")
    return str(SLURMJob(scheduler, name="dummy-name", config_name="slurm", **kwargs)
               .job_script())


class ReplacingAdaptive(Adaptive):
    """Adaptive scaling that also resubmits jobs whose workers have all gone (lifetime,
    walltime, preemption). distributed keeps counting an ended job as planned, so on its own
    it would never replace it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: set[str] = set()

    async def recommendations(self, target: int) -> dict[str, Any]:
        """Adaptive's recommendation, after forgetting jobs whose workers have all gone, so that
        scaling up submits new jobs in their place."""
        cluster: Any = self.cluster
        job_of = {str(name) + suffix: name for name, spec in cluster.worker_spec.items()
                  for suffix in spec.get("group", [""])}
        alive = {job_of[w] for w in self.observed if w in job_of}
        self._seen |= alive
        for job in self._seen - alive:  # ended: forget it (scancel is harmless), so that
            cluster.worker_spec.pop(job, None)  # a new job under a new name replaces it
            ended = cluster.workers.pop(job, None)
            if ended is not None:
                await ended.close()
        self._seen &= alive
        rec: dict[str, Any] = await super().recommendations(target)
        if rec["status"] == "same" and len(self.requested) < len(self.plan):
            return {"status": "up", "n": target}
        return rec


@contextmanager
def _slurm(cfg: SlurmClusterConfig, threads: int) -> Iterator[Client]:
    from dask_jobqueue import SLURMCluster

    kwargs = slurm_job_kwargs(cfg, threads)
    options: dict[str, Any] = {"dashboard_address": ":0"}
    if cfg.interface:
        options["interface"] = cfg.interface
    minimum = maximum = cfg.jobs * cfg.processes
    if cfg.adaptive is not None:
        minimum, maximum = cfg.adaptive.minimum, cfg.adaptive.maximum
    elif not maximum:
        raise ConfigError("slurm.jobs is 0 and adaptive is unset: no worker would ever start; "
                          "set jobs ≥ 1 or adaptive: {minimum: 0, maximum: N}")
    if "shared_temp_directory" in kwargs:
        _private_directory(kwargs["shared_temp_directory"])
    with SLURMCluster(scheduler_options=options, **kwargs) as cluster:
        try:
            with Client(cluster, security=kwargs["security"]) as client:
                cluster.adapt(minimum=minimum, maximum=maximum, Adaptive=ReplacingAdaptive)
                if minimum:
                    _wait_for_workers(client, cfg)
                yield client
        finally:
            _remove_temporary_certificates(cluster)


def _private_directory(path: str) -> None:
    """Create the directory the temporary certificates go to, readable by this user only."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"slurm.shared_temp_directory {path}: cannot create it ({exc.strerror}); name a "
            "directory on a file system every node sees, or certificate files in security"
        ) from exc


def _remove_temporary_certificates(cluster: Any) -> None:
    """Delete the key/certificate files dask-jobqueue wrote for the worker jobs (it only
    drops them when the cluster object is garbage collected)."""
    for name in [n for n in vars(cluster) if n.startswith("_job_")]:
        handle = getattr(cluster, name)
        if hasattr(handle, "close") and hasattr(handle, "name"):
            handle.close()


def _wait_for_workers(client: Client, cfg: SlurmClusterConfig) -> None:
    try:
        client.wait_for_workers(1, timeout=parse_timedelta(cfg.start_timeout))
    except TimeoutError as exc:
        logs = cfg.log_directory or os.getcwd()
        raise ClusterStartError(
            f"no Dask worker joined within start_timeout {cfg.start_timeout}: the SLURM jobs "
            f"may still wait in the queue (`squeue -n {JOB_NAME}` shows them and why) or failed "
            f"to start (see their logs in {logs}, {JOB_NAME}-*.err). Raise start_timeout, or "
            "check partition/account/memory against `sinfo`"
        ) from exc


# -- address ----------------------------------------------------------------------------------


@contextmanager
def _address(cfg: AddressClusterConfig) -> Iterator[Client]:
    sec = security(cfg.security)
    if sec is not None and not cfg.address.startswith("tls://"):
        raise ConfigError(
            f"security.tls is on but the scheduler address is {cfg.address}; give its tls:// "
            "address"
        )
    with Client(cfg.address, security=sec) as client:
        yield client
