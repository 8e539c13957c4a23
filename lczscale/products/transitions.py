"""Change between two years of an LCZ map, pixel by pixel, and its transition areas (numpy only).

The change code of a pixel (uint16) says what became of it between year A and year B:

- ``0`` (``NODATA``): either year has no class there (lcz 0);
- ``from * 18 + to`` (``STRIDE`` = 18; 19 … 323) with ``from``, ``to`` the classes 1–17 of the
  two years, where the change is trusted: both years are confident (confidence ≥
  ``min_confidence``) — or the class is the same in both (``from == to``: no change, whatever
  the confidence). So ``from == to`` is *no change*, ``from != to`` a *confident change*;
- ``1`` (``UNCERTAIN``): the class differs but at least one year is below ``min_confidence``.

Codes 2–18 are never written (reserved). ``decode`` gives (from, to) back.

Areas: ``code_areas`` sums, per code, the area of the pixels (a pixel area per row, so that
geographic zones, whose pixels shrink toward the poles, are measured right), and
``transition_matrix`` turns the sums into ``{"from": {"to": km²}}`` keyed by the LCZ labels
"1"–"10", "A"–"G" (``lczscale.classes.LCZ_LABELS``), diagonal (no change) included.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lczscale import classes

NODATA = 0
UNCERTAIN = 1
STRIDE = 18
N_CODES = 17 * STRIDE + 17 + 1  # every code 0 … 323
ENCODING = ("0 = nodata (either year without a class); 1 = uncertain (the class differs and "
            "either year's confidence is below min_confidence); from*18+to (19-323) with the "
            "LCZ codes 1-17 of the two years: from == to no change, from != to a confident "
            "change; 2-18 unused")


def encode_change(
    lcz_from: npt.NDArray[np.uint8],
    lcz_to: npt.NDArray[np.uint8],
    conf_from: npt.NDArray[np.uint8],
    conf_to: npt.NDArray[np.uint8],
    min_confidence: int,
) -> npt.NDArray[np.uint16]:
    """The change code (see the module) of each pixel, from the two years' ``lcz`` and
    ``confidence`` (uint8, same shape)."""
    if not lcz_from.shape == lcz_to.shape == conf_from.shape == conf_to.shape:
        raise ValueError(f"arrays of one shape expected, got {lcz_from.shape}, {lcz_to.shape}, "
                         f"{conf_from.shape}, {conf_to.shape}")
    a = lcz_from.astype(np.uint16)
    b = lcz_to.astype(np.uint16)
    valid = (a > 0) & (b > 0) & (a <= 17) & (b <= 17)
    sure = (conf_from >= min_confidence) & (conf_to >= min_confidence)
    code = np.where(sure | (a == b), a * STRIDE + b, UNCERTAIN).astype(np.uint16)
    code[~valid] = NODATA
    return code


def decode(code: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(from, to) classes of change codes; 0 for nodata and uncertain pixels."""
    c = np.asarray(code, dtype=np.int64)
    known = c >= STRIDE + 1
    return (np.where(known, c // STRIDE, 0).astype(np.uint8),
            np.where(known, c % STRIDE, 0).astype(np.uint8))


def code_areas(
    code: npt.NDArray[np.uint16],
    row_area: float | npt.NDArray[np.float64],
    inside: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """Area per code (length ``N_CODES``) of the pixels of ``code`` (2-D), each row's pixels
    ``row_area`` each (a number, or one per row), only those ``inside`` when given. In the
    units of ``row_area`` (m² for the cube's zones: exact sums of whole m² for 10 m pixels)."""
    if code.ndim != 2:
        raise ValueError(f"a 2-D block of codes expected, got shape {code.shape}")
    weights = np.broadcast_to(np.asarray(row_area, dtype=np.float64).reshape(-1, 1)
                              if np.ndim(row_area) else np.float64(row_area), code.shape)
    keep = np.ones(code.shape, dtype=bool) if inside is None else inside
    return np.bincount(code[keep].astype(np.int64), weights=weights[keep], minlength=N_CODES
                       )[:N_CODES]


def transition_matrix(areas: npt.NDArray[np.float64], scale: float = 1e-6,
                      digits: int = 6) -> dict[str, dict[str, float]]:
    """``{"from": {"to": area}}`` of the non-empty transitions (diagonal = no change), keyed by
    LCZ labels, areas times ``scale`` (default m² → km²) rounded to ``digits``."""
    out: dict[str, dict[str, float]] = {}
    for f in range(1, 18):
        row = {classes.LCZ_LABELS[t - 1]: round(float(areas[f * STRIDE + t]) * scale, digits)
               for t in range(1, 18) if areas[f * STRIDE + t] > 0}
        if row:
            out[classes.LCZ_LABELS[f - 1]] = row
    return out


def summary(areas: npt.NDArray[np.float64], scale: float = 1e-6,
            digits: int = 6) -> dict[str, float]:
    """Totals of ``code_areas``: changed (confident), unchanged, uncertain and all pixels with a
    class in both years, times ``scale``."""
    idx = np.arange(N_CODES)
    known = idx >= STRIDE + 1
    same = known & (idx // STRIDE == idx % STRIDE)
    changed = known & ~same

    def total(mask: npt.NDArray[np.bool_]) -> float:
        return round(float(areas[mask].sum()) * scale, digits)

    return {"changed_km2": total(changed), "unchanged_km2": total(same),
            "uncertain_km2": total(idx == UNCERTAIN), "valid_km2": total(idx > NODATA)}
