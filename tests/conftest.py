"""Shared fixtures: a synthetic world in the real formats and a small trained model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest

from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.clusters.worker_profiler import NO_PROFILER, NO_PROFILER_ENV
from lczscale.synth.world import write_world
from lczscale.train.loop import train_job
from lczscale.train.settings import LabelSet, TrainConfig, TrainJob

TINY_MODEL = ModelConfig(widths=(8, 16, 32))

# Clusters the tests start themselves run without Dask's sampling profiler, as lczscale's own
# do: it can deadlock a CPython < 3.12 process (see lczscale.execute.clusters.worker_profiler).
dask.config.set(NO_PROFILER)
os.environ.update(NO_PROFILER_ENV)


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
    return _world(tmp_path_factory.mktemp("world2"), cities=2, size_km=6.0)


@pytest.fixture(scope="session")
def southern_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Three cities, the third (Nairobi) south of the equator: negative northings."""
    return _world(tmp_path_factory.mktemp("world3"), cities=3, size_km=1.5)
