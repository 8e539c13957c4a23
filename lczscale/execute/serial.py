"""The serial executor: tasks one after another in this process — the reference semantics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lczscale.core.tiling import TileTask
from lczscale.execute.tile import MapContext, TileResult, TileRunner


def run_serial(
    tasks: Sequence[TileTask],
    ctx: MapContext,
    on_result: Callable[[TileResult], None] | None = None,
) -> list[TileResult]:
    runner = TileRunner(ctx)
    results = []
    for task in tasks:
        result = runner.run(task)
        results.append(result)
        if on_result:
            on_result(result)
    return results
