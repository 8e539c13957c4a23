"""Spatially blocked train/val/test splits on the zone's own pixel lattice (numpy only).

Pixels close together share their embeddings' context and their labels, so a random pixel split
leaks the test set into training. Whole blocks are assigned instead, by a hash of (zone, block
row, block column, seed): the assignment of a pixel does not depend on which window it was read
in, on the order of cities, or on other cities being present — so no block is ever in two
splits, and adding a city never reshuffles the others.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lczscale.core.grid import Window

NONE, TRAIN, VAL, TEST = 0, 1, 2, 3
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser: a well-spread 64-bit hash of each value."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _zone_key(zone_name: str) -> np.uint64:
    return np.uint64(int.from_bytes(zone_name.encode()[:8].ljust(8, b"\0"), "little"))


def block_uniform(zone_name: str, block_rows: np.ndarray, block_cols: np.ndarray,
                  seed: int) -> npt.NDArray[np.float64]:
    """A uniform [0, 1) number per block, fixed by (zone, block, seed)."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(np.broadcast(block_rows, block_cols).shape, _zone_key(zone_name))
                 ^ np.uint64(seed & 0xFFFFFFFF))
        h = _mix(h ^ block_rows.astype(np.int64).astype(np.uint64))
        h = _mix(h ^ block_cols.astype(np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def block_splits(zone_name: str, window: Window, block: int, val: float, test: float,
                 seed: int) -> npt.NDArray[np.uint8]:
    """(h, w) split code (TRAIN, VAL or TEST) of every pixel of ``window``."""
    rows = np.arange(window.row, window.row_stop) // block
    cols = np.arange(window.col, window.col_stop) // block
    ub, inv_r = np.unique(rows, return_inverse=True)
    vb, inv_c = np.unique(cols, return_inverse=True)
    u = block_uniform(zone_name, ub[:, None], vb[None, :], seed)
    codes = np.where(u < test, TEST, np.where(u < test + val, VAL, TRAIN)).astype(np.uint8)
    return codes[inv_r[:, None], inv_c[None, :]]


def boundary_mask(labels: npt.NDArray[np.uint8], radius: int) -> npt.NDArray[np.bool_]:
    """Pixels within ``radius`` px (a square) of a pixel with another label, nodata included.

    Coarse (100 m) labels are wrong near their own boundaries; ignoring those pixels in the loss
    lets the model place the boundary from the embeddings instead of copying the blocky one.
    """
    if radius <= 0:
        return np.zeros(labels.shape, dtype=bool)
    from scipy.ndimage import maximum_filter, minimum_filter

    size = 2 * radius + 1
    hi = maximum_filter(labels, size=size, mode="nearest")
    lo = minimum_filter(labels, size=size, mode="nearest")
    return np.asarray(hi != lo)
