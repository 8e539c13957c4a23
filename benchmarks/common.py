"""What every benchmark shares: the context each JSON line carries (host, devices, versions, git
sha), one work directory per run with the synthetic world the benchmarks read, and
random-weight models (throughput does not depend on the weights' values)."""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import torch

from lczscale.config import ModelConfig
from lczscale.execute.clusters.worker_profiler import NO_PROFILER, NO_PROFILER_ENV
from lczscale.io.sources.registry import open_source
from lczscale.model.checkpoint import InputSpec, save_untrained

REPO = Path(__file__).resolve().parent.parent
# The benchmarks' own LocalClusters run without Dask's sampling profiler, as lczscale's do (it
# can deadlock CPython < 3.12 workers: lczscale.execute.clusters.worker_profiler).
dask.config.set(NO_PROFILER)
os.environ.update(NO_PROFILER_ENV)
if str(REPO) not in sys.path:  # tests.servers (the loopback S3 server) lives there
    sys.path.insert(0, str(REPO))

# Every embedding layout the synthetic world writes; the read benchmark reads each.
LAYOUTS = ("tessera-zarr", "tessera-tiles", "aef-cogs", "aef-mosaic")
YEAR = 2024


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.cache
def context() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "dirty": _dirty(),
    }


def _dirty() -> bool | None:
    """Whether the working tree differs from ``git_sha`` (figures then are not that commit's)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())


def record(name: str, **fields: Any) -> dict[str, Any]:
    """One result line: its name, its sizes and settings and figures, and the context."""
    return {"name": name, **fields, "context": context()}


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line if "context" in line else line | {"context": context()}), flush=True)


def main_quick(run: Callable[[bool], list[dict[str, Any]]], doc: str | None) -> None:
    """The command line of a benchmark whose only option is ``--quick``: print its lines."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true")
    for line in run(ap.parse_args().quick):
        emit(line)


def main_stores(run: Callable[[bool, bool], list[dict[str, Any]]], doc: str | None) -> None:
    """The command line of a benchmark run per store: ``--quick`` and ``--no-s3``."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-s3", action="store_true", help="local files only")
    a = ap.parse_args()
    for line in run(a.quick, not a.no_s3):
        emit(line)


# ---- one work directory per run ---------------------------------------------------------------

_WORKDIR: list[Path] = []


def set_workdir(path: Path) -> None:
    """Keep worlds and models under ``path`` (reused by later runs that name it too)."""
    path.mkdir(parents=True, exist_ok=True)
    _WORKDIR[:] = [path]


def workdir() -> Path:
    """The run's work directory: the one set, or a temporary one removed at exit."""
    if not _WORKDIR:
        tmp = Path(tempfile.mkdtemp(prefix="lczscale-bench-"))
        atexit.register(shutil.rmtree, tmp, True)
        _WORKDIR.append(tmp)
    return _WORKDIR[0]


def shared_world(size_km: float, layouts: tuple[str, ...] = LAYOUTS) -> dict[str, Any]:
    """One city (Zurich, UTM 32) in ``layouts``, written once per size per work directory
    (a world with every layout serves a request for fewer)."""
    from lczscale.synth.world import write_world

    for have in (LAYOUTS, layouts):
        root = workdir() / f"world-{size_km:g}km-{'+'.join(have)}"
        if (root / "world.json").exists():
            break
    else:
        write_world(root, cities=1, size_km=size_km, seed=0, years=(YEAR,), truth_cube=False,
                    layouts=layouts, shard_size=1024, overwrite=True)
    summary: dict[str, Any] = json.loads((root / "world.json").read_text())
    summary["dir"] = str(root)
    return summary


def random_model(directory: Path, source_url: str, cfg: ModelConfig,
                 layout: str = "auto") -> str:
    """A checkpoint with seeded random weights for the source's embeddings; its directory."""
    if not (directory / "checkpoint.json").exists():
        source = open_source(source_url, layout)
        method = "sign_square" if source.kind == "alphaearth" else "per_pixel_scale"
        save_untrained(directory, cfg.model_copy(update={"in_dim": source.dimensions}),
                       InputSpec(kind=source.kind, dataset=source.dataset,
                                 dimensions=source.dimensions, dequantisation=method))
    return str(directory)


def model_summary(cfg: ModelConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
