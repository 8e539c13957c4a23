"""Typed training settings: labels per city, spatial splits, loss, and the training loop.

Kept apart from ``config`` (map settings) because a training run is described by a *job* — the
sources, label sets and settings that every rank of a data-parallel run reads from one JSON
file — and that file is also what a resumed run compares against, to refuse resuming with other
settings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lczscale.config import ModelConfig, StrictSettings, reject_credentials


class LabelSet(StrictSettings):
    """One city's (or area's) labels: a name for hold-outs and reports, and a label source."""

    name: str = Field(min_length=1)
    path: str
    band: int | None = Field(None, ge=1, description="raster band; None = the source's default")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="use only labels inside this lon/lat box (one city of a larger map)"
    )

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        return reject_credentials(v, "labels: path")


class SplitConfig(StrictSettings):
    """Spatially blocked splits: square blocks of the zone's own pixel lattice are assigned
    whole to train, val or test, so neighbouring (autocorrelated) pixels never straddle splits.
    Held-out cities and a test year come on top: a held-out city is never read for training."""

    block_size: int = Field(128, ge=8, description="block edge in zone pixels (128 = 1.28 km)")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    holdout_cities: tuple[str, ...] = ()
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leaves "
                "nothing to train on; keep their sum below 1"
            )
        return self


class LossConfig(StrictSettings):
    """Class-weighted cross-entropy (or focal) plus optional Dice and coarse consistency."""

    kind: Literal["ce", "focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0)
    dice_weight: float = Field(0.5, ge=0, description="0 = no Dice term")
    consistency_weight: float = Field(
        0.0, ge=0, description="mean of 10 m predictions over each 100 m cell vs its label share"
    )
    consistency_cell: int = Field(10, ge=2, description="cell edge in pixels (10 = 100 m)")
    boundary_ignore: int = Field(
        0, ge=0, description="ignore labels within this many px of a label change (coarse labels "
        "are wrong near their boundaries; the model decides those pixels itself)"
    )


class TrainConfig(StrictSettings):
    """The training loop. ``batch_size`` is per rank: N ranks train with N × batch_size."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(64, ge=16)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    year: int | None = None
    log_every: int = Field(25, ge=1)
    epoch_samples: int = Field(
        2048, ge=1, description="samples per epoch (patches are drawn fresh every epoch)"
    )
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    loss: LossConfig = LossConfig()
    split: SplitConfig = SplitConfig()
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, description="torch intra-op threads per rank")
    prefetch: int = Field(2, ge=0, description="batches assembled ahead in a thread")
    data: Literal["stream", "memory"] = Field(
        "stream", description="stream: read each drawn patch through a chunk cache (memory "
        "flat at any labelled area); memory: read every labelled region once and keep it")
    cache_mb: int = Field(64, ge=16, description="streamed: the chunk cache per rank, MiB "
                          "(what a rank holds past its baseline, whatever the labelled area)")
    read_threads: int = Field(4, ge=1, description="streamed: block reads in flight per rank")
    read_block: int = Field(64, ge=16, le=4096, description="streamed: px side of a cached "
                            "read, aligned to the zone lattice (a multiple of the store's "
                            "inner chunk wastes no decoding)")

    @model_validator(mode="after")
    def _cells_fit(self) -> TrainConfig:
        if self.loss.consistency_weight and self.patch_size < self.loss.consistency_cell:
            raise ValueError(
                f"patch_size {self.patch_size} is smaller than loss.consistency_cell "
                f"{self.loss.consistency_cell}: no whole cell fits in a patch"
            )
        return self


class TrainJob(StrictSettings):
    """Everything one training run needs; every rank reads the same job file."""

    source: str
    labels: tuple[LabelSet, ...] = Field(min_length=1)
    out: str
    train: TrainConfig = TrainConfig()
    model: ModelConfig | None = None
    bbox: tuple[float, float, float, float] | None = None

    @field_validator("source", "out")
    @classmethod
    def _no_credentials(cls, v: str, info: ValidationInfo) -> str:
        return reject_credentials(v, str(info.field_name))

    @model_validator(mode="after")
    def _labels(self) -> TrainJob:
        names = [s.name for s in self.labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"label sets must have distinct names, {dupes} repeat")
        unknown = sorted(set(self.train.split.holdout_cities) - set(names))
        if unknown:
            raise ValueError(
                f"holdout city {unknown} is not among the label sets {names}; name a label set "
                "(by default a label file's name without its extension)"
            )
        if set(names) <= set(self.train.split.holdout_cities):
            raise ValueError("every city is held out: keep at least one for training")
        return self

    def fingerprint(self) -> str:
        """sha256 of what decides the trained weights (not the output path, not the logging):
        a resumed run must match it."""
        keep = self.model_dump(mode="json", exclude={"out"})
        keep["train"].pop("log_every", None)
        keep["train"].pop("prefetch", None)
        keep["train"].pop("cache_mb", None)  # how fast, not what: the samples stay the same
        keep["train"].pop("read_threads", None)
        keep["train"].pop("read_block", None)
        return hashlib.sha256(repr(sorted(_flat(keep))).encode()).hexdigest()


def _flat(d: object, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix, repr(d))]


def label_sets(specs: list[str]) -> tuple[LabelSet, ...]:
    """``--labels`` values → label sets: ``NAME=PATH``, a file (named by its stem), or a
    directory (each label file in it, named by its stem)."""
    out: list[LabelSet] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and "/" not in name:
            out.append(LabelSet(name=name, path=path))
            continue
        p = Path(spec)
        if p.is_dir() and not (p / "zarr.json").exists():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in _LABEL_SUFFIXES
                           and not f.name.endswith("_geo.h5"))  # So2Sat's companion
            if not files:
                raise ValueError(
                    f"{p} holds no label file ({', '.join(sorted(_LABEL_SUFFIXES))}); pass files "
                    "or NAME=PATH"
                )
            out += [LabelSet(name=f.stem, path=str(f)) for f in files]
        else:
            out.append(LabelSet(name=p.name.split(".")[0] or spec, path=spec))
    return tuple(out)


_LABEL_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".geojson", ".json", ".kml", ".kmz", ".h5"})
