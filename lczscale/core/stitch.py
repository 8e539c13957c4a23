"""Pure stitching geometry: the global patch lattice and the blending window.

Patches have their origins at multiples of the stride in *zone* pixel coordinates, so the set of
patches that covers a pixel — and the order in which their predictions are added up — is the same
whichever tile the pixel falls in. That is what makes the cube independent of tile size, worker
count and task order: a tile only decides which lattice patches it evaluates, never their
positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lczscale.core.grid import Window


@dataclass(frozen=True)
class Lattice:
    """Patches of ``patch`` px every ``stride`` px, origin at zone pixel (0, 0)."""

    patch: int
    stride: int

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.patch:
            raise ValueError(f"stride must be in 1..patch ({self.patch}), got {self.stride}")

    def _index_range(self, start: int, stop: int) -> range:
        first = (start - self.patch) // self.stride + 1  # first k with k*stride + patch > start
        last = -(-stop // self.stride) - 1  # last k with k*stride < stop
        return range(first, last + 1)

    def origins(self, core: Window) -> list[tuple[int, int]]:
        """Row-major origins of every lattice patch that overlaps ``core``."""
        rows = self._index_range(core.row, core.row_stop)
        cols = self._index_range(core.col, core.col_stop)
        return [(r * self.stride, c * self.stride) for r in rows for c in cols]

    def read_window(self, core: Window) -> Window:
        """The union of all patches overlapping ``core``: the core plus its halo."""
        rows = self._index_range(core.row, core.row_stop)
        cols = self._index_range(core.col, core.col_stop)
        r0, c0 = rows[0] * self.stride, cols[0] * self.stride
        r1 = rows[-1] * self.stride + self.patch
        c1 = cols[-1] * self.stride + self.patch
        return Window(r0, c0, r1 - r0, c1 - c0)

    @property
    def coverage(self) -> float:
        """How many patch pixels are computed per map pixel in the interior ((patch/stride)²)."""
        return (self.patch / self.stride) ** 2


def blend_window(patch: int) -> np.ndarray:
    """Smooth (squared-sine) weights, highest in the centre, small but positive at the edges.

    Edge pixels of a patch see the zero padding of the convolutions; weighting them down hides
    that, and keeping them positive guarantees every covered pixel has a non-zero weight sum.
    """
    t = (np.arange(patch, dtype=np.float64) + 0.5) / patch
    w1 = np.sin(np.pi * t) ** 2
    w = np.outer(w1, w1)
    return np.maximum(w, 1e-3).astype(np.float32)


def patch_overlap(origin: tuple[int, int], patch: int, core: Window) -> tuple[
    tuple[slice, slice], tuple[slice, slice]
] | None:
    """(slices into the patch, slices into the core array) where a patch overlaps the core."""
    pw = Window(origin[0], origin[1], patch, patch)
    inter = pw.intersection(core)
    if inter is None:
        return None
    return inter.relative_to(pw), inter.relative_to(core)
