"""The executor on a Dask cluster: one Dask task per task, in bounded waves, runner per worker.

Never a ``dask.array`` graph over the globe: the client keeps at most ``wave`` tasks in flight
and submits the next as each finishes, so memory on the scheduler stays flat whatever the AOI.
Each worker builds a pass's runner once (a worker plugin; also on workers that join later), so
a model is loaded once per worker, not once per tile. GPU workers advertise ``GPU=1`` and the
tasks of a device-bound pass then require it.

A worker that dies (preemption, OOM kill, segfault) loses only its running task: the scheduler
reruns it elsewhere, up to ``allowed_failures`` times; a task that kills more workers than that
(``KilledWorker``) becomes the pass's ``lost`` result, recorded as failed like any task that
raised.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from distributed import Client, Future, WorkerPlugin, as_completed, get_worker

from lczscale.execute.clusters.worker_profiler import stop_profiler
from lczscale.execute.executor import Pass, TaskRunner

log = logging.getLogger(__name__)
WAVE_RESIZE_S = 5.0


def plugin_name(work: Pass[Any, Any]) -> str:
    """The worker plugin that holds ``work``'s runner on each worker."""
    return f"lczscale-{work.name}-runner"


class RunnerPlugin(WorkerPlugin):
    """Builds a pass's runner once when a worker starts (or joins later)."""

    def __init__(self, work: Pass[Any, Any]) -> None:
        self.work = work
        self.name = plugin_name(work)
        self.runner: TaskRunner[Any, Any] | None = None

    def setup(self, worker: Any) -> None:
        """Make the runner, on the worker's own GPU for a device-bound pass."""
        stop_profiler(worker)  # workers lczscale did not start (address clusters)
        device = None
        if self.work.device_bound:
            import torch  # only device-bound passes need it on the worker

            if torch.cuda.is_available():
                device = f"cuda:{cuda_index(worker.name, torch.cuda.device_count())}"
        self.runner = self.work.make_runner(device)

    def teardown(self, worker: Any) -> None:
        """Drop the runner (and the model it holds)."""
        self.runner = None


def cuda_index(name: object, count: int, pinned: str | None = None) -> int:
    """The GPU a worker uses. A pinned worker (``CUDA_VISIBLE_DEVICES`` set for it: by
    lczscale's clusters, dask-cuda or SLURM) uses the first it sees, its own; an unpinned one
    on a multi-GPU machine picks by its integer name."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES") if pinned is None else pinned
    if pinned:
        return 0
    return name % count if isinstance(name, int) else 0


def _run_on_worker(name: str, task: Any) -> Any:
    plugin = get_worker().plugins[name]
    assert isinstance(plugin, RunnerPlugin) and plugin.runner is not None
    return plugin.runner.run(task)


class DaskExecutor:
    """Runs passes on the cluster behind ``client``, at most ``wave`` tasks in flight
    (default: 2 per worker, following the workers as they come and go)."""

    where = "the smallest Dask worker has"

    def __init__(self, client: Client, wave: int | None = None) -> None:
        self.client = client
        self.wave = wave

    def run[T, R](self, work: Pass[T, R], tasks: Sequence[T],
                  on_result: Callable[[R], None] | None = None) -> list[R]:
        """Every task's result, in completion order."""
        if not tasks:
            return []
        client = self.client
        name = plugin_name(work)
        client.register_plugin(RunnerPlugin(work), name=name)
        resources = None
        if work.device_bound:
            # Only to GPU workers when there are any (whatever device they compute on: the
            # device decides the bytes, the resource only where tasks run).
            workers = client.scheduler_info().get("workers", {})
            if any(w.get("resources", {}).get("GPU") for w in workers.values()):
                resources = {"GPU": 1}

        def submit(task: T) -> Future:
            key = f"{work.key(task)}-{uuid.uuid4().hex[:8]}"
            return client.submit(_run_on_worker, name, task, pure=False, resources=resources,
                                 key=key)

        def collect(future: Future, task: T) -> R:
            try:
                return future.result()  # type: ignore[no-any-return]
            except Exception as exc:  # the task itself died (e.g. KilledWorker)
                return work.lost(task, exc)

        return in_waves(client, tasks, submit, collect, self.wave, on_result)

    def memory_limits(self) -> list[int]:
        """Memory limits (bytes) of the cluster's workers; 0 where a worker has none."""
        workers = self.client.scheduler_info().get("workers", {})
        return [int(w.get("memory_limit") or 0) for w in workers.values()]

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the cluster."""
        return self.client.dashboard_link or None


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
