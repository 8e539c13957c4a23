"""Shared fixtures: a synthetic world in the real formats, a small trained model, and the cubes
that many tests compare against.

Each of them is built once per test run — also under pytest-xdist, where the first worker that
needs one builds it under a file lock and the others load it (:func:`once`) — and is
read-only: a test that writes to a shared cube or world copies it first.
"""

from __future__ import annotations

import os

# OpenMP threads (torch's) that wait for work sleep instead of spinning: with the test processes,
# Dask workers and servers of a run sharing a few cores, spinning threads burn the CPU that the
# others need (a torch forward pass took twice the CPU time beside another). How threads wait
# does not change what they compute. Set before anything imports torch, for every process the
# tests start (they inherit the environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib
import fcntl
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import pytest

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.clusters.worker_profiler import NO_PROFILER, NO_PROFILER_ENV
from lczscale.execute.run import run_map
from lczscale.synth.world import write_world
from lczscale.train.loop import train_job
from lczscale.train.settings import LabelSet, TrainConfig, TrainJob

TINY_MODEL = ModelConfig(widths=(8, 16, 32))

# Clusters the tests start themselves run without Dask's sampling profiler, as lczscale's own
# do: it can deadlock a CPython < 3.12 process (see lczscale.execute.clusters.worker_profiler).
dask.config.set(NO_PROFILER)
os.environ.update(NO_PROFILER_ENV)


# -- built once per run, shared by every worker --------------------------------------------


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's base temporary directory; under pytest-xdist the one above every worker's own
    (``pytest-N/`` rather than ``pytest-N/popen-gwK/``), which all workers of the run share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool = True) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def once[T](tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(directory)``'s result, built once per test run in ``shared-<name>/``.

    The first caller (of any xdist worker) builds it under a file lock and pickles the result
    beside the directory; later callers wait for the lock and unpickle it. Every caller gets the
    unpickled copy, so a test sees the same value whichever worker built it. A build that raised
    leaves no result: the next caller builds again (and fails the same way, in its own test)."""
    root = shared_root(tmp_path_factory)
    directory, result = root / f"shared-{name}", root / f"shared-{name}.pickle"
    with _locked(root / f"shared-{name}.lock"):
        if not result.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            result.write_bytes(pickle.dumps(build(directory)))
        return pickle.loads(result.read_bytes())


# -- the synthetic worlds ------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    dir: Path
    source: str
    coarse: str
    truth: str
    model: str
    summary: dict

    def map_config(self, out: Path | str, **kw: object) -> MapConfig:
        base: dict = {
            "source": self.source, "model": self.model, "out": str(out), "executor": "serial",
            "stitch": StitchConfig(patch_size=128, batch_size=4),
            "grid": GridConfig(tile_size=512),
        }
        base.update(kw)
        return MapConfig.model_validate(base)


def _world(root: Path, cities: int, size_km: float) -> World:
    summary = write_world(root / "world", cities=cities, size_km=size_km, seed=0)
    source = str(root / "world" / "embeddings.zarr")
    coarse = str(summary["coarse_labels"])
    model = str(root / "model")
    train_job(TrainJob(source=source, labels=(LabelSet(name="coarse", path=coarse),), out=model,
                       train=TrainConfig(steps=12, batch_size=4, patch_size=64), model=TINY_MODEL),
              progress=False)
    return World(root, source, coarse, str(root / "world" / "truth.zarr"), model, summary)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Zurich and Basel (both UTM 32N), 6 km each so that 512 px tiles split every city."""
    return once(tmp_path_factory, "world2", lambda root: _world(root, cities=2, size_km=6.0))


@pytest.fixture(scope="session")
def southern_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Three cities, the third (Nairobi) south of the equator: negative northings."""
    return once(tmp_path_factory, "world3", lambda root: _world(root, cities=3, size_km=1.5))


# -- cubes of the world that many tests compare against ------------------------------------


@dataclass(frozen=True)
class MappedCube:
    """A finished map run: where its cube is and what the run reported (``MapReport.summary``).
    Read-only: copy the cube (``shutil.copytree``) before a test writes to it."""

    url: str
    summary: dict[str, Any]

    @property
    def computed(self) -> int:
        return int(self.summary["computed"])

    @property
    def failed(self) -> int:
        return int(self.summary["failed"])


def _map(world: World, out: Path, **kw: Any) -> MappedCube:
    report = run_map(world.map_config(out, **kw), progress=False)
    return MappedCube(str(out), report.summary())


@pytest.fixture(scope="session")
def serial_cube(world: World, tmp_path_factory: pytest.TempPathFactory) -> MappedCube:
    """The world mapped with its defaults (``world.map_config``: serial, 512 px tiles)."""
    return once(tmp_path_factory, "serial-cube", lambda d: _map(world, d / "tile512.zarr"))


@pytest.fixture(scope="session")
def dask_cube(world: World, tmp_path_factory: pytest.TempPathFactory) -> MappedCube:
    """The world mapped on the default local cluster (2 worker processes, ``--workers 2``)."""
    return once(tmp_path_factory, "dask-cube",
                lambda d: _map(world, d / "dask2.zarr", executor="dask", workers=2))


# -- tests that must run alone -------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Under pytest-xdist, a test marked ``alone`` runs while no other worker runs a test.

    Every test holds a run-wide lock from its setup (its module's fixtures included) to its
    teardown: shared, or exclusive when marked ``alone``. A turnstile lock in front of it lets
    no new test start while an ``alone`` test waits for the running ones to end, so it cannot
    starve. Without xdist there is no other test to wait for."""
    worker_base = item.config.option.basetemp if os.environ.get("PYTEST_XDIST_WORKER") else None
    if not worker_base:
        return (yield)
    root = Path(worker_base).parent  # shared by the run's workers, as in shared_root
    exclusive = item.get_closest_marker("alone") is not None
    with open(root / "alone.lock", "a") as lock:
        with _locked(root / "alone-turnstile.lock"):
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- order: the longest modules first --------------------------------------------------------

# The modules that take longest (a minute or more each on a two-core machine), longest first.
# CI runs the suite on pytest-xdist workers that take whole files in collection order
# (``--dist loadfile --no-loadscope-reorder``, see run.sh): started first, the long files run
# side by side, and the many short ones fill in at the end instead of one long file running
# alone. Within a file the order is kept, and a plain run keeps every file's tests together.
LONGEST_FIRST = (
    "integration/test_fault_tolerance.py",
    "integration/test_soak.py",  # needs no shared world: runs while the other worker builds it
    "integration/test_local_clusters.py",
    "integration/test_same_cube_per_family.py",
    "integration/test_inference_options.py",
    "integration/test_kubernetes_commands.py",
    "integration/test_demo.py",
    "integration/test_slurm.py",
    "integration/test_benchmarks_run.py",
    "integration/test_training.py",
    "integration/test_map_outputs.py",
    "integration/test_pipeline.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path.removeprefix("tests/"), len(rank))

    items.sort(key=key)  # stable: the other files, and the tests within each, keep their order
