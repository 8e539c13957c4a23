"""The Dask executor: one task per tile, submitted in bounded waves, model loaded per worker.

Never a ``dask.array`` graph over the globe: the client keeps at most ``wave`` tasks in flight
and submits the next as each finishes, so memory on the scheduler stays flat whatever the AOI.
GPU workers advertise ``GPU=1`` and inference tasks then require it.

A worker that dies (preemption, OOM kill, segfault) loses only its running tile: the scheduler
reruns it elsewhere, up to ``allowed_failures`` times; a tile that kills more workers than that
(``KilledWorker``) is recorded as failed, like any tile whose task raised.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, Future, LocalCluster, WorkerPlugin, as_completed, get_worker

from lczscale.execute.tile import MapContext, TileResult, TileRunner, record_failure
from lczscale.plan import TileTask

log = logging.getLogger(__name__)
PLUGIN_NAME = "lczscale-tile-runner"


class TileRunnerPlugin(WorkerPlugin):
    """Loads the source and the model once when a worker starts (or joins later)."""

    name = PLUGIN_NAME

    def __init__(self, ctx: MapContext) -> None:
        self.ctx = ctx
        self.runner: TileRunner | None = None

    def setup(self, worker: Any) -> None:
        device = self.ctx.device
        if device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                index = worker.name if isinstance(worker.name, int) else 0
                device = f"cuda:{index % torch.cuda.device_count()}"
        self.runner = TileRunner(self.ctx, device=device)

    def teardown(self, worker: Any) -> None:
        self.runner = None


def _run_on_worker(task: TileTask) -> TileResult:
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, TileRunnerPlugin) and plugin.runner is not None
    return plugin.runner.run(task)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return 0


@contextmanager
def dask_client(
    workers: int,
    threads_per_worker: int = 1,
    address: str | None = None,
    device: str = "auto",
    allowed_failures: int = 3,
) -> Iterator[Client]:
    """A client to ``address``, or to a LocalCluster of separate worker processes.

    ``allowed_failures`` is a scheduler setting: it applies to the LocalCluster made here; a
    scheduler started elsewhere takes it from its own configuration
    (``distributed.scheduler.allowed-failures``).
    """
    if address:
        with Client(address) as client:
            yield client
        return
    gpus = gpu_count() if device != "cpu" else 0
    resources = {"GPU": 1} if gpus else None
    n = min(workers, gpus) if gpus else workers
    failures = {"distributed.scheduler.allowed-failures": allowed_failures}
    with dask.config.set(failures), LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        resources=resources,
        dashboard_address=":0",
        memory_limit="auto",
        env={"OMP_NUM_THREADS": str(threads_per_worker)},
    ) as cluster, Client(cluster) as client:
        yield client


def run_dask(
    tasks: Sequence[TileTask],
    ctx: MapContext,
    client: Client,
    wave: int | None = None,
    on_result: Callable[[TileResult], None] | None = None,
) -> list[TileResult]:
    """Run tasks on the cluster, at most ``wave`` in flight (default 2 per worker)."""
    client.register_plugin(TileRunnerPlugin(ctx), name=PLUGIN_NAME)
    info = client.scheduler_info()
    workers = info.get("workers", {})
    has_gpu = any(w.get("resources", {}).get("GPU") for w in workers.values())
    resources = {"GPU": 1} if has_gpu and ctx.device != "cpu" else None
    limit = wave or max(2, 2 * len(workers))
    pending = iter(tasks)
    results: list[TileResult] = []
    futures = as_completed()
    submitted: dict[object, TileTask] = {}

    def submit_next() -> bool:
        task = next(pending, None)
        if task is None:
            return False
        future = client.submit(_run_on_worker, task, key=f"tile-{task.key}-{uuid.uuid4().hex[:8]}",
                               pure=False, resources=resources)
        submitted[future.key] = task
        futures.add(future)
        return True

    for _ in range(limit):
        if not submit_next():
            break
    for future in futures:
        result = _result(future, submitted.pop(future.key), ctx)
        results.append(result)
        if on_result:
            on_result(result)
        submit_next()
    return results


def worker_memory_limits(client: Client) -> list[int]:
    """Memory limits (bytes) of the cluster's workers; 0 where a worker has none."""
    workers = client.scheduler_info().get("workers", {})
    return [int(w.get("memory_limit") or 0) for w in workers.values()]


def _result(future: Future, task: TileTask, ctx: MapContext) -> TileResult:
    """The task's result, or a failed result recorded in the ledger when the task itself died
    (e.g. ``KilledWorker`` once it has taken down ``allowed_failures`` + 1 workers)."""
    try:
        result = future.result()
        assert isinstance(result, TileResult)
        return result
    except Exception as exc:
        advice = ""
        if type(exc).__name__ == "KilledWorker":
            advice = (
                " — the tile's worker died every time (out of memory, a crash in native code, "
                "or preemption); see the worker logs, try a smaller --tile-size"
            )
        return record_failure(ctx, task, exc, "client", advice=advice)
