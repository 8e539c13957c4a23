"""Run the benchmarks and print their JSON lines (one result per line, each with its context).

    python benchmarks/run.py --quick                  # a small version of each, < 5 min on 2 cores
    python benchmarks/run.py                          # full sizes
    python benchmarks/run.py --only end_to_end --only amplification
    python benchmarks/run.py --quick --only planet     # the planet dry run (only when named)
    python benchmarks/run.py --quick --only train_stream  # streamed vs in-memory training (too)
    python benchmarks/run.py --out benchmarks/results/cpu-2core.jsonl

Every benchmark is a module here with ``run(quick) -> list[dict]``; this script runs them in
one work directory (so the synthetic world is written once), tags each line with the benchmark
and ``quick``, and ends with a ``run`` line giving each benchmark's seconds. A benchmark that
fails prints an ``error`` line and the exit status is 1; the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import amplification
import ledger_scale
import model_forward
import patch_read
import planet
import planning
import read_concurrency
import read_throughput
import scaling
import store_planning
import throughput
import tile_memory
import train_throughput
from common import emit, record, set_workdir

Runner = Callable[[bool, argparse.Namespace], list[dict[str, Any]]]
BENCHMARKS: dict[str, Runner] = {
    "model_forward": lambda quick, a: model_forward.run(quick),
    "read": lambda quick, a: read_throughput.run(quick, s3=not a.no_s3),
    "read_concurrency": lambda quick, a: read_concurrency.run(quick, s3=not a.no_s3),
    "amplification": lambda quick, a: amplification.run(quick),
    "end_to_end": lambda quick, a: throughput.run(quick),
    "scaling": lambda quick, a: scaling.run(quick, slurm=a.slurm),
    "planning": lambda quick, a: planning.run(quick),
    "tile_memory": lambda quick, a: tile_memory.run(quick),
    "store_planning": lambda quick, a: store_planning.run(quick),
    "ledger_scale": lambda quick, a: ledger_scale.run(quick, with_s3=not a.no_s3),
    "planet": lambda quick, a: planet.run(quick),
    "train_stream": lambda quick, a: train_throughput.run_stream(quick),
    "patch_read": lambda quick, a: patch_read.run(quick),
}
# Run only when named with --only: the planet dry run alone takes about an hour at full size
# (minutes with --quick) and keeps both cores busy; train_stream trains four models in child
# processes (about 70 s with --quick, 3.5 min full, on two cores).
ON_REQUEST = {"planet", "train_stream"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    ap.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, help="also write the lines to this .jsonl file")
    ap.add_argument("--workdir", type=Path, help="keep worlds and models here (reused)")
    ap.add_argument("--no-s3", action="store_true",
                    help="read and ledger_scale benchmarks: local files only")
    ap.add_argument("--slurm", action="store_true",
                    help="scaling: also the local SLURM cluster (deploy/slurm)")
    a = ap.parse_args(argv)
    if a.workdir:
        set_workdir(a.workdir)
    names = a.only or [name for name in BENCHMARKS if name not in ON_REQUEST]
    out = None
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        out = a.out.open("w")
    seconds: dict[str, float] = {}
    failed = []
    start = time.perf_counter()
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                lines = BENCHMARKS[name](a.quick, a)
            except Exception as exc:
                failed.append(name)
                traceback.print_exc()
                lines = [record("error", error=f"{type(exc).__name__}: {exc}")]
            seconds[name] = round(time.perf_counter() - t0, 1)
            for line in lines:
                line = {"benchmark": name, "quick": a.quick} | line
                emit(line)
                if out:
                    out.write(json.dumps(line) + "\n")
                    out.flush()
        summary = record("run", quick=a.quick, benchmarks=names, seconds=seconds,
                         total_s=round(time.perf_counter() - start, 1), failed=failed)
        emit(summary)
        if out:
            out.write(json.dumps(summary) + "\n")
    finally:
        if out:
            out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
