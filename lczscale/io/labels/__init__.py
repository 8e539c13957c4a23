"""LCZ label sources: any reference (100 m maps, polygons, So2Sat, a cube) on a zone window.

``open_labels`` detects the kind from the file's first bytes; ``read_labels`` is what training
and evaluation call. Labels move between grids by nearest or mode, never bilinear.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.io.labels.protocol": ["LabelSource"],
        "lczscale.io.labels.registry": ["open_labels", "detect_kind"],
        "lczscale.io.labels.reader": ["read_labels", "label_bounds"],
    },
)
