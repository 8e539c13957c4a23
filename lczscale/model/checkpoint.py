"""Model checkpoints: a directory with ``model.safetensors`` (weights) and ``checkpoint.json``.

Weights are stored as safetensors only: loading a pickle (``torch.load``) can run arbitrary code,
and checkpoints travel between clusters and users. ``checkpoint.json`` holds everything needed to
use the weights correctly: the network shape, the class codes, which embeddings the model was
trained on and how to normalise them. The "model hash" (sha256 over both files) goes into the
provenance of every tile written with the model.

A save writes both files under temporary names and renames them into place, so a crash never
leaves a truncated file; the weights file records the sha256 of the ``checkpoint.json`` it was
saved with, so a weights file and a JSON from different saves are never loaded together.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lczscale.classes import LCZ_CLASS_NAMES, LCZ_CODES
from lczscale.config import ModelConfig
from lczscale.errors import CheckpointError
from lczscale.model.unet import LczUNet

WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")
_PAIRING_KEY = "lczscale_checkpoint_json_sha256"  # the only safetensors metadata key (see save)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


class InputSpec(BaseModel):
    """Which embeddings the model reads: a model only makes sense on the kind it was trained on."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description='embedding family, e.g. "tessera" or "alphaearth"')
    dataset: str = Field(description='dataset and version, e.g. "tessera/v1.0"')
    dimensions: int = Field(ge=1)
    dequantisation: str = Field(description='e.g. "per_pixel_scale" or "sign_square"')


class Normalisation(BaseModel):
    """Per-dimension mean and std applied to de-quantised embeddings before the network."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> Normalisation:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}")
        bad = [s for s in self.std if not s > 0 or s == float("inf")]
        if bad:
            raise ValueError(f"std values must be finite and > 0, got {bad[:5]}")
        return self


class CheckpointMeta(BaseModel):
    """Contents of ``checkpoint.json``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["lczscale-checkpoint"] = "lczscale-checkpoint"
    format_version: int = 1
    model: ModelConfig
    classes: list[int] = Field(description="LCZ code (1–17) of each output channel, in order")
    class_names: list[str]
    input: InputSpec
    normalisation: Normalisation
    train: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    step: int = 0
    lczscale_version: str
    weights_sha256: str = Field(
        "", description="sha256 of model.safetensors, set by save_checkpoint; a mismatch on load "
        "means the weights were altered or belong to another save"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointMeta:
        if self.format_version != 1:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this lczscale reads 1); "
                "upgrade lczscale"
            )
        if len(self.classes) != self.model.num_classes:
            raise ValueError(
                f"classes lists {len(self.classes)} codes but the model has "
                f"{self.model.num_classes} outputs"
            )
        if len(self.class_names) != len(self.classes):
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but classes {len(self.classes)}"
            )
        if any(c not in LCZ_CODES for c in self.classes) or len(set(self.classes)) != len(
            self.classes
        ):
            raise ValueError(f"classes must be distinct LCZ codes 1–17, got {self.classes}")
        if self.input.dimensions != self.model.in_dim:
            raise ValueError(
                f"input.dimensions {self.input.dimensions} != model.in_dim {self.model.in_dim}"
            )
        if len(self.normalisation.mean) != self.input.dimensions:
            raise ValueError(
                f"normalisation has {len(self.normalisation.mean)} values but the input has "
                f"{self.input.dimensions} dimensions"
            )
        return self


def check_input(
    meta: CheckpointMeta, dimensions: int, dataset_kind: str, dataset: str | None = None
) -> None:
    """Refuse to run a model on embeddings of another kind, dimension or dataset (version and
    variant) than it was trained on: each TESSERA (version, variant) is its own feature space."""
    spec = meta.input
    if spec.dimensions != dimensions or spec.kind.lower() != dataset_kind.lower():
        raise CheckpointError(
            f"checkpoint expects {spec.dimensions}-d {spec.kind} embeddings ({spec.dataset}) but "
            f"the source gives {dimensions}-d {dataset_kind} embeddings; train a model for this "
            f"source or point --source at {spec.kind} data"
        )
    if dataset is not None and spec.dataset and spec.dataset != dataset:
        raise CheckpointError(
            f"checkpoint was trained on {spec.dataset} but the source holds {dataset}: "
            "different dataset versions/variants are different feature spaces and must not be "
            "mixed; use embeddings of the model's dataset or train a model for this one"
        )


