"""LCZ labels of any source (100 m maps, So2Sat patches, training polygons) onto a zone window.

``read_labels`` is what training and evaluation call once per region: it opens the file through
``open_labels`` (which detects the kind and the encoding, see ``registry`` and
``encoding``) and keeps the opened source for the next call, so a GeoJSON is parsed and a
raster's encoding sampled once, not once per window. Labels are categorical, so they are warped
with nearest neighbour or mode, never bilinear; embeddings stay on their own grid, only labels
move.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from lczscale.core.grid import Window, Zone
from lczscale.io.labels.protocol import LabelSource
from lczscale.io.labels.registry import detect_kind, open_labels, sniff
from lczscale.io.stores import is_remote, local_path

__all__ = ["LabelSource", "detect_kind", "label_bounds", "open_labels", "read_labels", "sniff"]


def _stamp(path: str) -> tuple[float, int] | None:
    """(mtime, size) of a local file, so a rewritten file is reopened; None when remote."""
    if is_remote(path):
        return None
    try:
        st = os.stat(local_path(path))
    except OSError:
        return None
    return st.st_mtime, st.st_size


@lru_cache(maxsize=16)
def _cached(path: str, band: int | None, stamp: tuple[float, int] | None) -> LabelSource:
    return open_labels(path, band=band)


def cached_source(path: str, band: int | None = None) -> LabelSource:
    """The opened label source of a path, shared by calls with the same file state."""
    return _cached(path, band, _stamp(path))


def read_labels(path: str, zone: Zone, window: Window, band: int | None = None) -> np.ndarray:
    """uint8 (h, w) LCZ codes 1–17 on the zone window, 0 where unlabelled.

    ``band`` picks a raster band (default: the only band, or the one named like
    ``lczFilter`` in multi-band LCZ Generator files); other kinds take no band.
    """
    return cached_source(path, band).read(zone, window)


def label_bounds(path: str) -> tuple[float, float, float, float]:
    """Bounds of a label source in its own CRS (``open_labels(path).crs``; EPSG:4326 for So2Sat,
    whose patches come in several UTM zones)."""
    return cached_source(path).bounds
