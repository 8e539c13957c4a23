"""Training building blocks: spatial splits, the index-addressed sampler, global batch norm,
losses, the job description and resumable state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lczscale.config import ModelConfig
from lczscale.core.grid import Window, utm_zone
from lczscale.errors import CheckpointError
from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.model.unet import LczUNet
from lczscale.train.global_batchnorm import use_global_batchnorm
from lczscale.train.losses import local_sum, segmentation_loss
from lczscale.train.packed import PackedRaster
from lczscale.train.regions import Region
from lczscale.train.sampler import PatchSampler, rank_indices
from lczscale.train.settings import (
    LabelSet,
    LossConfig,
    SplitConfig,
    TrainConfig,
    TrainJob,
    label_sets,
)
from lczscale.train.splits import TEST, TRAIN, VAL, block_splits, boundary_mask


def test_block_splits_do_not_depend_on_the_window_read() -> None:
    whole = block_splits("utm32", Window(1000, 2000, 600, 700), 64, 0.2, 0.2, seed=3)
    part = block_splits("utm32", Window(1130, 2210, 200, 300), 64, 0.2, 0.2, seed=3)
    assert np.array_equal(whole[130:330, 210:510], part)
    # one code per block, all three splits present, in about the asked shares
    blocks = whole[24::64, 48::64]  # one pixel inside each whole block
    for r in range(blocks.shape[0] - 1):
        for c in range(blocks.shape[1] - 1):
            r0, c0 = 24 + 64 * r, 48 + 64 * c
            assert len(np.unique(whole[r0 : r0 + 64, c0 : c0 + 64])) == 1
    big = block_splits("utm32", Window(0, 0, 64 * 60, 64 * 60), 64, 0.2, 0.2, seed=3)[::64, ::64]
    shares = [(big == s).mean() for s in (TRAIN, VAL, TEST)]
    assert shares == pytest.approx([0.6, 0.2, 0.2], abs=0.04)
    # another seed or zone gives another assignment
    assert not np.array_equal(big, block_splits("utm32", Window(0, 0, 64 * 60, 64 * 60), 64,
                                                0.2, 0.2, seed=4)[::64, ::64])
    assert not np.array_equal(big, block_splits("utm33", Window(0, 0, 64 * 60, 64 * 60), 64,
                                                0.2, 0.2, seed=3)[::64, ::64])


def test_boundary_mask() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[:, :10] = 2
    labels[:, 10:] = 5
    m = boundary_mask(labels, 3)
    assert m[:, 7:13].all()
    assert not m[:, :7].any()
    assert not m[:, 13:].any()
    assert not boundary_mask(labels, 0).any()


def _region(seed: int = 0, size: int = 96) -> Region:
    rng = np.random.default_rng(seed)
    labels = np.ones((size, size), np.uint8)
    labels[:, size // 2 :] = 9
    labels[40:44, 40:44] = 17  # a rare class
    codes = rng.integers(-127, 128, (4, size, size), dtype=np.int8)
    data = EmbeddingWindow(Window(0, 0, size, size), codes, np.ones((size, size), np.float32),
                           np.ones((size, size), bool), np.zeros((size, size), bool),
                           "per_pixel_scale")
    split = np.full((size, size), TRAIN, np.uint8)
    return Region("x", utm_zone(32), data, PackedRaster(labels), PackedRaster(labels.copy()),
                  PackedRaster(split), None, data.window)


def test_sampler_is_index_addressed_class_balanced_and_disjoint_across_ranks() -> None:
    s = PatchSampler([_region()], 16, seed=1)
    assert s.spec(7) == PatchSampler([_region()], 16, seed=1).spec(7)
    assert s.spec(7) != s.spec(8)
    # 2 ranks × 3 samples = the 6 samples of 1 rank, disjoint, in order
    for step in (1, 5):
        one = rank_indices(step, 6, 0, 1)
        halves = [rank_indices(step, 3, r, 2) for r in (0, 1)]
        assert not set(halves[0]) & set(halves[1])
        assert [*halves[0], *halves[1]] == list(one)
        b1 = s.batch(one)
        b2 = [s.batch(h) for h in halves]
        for k in b1:
            assert torch.equal(b1[k], torch.cat([b2[0][k], b2[1][k]]))
    # the rare class (16 px of 9216) is drawn about a third of the time
    centre_classes = [int(s.batch(range(i, i + 1))["target"][0].flatten().max()) for i in
                      range(300)]
    assert 0.2 < np.mean([c == 16 for c in centre_classes]) < 0.5


def test_global_batchnorm_matches_batchnorm_in_one_process() -> None:
    torch.manual_seed(0)
    a = LczUNet(ModelConfig(in_dim=4, widths=(8, 16), convs_per_block=1, location=False))
    b = LczUNet(ModelConfig(in_dim=4, widths=(8, 16), convs_per_block=1, location=False))
    b.load_state_dict(a.state_dict())
    use_global_batchnorm(b, local_sum)
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(3, 4, 16, 16)
    a.train(), b.train()
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-5)
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), b.state_dict()[k].float(), atol=1e-6), k
    ya.square().mean().backward()
    yb.square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert pa.grad is not None
        assert pb.grad is not None
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5)


def test_cross_entropy_term_is_the_weighted_mean_and_ignores_unlabelled() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 17, 8, 8, requires_grad=True)
    target = torch.randint(-1, 17, (2, 8, 8))
    w = torch.rand(17) + 0.5
    own, terms = segmentation_loss(logits, target, None, w, LossConfig(dice_weight=0), local_sum,
                                   1)
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=-1)
    assert torch.allclose(own, ref)
    assert torch.allclose(terms["loss"], ref)
    own, terms = segmentation_loss(logits, target, target, w, LossConfig(
        kind="focal", dice_weight=0.5, consistency_weight=0.3, consistency_cell=4), local_sum, 1)
    assert set(terms) == {"focal", "dice", "consistency", "loss"}
    assert torch.allclose(own, terms["loss"])
    assert 0 < float(terms["dice"]) < 1
    assert float(terms["focal"]) < float(ref.detach())
    # a perfect prediction has (nearly) no loss in any term
    perfect = torch.nn.functional.one_hot(target.clamp(min=0), 17).permute(0, 3, 1, 2) * 50.0
    _, t2 = segmentation_loss(perfect, target, target, w, LossConfig(
        consistency_weight=1, consistency_cell=4), local_sum, 1)
    assert float(t2["loss"]) < 1e-3


def test_train_job_validation_and_label_sets(tmp_path: Path) -> None:
    for name in ("zurich.tif", "basel.tif", "x_geo.h5", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    sets = label_sets([str(tmp_path), "paris=/data/p.geojson", "/d/lcz_coarse.tif"])
    assert [(s.name, Path(s.path).name) for s in sets] == [
        ("basel", "basel.tif"), ("zurich", "zurich.tif"), ("paris", "p.geojson"),
        ("lcz_coarse", "lcz_coarse.tif")]
    ok = dict(source="s", labels=sets[:2], out="o")
    TrainJob(**ok, train=TrainConfig(split=SplitConfig(holdout_cities=("basel",))))
    with pytest.raises(ValidationError, match="not among the label sets"):
        TrainJob(**ok, train=TrainConfig(split=SplitConfig(holdout_cities=("bern",))))
    with pytest.raises(ValidationError, match="every city is held out"):
        TrainJob(**ok, train=TrainConfig(split=SplitConfig(holdout_cities=("basel", "zurich"))))
    with pytest.raises(ValidationError, match="distinct names"):
        TrainJob(source="s", labels=(LabelSet(name="a", path="x"), LabelSet(name="a", path="y")),
                 out="o")
    with pytest.raises(ValidationError, match="leaves nothing to train on"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)
    a = TrainJob(**ok)
    assert a.fingerprint() == TrainJob(**ok | {"out": "elsewhere"}).fingerprint()
    assert a.fingerprint() != TrainJob(**ok, train=TrainConfig(lr=1e-3)).fingerprint()


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    from lczscale import classes
    from lczscale.model.checkpoint import CheckpointMeta, InputSpec, Normalisation
    from lczscale.train.state import latest_state, load_state, save_state

    cfg = ModelConfig(in_dim=4, widths=(8, 16), convs_per_block=1, location=False)
    net = LczUNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    net(torch.randn(2, 4, 16, 16)).mean().backward()
    opt.step(), sched.step()
    meta = CheckpointMeta(model=cfg, classes=classes.LCZ_CODES,
                          class_names=classes.LCZ_CLASS_NAMES,
                          input=InputSpec(kind="tessera", dataset="d", dimensions=4,
                                          dequantisation="per_pixel_scale"),
                          normalisation=Normalisation(mean=[0.0] * 4, std=[1.0] * 4),
                          lczscale_version="t")
    for step in (1, 2, 3):
        save_state(tmp_path, step, net, meta, opt, sched, "abc", [{"step": step}])
    state = latest_state(tmp_path)
    assert state is not None
    assert state.name == "step-00000003"
    assert len(list((tmp_path / "resume").iterdir())) == 2  # older states pruned
    net2 = LczUNet(cfg)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-3, total_steps=10)
    assert load_state(state, net2, opt2, sched2, "abc") == (3, [{"step": 3}])
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert sched2.state_dict() == sched.state_dict()
    with pytest.raises(CheckpointError, match=r"other settings.*--restart"):
        load_state(state, net2, opt2, sched2, "other")


def test_ranks_from_torchrun_slurm_or_nothing() -> None:
    from lczscale.train.data_parallel import Ranks, from_environment, slurm_rendezvous

    assert from_environment({}) == Ranks(0, 1, 0)
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0",
                "SLURM_NTASKS": "8"}
    assert from_environment(torchrun) == Ranks(3, 4, 1)  # torchrun's variables win
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_JOB_ID": "4242"}
    ranks = from_environment(srun)
    assert ranks == Ranks(5, 8, 1)
    assert not ranks.main
    slurm_rendezvous(srun)
    assert srun["MASTER_ADDR"] == "10.0.0.7"
    assert srun["MASTER_PORT"] == str(29500 + 4242 % 2000)
    assert from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Ranks(0, 1, 0)
