"""Worker plugins for cluster tests: slow every tile down, count model loads per worker.

They patch lczscale inside each worker process (also in workers that start later, e.g. after a
lifetime restart), so a test can make a small map outlast its workers' lifetime and check that
the model is loaded once per worker, not per tile.
"""

from __future__ import annotations

import time
from typing import Any

from distributed import WorkerPlugin

MODEL_LOADS = 0


class SlowTiles(WorkerPlugin):
    """Every tile sleeps ``seconds`` before it runs."""

    name = "test-slow-tiles"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, worker: Any) -> None:
        from lczscale.execute.tile import TileRunner

        original = TileRunner.run
        if getattr(original, "slowed", False):
            return
        seconds = self.seconds

        def run(runner: TileRunner, task: Any) -> Any:
            time.sleep(seconds)
            return original(runner, task)

        run.slowed = True  # type: ignore[attr-defined]
        TileRunner.run = run  # type: ignore[method-assign]


class CountModelLoads(WorkerPlugin):
    """Counts checkpoint loads in this worker process (read with ``model_loads``)."""

    name = "test-count-model-loads"

    def setup(self, worker: Any) -> None:
        from lczscale.infer.predict import Predictor

        original = Predictor.from_checkpoint.__func__  # type: ignore[attr-defined]
        if getattr(original, "counted", False):
            return

        def counted(cls: Any, *args: Any, **kwargs: Any) -> Any:
            global MODEL_LOADS
            MODEL_LOADS += 1
            return original(cls, *args, **kwargs)

        counted.counted = True  # type: ignore[attr-defined]
        Predictor.from_checkpoint = classmethod(counted)  # type: ignore[method-assign,assignment]


def model_loads() -> int:
    return MODEL_LOADS
