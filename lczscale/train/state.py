"""Resumable training state: weights, optimizer and schedule at a step, never pickled.

``MODEL_DIR/resume/step-NNNNNNNN/`` holds a normal checkpoint (``model.safetensors`` +
``checkpoint.json``), ``optimizer.safetensors`` (every optimizer tensor, keyed by parameter
index and name) and ``trainer.json`` (step, schedule, optimizer hyper-parameters, the job's
fingerprint and the history so far). A step directory is written under a temporary name and
renamed when complete, so a run killed at any moment resumes from the last complete step; a
resume with other settings than the job that wrote the state is refused.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lczscale.errors import CheckpointError
from lczscale.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from lczscale.model.unet import LczUNet

RESUME_DIR = "resume"
KEEP = 2


def save_state(out: str | Path, step: int, model: LczUNet, meta: CheckpointMeta,
               optimizer: torch.optim.Optimizer, scheduler: Any, fingerprint: str,
               history: list[dict[str, float]]) -> Path:
    """Write the state after ``step`` and drop all but the last ``KEEP`` states."""
    root = Path(out) / RESUME_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.{uuid.uuid4().hex}.partial"
    save_checkpoint(tmp, model, meta)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    trainer = {"step": step, "fingerprint": fingerprint, "scheduler": scheduler.state_dict(),
               "param_groups": sd["param_groups"], "plain_state": plain, "history": history}
    (tmp / "trainer.json").write_text(json.dumps(trainer))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.partial"):  # left by a run killed mid-write
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_state(out: str | Path) -> Path | None:
    """The last complete step directory, if any."""
    steps = sorted((Path(out) / RESUME_DIR).glob("step-*"))
    return steps[-1] if steps else None


def load_state(path: Path, model: LczUNet, optimizer: torch.optim.Optimizer, scheduler: Any,
               fingerprint: str) -> tuple[int, list[dict[str, float]]]:
    """Restore model, optimizer and schedule from ``path``; returns (step, history)."""
    trainer = json.loads((path / "trainer.json").read_text())
    if trainer["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path.parent.parent} holds training state of a run with other settings (sources, "
            "labels, model or training config differ); resuming would mix two runs — pass "
            "--restart to start over there, or choose another --out"
        )
    saved, _, _ = load_checkpoint(path)
    model.load_state_dict(saved.state_dict())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, extra in trainer["plain_state"].items():
        state.setdefault(int(index), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    scheduler.load_state_dict(trainer["scheduler"])
    return int(trainer["step"]), list(trainer["history"])


def clear_state(out: str | Path) -> None:
    """Remove the resume state, so that the next run starts afresh."""
    shutil.rmtree(Path(out) / RESUME_DIR, ignore_errors=True)
