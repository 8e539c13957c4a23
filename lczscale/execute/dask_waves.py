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
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from distributed import Client, Future, WorkerPlugin, as_completed, get_worker

from lczscale.core.tiling import TileTask
from lczscale.execute.clusters.worker_profiler import stop_profiler
from lczscale.execute.tile import MapContext, TileResult, TileRunner, record_failure

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
PLUGIN_NAME = "lczscale-tile-runner"
WAVE_RESIZE_S = 5.0


class TileRunnerPlugin(WorkerPlugin):
    """Loads the source and the model once when a worker starts (or joins later)."""

    name = PLUGIN_NAME

    def __init__(self, ctx: MapContext) -> None:
        self.ctx = ctx
        self.runner: TileRunner | None = None

    def setup(self, worker: Any) -> None:
        stop_profiler(worker)  # workers lczscale did not start (address clusters)
        device = self.ctx.device
        if device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{cuda_index(worker.name, torch.cuda.device_count())}"
        self.runner = TileRunner(self.ctx, device=device)

    def teardown(self, worker: Any) -> None:
        self.runner = None


def cuda_index(name: object, count: int, pinned: str | None = None) -> int:
    """The GPU a worker uses. A pinned worker (``CUDA_VISIBLE_DEVICES`` set for it: by
    lczscale's clusters, dask-cuda or SLURM) uses the first it sees, its own; an unpinned one
    on a multi-GPU machine picks by its integer name."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES") if pinned is None else pinned
    if pinned:
        return 0
    return name % count if isinstance(name, int) else 0


def _run_on_worker(task: TileTask) -> TileResult:
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, TileRunnerPlugin) and plugin.runner is not None
    return plugin.runner.run(task)


def run_dask(
    tasks: Sequence[TileTask],
    ctx: MapContext,
    client: Client,
    wave: int | None = None,
    on_result: Callable[[TileResult], None] | None = None,
) -> list[TileResult]:
    """Run tasks on the cluster, at most ``wave`` in flight (default 2 per worker now)."""
    client.register_plugin(TileRunnerPlugin(ctx), name=PLUGIN_NAME)
    info = client.scheduler_info()
    workers = info.get("workers", {})
    # Inference goes only to GPU workers when there are any (whatever device they compute on:
    # the device decides the bytes, the resource only where tasks run).
    has_gpu = any(w.get("resources", {}).get("GPU") for w in workers.values())
    resources = {"GPU": 1} if has_gpu else None
    return in_waves(
        client, tasks,
        lambda task: client.submit(_run_on_worker, task, pure=False, resources=resources,
                                   key=f"tile-{task.key}-{uuid.uuid4().hex[:8]}"),
        lambda future, task: _result(future, task, ctx), wave, on_result,
    )


def in_waves[T, R](
    client: Client,
    tasks: Iterable[T],
    submit: Callable[[T], Future],
    collect: Callable[[Future, T], R],
    wave: int | None = None,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``collect`` of every task's future, in completion order, with at most ``wave`` tasks
    in flight (default 2 per worker, following the workers as they come and go) — never a
    whole-run graph on the scheduler."""
    limit = wave or max(2, 2 * len(client.scheduler_info().get("workers", {})))
    sized = time.monotonic()
    pending = iter(tasks)
    results: list[R] = []
    futures = as_completed()
    submitted: dict[object, T] = {}

    def top_up() -> None:
        # Workers come and go (SLURM jobs leave the queue, adaptive scaling, lifetimes): the
        # default wave follows their number, looked up at most every few seconds.
        nonlocal limit, sized
        if wave is None and time.monotonic() - sized > WAVE_RESIZE_S:
            limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
            sized = time.monotonic()
        while len(submitted) < limit:
            task = next(pending, None)
            if task is None:
                return
            future = submit(task)
            submitted[future.key] = task
            futures.add(future)

    top_up()
    for future in futures:
        result = collect(future, submitted.pop(future.key))
        # Forget the result on its worker now, not when the loop variable moves on: a worker
        # holding it cannot retire gracefully (lifetime) while no other worker can take it.
        future.release()
        results.append(result)
        if on_result:
            on_result(result)
        top_up()
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
