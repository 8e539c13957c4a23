"""Segmentation losses whose normalisers are sums over *all* ranks.

A data-parallel step must give the gradient one process would get with the whole global batch.
Every term is therefore written as a sum over pixels divided by a global count, and Dice uses
global per-class sums. ``global_sum`` is the identity in one process and a differentiable
all-reduce under ``torch.distributed``; with DDP averaging gradients over N ranks, each rank
returns ``N × (its share of the sum terms) + (the global non-linear terms)``, which averages to
exactly the one-process gradient (see ``train.step_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lczscale.train.settings import LossConfig

GlobalSum = Callable[[torch.Tensor], torch.Tensor]


def local_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over one process: ``t`` itself."""
    return t


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x on every rank; the gradient of x is Σ_ranks of the gradients of y."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


def distributed_sum(t: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) that gradients flow through: backward all-reduces the gradients."""
    return _AllReduceSum.apply(t)  # type: ignore[no-any-return]


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    coarse: torch.Tensor | None,
    class_weights: torch.Tensor,
    cfg: LossConfig,
    global_sum: GlobalSum,
    world: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(value to back-propagate on this rank, global value of each term, detached).

    ``target`` is (B, H, W) class index with −1 = ignore; ``coarse`` (same shape) the labels
    the consistency term compares cell means with (all train-split labels, before boundary
    ignore).
    """
    keep = target >= 0
    t = target.clamp(min=0)
    ce = F.cross_entropy(logits, t, reduction="none")
    w = class_weights[t] * keep
    if cfg.kind == "focal":
        ce = ce * (1 - torch.exp(-ce)).pow(cfg.focal_gamma)
    denom = global_sum(w.sum().detach()).clamp(min=1e-12)
    share = (w * ce).sum() / denom
    own = world * share
    terms = {"ce" if cfg.kind == "ce" else "focal": global_sum(share.detach())}
    probs = None
    if cfg.dice_weight:
        probs = logits.softmax(1)
        dice = dice_loss(probs, t, keep, global_sum)
        own = own + cfg.dice_weight * dice
        terms["dice"] = dice.detach()
    if cfg.consistency_weight and coarse is not None:
        probs = logits.softmax(1) if probs is None else probs
        part, cells = consistency_share(probs, coarse, cfg.consistency_cell)
        share = part / global_sum(cells).clamp(min=1)
        own = own + cfg.consistency_weight * world * share
        terms["consistency"] = global_sum(share.detach())
    factor = {"dice": cfg.dice_weight, "consistency": cfg.consistency_weight}
    total = torch.zeros((), device=logits.device)
    for k, v in terms.items():
        total = total + factor.get(k, 1.0) * v
    terms["loss"] = total
    return own, terms


def dice_loss(probs: torch.Tensor, t: torch.Tensor, keep: torch.Tensor,
              global_sum: GlobalSum) -> torch.Tensor:
    """1 − mean soft Dice over the classes present in the global batch (generalised to
    global sums, so it is one number for the whole step)."""
    k = keep.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(t, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * k
    p = probs * k
    stats = torch.stack([(p * onehot).sum((0, 2, 3)), (p + onehot).sum((0, 2, 3)),
                         onehot.sum((0, 2, 3))])
    stats = global_sum(stats)
    inter, card, count = stats[0], stats[1], stats[2].detach()
    present = count > 0
    score = (2 * inter[present] + 1) / (card[present] + 1)
    return 1 - score.mean()


def consistency_share(probs: torch.Tensor, coarse: torch.Tensor,
                      cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over fully labelled cells of the cross-entropy between the cell's label shares and
    the cell's mean predicted distribution, and the number of such cells.

    A 100 m label says what a cell is *mostly*, not what each 10 m pixel is: comparing means
    lets pixels inside a cell differ while the cell as a whole agrees with its label.
    """
    keep = (coarse >= 0).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(coarse.clamp(min=0), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    labelled = F.avg_pool2d(keep, cell)
    full = (labelled > 0.999).squeeze(1)
    share = F.avg_pool2d(onehot * keep, cell)
    mean_p = F.avg_pool2d(probs, cell)
    ce = -(share * torch.log(mean_p.clamp(min=1e-8))).sum(1)
    return (ce * full).sum(), full.sum().to(probs.dtype).detach()
