"""A synthetic world written in the real on-disk formats, with its known truth.

``write_world`` writes cities' embeddings in every supported layout (geotessera Zarr and tiles,
AlphaEarth COGs and mosaic, the dClimate v1.1 Icechunk store and its plain copy) plus the 100 m
reference, training areas and the fine truth, all generated from the published descriptions.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.synth.world": ["write_world", "LAYOUT_WRITERS"],
    },
)
