"""An lczscale cube (the synthetic 10 m truth) read as labels through ``open_labels`` /
``read_labels``: exactly the truth on its windows, zeros elsewhere, and clear errors for a
store that is not a cube, a missing year, or a zone on another grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lczscale.core.grid import Window, Zone, utm_zone
from lczscale.errors import ConfigError, SourceError
from lczscale.io.labels.reader import detect_kind, open_labels, read_labels
from lczscale.synth.world import SynthCity, make_world, write_world

YEAR = 2024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[SynthCity]]:
    """Zurich and Basel (utm32), 1 km each, on disk and in memory (independent of any reader)."""
    summary = write_world(tmp_path_factory.mktemp("cubelabels"), cities=2, size_km=1.0, seed=0,
                          years=(YEAR,))
    return summary, make_world(cities=2, size_km=1.0, seed=0, years=())


def test_cube_is_detected_and_described(world: tuple[dict[str, Any], list[SynthCity]]) -> None:
    summary, _ = world
    assert detect_kind(summary["truth"]) == "cube"
    d = open_labels(summary["truth"]).describe()
    assert d["kind"] == "cube"
    assert d["encoding"] == "lcz 1-17"
    assert d["zones"] == ["utm32"]
    assert d["years"] == {"utm32": [YEAR]}
    assert d["bounds"][0] == 6.0
    assert d["bounds"][2] == 12.0


def test_windows_read_the_truth_and_zeros_around_it(
    world: tuple[dict[str, Any], list[SynthCity]]
) -> None:
    summary, cities = world
    for c in cities:
        w = c.window
        got = read_labels(summary["truth"], c.zone, w)
        assert got.dtype == np.uint8
        assert np.array_equal(got, c.truth)
        big = Window(w.row - 15, w.col - 25, w.height + 40, w.width + 31)
        got = read_labels(summary["truth"], c.zone, big)
        inside = w.relative_to(big)
        assert np.array_equal(got[inside], c.truth)
        got[inside] = 0
        assert not got.any()
        far = Window(w.row + 5000, w.col, 64, 64)
        assert not read_labels(summary["truth"], c.zone, far).any()


def test_a_zone_the_cube_lacks_reads_as_unlabelled(
    world: tuple[dict[str, Any], list[SynthCity]]
) -> None:
    summary, cities = world
    w = cities[0].window
    got = read_labels(summary["truth"], utm_zone(33), w)
    assert got.shape == (w.height, w.width)
    assert not got.any()


def test_same_zone_on_another_grid(world: tuple[dict[str, Any], list[SynthCity]]) -> None:
    summary, cities = world
    c = cities[0]
    t = list(c.zone.transform)
    shifted = Zone(c.zone.name, c.zone.crs, (t[0], t[1], t[2] + 10 * 7, t[3], t[4], t[5]),
                   c.zone.shape, c.zone.lon_band)  # origin 7 px east: on the lattice
    w = c.window
    got = open_labels(summary["truth"]).read(shifted, Window(w.row, w.col - 7, w.height, w.width))
    assert np.array_equal(got, c.truth)
    off = Zone(c.zone.name, c.zone.crs, (t[0], t[1], t[2] + 5.0, t[3], t[4], t[5]),
               c.zone.shape, c.zone.lon_band)
    with pytest.raises(SourceError, match="pixel lattice"):
        open_labels(summary["truth"]).read(off, w)
    other_crs = Zone(c.zone.name, "EPSG:32633", c.zone.transform, c.zone.shape)
    with pytest.raises(SourceError, match="EPSG:32632"):
        open_labels(summary["truth"]).read(other_crs, w)


def test_year_option(world: tuple[dict[str, Any], list[SynthCity]]) -> None:
    summary, cities = world
    c = cities[1]
    assert np.array_equal(open_labels(summary["truth"], year=YEAR).read(c.zone, c.window),
                          c.truth)
    with pytest.raises(SourceError, match=r"no year 2023 \(years per zone: \{'utm32': \[2024\]"):
        open_labels(summary["truth"], year=2023)
    with pytest.raises(ConfigError, match=r"\['year'\] do not apply to a raster"):
        open_labels(summary["coarse_labels"], year=YEAR)


def test_stores_that_are_not_cubes(world: tuple[dict[str, Any], list[SynthCity]],
                                   tmp_path: Path) -> None:
    summary, _ = world
    with pytest.raises(SourceError, match="not an lczscale cube"):
        open_labels(summary["embeddings"])  # a Zarr v3 store, TESSERA's, not a cube
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="is a directory, not a label file"):
        open_labels(str(tmp_path / "plain"))
