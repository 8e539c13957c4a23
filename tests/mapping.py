"""Mapping helpers for tests whose subject is plumbing (formats, stores, executors), not
accuracy: a small random-weight model for any source, and a one-call map of a source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import lczscale
from lczscale.config import GridConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.execute.run import MapReport, run_map
from lczscale.io.sources.protocol import EmbeddingSource
from lczscale.model.checkpoint import InputSpec, save_untrained

DEQUANTISATION = {"tessera": "per_pixel_scale", "alphaearth": "sign_square"}


def random_model(directory: Path, source: EmbeddingSource) -> str:
    """A receptive field of 11 px (32 px patches suffice) with seeded random weights."""
    save_untrained(
        directory, ModelConfig(widths=(8, 16), convs_per_block=1, in_dim=source.dimensions),
        InputSpec(kind=source.kind, dataset=source.dataset, dimensions=source.dimensions,
                  dequantisation=DEQUANTISATION.get(source.kind, "per_pixel_scale")),
    )
    return str(directory)


def map_source(source: str, model: str, out: str, **kw: Any) -> MapReport:
    """Map ``source`` with small tiles and patches; keyword arguments override MapConfig."""
    grid = kw.pop("grid", GridConfig(tile_size=128))
    base: dict[str, Any] = {
        "source": source, "model": model, "out": out, "executor": "serial", "grid": grid,
        "stitch": StitchConfig(patch_size=64, batch_size=4),
    }
    base.update(kw)
    report = run_map(MapConfig.model_validate(base), progress=False)
    assert not report.failed, report.summary()["failures"]
    return report


def cube_window(url: str, zone: str, window: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """lcz and confidence of a zone window (row, col, height, width) of a cube."""
    r, c, h, w = window
    ds = lczscale.open_cube(url, zone=zone)
    sel = {"y": slice(r, r + h), "x": slice(c, c + w)}
    return {var: ds[var].isel(**sel).values for var in ("lcz", "confidence")}
