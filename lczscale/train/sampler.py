"""Class-balanced patches, each fixed by its global sample index.

Sample ``i`` is drawn from its own generator ``SeedSequence(seed, spawn_key=(i,))``: pick a
class uniformly among those with training pixels, then a labelled pixel of it, then a patch
around it with a random 90° rotation and flip (LCZ have no preferred direction). Because a sample
depends on nothing but ``i``:

- step ``s`` of a run with global batch ``G`` uses samples ``s·G … s·G+G−1``; rank ``r`` of ``N``
  takes its contiguous ``G/N`` of them, so ranks never share a sample and N ranks see exactly the
  samples one rank with the whole batch would;
- a resumed run continues with exactly the samples the uninterrupted run would have used.

Uniform class choice matters: LCZ maps are dominated by a few classes (low plants, water), and a
uniform pixel sampler never shows the model the rare built ones.
"""

from __future__ import annotations

import numpy as np
import torch

from lczscale.errors import NoDataError
from lczscale.train.regions import Region
from lczscale.train.splits import TRAIN


def rank_indices(step: int, batch: int, rank: int, world: int) -> range:
    """Global sample indices of ``rank`` at (1-based) ``step`` with ``batch`` samples per rank."""
    first = (step - 1) * batch * world + rank * batch
    return range(first, first + batch)


class PatchSampler:
    """Patches (codes, scales, valid, location, target) from in-memory regions."""

    def __init__(self, regions: list[Region], patch: int, seed: int,
                 coarse: bool = False) -> None:
        self.regions = [r for r in regions if min(r.labels.shape) >= patch]
        if not self.regions:
            raise NoDataError(
                f"no labelled region is at least {patch}×{patch} px; lower train.patch_size"
            )
        self.patch = patch
        self.seed = seed
        self.coarse = coarse  # also return the train-split labels before boundary ignore
        self.by_class: dict[int, list[tuple[int, np.ndarray]]] = {}
        counts = np.zeros(18, dtype=np.int64)
        for i, r in enumerate(self.regions):
            flat = r.target.ravel()
            counts += np.bincount(flat, minlength=18)
            for c in np.unique(flat):
                if c:
                    self.by_class.setdefault(int(c), []).append((i, np.flatnonzero(flat == c)))
        if not self.by_class:
            raise NoDataError(
                "no training-split pixel carries a label; lower split.val_fraction / "
                "test_fraction or loss.boundary_ignore, or add labels"
            )
        self.counts = counts[1:]
        self.classes = sorted(self.by_class)

    def class_weights(self) -> torch.Tensor:
        """Inverse square-root frequency, normalised to mean 1 over present classes."""
        freq = self.counts.astype(np.float64)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1)), 0.0)
        w = w / w[w > 0].mean()
        return torch.tensor(w, dtype=torch.float32)

    def spec(self, index: int) -> tuple[int, int, int, int, bool]:
        """(region, row, col, quarter turns, flip) of global sample ``index``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))
        cls = self.classes[int(rng.integers(len(self.classes)))]
        choices = self.by_class[cls]
        ri, pixels = choices[int(rng.integers(len(choices)))]
        h, w = self.regions[ri].labels.shape
        y, x = divmod(int(pixels[rng.integers(len(pixels))]), w)
        p = self.patch
        r0 = int(np.clip(y - rng.integers(p), 0, h - p))
        c0 = int(np.clip(x - rng.integers(p), 0, w - p))
        return ri, r0, c0, int(rng.integers(4)), bool(rng.integers(2))

    def batch(self, indices: range) -> dict[str, torch.Tensor]:
        """The samples ``indices`` stacked into tensors; ``target`` is class index, −1 = ignore."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("codes", "scales", "valid", "target",
                                                           "coarse", "location")}
        for i in indices:
            ri, r0, c0, k, flip = self.spec(i)
            reg = self.regions[ri]
            sl = (slice(r0, r0 + self.patch), slice(c0, c0 + self.patch))

            def view(a: np.ndarray, lead: int = 0, k: int = k, flip: bool = flip) -> np.ndarray:
                a = np.rot90(a, k, (lead, lead + 1))
                return a[..., ::-1] if flip else a

            out["codes"].append(view(reg.data.codes[(slice(None), *sl)], 1))
            if reg.data.scales is not None:
                out["scales"].append(view(reg.data.scales[sl]))
            out["valid"].append(view(reg.data.valid[sl]))
            out["target"].append(view(reg.target[sl]).astype(np.int64) - 1)
            if self.coarse:
                train_labels = np.where(reg.split[sl] == TRAIN, reg.labels[sl], 0)
                out["coarse"].append(view(train_labels).astype(np.int64) - 1)
            if reg.location is not None:
                out["location"].append(view(reg.location[(slice(None), *sl)].numpy(), 1))
        return {k: torch.from_numpy(np.ascontiguousarray(np.stack(v)))
                for k, v in out.items() if v}
