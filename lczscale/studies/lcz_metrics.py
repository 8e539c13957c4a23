"""The LCZ community's accuracy measures, and bootstrap intervals over independent units.

The LCZ Generator (Demuzere et al. 2021, doi:10.3389/fenvs.2021.637455) and WUDAPT (Bechtel
et al. 2019, Urban Climate 27:24–45, doi:10.1016/j.uclim.2018.10.001) report four overall
accuracies and a per-class F1, computed from a confusion matrix with rows = reference:

- ``oa``: the share of reference pixels given their class (a prediction of 0 — no class — is
  wrong);
- ``oa_u``: the same over the urban classes 1–10 only: the pixels that are urban in the
  reference *and* in the map (the 10 × 10 block of the matrix), as the LCZ Generator's own
  code computes it;
- ``oa_bu``: the accuracy of the binary built (1–10) vs natural map. Natural is A–D, F and G:
  E (bare rock or paved) is in neither group, as in the LCZ Generator's code, because paved
  land is built-up surface without buildings;
- ``oa_w``: every pixel earns the similarity of its predicted class to its reference class,
  ``WEIGHTS[reference, prediction]`` (1 on the diagonal), so confusing compact mid-rise with
  compact high-rise costs less than confusing it with water. A prediction of 0 earns 0.

``WEIGHTS`` is the published 17 × 17 class-similarity matrix of Bechtel et al. (2017, "Quality
of crowdsourced data on urban morphology — the human influence experiment (HUMINEX)", Urban
Science 1(2):15, doi:10.3390/urbansci1020015), as the LCZ Generator's authors distribute it
with their code: ``tables/LCZ_metric.csv`` of github.com/matthiasdemuzere/multitemporal-lcz-
mapping (commit ca273777602e544e4d1fb1adb6b9027227fc01d8), read there by ``create_plots.py``
as ``OA_w = nansum(W * cm) / nansum(cm)``. It is symmetric; the test checks that.

Pixels inside one training area (or one patch of a raster) are not independent samples, so a
pixel bootstrap would give intervals far too narrow. The LCZ Generator resamples training
areas (25 stratified 70/30 splits); here the *units* (polygons, or square spatial blocks of a
raster reference) are resampled with replacement and each replicate's confusion matrix is the
sum of its units' matrices: a cluster bootstrap of the finished map, with percentile intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lczscale import classes

N = 18  # 0 = no class + 17 classes
URBAN = slice(1, 11)  # classes 1–10 in an 18 × 18 matrix
NATURAL = [11, 12, 13, 14, 16, 17]  # A–D, F, G (E is neither built nor natural)
SCALAR_METRICS = ("oa", "oa_u", "oa_bu", "oa_w", "miou", "kappa")

# Bechtel et al. 2017 (see the module docstring); rows = reference 1–17, columns = map 1–17.
WEIGHTS = np.array([
    [1.00, 0.92, 0.83, 0.67, 0.58, 0.50, 0.58, 0.75, 0.42, 0.75, 0.33, 0.25, 0.08, 0.00, 0.25, 0.00, 0.00],  # noqa: E501
    [0.92, 1.00, 0.92, 0.58, 0.67, 0.58, 0.67, 0.83, 0.42, 0.83, 0.42, 0.33, 0.25, 0.08, 0.33, 0.08, 0.08],  # noqa: E501
    [0.83, 0.92, 1.00, 0.50, 0.58, 0.67, 0.75, 0.92, 0.58, 0.92, 0.50, 0.42, 0.33, 0.17, 0.42, 0.17, 0.17],  # noqa: E501
    [0.67, 0.58, 0.50, 1.00, 0.92, 0.83, 0.75, 0.50, 0.75, 0.58, 0.50, 0.58, 0.50, 0.33, 0.08, 0.33, 0.33],  # noqa: E501
    [0.58, 0.67, 0.58, 0.92, 1.00, 0.92, 0.83, 0.67, 0.83, 0.67, 0.58, 0.67, 0.50, 0.42, 0.17, 0.42, 0.42],  # noqa: E501
    [0.50, 0.58, 0.67, 0.83, 0.92, 1.00, 0.92, 0.75, 0.92, 0.75, 0.67, 0.75, 0.67, 0.58, 0.25, 0.50, 0.50],  # noqa: E501
    [0.58, 0.67, 0.75, 0.75, 0.83, 0.92, 1.00, 0.67, 0.83, 0.67, 0.75, 0.67, 0.58, 0.42, 0.17, 0.42, 0.42],  # noqa: E501
    [0.75, 0.83, 0.92, 0.50, 0.67, 0.75, 0.67, 1.00, 0.75, 0.92, 0.42, 0.50, 0.42, 0.25, 0.50, 0.33, 0.33],  # noqa: E501
    [0.42, 0.42, 0.58, 0.75, 0.83, 0.92, 0.83, 0.75, 1.00, 0.67, 0.58, 0.67, 0.75, 0.58, 0.33, 0.58, 0.58],  # noqa: E501
    [0.75, 0.83, 0.92, 0.58, 0.67, 0.75, 0.67, 0.92, 0.67, 1.00, 0.42, 0.50, 0.42, 0.25, 0.50, 0.33, 0.33],  # noqa: E501
    [0.33, 0.42, 0.50, 0.50, 0.58, 0.67, 0.75, 0.42, 0.58, 0.42, 1.00, 0.92, 0.83, 0.67, 0.42, 0.67, 0.67],  # noqa: E501
    [0.25, 0.33, 0.42, 0.58, 0.67, 0.75, 0.67, 0.50, 0.67, 0.50, 0.92, 1.00, 0.92, 0.75, 0.50, 0.75, 0.75],  # noqa: E501
    [0.08, 0.25, 0.33, 0.50, 0.50, 0.67, 0.58, 0.42, 0.75, 0.42, 0.83, 0.92, 1.00, 0.83, 0.58, 0.83, 0.83],  # noqa: E501
    [0.00, 0.08, 0.17, 0.33, 0.42, 0.58, 0.42, 0.25, 0.58, 0.25, 0.67, 0.75, 0.83, 1.00, 0.75, 0.92, 0.92],  # noqa: E501
    [0.25, 0.33, 0.42, 0.08, 0.17, 0.25, 0.17, 0.50, 0.33, 0.50, 0.42, 0.50, 0.58, 0.75, 1.00, 0.75, 0.75],  # noqa: E501
    [0.00, 0.08, 0.17, 0.33, 0.42, 0.50, 0.42, 0.33, 0.58, 0.33, 0.67, 0.75, 0.83, 0.92, 0.75, 1.00, 0.92],  # noqa: E501
    [0.00, 0.08, 0.17, 0.33, 0.42, 0.50, 0.42, 0.33, 0.58, 0.33, 0.67, 0.75, 0.83, 0.92, 0.75, 0.92, 1.00],  # noqa: E501
])
_W18 = np.zeros((N, N))
_W18[1:, 1:] = WEIGHTS

F64 = npt.NDArray[np.float64]


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(18, 18) counts, rows = truth, columns = prediction, over pixels with truth > 0."""
    keep = truth > 0
    idx = truth[keep].astype(np.int64) * N + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=N * N).reshape(N, N)


