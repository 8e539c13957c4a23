"""Inference on one tile: features, read-ahead of its input, patch prediction, and the blend.

Patches sit on the global lattice (``lczscale.core.stitch``); ``blend`` accumulates their
windowed probabilities row band by row band, so a tile's result does not depend on its size.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.infer.predict": [
            "Predictor",
            "TilePrediction",
            "pick_device",
            "tile_memory_bytes",
        ],
        "lczscale.infer.blend": ["RowAccumulator"],
    },
)
