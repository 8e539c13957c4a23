"""The synthetic world's changing city (opt-in): its truth changes between the years exactly in
the change areas, its labels and embeddings follow, and every other city is what it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

import lczscale
from lczscale.cli import main
from lczscale.errors import ConfigError
from lczscale.synth.cities import CHANGES, change_masks, change_year_of, make_world

YEARS = (2023, 2024)


@pytest.fixture(scope="module")
def worlds():
    return (make_world(cities=2, size_km=0.6, years=YEARS),
            make_world(cities=2, size_km=0.6, years=YEARS, changing_city=True))


def test_the_other_cities_are_byte_for_byte_what_they_were(worlds) -> None:
    plain, changing = worlds
    a, b = plain[0], changing[0]
    for name in ("truth", "material", "mix_other", "mix_share", "objects", "water", "nodata"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for year in YEARS:
        assert np.array_equal(a.embeddings[year], b.embeddings[year])
    assert b.change_year is None
    assert plain[1].change_year is None


def test_the_last_city_changes_in_its_areas_and_nowhere_else(worlds) -> None:
    _, changing = worlds
    c = changing[-1]
    assert c.change_year == 2024 == change_year_of(YEARS)
    before, after = c.truth_in(2023), c.truth_in(2024)
    masks = change_masks(before)
    assert [(f, t) for f, t, _ in masks] == [(f, t) for f, t, _ in CHANGES] == [(14, 6), (12, 8)]
    changed = np.zeros(before.shape, dtype=bool)
    for frm, to, mask in masks:
        assert mask.sum() > 100
        assert (before[mask] == frm).all()
        assert (after[mask] == to).all()
        changed |= mask
    assert np.array_equal(before != after, changed)
    assert not (changed & c.water).any()
    # a pixel's material depends on its class and place only: outside the areas the surface
    # of both years is one and the same
    m_before, m_after = c.surface(2023)[0], c.surface(2024)[0]
    assert np.array_equal(m_before[~changed], m_after[~changed])
    assert not np.array_equal(c.embeddings[2023][:, changed], c.embeddings[2024][:, changed])


def test_a_changing_city_needs_two_years() -> None:
    with pytest.raises(ConfigError, match="two years"):
        make_world(cities=1, size_km=0.6, years=(2024,), changing_city=True)


def test_synth_writes_each_years_truth_labels_and_the_change_areas(tmp_path, capsys) -> None:
    out = tmp_path / "w"
    assert main(["synth", str(out), "--cities", "1", "--size-km", "0.6", "--changing-city"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "world.json").read_text())
    changes = summary["changes"]
    assert [(c["from"], c["to"], c["year"]) for c in changes] == [(14, 6, 2024), (12, 8, 2024)]
    truth = lczscale.open_cube(str(out / "truth.zarr"), zone="utm32")
    assert truth["time"].values.tolist() == [2023, 2024]
    for change in changes:
        r, c, h, w = change["window"]
        area = truth["lcz"].isel(y=slice(r, r + h), x=slice(c, c + w)).values
        moved = area[0] != area[1]
        assert moved.sum() == change["pixels"]
        assert set(np.unique(area[0][moved])) == {change["from"]}
        assert set(np.unique(area[1][moved])) == {change["to"]}
    labels = {}
    for year, path in summary["labels_by_year"].items():
        with rasterio.open(path) as src:
            labels[year] = src.read(1)
    assert labels["2023"].shape == labels["2024"].shape
    assert not np.array_equal(labels["2023"], labels["2024"]), "each year's labels differ"
    assert (out / "lcz_coarse_2023" / "lcz_coarse" / "zurich.tif").exists()
