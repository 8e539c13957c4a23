"""Typed configuration (pydantic, unknown keys rejected), YAML in and out.

The same objects are stored in checkpoints and in the cube's attributes, so a map can always be
traced back to the exact settings that produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lczscale.config.files import read_yaml_mapping, validation_line
from lczscale.config.screening import reject_option_secrets, reject_url_secrets
from lczscale.errors import ConfigError


class StrictSettings(BaseModel):
    """Settings that refuse unknown keys, are immutable, and never echo inputs in errors."""

    # Inputs are left out of error messages: a URL given by mistake with a secret in it must
    # not be echoed to logs.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class GridConfig(StrictSettings):
    """Which zone lattice the cube uses and how it is cut into tiles (one tile = one chunk)."""

    kind: Literal["utm", "global"] = "utm"
    tile_size: int = Field(4096, ge=64, le=16384)
    resolution: float = Field(10.0, gt=0, description="metres for utm zones")
    # The global EPSG:4326 lattice is the published AlphaEarth global mosaic's (aef-mosaic:
    # 4,007,520 columns over 360°, top edge 83.6857…°), so that store is read without resampling.
    global_resolution: float = Field(
        360.0 / 4_007_520, gt=0, description="degrees for the global EPSG:4326 zone (~10 m)"
    )
    global_top: float = Field(
        83.68570533713473, gt=0, le=90, description="latitude of the global zone's top edge"
    )


class StitchConfig(StrictSettings):
    """The global patch lattice: patches of ``patch_size`` every ``stride`` zone pixels."""

    patch_size: int = Field(256, ge=16, le=4096)
    overlap: int | None = Field(
        None, ge=0, description="patch overlap in px; None = from the model's receptive field"
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        8, description="patches per forward pass; 'auto' = from free GPU memory (8 on a CPU)"
    )

    def stride(self, receptive_field: int) -> int:
        """Patch stride: patch size minus overlap, the overlap covering the receptive radius.

        Raises ConfigError when the overlap cannot give every pixel one prediction whose whole
        receptive field lies inside the patch (overlap < 2·radius), or leaves no stride.
        """
        need = auto_overlap(receptive_field)
        overlap = self.overlap if self.overlap is not None else need
        if overlap < 2 * (receptive_field // 2):
            raise ConfigError(
                f"stitch.overlap {overlap} px is less than twice the model's receptive radius "
                f"({receptive_field // 2} px): pixels near patch borders would only be "
                f"predicted from zero padding; set overlap ≥ {need} or leave it unset"
            )
        if overlap > self.patch_size // 2:
            raise ConfigError(
                f"stitch.patch_size {self.patch_size} is too small for an overlap of {overlap} "
                f"px (the model's receptive field is {receptive_field} px); use patch_size ≥ "
                f"{2 * overlap}"
            )
        return self.patch_size - overlap


def auto_overlap(receptive_field: int) -> int:
    """Overlap so that every pixel is ≥ one receptive radius from the edge of some patch.

    With overlap o, every pixel lies at least o/2 from the border of one of the patches that
    cover it, so o = 2·radius (rounded up to 16 px) gives each pixel one prediction that never
    saw the zero padding.
    """
    radius = receptive_field // 2
    return max(16, -(-2 * radius // 16) * 16)


class InferenceConfig(StrictSettings):
    """How the model runs on its device. The defaults give the reference cube; dtype,
    channels_last and compile change the arithmetic (bf16/fp16 visibly, the others in the last
    bits), so a run that sets them records them in the cube's provenance."""

    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of the forward pass; fp16 needs CUDA"
    )
    channels_last: bool = Field(False, description="NHWC memory format for the U-Net")
    compile: bool = Field(False, description="torch.compile the model once per worker")
    read_ahead: bool = Field(
        True, description="read a tile in row bands on a background thread while the model "
        "runs on the bands already read (the same cube, I/O hidden behind compute)"
    )
    band_rows: int = Field(
        256, ge=32, le=16384, description="rows per background read (zone-aligned multiples)"
    )
    read_concurrency: int = Field(
        1, ge=1, le=64, description="band reads in flight at once per worker (read-ahead): "
        "raise it where one reader is slower than the model (object stores far away)"
    )

    def numerics(self) -> dict[str, Any]:
        """The settings that change the cube's bytes; empty for the reference settings."""
        changed = self.model_dump(include={"dtype", "channels_last", "compile"},
                                  exclude_defaults=True)
        return dict(changed)


class CubeConfig(StrictSettings):
    """On-disk layout of the output cube."""

    sharding: bool = False
    inner_chunk: int = Field(256, ge=32, le=4096, description="inner chunk when sharding is on")
    compression_level: int = Field(3, ge=1, le=22)


