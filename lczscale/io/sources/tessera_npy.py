"""The two .npy files of a TESSERA tile (codes and scales), read safely through fsspec.

Headers are parsed with ``numpy.lib.format`` (versions 1.0 and 2.0) and never unpickled: an
object dtype is refused, and the header is checked against the file size and against the
tile's landmask shape (codes int8 (H, W, 128); scales float32 (H, W) or (H, W, 128)). Rows come
from one ranged read (the whole file when it is Fortran-ordered). A missing file raises
FileNotFoundError for the caller to name; a malformed or truncated one raises SourceError naming
the file.

3-D scales (H, W, 128) equal across bands are used as the 2-D scale exactly. Where they vary,
the pixel is re-quantised on the host: values ``q·s`` per band, new scale ``max|q·s|/127``,
new codes ``round(q·s / scale)``; each value moves by at most half the new step (scale/2).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from fsspec import AbstractFileSystem

from lczscale.errors import SourceError
from lczscale.io.sources.geotessera_registry import BANDS, FIX
from lczscale.io.sources.protocol import quantise_per_pixel


class NpyHeader(NamedTuple):
    """What a .npy header says: shape, dtype, order and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int


def read_header(fs: AbstractFileSystem, path: str) -> NpyHeader:
    """The .npy header (shape, dtype, data offset), validated against the file size."""
    fmt = np.lib.format
    try:
        with fs.open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
            f.seek(0, 2)
            size = f.tell()
    except ValueError as exc:
        raise SourceError(f"{path} is not a valid .npy file ({exc}): it is empty, "
                          f"truncated or overwritten; {FIX}") from exc
    if dtype.hasobject:
        raise SourceError(f"{path} holds Python objects; TESSERA tiles are plain int8/float32 "
                          "arrays (lczscale never unpickles input)")
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        raise SourceError(
            f"{path} is truncated: its header says {dtype} {tuple(shape)} ({need} bytes with "
            f"the header) but the file has {size} bytes; {FIX}"
        )
    return NpyHeader(tuple(shape), dtype, bool(fortran), offset)


def read_rows(fs: AbstractFileSystem, path: str, hdr: NpyHeader, r0: int, r1: int
              ) -> np.ndarray:
    """Rows r0..r1 of a C-order .npy by one ranged read (the whole file if Fortran)."""
    per_row = math.prod(hdr.shape[1:]) * hdr.dtype.itemsize
    with fs.open(path, "rb") as f:
        if hdr.fortran:
            f.seek(hdr.offset)
            data = np.frombuffer(f.read(), hdr.dtype, math.prod(hdr.shape))
            return data.reshape(hdr.shape, order="F")[r0:r1]
        f.seek(hdr.offset + r0 * per_row)
        buf = f.read((r1 - r0) * per_row)
    if len(buf) != (r1 - r0) * per_row:
        raise SourceError(f"{path} ended early reading rows {r0}..{r1 - 1} (got {len(buf)} "
                          f"of {(r1 - r0) * per_row} bytes): the file is truncated; {FIX}")
    return np.frombuffer(buf, hdr.dtype).reshape((r1 - r0, *hdr.shape[1:]))


def check_npy(path: str, hdr: NpyHeader, what: str, shape: tuple[int, int]) -> None:
    """Embeddings int8 (h, w, 128); scales float32 (h, w) or (h, w, 128)."""
    h, w = shape
    if what == "embeddings":
        ok = hdr.dtype == np.int8 and hdr.shape == (h, w, BANDS)
        want = f"int8 ({h}, {w}, {BANDS})"
    else:
        ok = hdr.dtype.kind == "f" and hdr.dtype.itemsize == 4 and hdr.shape in (
            (h, w), (h, w, BANDS))
        want = f"float32 ({h}, {w}) or ({h}, {w}, {BANDS})"
    if not ok:
        raise SourceError(
            f"{path} is {hdr.dtype} {hdr.shape}, but TESSERA {what} of this tile are {want} "
            f"(the landmask is {h}×{w} px and TESSERA embeddings have {BANDS} dimensions); {FIX}"
        )


def flatten_scales(q: np.ndarray, s: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, 2-D float32 scales): 3-D scales equal across bands collapse exactly; pixels
    whose scales vary are re-quantised to one scale (error ≤ half the new step)."""
    s = s.astype(np.float32)
    if s.ndim == 2:
        return q, s
    first = s[..., :1]
    same = ((s == first) | (np.isnan(s) & np.isnan(first))).all(axis=-1)
    out = s[..., 0].copy()
    if same.all():
        return q, out
    vary = ~same
    sv = s[vary]
    if not np.isfinite(sv).all() or (sv < 0).any():
        r, c = np.argwhere(vary & ~(np.isfinite(s) & (s >= 0)).all(axis=-1))[0]
        raise SourceError(
            f"{path}: per-band scales vary and include NaN, ±inf or negative values (first at "
            f"tile row {r}, col {c}): the scales file is damaged; {FIX}"
        )
    codes, scale = quantise_per_pixel(q[vary].astype(np.float32) * sv, axis=1)
    scale = np.where(scale > 0, scale, sv.max(axis=1)).astype(np.float32)  # all-zero codes
    q = q.copy()
    q[vary] = codes
    out[vary] = scale
    return q, out
