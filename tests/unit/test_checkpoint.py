"""Checkpoints: safetensors + JSON round trip, model hash, refusal of pickles, input checks."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from lczscale import classes
from lczscale.config import ModelConfig
from lczscale.errors import CheckpointError
from lczscale.model.checkpoint import (
    CheckpointMeta,
    InputSpec,
    Normalisation,
    check_input,
    load_checkpoint,
    model_hash,
    save_checkpoint,
)
from lczscale.model.unet import LczUNet

CFG = ModelConfig(in_dim=8, widths=(8, 16))


def make_meta(cfg: ModelConfig = CFG, kind: str = "tessera") -> CheckpointMeta:
    d = cfg.in_dim
    return CheckpointMeta(
        model=cfg,
        classes=classes.LCZ_CODES,
        class_names=classes.LCZ_CLASS_NAMES,
        input=InputSpec(
            kind=kind, dataset=f"{kind}/v1.0", dimensions=d, dequantisation="per_pixel_scale"
        ),
        normalisation=Normalisation(mean=[0.1] * d, std=[2.0] * d),
        train={"lr": 0.002},
        metrics={"val_oa": 0.5},
        step=7,
        lczscale_version="0.1.0",
    )


def make_model(cfg: ModelConfig = CFG, seed: int = 0) -> LczUNet:
    torch.manual_seed(seed)
    model = LczUNet(cfg)
    for m in model.modules():  # non-trivial BN statistics, so the buffers matter
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None
            assert m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_round_trip(tmp_path: Path) -> None:
    model, meta = make_model(), make_meta()
    digest = save_checkpoint(tmp_path / "ckpt", model, meta)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint.json", "model.safetensors"]
    loaded, meta2, digest2 = load_checkpoint(tmp_path / "ckpt")
    assert digest2 == digest == model_hash(tmp_path / "ckpt")
    assert len(digest) == 64
    assert meta2.model_copy(update={"weights_sha256": ""}) == meta
    assert not loaded.training
    assert meta2.weights_sha256 == hashlib.sha256(
        (tmp_path / "ckpt" / "model.safetensors").read_bytes()).hexdigest()
    x = torch.randn(2, loaded.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # saving the same model again gives the same bytes, so the same hash
    assert save_checkpoint(tmp_path / "again", model, meta) == digest
    # different weights, different hash
    assert save_checkpoint(tmp_path / "other", make_model(seed=1), meta) != digest


def test_save_refuses_config_mismatch(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="differs from the model's config"):
        save_checkpoint(tmp_path, make_model(), make_meta(ModelConfig(in_dim=8, widths=(8, 32))))


class Payload:
    """Unpickling this creates ``marker``: stands for arbitrary code in a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_pickled_weights_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"state_dict": make_model().state_dict(), "x": Payload(marker)}, ckpt / "model.pt")
    (ckpt / "checkpoint.json").write_text(make_meta().model_dump_json())
    # the trap is real: unpickling it does run code
    probe = Payload(tmp_path / "probe")
    torch.save(probe, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert (tmp_path / "probe").exists()

    with pytest.raises(CheckpointError, match=r"pickled weights are refused.*safetensors") as e:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(e.value)
    assert "model.pt" in str(e.value)
    with pytest.raises(CheckpointError, match="pickled weights are refused"):
        load_checkpoint(ckpt / "model.pt")
    with pytest.raises(CheckpointError, match="pickled weights are refused"):
        model_hash(ckpt)
    assert not marker.exists()


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "ok", make_model(), make_meta())

    broken = tmp_path / "no-weights"
    shutil.copytree(tmp_path / "ok", broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        load_checkpoint(broken)

    broken = tmp_path / "no-json"
    shutil.copytree(tmp_path / "ok", broken)
    (broken / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"no-json/checkpoint.json is missing"):
        load_checkpoint(broken)

    broken = tmp_path / "bad-json"
    shutil.copytree(tmp_path / "ok", broken)
    (broken / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad-json/checkpoint.json is not a valid"):
        load_checkpoint(broken)

    broken = tmp_path / "bad-weights"
    shutil.copytree(tmp_path / "ok", broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match=r"not a valid safetensors file"):
        load_checkpoint(broken)

    with pytest.raises(CheckpointError, match=r"is a file; pass the checkpoint directory"):
        load_checkpoint(tmp_path / "ok" / "model.safetensors")


def test_files_from_two_checkpoints_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", make_model(), make_meta())
    other = make_meta().model_copy(update={"step": 8})
    save_checkpoint(tmp_path / "b", make_model(), other)
    shutil.copy(tmp_path / "b" / "checkpoint.json", tmp_path / "a" / "checkpoint.json")
    with pytest.raises(CheckpointError, match=r"saved with a different checkpoint\.json"):
        load_checkpoint(tmp_path / "a")


def test_tampered_weights_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", make_model(), make_meta())
    load_checkpoint(tmp_path / "a")
    raw = bytearray((tmp_path / "a" / "model.safetensors").read_bytes())
    raw[-3] ^= 0x01  # one bit of one weight: still a valid safetensors file
    (tmp_path / "a" / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"does not have the sha256 recorded.*altered"):
        load_checkpoint(tmp_path / "a")
    # removing the recorded hash from the JSON does not get the altered weights through
    meta = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    meta["weights_sha256"] = ""
    (tmp_path / "a" / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"none recorded"):
        load_checkpoint(tmp_path / "a")


def test_weights_not_matching_config(tmp_path: Path) -> None:
    # hand-converted weights (plain save_file, no lczscale metadata) are accepted when they fit
    ckpt = tmp_path / "converted"
    ckpt.mkdir()
    save_file(make_model().state_dict(), str(ckpt / "model.safetensors"))
    (ckpt / "checkpoint.json").write_text(make_meta().model_dump_json())
    load_checkpoint(ckpt)
    # ... and refused, naming the mismatch, when they do not
    wider = ModelConfig(in_dim=8, widths=(8, 32))
    (ckpt / "checkpoint.json").write_text(make_meta(wider).model_dump_json())
    with pytest.raises(CheckpointError, match=r"does not match the model.*shape mismatches"):
        load_checkpoint(ckpt)
    deeper = ModelConfig(in_dim=8, widths=(8, 16, 16))
    (ckpt / "checkpoint.json").write_text(make_meta(deeper).model_dump_json())
    with pytest.raises(CheckpointError, match=r"missing \d+ tensors"):
        load_checkpoint(ckpt)


def test_check_input() -> None:
    meta = make_meta(ModelConfig(in_dim=64), kind="alphaearth")
    check_input(meta, 64, "alphaearth")
    with pytest.raises(CheckpointError) as e:
        check_input(meta, 128, "tessera")
    msg = str(e.value)
    assert "expects 64-d alphaearth" in msg
    assert "gives 128-d tessera" in msg
    assert "point --source at alphaearth data" in msg
    with pytest.raises(CheckpointError, match=r"expects 64-d alphaearth.*gives 64-d tessera"):
        check_input(meta, 64, "tessera")


def test_meta_validation() -> None:
    data = json.loads(make_meta().model_dump_json())
    assert data["format"] == "lczscale-checkpoint"
    assert data["format_version"] == 1
    with pytest.raises(ValidationError, match="extra"):
        CheckpointMeta.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError, match=r"input\.dimensions 7"):
        CheckpointMeta.model_validate({**data, "input": {**data["input"], "dimensions": 7}})
    with pytest.raises(ValidationError, match="distinct LCZ codes"):
        CheckpointMeta.model_validate({**data, "classes": [0, *range(2, 18)]})
    norm = {"mean": [0.0] * 8, "std": [1.0] * 7 + [0.0]}
    with pytest.raises(ValidationError, match="std"):
        CheckpointMeta.model_validate({**data, "normalisation": norm})


def test_classes_module() -> None:
    assert list(range(1, 18)) == classes.LCZ_CODES
    assert classes.LCZ_LABELS[9:11] == ["10", "A"]
    assert classes.LCZ_LABELS[-1] == "G"
    assert len(classes.LCZ_CLASS_NAMES) == len(classes.LCZ_PALETTE) == 17
    assert classes.LCZ_CLASS_NAMES[12] == "Bush, scrub"
    rgb = classes.palette_rgb()
    assert rgb[0] == (0x91, 0x06, 0x13)
    assert rgb[-1] == (0x65, 0x6B, 0xFA)
    tree = ast.parse(Path(classes.__file__).read_text())
    imported = {
        ((n.module or "") if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