class OutputsConfig(StrictSettings):
    """Optional outputs a map run adds to the cube beside ``lcz`` and ``confidence``.

    Once a cube holds an output, later runs keep it current (the cube's outputs are the union
    of every run's), so a recomputed tile never leaves stale probabilities or 100 m products.
    """

    probabilities: bool = Field(
        False, description="per-class blended probabilities, uint8 round(p*255), (class, y, x)"
    )
    fractions: bool = Field(
        False, description="100 m class fractions, majority and filtered LCZ, and the per-tile "
        "seam-quality layer, made in an aggregation pass after the 10 m tiles"
    )
    block_cells: int = Field(
        512, ge=16, le=8192, description="100 m cells per side of one aggregation block/chunk"
    )
    fractions_from: Literal["classes", "probabilities"] = Field(
        "classes", description="what the 100 m fractions count: the hard 10 m classes, or the "
        "blended per-class probabilities (mixed cells, as MSU-Net; needs probabilities)"
    )

    @model_validator(mode="before")
    @classmethod
    def _soft_needs_probabilities(cls, data: Any) -> Any:
        """Soft fractions are made from the ``probability`` array, so they switch it on."""
        if isinstance(data, dict) and data.get("fractions_from") == "probabilities":
            return data | {"probabilities": True}
        return data

    def union(self, asked: OutputsConfig) -> OutputsConfig:
        """The outputs of a cube holding ``self`` after a run that asks for ``asked``; the
        block size of 100 m arrays that already exist cannot change (it is their chunking),
        nor can what their fractions count (a cube would mix two kinds of fractions)."""
        if self.fractions and asked.fractions and self.fractions_from != asked.fractions_from:
            raise ConfigError(
                f"the cube's 100 m fractions count {self.fractions_from}, this run asks for "
                f"{asked.fractions_from}; map into a new cube (or --overwrite) to change them"
            )
        return OutputsConfig(
            probabilities=self.probabilities or asked.probabilities,
            fractions=self.fractions or asked.fractions,
            block_cells=self.block_cells if self.fractions else asked.block_cells,
            fractions_from=self.fractions_from if self.fractions else asked.fractions_from,
        )


class FaultConfig(StrictSettings):
    """How a run meets failures: retries for transient I/O, tolerance for lost workers."""

    io_attempts: int = Field(4, ge=1, le=20, description="tries of a tile's reads and writes")
    backoff_s: float = Field(0.5, ge=0, description="first wait between tries, doubling")
    backoff_max_s: float = Field(30.0, ge=0)
    allowed_failures: int = Field(
        3, ge=0, description="times a tile may be on a worker that dies before it is failed"
    )
    tile_memory_fraction: float = Field(
        0.6, gt=0, le=1, description="largest share of a worker's memory one tile may need"
    )


class ModelConfig(StrictSettings):
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


class ChangeConfig(StrictSettings):
    """``lczscale change``: which pixels' change between two years is trusted."""

    min_confidence: int = Field(
        128, ge=0, le=255, description="a pixel's change counts (from-class, to-class) only "
        "where both years' confidence (the chosen class's probability x 255) reaches this; "
        "a changed class below it is 'uncertain' (128: p >= 0.5)"
    )


