"""One interface for every pass of a map run: run these tasks, here or on a cluster.

A *pass* (the 10 m tiles, the 100 m blocks) says how a worker makes the runner that does one
task (loading a model once per worker, not once per task) and what a task becomes when its
worker died every time it ran it. An *executor* runs a pass's tasks and hands each result back
as it ends:

- :class:`SerialExecutor`: one task after another in this process, the reference semantics;
- :class:`~lczscale.execute.cluster_executor.DaskExecutor`: one Dask task per task, in bounded
  waves, on any Dask cluster (local processes, SLURM, Kubernetes or an existing scheduler:
  ``lczscale.execute.clusters`` starts them, the executor only sees the client).

``lczscale.execute.run.open_executor`` picks one from a map's config.

Both run the same runner code, so a cube does not depend on which one made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil


class TaskRunner[T, R](Protocol):
    """What does one task on a worker; it never raises for the task's own failures."""

    def run(self, task: T) -> R:
        """The task's result (a failed result when the task itself failed)."""
        ...


@dataclass(frozen=True)
class Pass[T, R]:
    """What an executor needs to know about one kind of task.

    ``make_runner(device)`` builds a worker's runner once; ``device`` is the worker's own GPU
    (``cuda:N``) when the pass is ``device_bound`` and the worker has one, else None.
    ``key(task)`` names the task (unique within the pass). ``lost(task, error)`` is the result
    of a task whose worker died every time it ran it (``KilledWorker``): it records the failure.
    A ``device_bound`` pass runs a model: its tasks go only to GPU workers where there are any.
    Everything here is pickled to the workers: it holds addresses and settings, never secrets.
    """

    name: str
    make_runner: Callable[[str | None], TaskRunner[T, R]]
    key: Callable[[T], str]
    lost: Callable[[T, BaseException], R]
    device_bound: bool = False


class Executor(Protocol):
    """Runs a pass's tasks; results come back in completion order, each also to ``on_result``."""

    where: str  # how the memory limits below are described in a message ("this machine has")

    def run[T, R](self, work: Pass[T, R], tasks: Sequence[T],
                  on_result: Callable[[R], None] | None = None) -> list[R]:
        """Every task's result; a task's failure is a failed result, never an exception."""
        ...

    def memory_limits(self) -> list[int]:
        """Memory (bytes) each worker may use; 0 where a worker has no limit."""
        ...

    @property
    def dashboard_link(self) -> str | None:
        """Where to watch the run, if anywhere."""
        ...


class SerialExecutor:
    """Tasks one after another in this process."""

    where = "this machine has"

    def run[T, R](self, work: Pass[T, R], tasks: Sequence[T],
                  on_result: Callable[[R], None] | None = None) -> list[R]:
        """Run ``tasks`` with one runner made here."""
        if not tasks:
            return []
        runner = work.make_runner(None)
        results = []
        for task in tasks:
            result = runner.run(task)
            results.append(result)
            if on_result:
                on_result(result)
        return results

    def memory_limits(self) -> list[int]:
        """This machine's memory: one task at a time may use it."""
        return [psutil.virtual_memory().total]

    @property
    def dashboard_link(self) -> str | None:
        """No dashboard in-process."""
        return None
