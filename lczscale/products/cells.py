"""Pure per-block computations of the products made from a finished 10 m LCZ map.

Pure numpy over windows of zone pixels (no I/O), so the aggregation pass can run them on any
worker and tests can check them on synthetic maps:

- ``cell_products``: for a window of 100 m cells (``factor`` × ``factor`` zone pixels aligned to
  the zone's pixel lattice, as in ``counts``), the class fractions in 1/255 units, the
  majority class, and the majority after the global LCZ map's Gaussian mode filter. The input
  window carries a halo of ``halo`` cells so that the filter of every cell in the window sees
  all its neighbours: a block's result is then exactly the whole map's, whatever the blocks.
- ``seam_counts`` / ``seam_ratio``: per tile of the 10 m grid, how often the class changes
  between adjacent valid pixels across the tile's right and bottom borders, against how often
  it changes between adjacent pixels inside the tile. On a map whose tiles were made
  independently a misfit shows up as a ratio ≫ 1 along the borders; a seamless map gives ~1.

Class codes are 1–17 with 0 = nodata throughout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from lczscale.products.counts import N_CODES, block_counts, gaussian_mode_filter, majority

N_CLASSES = N_CODES - 1  # 17 LCZ classes, codes 1..17
FRACTION_UNITS = 255  # fractions are stored as uint8 shares of 255
COUNT_BAND_CELLS = 64  # cell rows counted per call: bounds the temporaries of block_counts

U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int64]
F4 = npt.NDArray[np.float32]


class CellProducts(NamedTuple):
    """The 100 m products of a window of cells (the halo already cropped)."""

    fractions: U8  # (17, h, w): share of codes 1..17 among valid pixels, in 1/255
    majority: U8  # (h, w): majority code, 0 where a cell has no valid pixel
    filtered: U8  # (h, w): ``majority`` after the Gaussian mode filter


def cell_counts(codes: npt.ArrayLike, origin: tuple[int, int], factor: int = 10) -> I8:
    """(h_cells, w_cells, 18) counts of codes 0..17 in the lattice cells of a cell-aligned
    window (``origin`` and the shape multiples of ``factor``), counted in bands of cell rows so
    that a large window never needs int64 temporaries of its own size."""
    a = np.asarray(codes)
    r0, c0 = origin
    if r0 % factor or c0 % factor or a.shape[0] % factor or a.shape[1] % factor:
        raise ValueError(
            f"window at {origin} of shape {a.shape} is not aligned to {factor} px cells"
        )
    hc, wc = a.shape[0] // factor, a.shape[1] // factor
    out = np.zeros((hc, wc, N_CODES), dtype=np.int64)
    band = COUNT_BAND_CELLS * factor
    for top in range(0, a.shape[0], band):
        part = block_counts(a[top : top + band], (r0 + top, c0), factor)
        first = top // factor
        out[first : first + len(part.rows) // max(wc, 1)] = part.counts.reshape(-1, wc, N_CODES)
    return out


def probability_sums(probability: npt.ArrayLike, codes: npt.ArrayLike, origin: tuple[int, int],
                     factor: int = 10) -> I8:
    """(h_cells, w_cells, 18) sums of the blended probabilities (uint8 p × 255, ``(17, h, w)``)
    of classes 1..17 over each cell's classified pixels (``codes`` > 0; column 0 stays 0).

    These are *soft counts*: ``fractions_255`` of them is each cell's mean class probability,
    so a cell of mixed scenes keeps the share the model gave each class (as the MSU-Net study's
    fractions do) instead of every pixel voting for its one class. They are exact integers,
    so the result does not depend on the order of the sums.
    """
    p = np.asarray(probability)
    valid = np.asarray(codes) > 0
    r0, c0 = origin
    if r0 % factor or c0 % factor or valid.shape[0] % factor or valid.shape[1] % factor:
        raise ValueError(
            f"window at {origin} of shape {valid.shape} is not aligned to {factor} px cells"
        )
    if p.shape != (N_CLASSES, *valid.shape):
        raise ValueError(f"probability of shape {p.shape} does not match codes {valid.shape}")
    hc, wc = valid.shape[0] // factor, valid.shape[1] // factor
    out = np.zeros((hc, wc, N_CODES), dtype=np.int64)
    cells = (hc, factor, wc, factor)
    mask = valid.reshape(cells)
    for k in range(N_CLASSES):
        out[..., k + 1] = np.sum(p[k].reshape(cells), axis=(1, 3), dtype=np.int64, where=mask)
    return out


def fractions_255(counts: npt.ArrayLike) -> U8:
    """(..., 17) shares of codes 1..17 among the valid (non-zero) pixels of each cell, in units
    of 1/255, rounded by largest remainder so that every cell with a valid pixel sums to
    exactly 255 (ties go to the lowest code); cells without one are all 0.

    ``counts`` is (..., 18) with code 0 (nodata) first, as ``aggregate.block_counts`` gives.
    """
    c = np.asarray(counts, dtype=np.int64)[..., 1:]
    n = c.sum(axis=-1, keepdims=True)
    safe = np.maximum(n, 1)
    scaled = c * FRACTION_UNITS
    base = scaled // safe
    remainder = scaled - base * safe  # exact integers: no float rounding to disagree
    deficit = FRACTION_UNITS - base.sum(axis=-1, keepdims=True)
    # Rank classes by remainder, largest first, lowest code first among equals.
    order = np.argsort(-remainder, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(c.shape[-1]), axis=-1)
    share = base + (rank < deficit)
    return np.where(n > 0, share, 0).astype(np.uint8)


def cell_products(
    codes: npt.ArrayLike,
    origin: tuple[int, int],
    factor: int = 10,
    halo: int = 2,
    sigma: float = 1.0,
    soft: npt.ArrayLike | None = None,
) -> CellProducts:
    """Fractions, majority and filtered majority of the cells of a window, its outer ``halo``
    cells used only as the filter's neighbours (σ = ``sigma`` cells, window 2·halo+1).

    ``codes`` is the 10 m map over the cells *with* the halo, ``origin`` the zone (row, col) of
    its first pixel; both must be aligned to the cell lattice. Pixels outside the zone should
    be 0, which is what cells beyond the zone's edge are in the whole map too. ``soft``: the
    ``probability_sums`` of the inner cells (without the halo); the fractions are then the
    cells' mean probabilities, while the majority and the filter stay those of the classes.
    """
    counts = cell_counts(codes, origin, factor)
    hc, wc = counts.shape[:2]
    if hc <= 2 * halo or wc <= 2 * halo:
        raise ValueError(f"a window of {hc}x{wc} cells has no cells inside a {halo}-cell halo")
    maj = majority(counts.reshape(-1, N_CODES)).reshape(hc, wc)
    filtered = gaussian_mode_filter(maj, sigma=sigma, radius=halo)
    inner = (slice(halo, hc - halo), slice(halo, wc - halo))
    if soft is not None and np.shape(soft) != counts[inner].shape:
        raise ValueError(f"soft counts {np.shape(soft)} do not cover the inner cells "
                         f"{counts[inner].shape}")
    fractions = np.moveaxis(fractions_255(counts[inner] if soft is None else soft), -1, 0)
    return CellProducts(np.ascontiguousarray(fractions), maj[inner].copy(), filtered[inner].copy())


class SeamCounts(NamedTuple):
    """Adjacent-pixel pair counts per tile of the 10 m grid, for tiles ``tile0`` (tile row,
    tile col of ``[0, 0]``) onwards. A pair belongs to the tile of its upper/left pixel; it is a
    *border* pair when its other pixel lies in the next tile (right or below), else *interior*.
    Only pairs of two valid pixels are counted; *changes* are pairs of two different classes.
    Counts of disjoint sets of pairs add up, which is how blocks are merged."""

    tile0: tuple[int, int]
    border_changes: I8
    border_pairs: I8
    interior_changes: I8
    interior_pairs: I8


def seam_counts(
    codes: npt.ArrayLike,
    tile_size: int,
    origin: tuple[int, int] = (0, 0),
    own: tuple[int, int, int, int] | None = None,
) -> SeamCounts:
    """Pair counts of the tiles under ``own`` (zone row, col, height, width; default the whole
    window less its last row and column, so both pixels of every pair are in ``codes``).

    Pairs are those whose upper/left pixel lies in ``own``; their other pixel may lie one row or
    column past it, which ``codes`` must then hold (else it counts as nodata). Reductions run
    per tile (``reduceat``), never on an index array of the window's size.
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        raise ValueError(f"codes must be 2-D (y, x), got shape {a.shape}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be ≥ 1, got {tile_size}")
    r0, c0 = origin
    if own is None:
        own = (r0, c0, max(a.shape[0] - 1, 0), max(a.shape[1] - 1, 0))
    orow, ocol, oh, ow = own
    if oh <= 0 or ow <= 0:
        raise ValueError(f"own window {own} is empty")
    # The own pixels plus one row and column past them, zeros where ``codes`` stops.
    padded = np.zeros((oh + 1, ow + 1), dtype=a.dtype)
    rs = slice(max(orow, r0), min(orow + oh + 1, r0 + a.shape[0]))
    cs = slice(max(ocol, c0), min(ocol + ow + 1, c0 + a.shape[1]))
    if rs.stop > rs.start and cs.stop > cs.start:
        padded[rs.start - orow : rs.stop - orow, cs.start - ocol : cs.stop - ocol] = a[
            rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0
        ]
    p = padded[:oh, :ow]
    valid = p > 0
    rows = np.arange(orow, orow + oh)
    cols = np.arange(ocol, ocol + ow)
    ty0, tx0 = orow // tile_size, ocol // tile_size
    row_edges = np.flatnonzero(np.r_[True, np.diff(rows // tile_size) != 0])
    col_edges = np.flatnonzero(np.r_[True, np.diff(cols // tile_size) != 0])
    shape = (len(row_edges), len(col_edges))
    counts = {k: np.zeros(shape, dtype=np.int64) for k in ("bc", "bp", "ic", "ip")}
    for right in (True, False):
        q = padded[:oh, 1:] if right else padded[1:, :ow]
        pair = valid & (q > 0)
        change = pair & (p != q)
        last = ((cols if right else rows) + 1) % tile_size == 0  # upper/left pixel ends a tile
        for mask, total_key, border_key in ((pair, "ip", "bp"), (change, "ic", "bc")):
            total = _tile_sums(mask, row_edges, col_edges)
            edge = mask[:, last] if right else mask[last, :]
            if right:
                border = np.zeros(shape, dtype=np.int64)
                if edge.shape[1]:
                    per_row = np.add.reduceat(edge, row_edges, axis=0, dtype=np.int64)
                    border[:, cols[last] // tile_size - tx0] = per_row
            else:
                border = np.zeros(shape, dtype=np.int64)
                if edge.shape[0]:
                    per_col = np.add.reduceat(edge, col_edges, axis=1, dtype=np.int64)
                    border[rows[last] // tile_size - ty0, :] = per_col
            counts[border_key] += border
            counts[total_key] += total - border
    return SeamCounts((ty0, tx0), counts["bc"], counts["bp"], counts["ic"], counts["ip"])


def _tile_sums(mask: npt.NDArray[np.bool_], row_edges: I8, col_edges: I8) -> I8:
    """Sum of ``mask`` over each tile, the tiles starting at the given rows and columns."""
    by_row = np.add.reduceat(mask, row_edges, axis=0, dtype=np.int64)
    return np.asarray(np.add.reduceat(by_row, col_edges, axis=1, dtype=np.int64))


def seam_rates(counts: SeamCounts) -> tuple[F4, F4, F4]:
    """(ratio, border rate, interior rate) per tile, float32. A rate is changes ÷ pairs (NaN
    without pairs); the ratio is border ÷ interior rate, NaN where either rate is undefined or
    the interior never changes class (nothing to compare a border against)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        border = np.where(counts.border_pairs > 0,
                          counts.border_changes / np.maximum(counts.border_pairs, 1), np.nan)
        interior = np.where(counts.interior_pairs > 0,
                            counts.interior_changes / np.maximum(counts.interior_pairs, 1), np.nan)
        ratio = np.where(interior > 0, border / np.where(interior > 0, interior, 1.0), np.nan)
    return ratio.astype(np.float32), border.astype(np.float32), interior.astype(np.float32)


def seam_ratio(
    lcz_window: npt.ArrayLike, tile_size: int, origin: tuple[int, int] = (0, 0)
) -> tuple[F4, tuple[int, int]]:
    """Seam ratio of every tile a window of the 10 m map touches (pairs inside the window
    only), with the (tile row, tile col) of its first tile: ~1 = seamless, ≫ 1 = a seam along
    the tile's right or bottom border. See ``seam_counts`` and ``seam_rates``."""
    counts = seam_counts(lcz_window, tile_size, origin)
    return seam_rates(counts)[0], counts.tile0