class MapConfig(StrictSettings):
    """Everything that decides a map run; stored in the cube's attributes."""

    source: str
    source_kind: str = Field(
        "auto", description="auto (detect from the data) or a layout: tessera-icechunk, "
        "tessera-dclimate-zarr, tessera-zarr, tessera-tiles, aef-cogs, aef-mosaic, geoemb-zarr, "
        "stac"
    )
    stac_collection: str | None = Field(
        None, description="with source_kind 'stac': the collection to search at the API URL"
    )
    source_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for the source (e.g. anon: true); never credentials",
    )
    min_s2_obs: int | None = Field(
        None, ge=0, description="mask pixels with fewer clear optical observations as nodata "
        "(s2_obs_count; the dClimate TESSERA v1.1 layouts only); recorded in the provenance"
    )
    model: str
    out: str
    overwrite: bool = Field(
        False, description="remap tiles the cube already holds from another provenance (model, "
        "code, settings); without it such a run is refused before anything is written"
    )
    bbox: tuple[float, float, float, float] | None = None
    geojson: str | None = None
    year: int | None = None
    years: tuple[int, ...] | None = Field(
        None, description="several years mapped in one run, one ledger: a list, or text such "
        "as '2018,2020-2022'; not with year (neither: the source's latest year)"
    )
    grid: GridConfig = GridConfig()
    stitch: StitchConfig = StitchConfig()
    inference: InferenceConfig = InferenceConfig()
    cube: CubeConfig = CubeConfig()
    outputs: OutputsConfig = OutputsConfig()
    executor: Literal["serial", "dask"] = "dask"
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(
        1, ge=1, description="torch intra-op threads; fixed because CPU GEMM results depend on it"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scheduler_address: str | None = None
    cluster: str | None = Field(
        None, description="cluster YAML (kind local, slurm, kubernetes or address; see deploy/)"
        "; where the work runs never changes the cube, so it is not part of the provenance"
    )
    wave_size: int | None = Field(None, ge=1, description="tasks in flight; None = 2 x workers")
    faults: FaultConfig = FaultConfig()

    @field_validator("source", "model", "out", "stac_collection", "scheduler_address",
                     "cluster")
    @classmethod
    def _no_credentials(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else reject_credentials(v, str(info.field_name))

    @field_validator("years", mode="before")
    @classmethod
    def _years(cls, v: Any) -> Any:
        return None if v is None else parse_years(v)

    @model_validator(mode="after")
    def _year_or_years(self) -> MapConfig:
        if self.year is not None and self.years is not None:
            raise ValueError(f"give year ({self.year}) or years ({list(self.years)}), not both")
        return self

    def map_years(self, available: Sequence[int]) -> tuple[int, ...]:
        """The years a run maps, ascending: ``years``, else ``year``, else the latest of
        ``available`` (the source's years)."""
        if self.years is not None:
            return self.years
        return (self.year,) if self.year is not None else (max(available),)

    @field_validator("source_options")
    @classmethod
    def _no_secret_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return reject_secret_options(v)

    @field_validator("bbox")
    @classmethod
    def _bbox(
        cls, v: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        minlon, minlat, maxlon, maxlat = v
        lons_ok = -180 <= minlon <= 180 and -180 <= maxlon <= 180 and minlon != maxlon
        if not (lons_ok and -90 <= minlat < maxlat <= 90):
            raise ValueError(
                f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT in degrees with minlat < maxlat "
                f"(MINLON > MAXLON means across the antimeridian), got {v}"
            )
        if minlon > maxlon and 360 - (minlon - maxlon) > 180:
            raise ValueError(
                f"bbox {v} has MINLON > MAXLON, which means a box across the antimeridian "
                f"{360 - (minlon - maxlon):.0f}° wide; if you swapped the longitudes, give "
                f"{maxlon},{minlat},{minlon},{maxlat}"
            )
        return v


def parse_years(value: str | int | Sequence[int | str]) -> tuple[int, ...]:
    """Years as given on a command line or in a settings file, sorted and each once: ``2024``,
    ``"2018,2024"``, a range ``"2017-2025"`` (both ends included), mixed ``"2018,2020-2022"``,
    or a list of years. ValueError, naming the bad part, for anything else."""
    parts: list[str] = []
    if isinstance(value, bool):
        raise ValueError(f"years must be years such as 2018,2020-2022, got {value!r}")
    if isinstance(value, int):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = value.split(",")
    else:
        parts = [str(v) for v in value]
    years: set[int] = set()
    for part in (p.strip() for p in parts):
        ends = part.split("-") if part.count("-") == 1 else [part]
        if not all(e.strip().isdigit() for e in ends):
            raise ValueError(f"years must be years or ranges such as 2018,2020-2022; "
                             f"{part!r} is neither")
        lo, hi = int(ends[0]), int(ends[-1])
        if lo > hi or not 1900 <= lo <= hi <= 2200:
            raise ValueError(f"years: {part!r} is not a year or an ascending range of years "
                             "(1900-2200)")
        years.update(range(lo, hi + 1))
    if not years:
        raise ValueError("years is empty: give at least one year")
    return tuple(sorted(years))


def reject_credentials(url: str, where: str = "URL") -> str:
    """Refuse URLs that carry a credential: user info (``user:password@``, ``token@``) or a
    signing/token query parameter (presigned S3/GCS, Azure SAS, ``access_token=`` …). They
    would be stored in the cube and travel in the task graph. Raises
    :class:`lczscale.config.screening.SecretInConfigError` (a ConfigError) with a one-line message
    that names ``where`` and the fix, never the secret."""
    return reject_url_secrets(url, where)


def reject_secret_options(options: dict[str, Any], where: str = "source_options") -> dict[str, Any]:
    """Refuse storage options that are not on lczscale's allow-list of non-secret fsspec/s3fs/
    gcsfs/HTTP settings (:data:`lczscale.config.screening.ALLOWED_OPTIONS`), screened through nested
    mappings and lists: config is stored in the cube and travels in task graphs, so secrets
    must come from the environment on each machine."""
    return reject_option_secrets(options, where)


def load_yaml(path: str | Path, model: type[BaseModel]) -> Any:
    """Read a YAML file into a config model; ConfigError, in one line naming the file and the
    problem, when it is missing, not YAML, not a mapping, or not valid settings."""
    data = read_yaml_mapping(path, f"{model.__name__} file")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {model.__name__}: {validation_line(exc)}") from exc


def dump_yaml(cfg: BaseModel) -> str:
    """YAML text of a config, round-trippable through ``load_yaml``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
