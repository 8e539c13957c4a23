"""Typed configuration (pydantic, unknown keys rejected), YAML in and out.

The same objects are stored in checkpoints and in the cube's attributes, so a map can always be
traced back to the exact settings that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lczscale.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridConfig(_Strict):
    """Which zone lattice the cube uses and how it is cut into tiles (one tile = one chunk)."""

    kind: Literal["utm", "global"] = "utm"
    tile_size: int = Field(2048, ge=64, le=16384)
    resolution: float = Field(10.0, gt=0, description="metres for utm zones")
    global_resolution: float = Field(
        8.983152841195214e-05, gt=0, description="degrees for the global EPSG:4326 zone (~10 m)"
    )


class StitchConfig(_Strict):
    """The global patch lattice: patches of ``patch_size`` every ``stride`` zone pixels."""

    patch_size: int = Field(256, ge=16, le=4096)
    overlap: int | None = Field(
        None, ge=0, description="patch overlap in px; None = from the model's receptive field"
    )
    batch_size: int = Field(8, ge=1, le=1024)

    def stride(self, receptive_field: int) -> int:
        """Patch stride: patch size minus overlap, the overlap covering the receptive radius."""
        overlap = self.overlap if self.overlap is not None else auto_overlap(receptive_field)
        overlap = min(overlap, self.patch_size // 2)
        return self.patch_size - overlap


def auto_overlap(receptive_field: int) -> int:
    """Overlap so that every pixel is ≥ one receptive radius from the edge of some patch.

    With overlap o, every pixel lies at least o/2 from the border of one of the patches that
    cover it, so o = 2·radius (rounded up to 16 px) gives each pixel one prediction that never
    saw the zero padding.
    """
    radius = receptive_field // 2
    return max(16, -(-2 * radius // 16) * 16)


class CubeConfig(_Strict):
    """On-disk layout of the output cube."""

    sharding: bool = False
    inner_chunk: int = Field(256, ge=32, le=4096, description="inner chunk when sharding is on")
    compression_level: int = Field(3, ge=1, le=22)


class ModelConfig(_Strict):
    """Location-aware attention U-Net shape."""

    in_dim: int = Field(128, ge=1)
    num_classes: int = Field(17, ge=2)
    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = Field(2, ge=1, le=4)
    location: bool = True
    location_frequencies: int = Field(1, ge=1, le=8)

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or any(w < 1 for w in v):
            raise ValueError(f"widths must list ≥2 positive channel counts, got {v}")
        return v


class TrainConfig(_Strict):
    """Single-process training loop settings (data-parallel training builds on this)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(64, ge=16)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    year: int | None = None
    log_every: int = Field(25, ge=1)


class MapConfig(_Strict):
    """Everything that decides a map run; stored in the cube's attributes."""

    source: str
    model: str
    out: str
    bbox: tuple[float, float, float, float] | None = None
    geojson: str | None = None
    year: int | None = None
    grid: GridConfig = GridConfig()
    stitch: StitchConfig = StitchConfig()
    cube: CubeConfig = CubeConfig()
    executor: Literal["serial", "dask"] = "dask"
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(
        1, ge=1, description="torch intra-op threads; fixed because CPU GEMM results depend on it"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scheduler_address: str | None = None
    wave_size: int | None = Field(None, ge=1, description="tasks in flight; None = 2 x workers")

    @field_validator("bbox")
    @classmethod
    def _bbox(
        cls, v: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        minlon, minlat, maxlon, maxlat = v
        if not (-180 <= minlon < maxlon <= 180 and -90 <= minlat < maxlat <= 90):
            raise ValueError(
                f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT in degrees with min < max, got {v}"
            )
        return v


def load_yaml(path: str | Path, model: type[BaseModel]) -> Any:
    """Read a YAML file into a config model, turning validation errors into ConfigError."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {model.__name__}: {exc}") from exc


def dump_yaml(cfg: BaseModel) -> str:
    """YAML text of a config, round-trippable through ``load_yaml``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
