"""Accuracy of a cube against a reference cube: per-class IoU, mIoU, OA, Cohen's kappa.

Pixels are compared where the reference has a class (1–17); a prediction of 0 (nodata) there
counts as wrong. The optional baseline is a coarse label raster warped (nearest) onto the same
pixels — the "just upsample the 100 m map" answer a 10 m model must beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from lczscale import classes
from lczscale.errors import CubeError
from lczscale.grid import Window
from lczscale.io.cube import cube_attrs, cube_zones, open_root, read_window
from lczscale.io.labels import read_labels
from lczscale.io.shards import stored_chunks

N = 18  # 0 = nodata + 17 classes


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


def _stored_windows(url: str, zone_name: str, year_index: int) -> list[Window]:
    """Windows of the chunks actually written in a cube's ``lcz`` array for one year."""
    arr = open_root(url, "r", None)[zone_name]["lcz"]  # type: ignore[index]
    assert isinstance(arr, zarr.Array)
    bh, bw = (arr.shards or arr.chunks)[1:]
    return [Window(r * bh, c * bw, bh, bw) for r, c in stored_chunks(arr, (year_index,))]


def evaluate(
    cube_url: str,
    truth_url: str,
    year: int | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Scores of the cube (and of the baseline raster, if given) against the reference cube."""
    cube_attrs(cube_url)
    cube_attrs(truth_url)
    pred_zones = {z.name: z for z in cube_zones(cube_url)}
    cm = np.zeros((N, N), dtype=np.int64)
    cm_base = np.zeros((N, N), dtype=np.int64)
    used_year = None
    for zone in cube_zones(truth_url):
        g = open_root(truth_url, "r", None)[zone.name]
        years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr]
        truth_year = years[-1] if year is None else year
        if truth_year not in years:
            raise CubeError(f"reference {truth_url} has no year {truth_year} (years: {years})")
        pg = open_root(cube_url, "r", None)[zone.name] if zone.name in pred_zones else None
        pred_years = [] if pg is None else [int(v) for v in pg["time"][:]]  # type: ignore
        pred_year = year if year is not None else (max(pred_years) if pred_years else None)
        used_year = pred_year
        for window in _stored_windows(truth_url, zone.name, years.index(truth_year)):
            window = window.intersection(zone.full_window) or window
            truth = read_window(truth_url, zone, truth_year, window)
            if not truth.any():
                continue
            if pred_year is not None and pred_year in pred_years:
                pred = read_window(cube_url, zone, pred_year, window)
            else:
                pred = np.zeros_like(truth)
            cm += confusion(pred, truth)
            if baseline:
                cm_base += confusion(read_labels(baseline, zone, window), truth)
    if cm.sum() == 0:
        raise CubeError(f"reference {truth_url} has no labelled pixel to compare")
    out: dict[str, Any] = {"cube": cube_url, "truth": truth_url, "year": used_year} | scores(cm)
    out["confusion"] = cm[1:, :].tolist()
    if baseline:
        base = scores(cm_base)
        out["baseline"] = baseline
        out["baseline_miou"] = base["miou"]
        out["baseline_oa"] = base["oa"]
        out["baseline_kappa"] = base["kappa"]
        out["baseline_per_class_iou"] = base["per_class_iou"]
    return out
