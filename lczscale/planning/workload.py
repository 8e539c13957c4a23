"""How much work a tile is, from where the source says it has data (its ``Availability``).

A tile reads its whole read window, but its bytes lie only where the store holds data, and the
predictor evaluates only the lattice patches that touch a valid core pixel. Availability knows
data per stored block and, where the source gives it, per inner chunk (*cell*): so these counts
are exact at that granularity and upper bounds of the pixel-level truth (a cell with one valid
pixel counts whole).
"""

from __future__ import annotations

import numpy as np

from lczscale.core.grid import Window
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import Availability


def blocks_meeting(avail: Availability, window: Window) -> list[tuple[int, int]]:
    """Indices of the blocks with data that meet ``window``."""
    bh, bw = avail.block
    r0, r1 = (window.row - avail.origin[0]) // bh, (window.row_stop - 1 - avail.origin[0]) // bh
    c0, c1 = (window.col - avail.origin[1]) // bw, (window.col_stop - 1 - avail.origin[1]) // bw
    if (r1 - r0 + 1) * (c1 - c0 + 1) <= len(avail.blocks):
        return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)
                if (r, c) in avail.blocks]
    return [(r, c) for r, c in avail.blocks if r0 <= r <= r1 and c0 <= c <= c1]


def _overlaps(start: int, stop: int, first: int, size: int, n: int) -> np.ndarray:
    """Pixels of [start, stop) in each of ``n`` cells of ``size`` px from ``first``."""
    edges = first + size * np.arange(n + 1)
    out: np.ndarray = np.clip(np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start), 0, None)
    return out


def data_pixels(avail: Availability, window: Window) -> int:
    """Pixels of ``window`` inside the blocks (and, where known, cells) with data."""
    total = 0
    for r, c in blocks_meeting(avail, window):
        top = avail.origin[0] + r * avail.block[0]
        left = avail.origin[1] + c * avail.block[1]
        inner = window.intersection(Window(top, left, *avail.block))
        if inner is None:
            continue
        mask = avail.cells.get((r, c))
        if mask is None or avail.cell is None:
            total += inner.size
            continue
        ch, cw = avail.cell
        rows = _overlaps(inner.row, inner.row_stop, top, ch, mask.shape[0])
        cols = _overlaps(inner.col, inner.col_stop, left, cw, mask.shape[1])
        total += int((rows[:, None] * cols[None, :] * mask).sum())
    return total


def data_grid(avail: Availability, window: Window) -> tuple[np.ndarray, int, int, int, int]:
    """(grid, top, left, ch, cw): which cells of ``ch`` x ``cw`` px meeting ``window`` hold
    data, ``grid[0, 0]`` being the cell whose top-left pixel is (``top``, ``left``)."""
    ch, cw = avail.cell or avail.block
    bh, bw = avail.block
    if bh % ch or bw % cw:  # cells that do not tile the blocks: judge whole blocks
        ch, cw = bh, bw
    (o0, o1), per = avail.origin, (bh // ch, bw // cw)
    i0, i1 = (window.row - o0) // ch, (window.row_stop - 1 - o0) // ch
    j0, j1 = (window.col - o1) // cw, (window.col_stop - 1 - o1) // cw
    grid = np.zeros((i1 - i0 + 1, j1 - j0 + 1), dtype=bool)
    for r, c in blocks_meeting(avail, window):
        mask = avail.cells.get((r, c)) if (ch, cw) == avail.cell else None
        cells = np.ones(per, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        br, bc = r * per[0] - i0, c * per[1] - j0
        rs, re = max(0, br), min(grid.shape[0], br + cells.shape[0])
        cs, ce = max(0, bc), min(grid.shape[1], bc + cells.shape[1])
        if rs < re and cs < ce:
            grid[rs:re, cs:ce] |= cells[rs - br:re - br, cs - bc:ce - bc]
    return grid, o0 + i0 * ch, o1 + j0 * cw, ch, cw


def _patch_spans(start: int, stop: int, lattice: Lattice) -> tuple[np.ndarray, np.ndarray]:
    """First and last pixel (inclusive) of each lattice patch along one axis, cut to
    [start, stop): the patches ``Lattice.origins`` lists for a core on that axis."""
    first = (start - lattice.patch) // lattice.stride + 1
    last = -(-stop // lattice.stride) - 1
    origins = np.arange(first, last + 1) * lattice.stride
    return np.maximum(origins, start), np.minimum(origins + lattice.patch, stop) - 1


def evaluated_patches(avail: Availability, core: Window, lattice: Lattice) -> int:
    """Lattice patches over ``core`` that touch a cell with data in the core: those the
    predictor evaluates (it skips a patch with no valid core pixel), at cell granularity."""
    grid, top, left, ch, cw = data_grid(avail, core)
    rows0, rows1 = _patch_spans(core.row, core.row_stop, lattice)
    cols0, cols1 = _patch_spans(core.col, core.col_stop, lattice)
    sums = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=np.int64)
    sums[1:, 1:] = grid.cumsum(0).cumsum(1)
    i0, i1 = (rows0 - top) // ch, (rows1 - top) // ch + 1
    j0, j1 = (cols0 - left) // cw, (cols1 - left) // cw + 1
    hits = (sums[np.ix_(i1, j1)] - sums[np.ix_(i0, j1)] - sums[np.ix_(i1, j0)]
            + sums[np.ix_(i0, j0)])
    return int((hits > 0).sum())
