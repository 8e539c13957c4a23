"""A label raster held compressed in bands of rows: the sample index at kilobytes per city.

A training region's labels, split and loss target are uint8 rasters at the embeddings' 10 m,
3 bytes a pixel when held plain: 39 MB for the 12 benchmark cities of 6 km, and a continent's
worth of the global LCZ map would not fit. LCZ labels are large flat areas (a 100 m map
upsampled, or polygons), so those 39 MB pack to 0.66 MB (``index_bytes``;
benchmarks/README.md § Streamed training). A patch decodes only the bands under it, and a
sample finds the k-th pixel of its class through each band's class counts, decoding one band:
no whole region is unpacked to draw or cut a patch.
"""

from __future__ import annotations

import zlib

import numpy as np

BAND = 64  # rows a band: a 64 px patch touches one or two
CLASSES = 18  # values counted per band (LCZ 0–17; split codes are fewer)


class PackedRaster:
    """A uint8 (h, w) raster as zlib-compressed bands of ``BAND`` rows, with each band's count
    of every value below ``CLASSES``. Indexing with two slices (``a[rows, cols]``) decodes the
    bands under them; ``unpack`` gives the whole raster."""

    __slots__ = ("_bands", "counts", "shape")

    def __init__(self, a: np.ndarray) -> None:
        if a.ndim != 2 or a.dtype != np.uint8:
            raise ValueError(f"a packed raster is uint8 (h, w), not {a.dtype} {a.shape}")
        self.shape: tuple[int, int] = (int(a.shape[0]), int(a.shape[1]))
        self._bands = [zlib.compress(np.ascontiguousarray(a[r:r + BAND]).tobytes(), 1)
                       for r in range(0, self.shape[0], BAND)]
        self.counts = np.stack([np.bincount(a[r:r + BAND].ravel(), minlength=CLASSES)[:CLASSES]
                                for r in range(0, self.shape[0], BAND)]).astype(np.int32)

    @property
    def nbytes(self) -> int:
        """Bytes held: the compressed bands and the counts."""
        return sum(len(b) for b in self._bands) + self.counts.nbytes

    @property
    def size(self) -> int:
        """Pixels."""
        return self.shape[0] * self.shape[1]

    def totals(self) -> np.ndarray:
        """(CLASSES,) pixels of each value over the whole raster."""
        return self.counts.sum(axis=0, dtype=np.int64)

    def _band(self, i: int) -> np.ndarray:
        rows = min(BAND, self.shape[0] - i * BAND)
        return np.frombuffer(zlib.decompress(self._bands[i]), np.uint8).reshape(rows,
                                                                                self.shape[1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a new array)."""
        start, stop = max(start, 0), min(stop, self.shape[0])
        if stop <= start:
            return np.zeros((0, self.shape[1]), np.uint8)
        parts = [self._band(i) for i in range(start // BAND, (stop - 1) // BAND + 1)]
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
        first = (start // BAND) * BAND
        return whole[start - first:stop - first]

    def unpack(self) -> np.ndarray:
        """The whole raster (validation, the stored index: never per patch)."""
        return self.rows(0, self.shape[0])

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("a packed raster is cut by unit-step slices only")
        return self.rows(start, stop)[:, cols]

    def nth(self, value: int, k: int) -> tuple[int, int]:
        """(row, col) of the ``k``-th pixel equal to ``value`` in row-major order."""
        before = np.cumsum(self.counts[:, value], dtype=np.int64)
        band = int(np.searchsorted(before, k, side="right"))
        if band >= len(self._bands):
            raise IndexError(f"the raster holds {int(before[-1])} pixels of {value}, not {k + 1}")
        k -= int(before[band - 1]) if band else 0
        y, x = divmod(int(np.flatnonzero(self._band(band).ravel() == value)[k]), self.shape[1])
        return band * BAND + y, x