def scores(cm: np.ndarray) -> dict[str, Any]:
    """IoU per class present in the reference, their mean, overall accuracy and kappa."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    total = cm[1:].sum()
    per_class = {}
    for c in range(1, N):
        if cm[c].sum() == 0:
            continue
        union = cm[c].sum() + cm[:, c].sum() - tp[c]
        per_class[classes.LCZ_LABELS[c - 1]] = round(float(tp[c] / union), 4)
    oa = float(tp[1:].sum() / total) if total else 0.0
    rows = cm[1:].sum(1)  # reference pixels per class
    cols = cm[1:, 1:].sum(0)  # predicted pixels per class (among reference pixels)
    pe = float((rows * cols).sum() / total**2) if total else 0.0
    kappa = (oa - pe) / (1 - pe) if pe < 1 else 0.0
    return {
        "miou": round(float(np.mean(list(per_class.values()))) if per_class else 0.0, 4),
        "oa": round(oa, 4),
        "kappa": round(kappa, 4),
        "per_class_iou": per_class,
        "pixels": int(total),
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def lcz_accuracies(cm: npt.ArrayLike) -> dict[str, Any]:
    """OA, OA_u, OA_bu, OA_w and per-class F1 of an 18 × 18 matrix (rows = reference, row 0
    ignored). A measure with no pixel to count (no urban pixel for OA_u) is None."""
    m = np.asarray(cm, dtype=np.float64).copy()
    m[0] = 0  # row 0 (no reference class) is never scored
    total = m.sum()
    tp = np.diag(m)
    urban = m[URBAN, URBAN]
    to_built = m[:, URBAN].sum(1)  # per reference class: pixels mapped as built (1–10)
    to_natural = m[:, NATURAL].sum(1)
    right_bu = to_built[URBAN].sum() + to_natural[NATURAL].sum()
    wrong_bu = to_natural[URBAN].sum() + to_built[NATURAL].sum()
    f1: dict[str, float] = {}
    for c in range(1, N):
        ref = m[c].sum()
        if ref == 0:
            continue
        pred = m[:, c].sum()
        f1[classes.LCZ_LABELS[c - 1]] = round(float(2 * tp[c] / (ref + pred)), 4)
    out = {
        "oa": _ratio(tp[1:].sum(), total),
        "oa_u": _ratio(np.trace(urban), urban.sum()),
        "oa_bu": _ratio(right_bu, right_bu + wrong_bu),
        "oa_w": _ratio((_W18 * m).sum(), total),
    }
    return {k: None if v is None else round(v, 4) for k, v in out.items()} | {"f1": f1}


def cluster_bootstrap(
    units: npt.NDArray[np.int64], cells: npt.NDArray[np.int64], counts: npt.NDArray[np.int64],
    replicates: int = 200, seed: int = 0, level: float = 0.95,
) -> dict[str, Any]:
    """Percentile intervals of every measure under resampling whole units with replacement.

    ``units``, ``cells``, ``counts``: one row per (unit, matrix cell) with pixels, ``units``
    numbered 0…U−1 and ``cells`` = reference × 18 + prediction. Returns ``ci`` (scalar measure
    → [low, high]), ``f1_ci`` (class → [low, high]), ``units`` and ``replicates``; a measure
    undefined in some replicates is bounded over the replicates where it is defined.
    """
    n_units = int(units.max()) + 1 if units.size else 0
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in SCALAR_METRICS}
    f1_draws: dict[str, list[float]] = {}
    for _ in range(replicates if n_units else 0):
        weight = np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)
        cm = np.bincount(cells, weights=weight[units] * counts, minlength=N * N).reshape(N, N)
        got = lcz_accuracies(cm) | scores(cm.astype(np.int64))
        for k in SCALAR_METRICS:
            if got[k] is not None:
                draws[k].append(float(got[k]))
        for label, v in got["f1"].items():
            f1_draws.setdefault(label, []).append(v)
    tail = (1.0 - level) / 2 * 100

    def bounds(v: list[float]) -> list[float] | None:
        if not v:
            return None
        lo, hi = np.percentile(v, [tail, 100 - tail])
        return [round(float(lo), 4), round(float(hi), 4)]

    return {
        "ci": {k: bounds(v) for k, v in draws.items()},
        "f1_ci": {k: bounds(v) for k, v in sorted(f1_draws.items(), key=lambda kv:
                                                     classes.LCZ_LABELS.index(kv[0]))},
        "units": n_units, "replicates": replicates, "level": level,
    }
