"""Reading and showing a finished cube: xarray queries, pictures, the web map, exports, STAC,
zonal statistics."""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.browse.query": ["lcz_map", "fractions", "majority_map", "reproject"],
        "lczscale.browse.plot": ["plot_cube", "plot_lcz"],
        "lczscale.browse.view": ["CubeView"],
        "lczscale.browse.serve": ["serve"],
        "lczscale.browse.export": ["export"],
        "lczscale.browse.stac_catalog": ["write_stac"],
        "lczscale.browse.zonal": ["zonal_stats", "zonal_table"],
    },
)
