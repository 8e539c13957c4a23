"""The LCZ Generator's measures on hand-made confusion matrices, the published weights, and the
cluster bootstrap's intervals (every expected number is worked out by hand in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from lczscale.studies.lcz_metrics import WEIGHTS, cluster_bootstrap, lcz_accuracies


def _cm(entries: dict[tuple[int, int], int]) -> np.ndarray:
    cm = np.zeros((18, 18), dtype=np.int64)
    for (ref, pred), n in entries.items():
        cm[ref, pred] = n
    return cm


HAND = _cm({
    (1, 1): 6, (1, 2): 1, (1, 0): 1,  # LCZ 1: 8 px, one left without a class
    (2, 2): 3, (2, 14): 1,  # LCZ 2: 4 px, one mapped as D
    (14, 14): 7, (14, 12): 2, (14, 1): 1,  # D: 10 px
    (15, 15): 1, (15, 6): 1,  # E: 2 px (neither built nor natural in OA_bu)
    (17, 17): 4,  # G
    (0, 5): 9,  # no reference class: never scored
})


def test_the_published_weights() -> None:
    assert WEIGHTS.shape == (17, 17)
    assert np.array_equal(WEIGHTS, WEIGHTS.T)
    assert np.all(np.diag(WEIGHTS) == 1.0)
    assert WEIGHTS[0, 1] == 0.92
    assert WEIGHTS[13, 11] == 0.75
    assert WEIGHTS[0, 16] == 0.0


def test_measures_of_a_hand_matrix() -> None:
    got = lcz_accuracies(HAND)
    # OA: (6 + 3 + 7 + 1 + 4) / 28
    assert got["oa"] == round(21 / 28, 4)
    # OA_u: urban-to-urban block [[6, 1], [0, 3]]: 9 / 10
    assert got["oa_u"] == 0.9
    # OA_bu: built→built 6+1+3, natural→natural 7+2+4 right; 2→D and D→1 wrong; E and the
    # prediction 0 out: 23 / 25
    assert got["oa_bu"] == 0.92
    # OA_w: 6 + .92 + 3 + .08 (2→D) + 7 + 2 × .75 (D→B) + 0 (D→1) + 1 + .25 (E→6) + 4 = 23.75
    assert got["oa_w"] == round(23.75 / 28, 4)
    # F1 = 2 tp / (reference + predicted): 1: 12/15, 2: 6/8, D: 14/18, E: 2/3, G: 1
    assert got["f1"] == {"1": 0.8, "2": 0.75, "D": round(14 / 18, 4), "E": round(2 / 3, 4),
                         "G": 1.0}


def test_undefined_measures_are_none() -> None:
    natural_only = lcz_accuracies(_cm({(14, 14): 3, (17, 14): 1}))
    assert natural_only["oa_u"] is None  # no pixel urban in both
    assert natural_only["oa"] == 0.75
    assert natural_only["oa_bu"] == 1.0


def _rows(per_unit: list[dict[tuple[int, int], int]]) -> tuple[np.ndarray, ...]:
    units, cells, counts = [], [], []
    for u, entries in enumerate(per_unit):
        for (ref, pred), n in entries.items():
            units.append(u)
            cells.append(ref * 18 + pred)
            counts.append(n)
    return tuple(np.array(v, dtype=np.int64) for v in (units, cells, counts))


def test_identical_units_give_a_point_interval() -> None:
    got = cluster_bootstrap(*_rows([{(1, 1): 3, (1, 2): 1}] * 6), replicates=50)
    assert got["ci"]["oa"] == [0.75, 0.75]
    assert got["f1_ci"]["1"] == [round(6 / 7, 4)] * 2
    assert got["units"] == 6
    assert got["replicates"] == 50


def test_the_bootstrap_resamples_units_not_pixels() -> None:
    """Two big areas, one all right and one all wrong: a pixel bootstrap would give OA ≈ 0.5
    ± 0.002; resampling the two areas gives 0, 0.5 or 1 — the honest answer."""
    rows = _rows([{(6, 6): 100_000}, {(6, 9): 100_000}])
    got = cluster_bootstrap(*rows, replicates=200, seed=1)
    assert got["ci"]["oa"] == [0.0, 1.0]
    again = cluster_bootstrap(*rows, replicates=200, seed=1)
    assert again == got  # fixed by the seed


def test_interval_holds_the_estimate_and_narrows_with_units() -> None:
    rng = np.random.default_rng(3)

    def world(n: int) -> tuple[np.ndarray, ...]:
        return _rows([{(3, 3): int(rng.integers(50, 100)), (3, 5): int(rng.integers(0, 50))}
                      for _ in range(n)])

    few, many = (cluster_bootstrap(*world(n), replicates=300) for n in (10, 400))
    width = {k: g["ci"]["oa"][1] - g["ci"]["oa"][0] for k, g in (("few", few), ("many", many))}
    assert width["many"] < width["few"] / 3  # ~ 1/sqrt(40) of it


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_level_sets_the_percentiles(level: float) -> None:
    rows = _rows([{(1, 1): k, (1, 3): 10 - k} for k in range(11)])
    narrow = cluster_bootstrap(*rows, replicates=400, level=level)
    wide = cluster_bootstrap(*rows, replicates=400, level=0.99)
    assert wide["ci"]["oa"][0] <= narrow["ci"]["oa"][0] <= narrow["ci"]["oa"][1] <= \
        wide["ci"]["oa"][1]
    assert narrow["level"] == level
