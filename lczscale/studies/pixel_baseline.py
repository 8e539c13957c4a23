"""A per-pixel baseline: multinomial logistic regression on the embedding vector alone.

It answers "does the spatial model earn its keep?": if a classifier that sees one pixel's
embedding and nothing around it, trained on the *fine* truth, comes close to the U-Net trained on
coarse labels, the task (or the synthetic world) is too easy to prove anything.
"""

from __future__ import annotations

import numpy as np
import torch

from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.train.loop import N
from lczscale.train.regions import Region, pixel_values
from lczscale.train.splits import TRAIN


def _held(region: Region) -> EmbeddingWindow:
    """The embeddings of a region read into memory (``load_regions``): the baseline fits on
    whole regions, not on streamed patches."""
    assert region.data is not None, "the pixel baseline needs regions held in memory"
    return region.data


def _features(region: Region, mean: np.ndarray, std: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return ((pixel_values(_held(region), idx).T - mean) / std).astype(np.float32)


def fit_logistic(regions: list[Region], per_class: int = 4000, steps: int = 300,
                 seed: int = 0) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Fit on up to ``per_class`` training-split pixels of each class (class-balanced)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    pools: dict[int, list[tuple[int, np.ndarray]]] = {}
    all_idx: dict[int, np.ndarray] = {}
    for i, r in enumerate(regions):
        train = r.split.unpack() == TRAIN
        lab = np.where(train, r.labels.unpack(), 0).ravel()
        for c in np.unique(lab[lab > 0]):
            pools.setdefault(int(c), []).append((i, np.flatnonzero(lab == c)))
        all_idx[i] = np.flatnonzero((train & _held(r).valid).ravel())
    sample = np.concatenate([
        pixel_values(_held(regions[i]), rng.choice(ix, min(2000, len(ix)), replace=False)).T
        for i, ix in all_idx.items() if len(ix)])
    mean, std = sample.mean(0), np.maximum(sample.std(0), 1e-3)
    for c, pool in sorted(pools.items()):
        total = sum(len(p) for _, p in pool)
        for i, pix in pool:
            take = max(1, round(per_class * len(pix) / total))
            pick = np.sort(rng.choice(pix, min(take, len(pix)), replace=False))
            xs.append(_features(regions[i], mean, std, pick))
            ys.append(np.full(len(pick), c - 1))
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys)).long()
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], N)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + 1e-4 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    return model, mean, std


@torch.no_grad()
def logistic_confusion(model: torch.nn.Linear, mean: np.ndarray, std: np.ndarray,
                       regions: list[Region]) -> np.ndarray:
    """(18, 18) confusion (rows truth 0–17, columns prediction) over labelled valid pixels."""
    cm = np.zeros((18, 18), dtype=np.int64)
    for r in regions:
        labels = r.labels.unpack()
        idx = np.flatnonzero(((labels > 0) & _held(r).valid).ravel())
        for part in np.array_split(idx, max(1, len(idx) // 200_000)):
            pred = model(torch.from_numpy(_features(r, mean, std, part))).argmax(1).numpy() + 1
            truth = labels.ravel()[part].astype(np.int64)
            cm += np.bincount(truth * 18 + pred, minlength=18 * 18).reshape(18, 18)
    return cm
