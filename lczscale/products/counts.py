"""Class counts and majority of 10 m LCZ codes in coarse cells (e.g. 100 m = 10×10 pixels).

Pure numpy. The cells are blocks of ``factor×factor`` pixels **aligned to the zone's pixel
lattice**: the cell of zone pixel (row, col) is ``(row // factor, col // factor)``, whatever
window the pixels were read in. A cell therefore means the same ground everywhere, and a result
does not depend on how a region was cut into windows (chunks, shards, bbox clips) — the same
promise as the cube's. Counting per window and summing the counts of a cell that several
windows share (``merge``) gives exactly the counts of reading the region at once; a cell that
lies wholly inside one window (``complete``) can be finished at once, as no other window of a
set of disjoint windows holds any of its pixels.

Counts keep every class, nodata (0) included, so that the same counts serve a majority class
(``majority``: 0 never wins over a class, ties go to the lowest code) and class fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

N_CODES = 18  # 0 = nodata + LCZ 1–17

I8 = npt.NDArray[np.int64]


class BlockCounts(NamedTuple):
    """Cells (lattice block row, block col, each (k,)) and their class counts (k, n)."""

    rows: I8
    cols: I8
    counts: I8


def block_counts(
    codes: npt.ArrayLike, origin: tuple[int, int] = (0, 0), factor: int = 10,
    n_codes: int = N_CODES,
) -> BlockCounts:
    """Counts of each code 0..n_codes-1 in every lattice cell the (h, w) array touches.

    ``origin`` is the zone (row, col) of ``codes[0, 0]``; cells are listed row-major. A cell cut
    by the array's edge counts only the pixels inside it (see ``complete``).
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        raise ValueError(f"codes must be 2-D (y, x), got shape {a.shape}")
    if factor < 1:
        raise ValueError(f"factor must be ≥ 1, got {factor}")
    if a.size and (a.min() < 0 or a.max() >= n_codes):
        raise ValueError(
            f"codes must lie in 0..{n_codes - 1}, got {int(a.min())}..{int(a.max())}"
        )
    h, w = a.shape
    r0, c0 = origin
    br = np.arange(r0, r0 + h) // factor
    bc = np.arange(c0, c0 + w) // factor
    if a.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return BlockCounts(empty, empty.copy(), np.zeros((0, n_codes), dtype=np.int64))
    nbr, nbc = int(br[-1] - br[0] + 1), int(bc[-1] - bc[0] + 1)
    local = (br - br[0])[:, None] * nbc + (bc - bc[0])[None, :]
    idx = (local * n_codes + a.astype(np.int64)).ravel()
    counts = np.bincount(idx, minlength=nbr * nbc * n_codes).reshape(nbr * nbc, n_codes)
    rows = np.repeat(np.arange(br[0], br[0] + nbr, dtype=np.int64), nbc)
    cols = np.tile(np.arange(bc[0], bc[0] + nbc, dtype=np.int64), nbr)
    return BlockCounts(rows, cols, counts.astype(np.int64, copy=False))


def complete(bc: BlockCounts, factor: int) -> npt.NDArray[np.bool_]:
    """Cells whose ``factor²`` pixels were all counted (for counts of one code set)."""
    return np.asarray(bc.counts.sum(axis=1) == factor * factor)


def merge(parts: Sequence[BlockCounts]) -> BlockCounts:
    """One row per cell: the counts of a cell that several parts hold, summed."""
    width = parts[0].counts.shape[1] if parts else N_CODES
    parts = [p for p in parts if len(p.rows)]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return BlockCounts(empty, empty.copy(), np.zeros((0, width), dtype=np.int64))
    rows = np.concatenate([p.rows for p in parts])
    cols = np.concatenate([p.cols for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    keys, inverse = np.unique(np.stack([rows, cols], axis=1), axis=0, return_inverse=True)
    out = np.zeros((len(keys), counts.shape[1]), dtype=np.int64)
    np.add.at(out, inverse.ravel(), counts)
    return BlockCounts(keys[:, 0].copy(), keys[:, 1].copy(), out)


def majority(counts: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """(k,) majority code of (k, n) counts, ignoring code 0; ties → lowest code; 0 if none."""
    c = np.asarray(counts)
    classes = c[:, 1:]
    best = classes.argmax(axis=1) + 1  # argmax returns the first maximum: the lowest code
    return np.where(classes.max(axis=1, initial=0) > 0, best, 0).astype(np.uint8)


def block_majority(
    codes: npt.ArrayLike, origin: tuple[int, int] = (0, 0), factor: int = 10,
) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """Majority code of every lattice cell one array touches, as a 2-D grid of cells, with the
    (block row, block col) of its first cell. Cells cut by the array's edge use the pixels
    inside it."""
    a = np.asarray(codes)
    bc = block_counts(a, origin, factor)
    if not len(bc.rows):
        return np.zeros((0, 0), dtype=np.uint8), (origin[0] // factor, origin[1] // factor)
    r0, c0 = int(bc.rows[0]), int(bc.cols[0])
    shape = (int(bc.rows[-1]) - r0 + 1, int(bc.cols[-1]) - c0 + 1)
    return majority(bc.counts).reshape(shape), (r0, c0)


def gaussian_mode_filter(
    codes: npt.ArrayLike, sigma: float = 1.0, radius: int = 2,
) -> npt.NDArray[np.uint8]:
    """Gaussian-weighted majority filter of a class map (cells), as the global 100 m LCZ map's
    ``LCZ_Filter`` band is made from its raw ``LCZ`` band (Demuzere et al. 2020, 2022).

    Each cell takes the class with the largest sum of Gaussian weights (``sigma`` in cells,
    window ``2·radius+1``) over its neighbours; nodata (0) cells vote for nothing and stay 0;
    ties go to the lowest code. It removes isolated cells and smooths class borders, which is
    why a filtered 100 m reference misses features smaller than ~2 cells.
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        raise ValueError(f"codes must be 2-D (y, x), got shape {a.shape}")
    if sigma <= 0 or radius < 1:
        raise ValueError(f"sigma must be > 0 and radius ≥ 1, got {sigma}, {radius}")
    if a.size and (a.min() < 0 or a.max() >= N_CODES):
        raise ValueError(f"codes must lie in 0..{N_CODES - 1}, got {int(a.min())}..{int(a.max())}")
    h, w = a.shape
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma**2))
    padded = np.pad(a, radius, mode="constant", constant_values=0)
    votes = np.zeros((N_CODES, h, w), dtype=np.float64)
    yy, xx = np.indices((h, w))
    for i, dy in enumerate(offsets):
        for j, dx in enumerate(offsets):
            window = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            votes[window, yy, xx] += kernel[i, j]  # one class per pixel and offset: no repeats
    votes[0] = 0.0
    return np.where(a > 0, votes.argmax(axis=0), 0).astype(np.uint8)
