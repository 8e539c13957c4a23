"""Accuracy of a cube against a reference cube: per-class IoU, mIoU, OA, Cohen's kappa.

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
import zarr
from pyproj import CRS

from lczscale import classes
from lczscale.core.grid import Aoi, Window, Zone, zones_for_aoi
from lczscale.errors import CubeError
from lczscale.io.cube.store import cube_attrs, cube_grid, cube_zones, open_root, read_window
from lczscale.io.labels.reader import read_labels
from lczscale.io.shards import stored_chunks
from lczscale.products.counts import BlockCounts, block_counts, complete, majority, merge

N = 18  # 0 = nodata + 17 classes
CELL_M = 100.0  # agreement cell size (the coarse LCZ maps' resolution)
M_PER_DEGREE = 111_320.0  # metres per degree of latitude, for zones in a geographic CRS
BBOX_DENSIFY_DEG = 0.01  # vertex spacing of the bbox before projecting it (edges bend in UTM)

Bbox = tuple[float, float, float, float]


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


def cell_factor(zone: Zone, cell_m: float = CELL_M) -> int:
    """Zone pixels per side of a ``cell_m`` cell (10 for 10 m UTM zones and the ~10 m global
    zone, whose degrees count as 111 320 m: the coarse maps' 100 m is nominal too)."""
    crs = CRS.from_user_input(zone.crs)
    size = abs(zone.affine.a)
    if crs.is_geographic:
        metres = size * M_PER_DEGREE
    else:
        metres = size * float(crs.axis_info[0].unit_conversion_factor)
    return max(1, round(cell_m / metres))


def _bbox_windows(truth_url: str, zones: list[Zone], bbox: Bbox) -> dict[str, list[Window]]:
    """Per zone name, the zone windows under a lon/lat bbox (one per part of a bbox split at
    the antimeridian); zones the bbox misses are absent."""
    aoi = Aoi.from_bbox(bbox)
    dense = Aoi(aoi.geometry.segmented(BBOX_DENSIFY_DEG))
    by_name = {z.name: z for z in zones}
    out: dict[str, list[Window]] = {}
    for zone, part in zones_for_aoi(dense, cube_grid(truth_url)):
        if zone.name not in by_name:
            continue
        gtype = part.geom.geom_type
        pieces = list(part.geoms) if gtype.startswith("Multi") or gtype == "GeometryCollection" \
            else [part]
        wins = [w for g in pieces if (w := by_name[zone.name].bounding_window(g)) is not None]
        if wins:
            out[zone.name] = wins
    return out


def _inside(zone: Zone, window: Window, bbox: Bbox) -> np.ndarray:
    """Pixels of a window whose centres lie in the lon/lat bbox (MINLON > MAXLON: across ±180°)."""
    lon, lat = zone.lonlat(window)
    minlon, minlat, maxlon, maxlat = bbox
    in_lat = (lat >= minlat) & (lat <= maxlat)
    if minlon <= maxlon:
        return np.asarray(in_lat & (lon >= minlon) & (lon <= maxlon))
    return np.asarray(in_lat & ((lon >= minlon) | (lon <= maxlon)))


def _cell_confusion(counts: np.ndarray) -> np.ndarray:
    """Confusion of the majorities of (k, 2N) counts (map | reference), cells where both have
    a class; rows = reference."""
    pred, ref = majority(counts[:, :N]), majority(counts[:, N:])
    keep = (pred > 0) & (ref > 0)
    return confusion(pred[keep], ref[keep])


def _windows(truth_url: str, zone: Zone, year_index: int,
             limits: list[Window] | None) -> list[Window]:
    out = []
    for stored in _stored_windows(truth_url, zone.name, year_index):
        stored = stored.intersection(zone.full_window) or stored
        if limits is None:
            out.append(stored)
            continue
        out.extend(w for lim in limits if (w := stored.intersection(lim)) is not None)
    return sorted(set(out))


def evaluate(
    cube_url: str,
    truth_url: str,
    year: int | None = None,
    baseline: str | None = None,
    bbox: Bbox | None = None,
    coarse_reference: str | None = None,
) -> dict[str, Any]:
    """Scores of the cube (and of the baseline raster, if given) against the reference cube.

    ``bbox`` (minlon, minlat, maxlon, maxlat, EPSG:4326) limits the pixels scored.
    ``coarse_reference`` (any label source; default: ``baseline``) is compared with the cube
    at 100 m (``agreement_100m``; None without a coarse reference).
    """
    cube_attrs(cube_url)
    cube_attrs(truth_url)
    pred_zones = {z.name: z for z in cube_zones(cube_url)}
    truth_zones = cube_zones(truth_url)
    limits = None if bbox is None else _bbox_windows(truth_url, truth_zones, bbox)
    ref_path = coarse_reference if coarse_reference is not None else baseline
    cm = np.zeros((N, N), dtype=np.int64)
    cm_base = np.zeros((N, N), dtype=np.int64)
    cm_cells = np.zeros((N, N), dtype=np.int64)
    used_year = None
    for zone in truth_zones:
        if limits is not None and zone.name not in limits:
            continue
        g = open_root(truth_url, "r", None)[zone.name]
        years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr, call-overload]
        truth_year = years[-1] if year is None else year
        if truth_year not in years:
            raise CubeError(f"reference {truth_url} has no year {truth_year} (years: {years})")
        pg = open_root(cube_url, "r", None)[zone.name] if zone.name in pred_zones else None
        pred_years = [] if pg is None else [int(v) for v in pg["time"][:]]  # type: ignore
        pred_year = year if year is not None else (max(pred_years) if pred_years else None)
        used_year = pred_year
        factor = cell_factor(zone)
        carry: list[BlockCounts] = []
        zone_limits = None if limits is None else limits[zone.name]
        for window in _windows(truth_url, zone, years.index(truth_year), zone_limits):
            truth = read_window(truth_url, zone, truth_year, window)
            if bbox is not None:
                truth[~_inside(zone, window, bbox)] = 0
            if not truth.any():
                continue
            if pred_year is not None and pred_year in pred_years:
                pred = read_window(cube_url, zone, pred_year, window)
            else:
                pred = np.zeros_like(truth)
            cm += confusion(pred, truth)
            base = read_labels(baseline, zone, window) if baseline else None
            if base is not None:
                cm_base += confusion(base, truth)
            if ref_path:
                ref = base if ref_path == baseline and base is not None else read_labels(
                    ref_path, zone, window)
                # cells hold the pixels scored above, so they do not see the cube's chunking
                scored = truth > 0
                pred, ref = np.where(scored, pred, 0), np.where(scored, ref, 0)
                origin = (window.row, window.col)
                bp, br = block_counts(pred, origin, factor), block_counts(ref, origin, factor)
                both = np.hstack([bp.counts, br.counts])
                done = complete(bp, factor)  # no other (disjoint) window holds these cells
                cm_cells += _cell_confusion(both[done])
                carry.append(BlockCounts(bp.rows[~done], bp.cols[~done], both[~done]))
        if carry:
            cm_cells += _cell_confusion(merge(carry).counts)
    if cm.sum() == 0:
        if bbox is not None:
            raise CubeError(
                f"bbox {tuple(bbox)} covers no labelled pixel of reference {truth_url} "
                f"(zones {[z.name for z in truth_zones]}); give a bbox over its labelled area"
            )
        raise CubeError(f"reference {truth_url} has no labelled pixel to compare")
    out: dict[str, Any] = {"cube": cube_url, "truth": truth_url, "year": used_year} | scores(cm)
    out["bbox"] = None if bbox is None else list(bbox)
    out["confusion"] = cm[1:, :].tolist()
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
