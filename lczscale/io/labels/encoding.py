"""LCZ value encodings → codes 1–17 with 0 = nodata (pure numpy, no I/O).

Real label products write the same 17 classes in several ways (data-formats.md §3.4):

- integers 1–17 (11–17 = A–G), 0 = unclassified: the global map, LCZ Generator, WUDAPT;
- GeoClimate (OSM / BD TOPO vector LCZ): 1–10 and **101–107** for A–G;
- float rasters (after a trip through R or xarray) with −1 or NaN as nodata;
- int32 with a declared nodata such as −999 (w2w's Zaragoza sample);
- So2Sat LCZ42 one-hot vectors → argmax + 1 (decoded in ``so2sat``).

The rule, applied to a raster's sample at open and again to every window read:

1. 0 is always nodata (no LCZ is 0), and so is the declared nodata tag. In floats NaN is always
   nodata, and −1 is nodata when declared *or present* (no encoding uses negatives, and R /
   xarray exports often write −1 untagged).
2. Every other value must be integral and in 1–17 or 101–107, else ``SourceError`` naming the
   file and the offending values with their pixel counts: an unknown code is never dropped
   silently (a non-integral value usually means someone resampled labels bilinearly).
3. The A–G convention comes from the values: 11–17 → "lcz 1-17", 101–107 → GeoClimate; both in
   one file or window → ``SourceError`` (two encodings mixed); neither (only built classes
   1–10) is reported as "lcz 1-17" and either convention is accepted later. The two ranges do
   not overlap, so decoding never depends on the guess — detection only makes it visible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lczscale.classes import LCZ_CLASS_NAMES, LCZ_LABELS
from lczscale.errors import SourceError

LCZ = "lcz 1-17"
GEOCLIMATE = "geoclimate 101-107 for A-G"
LCZ_LETTERS = "lcz labels 1-10, A-G"
SO2SAT = "so2sat one-hot (argmax+1)"
SO2SAT_SOFT = "so2sat soft labels (argmax+1)"

U8 = npt.NDArray[np.uint8]


def value_summary(values: npt.NDArray[np.generic], limit: int = 10) -> str:
    """``"200 (4 px), 2.5 (13 px)"``: the distinct values of an array with their counts."""
    uniq, counts = np.unique(values, return_counts=True)
    parts = [f"{_fmt(u)} ({c} px)" for u, c in zip(uniq[:limit], counts[:limit], strict=True)]
    more = f" and {len(uniq) - limit} more" if len(uniq) > limit else ""
    return ", ".join(parts) + more


def _fmt(v: object) -> str:
    f = float(v)  # type: ignore[arg-type]
    return str(int(f)) if f.is_integer() else f"{f:g}"


def nodata_name(dtype: np.dtype, declared: float | None, sample_has_m1: bool) -> str | None:
    """The nodata half of an encoding name; None when nodata is only the conventional 0."""
    if dtype.kind == "f":
        if declared is not None and math.isnan(declared):
            return "float with NaN nodata"
        if declared is not None and declared not in (0.0, -1.0):
            return f"float with nodata {_fmt(declared)}"
        if declared == -1.0 or sample_has_m1:
            return "float with nodata -1"
        return "float with NaN nodata"
    if declared is None or declared == 0:
        return None
    return f"{dtype.name} nodata {_fmt(declared)}"


def nodata_values(dtype: np.dtype, declared: float | None, where: str) -> tuple[float, ...]:
    """Values besides 0 (and NaN) that mean nodata in a raster of this dtype."""
    out: list[float] = []
    if declared is not None and not math.isnan(declared):
        if dtype.kind in "iu" and not float(declared).is_integer():
            raise SourceError(f"{where}: integer raster declares a non-integral nodata {declared}")
        out.append(float(declared))
    if dtype.kind == "f" and -1.0 not in out:
        out.append(-1.0)
    return tuple(out)


def decode(
    values: npt.NDArray[np.generic], nodata: Sequence[float], where: str
) -> tuple[U8, str | None]:
    """(uint8 codes 1–17 with 0 = nodata, A–G convention seen: LCZ, GEOCLIMATE or None)."""
    v = np.asarray(values)
    if v.dtype.kind not in "iuf":
        raise SourceError(f"{where}: LCZ labels must be integers or floats, not {v.dtype}")
    nod = v == 0
    if v.dtype.kind == "f":
        nod |= np.isnan(v)
        whole = np.isfinite(v) & (v == np.round(v))
    else:
        whole = np.ones(v.shape, dtype=bool)
    for x in nodata:
        nod |= v == x
    lcz = whole & (v >= 1) & (v <= 17) & ~nod
    geo = whole & (v >= 101) & (v <= 107) & ~nod
    bad = ~(nod | lcz | geo)
    if bad.any():
        raise SourceError(
            f"{where}: values {value_summary(v[bad])} are in no known LCZ encoding (1–17 with "
            "11–17 = A–G, GeoClimate 1–10 + 101–107, 0 / declared nodata / NaN / −1 = nodata); "
            "pick the band or attribute that holds LCZ classes, or declare the nodata value"
        )
    has_ag = bool((lcz & (v >= 11)).any())
    has_geo = bool(geo.any())
    if has_ag and has_geo:
        raise SourceError(
            f"{where}: holds both 11–17 and 101–107, i.e. A–G in two encodings "
            f"({value_summary(v[(lcz & (v >= 11)) | geo])}); fix the file so it uses one"
        )
    out = np.zeros(v.shape, dtype=np.uint8)
    out[lcz] = v[lcz].astype(np.uint8)
    out[geo] = (v[geo] - 90).astype(np.uint8)
    return out, (GEOCLIMATE if has_geo else LCZ if has_ag else None)


def check_convention(seen: str | None, expected: str | None, where: str) -> None:
    """Refuse a window whose A–G convention contradicts the one the file's sample showed."""
    if seen is not None and expected is not None and seen != expected:
        raise SourceError(
            f"{where}: A–G written as '{seen}' here but as '{expected}' elsewhere in the file; "
            "one file must use one encoding"
        )


