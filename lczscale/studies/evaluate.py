"""Accuracy of a cube against a reference — a cube or any label file — in the LCZ community's
measures (OA, OA_u, OA_bu, OA_w, per-class F1; ``lcz_metrics``) and the usual ones (per-class
IoU, mIoU, Cohen's kappa), each with a bootstrap interval over the reference's polygons,
patches or spatial blocks, because pixels of one training area are not independent.

Pixels are compared where the reference has a class (1–17); a prediction of 0 (nodata) there
counts as wrong. The optional baseline is a coarse label raster warped (nearest) onto the same
pixels — the "just upsample the 100 m map" answer a 10 m model must beat.

``bbox`` (lon/lat) restricts the scoring to the reference pixels whose centres lie in it (one
held-out city of a multi-city cube): only the zone windows under the bbox are read, and pixels
of those windows outside it are not counted.

``agreement_100m`` compares the map with a coarse reference at the reference's own scale: both
are reduced to 100 m cells by majority (cells of 10×10 zone pixels on the zone lattice, see
``lczscale.products.counts``) and compared over the cells where both have a class. A 10 m map can be
better than a 100 m map at 10 m and still must agree with it at 100 m. The majority of a cell
is taken over the pixels scored (reference labelled, inside the bbox) — the same pixels as the
10 m scores — so it does not depend on how the reference cube is chunked either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lczscale.errors import CubeError
from lczscale.io.cube.store import cube_attrs, cube_zones, open_root, read_window
from lczscale.io.labels.reader import read_labels
from lczscale.products.counts import BlockCounts, block_counts, complete, majority, merge
from lczscale.studies.lcz_metrics import N, cluster_bootstrap, confusion, lcz_accuracies, scores
from lczscale.studies.reference import Bbox, Reference, cell_factor, inside

__all__ = ["Bbox", "confusion", "evaluate", "scores"]

CELL_M = 100.0  # agreement cell size (the coarse LCZ maps' resolution)
BOOTSTRAP = 200  # replicates of the cluster bootstrap (percentile intervals settle by ~200)
BLOCK_M = 1000.0  # bootstrap block of a map reference: ~ the size of one LCZ patch


def _cell_confusion(counts: np.ndarray) -> np.ndarray:
    """Confusion of the majorities of (k, 2N) counts (map | reference), cells where both have
    a class; rows = reference."""
    pred, ref = majority(counts[:, :N]), majority(counts[:, N:])
    keep = (pred > 0) & (ref > 0)
    return confusion(pred[keep], ref[keep])


def _unit_rows(keys: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, ...]:
    """(unit key, matrix cell, pixels) rows of one window's scored pixels."""
    uk, inv = np.unique(keys, return_inverse=True)
    comb, counts = np.unique(inv.astype(np.int64) * N * N + cells, return_counts=True)
    return uk[comb // (N * N)], comb % (N * N), counts


def evaluate(
    cube_url: str,
    truth_url: str,
    year: int | None = None,
    baseline: str | None = None,
    bbox: Bbox | None = None,
    coarse_reference: str | None = None,
    bootstrap: int = BOOTSTRAP,
    block_m: float = BLOCK_M,
) -> dict[str, Any]:
    """Scores of the cube (and of the baseline raster, if given) against a reference.

    ``truth_url``: an lczscale cube or any label file (``lczscale.studies.reference``).
    ``bbox`` (minlon, minlat, maxlon, maxlat, EPSG:4326) limits the pixels scored.
    ``coarse_reference`` (any label source; default: ``baseline``) is compared with the cube
    at 100 m (``agreement_100m``; None without a coarse reference). ``bootstrap`` replicates
    (0: none) give the intervals in ``ci`` / ``f1_ci``, resampling the reference's polygons or
    patches, or its blocks of ``block_m`` metres.
    """
    cube_attrs(cube_url)
    ref = Reference(truth_url, cube_url, year=year, block_m=block_m)
    if ref.is_cube:
        cube_attrs(truth_url)
    pred_zones = {z.name: z for z in cube_zones(cube_url)}
    ref_path = coarse_reference if coarse_reference is not None else baseline
    cm = np.zeros((N, N), dtype=np.int64)
    cm_base = np.zeros((N, N), dtype=np.int64)
    cm_cells = np.zeros((N, N), dtype=np.int64)
    rows: list[tuple[np.ndarray, ...]] = []
    used_year = None
    planned = ref.zones(bbox)
    for zone_index, (zone, windows, truth_year) in enumerate(planned):
        pg = open_root(cube_url, "r", None)[zone.name] if zone.name in pred_zones else None
        pred_years = [] if pg is None else [int(v) for v in pg["time"][:]]  # type: ignore
        pred_year = year if year is not None else (max(pred_years) if pred_years else None)
        used_year = pred_year
        factor = cell_factor(zone, CELL_M)
        carry: list[BlockCounts] = []
        for window in windows:
            truth = ref.read(zone, window, truth_year)
            if not truth.any():
                continue
            if bbox is not None or not ref.is_cube:
                truth[~inside(zone, window, bbox, own_band=not ref.is_cube)] = 0
                if not truth.any():
                    continue
            if pred_year is not None and pred_year in pred_years:
                pred = read_window(cube_url, zone, pred_year, window)
            else:
                pred = np.zeros_like(truth)
            cm += confusion(pred, truth)
            if bootstrap:
                scored = truth > 0
                rows.append(_unit_rows(ref.units(zone, zone_index, window)[scored],
                                       truth[scored].astype(np.int64) * N + pred[scored]))
            base = read_labels(baseline, zone, window) if baseline else None
            if base is not None:
                cm_base += confusion(base, truth)
            if ref_path:
                coarse = base if ref_path == baseline and base is not None else read_labels(
                    ref_path, zone, window)
                # cells hold the pixels scored above, so they do not see the cube's chunking
                scored = truth > 0
                pred, coarse = np.where(scored, pred, 0), np.where(scored, coarse, 0)
                origin = (window.row, window.col)
                bp, br = block_counts(pred, origin, factor), block_counts(coarse, origin, factor)
                both = np.hstack([bp.counts, br.counts])
                done = complete(bp, factor)  # no other (disjoint) window holds these cells
                cm_cells += _cell_confusion(both[done])
                carry.append(BlockCounts(bp.rows[~done], bp.cols[~done], both[~done]))
        if carry:
            cm_cells += _cell_confusion(merge(carry).counts)
    if cm.sum() == 0:
        where = f"zones {[z.name for z, _, _ in planned]}"
        if bbox is not None:
            raise CubeError(
                f"bbox {tuple(bbox)} covers no labelled pixel of reference {truth_url} "
                f"({where}); give a bbox over its labelled area"
            )
        raise CubeError(f"reference {truth_url} has no labelled pixel on the cube's grid "
                        f"({where}) to compare; is it the right file for this cube?")
    out: dict[str, Any] = {"cube": cube_url, "truth": truth_url, "year": used_year} | scores(cm)
    out |= lcz_accuracies(cm)
    out["bbox"] = None if bbox is None else list(bbox)
    out["confusion"] = cm[1:, :].tolist()
    if bootstrap:
        units, cells, counts = (np.concatenate(parts) for parts in zip(*rows, strict=True))
        dense = np.unique(units, return_inverse=True)[1].astype(np.int64)
        boot = cluster_bootstrap(dense, cells, counts, replicates=bootstrap)
        out |= boot | {"ci_units": ref.unit_kind}
    if baseline:
        base_scores = scores(cm_base)
        out["baseline"] = baseline
        out["baseline_miou"] = base_scores["miou"]
        out["baseline_oa"] = base_scores["oa"]
        out["baseline_kappa"] = base_scores["kappa"]
        out["baseline_per_class_iou"] = base_scores["per_class_iou"]
        out["baseline_confusion"] = cm_base[1:, :].tolist()
    out["agreement_100m"] = None if not ref_path else _agreement(cm_cells, ref_path)
    return out


def _agreement(cm: np.ndarray, reference: str) -> dict[str, Any]:
    """Scores of the 100 m cells; OA/mIoU/kappa are None when no cell has a class in both."""
    s = scores(cm)
    cells = s["pixels"]
    return {
        "reference": reference, "cell_m": CELL_M, "cells": cells,
        "oa": s["oa"] if cells else None, "miou": s["miou"] if cells else None,
        "kappa": s["kappa"] if cells else None,
        "per_class_iou": s["per_class_iou"],
    }
