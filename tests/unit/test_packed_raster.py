"""Packed label rasters: any cut and any k-th pixel are exactly those of the plain raster, and
flat LCZ-like labels pack to a small fraction of a byte a pixel."""

from __future__ import annotations

import numpy as np
import pytest

from lczscale.train.packed import BAND, PackedRaster


def _labels(h: int = 300, w: int = 257, seed: int = 0) -> np.ndarray:
    """A 100 m label map upsampled to 10 m (10 px cells), as coarse LCZ labels are."""
    rng = np.random.default_rng(seed)
    cells = rng.choice([0, 1, 2, 6, 9, 11, 14, 17], size=(h // 10 + 1, w // 10 + 1))
    return np.kron(cells, np.ones((10, 10), np.uint8))[:h, :w].astype(np.uint8)


def test_cuts_are_the_plain_rasters() -> None:
    a = _labels()
    p = PackedRaster(a)
    assert p.shape == a.shape
    assert np.array_equal(p.unpack(), a)
    cuts = ((0, 64, 0, 64), (63, 65, 5, 200), (10, 300, 0, 257), (299, 300, 256, 257),
            (BAND * 2 - 7, BAND * 4 + 3, 17, 81))
    for r0, r1, c0, c1 in cuts:
        assert np.array_equal(p[r0:r1, c0:c1], a[r0:r1, c0:c1]), (r0, r1, c0, c1)
    assert np.array_equal(p.rows(-5, 10), a[:10])
    assert p.rows(10, 10).shape == (0, a.shape[1])
    with pytest.raises(IndexError):
        p[0:10:2, 0:5]


def test_the_kth_pixel_of_a_value_is_the_plain_rasters() -> None:
    a = _labels(seed=4)
    p = PackedRaster(a)
    assert np.array_equal(p.totals(), np.bincount(a.ravel(), minlength=18))
    for value in np.unique(a):
        flat = np.flatnonzero(a.ravel() == value)
        for k in {0, 1, len(flat) // 3, len(flat) - 1}:
            assert p.nth(int(value), k) == divmod(int(flat[k]), a.shape[1])
        with pytest.raises(IndexError):
            p.nth(int(value), len(flat))


def test_flat_labels_pack_small_and_bad_input_is_refused() -> None:
    a = _labels(512, 512)
    assert PackedRaster(a).nbytes < a.nbytes / 10
    with pytest.raises(ValueError, match="uint8"):
        PackedRaster(a.astype(np.int16))
