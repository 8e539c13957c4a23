"""The Gaussian-weighted majority filter that makes a 100 m LCZ map's ``LCZ_Filter`` band."""

from __future__ import annotations

import numpy as np
import pytest

from lczscale.products.counts import gaussian_mode_filter


def test_isolated_cell_takes_its_neighbours_class() -> None:
    a = np.full((9, 9), 6, np.uint8)
    a[4, 4] = 2
    assert (gaussian_mode_filter(a) == 6).all()


def test_straight_border_and_large_regions_are_kept() -> None:
    a = np.full((12, 12), 4, np.uint8)
    a[:, 6:] = 9
    np.testing.assert_array_equal(gaussian_mode_filter(a), a)


def test_narrow_strip_is_removed_wide_strip_kept() -> None:
    a = np.full((15, 15), 14, np.uint8)
    a[:, 3] = 17  # one cell wide: a 100 m river at 100 m
    a[:, 8:12] = 17  # four cells wide
    out = gaussian_mode_filter(a)
    assert (out[:, 3] == 14).all()
    assert (out[:, 8:12] == 17).all()


def test_nodata_stays_and_does_not_vote() -> None:
    a = np.zeros((7, 7), np.uint8)
    a[3, 3] = 5  # one classified cell amid nodata keeps its class
    a[0, 0] = 0
    out = gaussian_mode_filter(a)
    assert out[3, 3] == 5
    assert (out[a == 0] == 0).all()


def test_votes_are_weighted_by_distance() -> None:
    """Two cells next to a pixel outweigh three cells two steps away (counts alone would not)."""
    a = np.full((5, 5), 0, np.uint8)
    a[2, 2] = 1
    a[2, 1] = a[2, 3] = 7  # distance 1: 2 × 0.61
    a[0, 2] = a[4, 2] = a[0, 0] = 9  # distance 2 and 2.8: 2 × 0.14 + 0.02
    assert gaussian_mode_filter(a)[2, 2] == 7


@pytest.mark.parametrize(
    ("codes", "kw", "match"),
    [
        (np.zeros(5, np.uint8), {}, "2-D"),
        (np.full((3, 3), 18, np.uint8), {}, r"0\.\.17"),
        (np.ones((3, 3), np.uint8), {"sigma": 0}, "sigma"),
    ],
)
def test_bad_input_is_refused(codes: np.ndarray, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_mode_filter(codes, **kw)
