"""Which pixels of a quantised TESSERA window are corrupt, and one message that names them.

A store holds three kinds of pixel — water or not embedded (scale NaN, codes 0: which of the
two the store's own convention says), land without data (scale +inf, codes 0, also what an
unwritten scales chunk reads as) and data (finite scale > 0, at least one nonzero code: a
per-pixel scale quantiser always writes one). :func:`corruption` checks a whole window
in one vectorised pass against these rules:

1. a scale is negative or −inf;
2. a scale says water or no data (NaN, +inf) but the codes are not all zero — a scales chunk
   was damaged, deleted or replaced;
3. a scale is finite and > 0 but all codes are zero — an embeddings chunk is missing or zeroed
   (zarr reads a deleted chunk, or a zero-byte shard, as the fill value 0). Scale exactly 0
   is accepted only with all codes 0 (a valid all-zero vector, what the quantiser writes for
   one); scale 0 with nonzero codes is a zeroed scales chunk and breaks a rule;
4. a de-quantised value exceeds ``MAX_ABS_VALUE`` in magnitude, computed per pixel as
   ``max|code| · scale`` (geotessera issue #355: a corrupt scales file gave values near
   −161,685).

Every TESSERA reader (Zarr, Icechunk, NPY tiles) applies them, so damaged input fails the read
loudly instead of being mapped.
"""

from __future__ import annotations

import numpy as np

from lczscale.core.grid import Window, Zone

# A de-quantised value beyond this is corrupt input (a real v1 tile had -161,685 from a bad
# scales file; normal values lie within about -10..41). A read that meets one raises.
MAX_ABS_VALUE = 1000.0
FIX = "re-download or rebuild that TESSERA tile in the store, or leave the area out of the run"


def corrupt_message(
    url: str, zone: Zone, year: int, window: Window, problems: list[tuple[str, str, np.ndarray]]
) -> str:
    """One line: each broken rule with its pixel count and first pixel, then the fix."""
    parts = []
    for what, cause, mask in problems:
        r, c = divmod(int(np.flatnonzero(mask)[0]), window.width)
        parts.append(
            f"{int(mask.sum())} pixels {what} (first at zone row {window.row + r}, "
            f"col {window.col + c}): {cause}"
        )
    return f"corrupt TESSERA input in {url}, {zone.name} year {year}: {'; '.join(parts)}; {FIX}"


def corruption(codes: np.ndarray, sc: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(what is wrong, likely cause, (y, x) mask) for each rule some pixels break; empty when
    all is well.

    One pass of two reductions over the int8 codes (max and min along bands), then cheap
    (y, x) comparisons; each pixel lands in at most one rule.
    """
    peak = np.maximum(codes.max(axis=0).astype(np.int16), -codes.min(axis=0).astype(np.int16))
    written = peak > 0  # any nonzero code
    with np.errstate(invalid="ignore", over="ignore"):
        data = np.isfinite(sc) & (sc > 0)
        value = peak.astype(np.float32) * np.where(data, sc, np.float32(0))
        rules = [
            ("have a negative or -inf scale", "the scales data is damaged", sc < 0),
            ("have a non-finite scale (NaN or +inf: water or no embedding) but nonzero embeddings",
             "a scales chunk was damaged, deleted or replaced",
             (np.isnan(sc) | np.isposinf(sc)) & written),
            ("have a positive scale but all-zero embeddings",
             "an embeddings chunk is missing or zeroed (zarr reads a deleted chunk or a "
             "zero-byte shard as 0)",
             data & ~written),
            ("have scale 0 but nonzero embeddings", "a scales chunk was zeroed",
             (sc == 0) & written),
            (f"de-quantise to |value| > {MAX_ABS_VALUE:g} (up to {float(value.max()):.4g})",
             "absurd for TESSERA, typically a corrupt scales file (cf. geotessera issue #355)",
             value > MAX_ABS_VALUE),
        ]
    return [rule for rule in rules if rule[2].any()]