# --------------------------------------------------------------------------------------------
# Class values in attributes and folder names (vectors)

_NAMES = {re.sub(r"[^a-z]", "", n.lower()): i for i, n in enumerate(LCZ_CLASS_NAMES, start=1)}
_CODE = re.compile(r"^(?:lcz)?[\s_:.\-]*(\d{1,3}|[a-g])(?![a-z0-9])", re.IGNORECASE)


def class_value(value: object) -> tuple[int, str | None] | None:
    """(code 1–17, A–G convention or None for 1–10) of one attribute value or folder name;
    None = no class (null, 0, empty).

    Accepts numbers (1–17, GeoClimate 101–107; integral floats too), numeric strings, labels
    ("A", "LCZ 2", "LCZ_A", "10 Heavy industry", "A: Dense trees") and class names ("Dense
    trees"). Raises ``ValueError`` for anything else, so the caller can name the file.
    """
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError(value)
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        if math.isnan(f) or f == 0:
            return None
        if f.is_integer() and 1 <= f <= 17:
            return int(f), (LCZ if f >= 11 else None)
        if f.is_integer() and 101 <= f <= 107:
            return int(f) - 90, GEOCLIMATE
        raise ValueError(value)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        try:
            return class_value(float(s))
        except ValueError:
            pass
        m = _CODE.match(s)
        if m:
            tok = m.group(1).upper()
            if tok.isdigit():
                return class_value(int(tok))
            return LCZ_LABELS.index(tok) + 1, LCZ_LETTERS
        key = re.sub(r"[^a-z]", "", s.lower())
        if key in _NAMES:
            return _NAMES[key], (LCZ_LETTERS if _NAMES[key] >= 11 else None)
    raise ValueError(value)


def vector_encoding(conventions: set[str], where: str) -> str:
    """One encoding name for the conventions seen across a vector file's features."""
    if GEOCLIMATE in conventions and conventions & {LCZ, LCZ_LETTERS}:
        raise SourceError(
            f"{where}: class values write A–G both as 101–107 and as 11–17 / letters; one file "
            "must use one encoding"
        )
    if GEOCLIMATE in conventions:
        return GEOCLIMATE
    if LCZ_LETTERS in conventions and LCZ not in conventions:
        return LCZ_LETTERS
    return LCZ
