"""Comparing cubes in tests: the arrays around every city of a synthetic world."""

from __future__ import annotations

import numpy as np

import lczscale


def cube_arrays(url: str, world) -> dict[str, np.ndarray]:
    """lcz and confidence around every city of the world (city window plus 300 px)."""
    out = {}
    for city in world.summary["cities"]:
        r, c, h, w = city["window"]
        ds = lczscale.open_cube(url, zone=city["zone"])
        sel = {"y": slice(r - 300, r + h + 300), "x": slice(c - 300, c + w + 300)}
        for var in ("lcz", "confidence"):
            out[f"{city['name']}/{var}"] = ds[var].isel(**sel).values
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    assert a
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k}: {int((a[k] != b[k]).sum())} pixels differ"