# --------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(directory: str | Path, model: LczUNet, meta: CheckpointMeta) -> str:
    """Write ``model`` and ``meta`` to ``directory`` (created if needed); return the model hash.

    Both files are fully written before either is renamed into place; the JSON, renamed last,
    completes the checkpoint. The safetensors header carries a single metadata key (the JSON's
    sha256) because safetensors writes several keys in arbitrary order, which would make the
    bytes, and so the hash, differ between two saves of the same model.
    """
    if meta.model != model.cfg:
        raise CheckpointError(
            f"cannot save checkpoint to {directory}: meta.model {meta.model!r} differs from the "
            f"model's config {model.cfg!r}; build meta with model=model.cfg"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = _meta_body(meta)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(tensors, metadata={_PAIRING_KEY: _sha256(body)})
    meta_bytes = _meta_bytes(meta.model_copy(update={"weights_sha256": _sha256(weights)}))
    _write_atomic(directory / WEIGHTS_FILE, weights)
    _write_atomic(directory / META_FILE, meta_bytes)
    try:  # make the renames durable too
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself is synced
        pass
    return _sha256(weights, meta_bytes)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def _meta_bytes(meta: CheckpointMeta) -> bytes:
    return (meta.model_dump_json(indent=2) + "\n").encode()


def _meta_body(meta: CheckpointMeta) -> bytes:
    """The JSON without its weights hash: what the weights file's pairing key hashes (the two
    files each vouch for the other without a circular hash)."""
    return _meta_bytes(meta.model_copy(update={"weights_sha256": ""}))


def _read_files(directory: str | Path) -> tuple[Path, bytes, bytes]:
    """Both files' bytes, read once (the hash and the loaded model describe the same bytes)."""
    path = Path(directory)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path}: pickled weights are refused (loading a pickle can run arbitrary code); "
                f"convert them to a checkpoint directory with {WEIGHTS_FILE} (safetensors) and "
                f"{META_FILE}"
            )
        raise CheckpointError(
            f"{path} is a file; pass the checkpoint directory that contains {WEIGHTS_FILE} and "
            f"{META_FILE}"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} does not exist; pass a directory written by "
            f"`lczscale train` (it contains {WEIGHTS_FILE} and {META_FILE})"
        )
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{path} holds pickled weights {pickles} and no {WEIGHTS_FILE}: pickled weights "
                f"are refused (loading a pickle can run arbitrary code); convert them to "
                f"safetensors (safetensors.torch.save_file(state_dict, '{weights_path}')) in a "
                f"trusted environment and add {META_FILE}"
            )
        raise CheckpointError(
            f"{weights_path} is missing; a checkpoint directory needs {WEIGHTS_FILE} and "
            f"{META_FILE} as written by save_checkpoint"
        )
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} is missing; the weights cannot be used without the model config, "
            f"classes and normalisation it records; re-save the checkpoint with save_checkpoint"
        )
    return path, weights_path.read_bytes(), meta_path.read_bytes()


def _parse_meta(path: Path, meta_bytes: bytes) -> CheckpointMeta:
    try:
        return CheckpointMeta.model_validate_json(meta_bytes)
    except ValidationError as exc:
        raise CheckpointError(
            f"{path / META_FILE} is not a valid lczscale checkpoint description: {exc}; fix the "
            f"file or re-save the checkpoint with save_checkpoint"
        ) from exc


def _safetensors_metadata(weights: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _parse_weights(path: Path, weights: bytes, meta: CheckpointMeta) -> dict[str, torch.Tensor]:
    """Tensors of a weights file that belongs to ``meta``.

    A file written by save_checkpoint carries the pairing key, and its JSON the file's sha256:
    both must match (another save's JSON; altered weights). Hand-converted weights (a plain
    safetensors file and a JSON without a hash) are taken as they are.
    """
    weights_path = path / WEIGHTS_FILE
    try:
        tensors = load_safetensors(weights)
        pairing = _safetensors_metadata(weights).get(_PAIRING_KEY)
    except Exception as exc:  # safetensors raises its own error types and plain ones
        raise CheckpointError(
            f"{weights_path} is not a valid safetensors file ({exc}); re-save the checkpoint"
        ) from exc
    if pairing is not None and pairing != _sha256(_meta_body(meta)):
        raise CheckpointError(
            f"{weights_path} was saved with a different {META_FILE} than the one beside it "
            f"(an interrupted save, or files copied from two checkpoints); copy both files from "
            f"the same checkpoint, or re-save with save_checkpoint"
        )
    if (pairing is not None or meta.weights_sha256) and meta.weights_sha256 != _sha256(weights):
        raise CheckpointError(
            f"{weights_path} does not have the sha256 recorded in {META_FILE} "
            f"({meta.weights_sha256[:12] or 'none recorded'}): the weights were altered or "
            "corrupted after saving; use an untouched copy of the checkpoint"
        )
    return tensors


def _check_state(path: Path, model: LczUNet, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = [
        f"{k}: file {got[k]} vs config {expected[k]}"
        for k in sorted(expected.keys() & got.keys())
        if got[k] != expected[k]
    ]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors, e.g. {missing[:3]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
        if wrong:
            problems.append(f"{len(wrong)} shape mismatches, e.g. {wrong[:3]}")
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} does not match the model described in {path / META_FILE} "
            f"({model.cfg!r}): {'; '.join(problems)}; the weights and the JSON come from "
            f"different models, re-save the checkpoint with save_checkpoint"
        )


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[LczUNet, CheckpointMeta, str]:
    """Load a checkpoint directory: (model in eval mode on ``device``, metadata, model hash).

    Never unpickles anything: pickled weight files are refused with an explanation.
    """
    path, weights, meta_bytes = _read_files(directory)
    meta = _parse_meta(path, meta_bytes)
    tensors = _parse_weights(path, weights, meta)
    model = LczUNet(meta.model)
    _check_state(path, model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta, _sha256(weights, meta_bytes)


def model_hash(directory: str | Path) -> str:
    """sha256 over ``model.safetensors`` then ``checkpoint.json``: the model's provenance id."""
    _, weights, meta_bytes = _read_files(directory)
    return _sha256(weights, meta_bytes)


def save_untrained(
    directory: str | Path, cfg: ModelConfig, input_spec: InputSpec, seed: int = 0
) -> str:
    """A checkpoint with seeded random weights and identity normalisation, for benchmarks and
    tests whose subject is throughput or plumbing, not accuracy. Returns its model hash."""
    torch.manual_seed(seed)
    meta = CheckpointMeta(
        model=cfg, classes=LCZ_CODES, class_names=LCZ_CLASS_NAMES, input=input_spec,
        normalisation=Normalisation(mean=[0.0] * cfg.in_dim, std=[1.0] * cfg.in_dim),
        lczscale_version="untrained",
    )
    return save_checkpoint(directory, LczUNet(cfg).eval(), meta)
