"""The conformance suite every embedding source passes (one base class, one subclass per layout).

A subclass defines a ``case`` fixture returning a :class:`SourceCase`: an opened source, one of
its zones and years, and the reference — the de-quantised embeddings (NaN where there is no
data) of a window of that zone computed independently of the reader (from the synthetic world
the writer wrote). The tests then read windows inside, across and outside the data, with halos
past the zone's origin, and check values, masks, dtypes, georeferencing, determinism and
pickling (small, without credentials).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from lczscale.core.grid import Window, Zone
from lczscale.io.sources.protocol import EmbeddingSource, EmbeddingWindow, dequantised

SECRET = "conformance-secret-Kq8Zr1"  # put in the environment; must never reach a pickle


@dataclass
class SourceCase:
    source: EmbeddingSource
    zone: Zone
    year: int
    extent: Window  # zone window the reference covers (it must hold data and no-data pixels)
    expected: np.ndarray  # float32 (D, h, w) de-quantised reference, NaN where no data
    dimensions: int
    dequantisation: str  # "per_pixel_scale" or "sign_square"
    atol: float = 0.0  # tolerance on de-quantised values (0: bit-identical)


def _check_values(data: EmbeddingWindow, case: SourceCase) -> None:
    """Values and validity of ``data`` equal the reference wherever the reference reaches."""
    got = dequantised(data)
    inner = data.window.intersection(case.extent)
    if inner is None:
        return
    exp = case.expected[(slice(None), *inner.relative_to(case.extent))]
    sub = got[(slice(None), *inner.relative_to(data.window))]
    np.testing.assert_array_equal(np.isnan(sub[0]), np.isnan(exp[0]))
    np.testing.assert_allclose(sub, exp, rtol=0, atol=case.atol, equal_nan=True)


class SourceConformance:
    """Subclass with a ``case`` fixture; every test here then runs against that source."""

    @pytest.fixture
    def case(self) -> SourceCase:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_metadata(self, case: SourceCase) -> None:
        s = case.source
        assert s.dimensions == case.dimensions
        assert case.year in s.years
        assert case.zone.name in s.zone_names()
        assert s.layout
        assert s.kind
        assert s.dataset
        desc = s.describe()
        assert desc["kind"] == s.kind
        assert desc["layout"] == s.layout

    def test_window_inside_the_data(self, case: SourceCase) -> None:
        e = case.extent
        w = Window(e.row + e.height // 4, e.col + e.width // 4, e.height // 2, e.width // 2)
        data = case.source.read(case.zone, w, case.year)
        assert data.window == w
        assert data.codes.dtype == np.int8
        assert data.codes.shape == (case.dimensions, w.height, w.width)
        assert data.valid.dtype == bool
        assert data.valid.shape == (w.height, w.width)
        assert data.water.dtype == bool
        assert data.water.shape == (w.height, w.width)
        assert data.dequantisation == case.dequantisation
        if data.scales is not None:
            assert data.scales.dtype == np.float32
            assert data.scales.shape == (w.height, w.width)
        assert data.valid.any()
        _check_values(data, case)

    def test_whole_extent_matches_the_reference(self, case: SourceCase) -> None:
        data = case.source.read(case.zone, case.extent, case.year)
        _check_values(data, case)
        assert (~data.valid).any(), "the reference window should include pixels without data"

    def test_window_across_the_edge_is_padded_invalid(self, case: SourceCase) -> None:
        e = case.extent
        w = Window(e.row - 40, e.col - 40, 80, 80)  # straddles the extent's top-left corner
        data = case.source.read(case.zone, w, case.year)
        assert data.codes.shape == (case.dimensions, 80, 80)
        _check_values(data, case)
        outside = np.ones((80, 80), dtype=bool)
        inner = w.intersection(e)
        if inner is not None:
            outside[inner.relative_to(w)] = False
        # outside the reference extent there may be other data, but never garbage:
        assert np.isfinite(dequantised(data)[:, data.valid]).all()
        assert not (data.valid & data.water).any()

    def test_window_outside_the_data_is_all_invalid(self, case: SourceCase) -> None:
        far = _far_from(case, Window(0, 0, 64, 64))
        data = case.source.read(case.zone, far, case.year)
        assert data.codes.shape == (case.dimensions, 64, 64)
        assert not data.valid.any()
        assert not data.codes.any() or case.dequantisation == "sign_square"
        assert not data.water.any()

    def test_halo_before_the_zone_origin(self, case: SourceCase) -> None:
        data = case.source.read(case.zone, Window(-16, -16, 48, 48), case.year)
        assert data.codes.shape == (case.dimensions, 48, 48)
        assert not data.valid[:16].any()
        assert not data.valid[:, :16].any()

    def test_masks_are_consistent(self, case: SourceCase) -> None:
        data = case.source.read(case.zone, case.extent, case.year)
        assert not (data.valid & data.water).any()
        emb = dequantised(data)
        assert np.isnan(emb[:, ~data.valid]).all()
        assert np.isfinite(emb[:, data.valid]).all()
        if data.scales is not None:
            assert (data.scales[~data.valid] == 0).all()
            assert not data.codes[:, ~data.valid].any()

    def test_availability_covers_every_pixel_with_data(self, case: SourceCase) -> None:
        avail = case.source.availability(case.zone, case.year, case.extent)
        covered = np.zeros((case.extent.height, case.extent.width), dtype=bool)
        for block in avail.windows():
            inner = block.intersection(case.extent)
            if inner is not None:
                covered[inner.relative_to(case.extent)] = True
        has_data = ~np.isnan(case.expected[0])
        assert covered[has_data].all(), "a pixel with data lies in no available block"

    def test_reads_are_deterministic(self, case: SourceCase) -> None:
        a = case.source.read(case.zone, case.extent, case.year)
        b = case.source.read(case.zone, case.extent, case.year)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.valid, b.valid)
        if a.scales is not None:
            assert b.scales is not None
            np.testing.assert_array_equal(a.scales, b.scales)

    def test_pickles_small_without_credentials(
        self, case: SourceCase, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET)
        _ = case.source.read(case.zone, case.extent, case.year)  # opened handles, caches
        blob = pickle.dumps(case.source)
        assert SECRET.encode() not in blob
        assert len(blob) < 256 * 1024, f"a pickled source should be small, got {len(blob)} B"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
        clone = pickle.loads(blob)
        a = case.source.read(case.zone, case.extent, case.year)
        b = clone.read(case.zone, case.extent, case.year)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.valid, b.valid)


def _far_from(case: SourceCase, w: Window) -> Window:
    """A window of the zone well away from the reference extent (and so from the data)."""
    e = case.extent
    row = e.row + e.height + 5000 if e.row + e.height + 5064 < case.zone.shape[0] else 100
    if row == 100 and e.row < 5200:
        row = max(0, e.row - 5100)
    return Window(row, e.col, w.height, w.width)
