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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lczscale.core.grid import Window, Zone
from lczscale.errors import NoDataError
from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.train.regions import Region, pixel_values
from lczscale.train.splits import TRAIN
from lczscale.train.stream import BlockCache, patch_location


def rank_indices(step: int, batch: int, rank: int, world: int) -> range:
    """Global sample indices of ``rank`` at (1-based) ``step`` with ``batch`` samples per rank."""
    first = (step - 1) * batch * world + rank * batch
    return range(first, first + batch)


class PatchSampler:
    """Patches (codes, scales, valid, location, target) from regions held in memory, or —
    regions of a sample index (``data`` None) — read through ``cache`` as they are drawn, with
    the location encoding of ``frequencies`` made per patch."""

    def __init__(self, regions: list[Region], patch: int, seed: int,
                 coarse: bool = False, cache: BlockCache | None = None,
                 frequencies: int | None = None, threads: int = 4) -> None:
        self.regions = [r for r in regions if min(r.labels.shape) >= patch]
        if not self.regions:
            raise NoDataError(
                f"no labelled region is at least {patch}×{patch} px; lower train.patch_size"
            )
        self.patch = patch
        self.seed = seed
        self.coarse = coarse  # also return the train-split labels before boundary ignore
        # Per class, the regions holding it and how many of their pixels: counts, not the
        # pixels' positions (8 bytes a labelled pixel, more than the labels themselves); a
        # sample finds its pixel when drawn.
        self.by_class: dict[int, list[tuple[int, int]]] = {}
        counts = np.zeros(18, dtype=np.int64)
        for i, r in enumerate(self.regions):
            own = r.target.totals()
            counts += own
            for c in np.flatnonzero(own[1:]) + 1:
                self.by_class.setdefault(int(c), []).append((i, int(own[c])))
        if not self.by_class:
            raise NoDataError(
                "no training-split pixel carries a label; lower split.val_fraction / "
                "test_fraction or loss.boundary_ignore, or add labels"
            )
        self.counts = counts[1:]
        self.classes = sorted(self.by_class)
        self.cache, self.frequencies = cache, frequencies
        self.dimensions = cache.source.dimensions if cache is not None else \
            next(r.data.codes.shape[0] for r in self.regions if r.data is not None)
        self.streamed = any(r.data is None for r in self.regions)
        if self.streamed and cache is None:
            raise ValueError("regions of a sample index need a BlockCache to read from")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lczscale-reads") \
            if self.streamed else None

    def class_weights(self) -> torch.Tensor:
        """Inverse square-root frequency, normalised to mean 1 over present classes."""
        freq = self.counts.astype(np.float64)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1)), 0.0)
        w = w / w[w > 0].mean()
        return torch.tensor(w, dtype=torch.float32)

    def spec(self, index: int, stream: int = 0) -> tuple[int, int, int, int, bool]:
        """(region, row, col, quarter turns, flip) of global sample ``index`` (of another
        independent ``stream`` of samples than training's 0, e.g. normalisation's)."""
        key = (index,) if stream == 0 else (index, stream)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
        cls = self.classes[int(rng.integers(len(self.classes)))]
        choices = self.by_class[cls]
        ri, count = choices[int(rng.integers(len(choices)))]
        target = self.regions[ri].target
        h, w = target.shape
        y, x = target.nth(cls, int(rng.integers(count)))  # the k-th pixel of the class
        p = self.patch
        r0 = int(np.clip(y - rng.integers(p), 0, h - p))
        c0 = int(np.clip(x - rng.integers(p), 0, w - p))
        return ri, r0, c0, int(rng.integers(4)), bool(rng.integers(2))

    def patch_window(self, ri: int, r0: int, c0: int) -> Window:
        """Zone pixels of a patch of region ``ri``."""
        w = self.regions[ri].window
        return Window(w.row + r0, w.col + c0, self.patch, self.patch)

    def _inputs(self, ri: int, r0: int, c0: int) -> tuple[EmbeddingWindow, np.ndarray | None]:
        """The patch's embeddings and location encoding: sliced from memory, or read."""
        reg = self.regions[ri]
        sl = (slice(r0, r0 + self.patch), slice(c0, c0 + self.patch))
        if reg.data is not None:
            d = reg.data
            loc = None if reg.location is None else reg.location[(slice(None), *sl)].numpy()
            return EmbeddingWindow(d.window, d.codes[(slice(None), *sl)],
                                   None if d.scales is None else d.scales[sl], d.valid[sl],
                                   d.water[sl], d.dequantisation), loc
        assert self.cache is not None
        window = self.patch_window(ri, r0, c0)
        loc = None if not self.frequencies else patch_location(reg.zone, window,
                                                               self.frequencies)
        return self.cache.window(reg.zone, window), loc

    def batch(self, indices: range) -> dict[str, torch.Tensor]:
        """The samples ``indices`` stacked into tensors; ``target`` is class index, −1 = ignore
        (also where a streamed patch has no embedding)."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("codes", "scales", "valid", "target",
                                                           "coarse", "location")}
        specs = [self.spec(i) for i in indices]
        if self._pool is not None and self.cache is not None:
            by_zone: dict[str, tuple[Zone, list[Window]]] = {}
            for ri, r0, c0, _, _ in specs:
                zone = self.regions[ri].zone
                by_zone.setdefault(zone.name, (zone, []))[1].append(
                    self.patch_window(ri, r0, c0))
            for zone, windows in by_zone.values():  # the batch's blocks read at once
                self.cache.prefetch(zone, windows, self._pool)
        for ri, r0, c0, k, flip in specs:
            reg = self.regions[ri]
            sl = (slice(r0, r0 + self.patch), slice(c0, c0 + self.patch))

            def view(a: np.ndarray, lead: int = 0, k: int = k, flip: bool = flip) -> np.ndarray:
                a = np.rot90(a, k, (lead, lead + 1))
                return a[..., ::-1] if flip else a

            d, loc = self._inputs(ri, r0, c0)
            out["codes"].append(view(d.codes, 1))
            if d.scales is not None:
                out["scales"].append(view(d.scales))
            out["valid"].append(view(d.valid))
            target = np.where(d.valid, reg.target[sl], 0)
            out["target"].append(view(target).astype(np.int64) - 1)
            if self.coarse:
                train_labels = np.where((reg.split[sl] == TRAIN) & d.valid, reg.labels[sl], 0)
                out["coarse"].append(view(train_labels).astype(np.int64) - 1)
            if loc is not None:
                out["location"].append(view(loc, 1))
        return {k: torch.from_numpy(np.ascontiguousarray(np.stack(v)))
                for k, v in out.items() if v}


NORMALISATION_PATCHES = 64  # patches whose training pixels give the normalisation
NORMALISATION_STREAM = 1


def streamed_normalisation(
    sampler: PatchSampler, seed: int, rank: int, world: int,
    reduce: Callable[[np.ndarray], np.ndarray], max_pixels: int = 200_000,
) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std of de-quantised training pixels of ``NORMALISATION_PATCHES``
    class-balanced patches of their own sample stream. Rank ``r`` reads the patches ``j ≡ r``
    (mod ``world``) and ``reduce`` adds the sums over the ranks, so each rank reads only its
    share and every rank gets the same numbers as one rank alone would."""
    per = max(1, max_pixels // NORMALISATION_PATCHES)
    s1 = s2 = None
    n = 0
    for j in range(rank, NORMALISATION_PATCHES, world):
        ri, r0, c0, _, _ = sampler.spec(j, NORMALISATION_STREAM)
        d, _ = sampler._inputs(ri, r0, c0)
        sl = (slice(r0, r0 + sampler.patch), slice(c0, c0 + sampler.patch))
        idx = np.flatnonzero((d.valid & (sampler.regions[ri].split[sl] == TRAIN)).ravel())
        if idx.size > per:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(j, 2)))
            idx = np.sort(rng.choice(idx, size=per, replace=False))
        x = pixel_values(d, idx).astype(np.float64)
        s1 = x.sum(axis=1) if s1 is None else s1 + x.sum(axis=1)
        s2 = (x * x).sum(axis=1) if s2 is None else s2 + (x * x).sum(axis=1)
        n += idx.size
    dims = int(sampler.dimensions)
    local = np.concatenate([np.zeros(dims) if s1 is None else s1,
                            np.zeros(dims) if s2 is None else s2, [float(n)]])
    total = reduce(local)
    count = total[-1]
    if count == 0:
        raise NoDataError("no training-split pixel has an embedding; lower split.val_fraction")
    mean = total[:dims] / count
    std = np.maximum(np.sqrt(np.maximum(total[dims:2 * dims] / count - mean**2, 0.0)), 1e-3)
    return mean.astype(float).tolist(), std.astype(float).tolist()
