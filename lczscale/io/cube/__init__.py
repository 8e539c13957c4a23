"""The LCZ cube: one Zarr v3 store, a group per zone, and the records that make it trustworthy.

- ``store``: create the cube and write/read tile windows; ``outputs``: the optional layers;
- ``ledger``: one entry per tile (pending → done/failed, with provenance), the resume record;
  ``compaction`` folds them into one snapshot per zone and year at the end of a run;
- ``lock``: one writer at a time; ``sink``: a tile's write and its entry, as one interface;
- ``dataset``: the cube as xarray (one zone, or several warped by ``warp``'s rules);
- ``pyramid``: overviews for browsing.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.io.cube.store": [
            "create_cube",
            "cube_attrs",
            "cube_zones",
            "is_cube",
            "read_window",
            "write_tile",
        ],
        "lczscale.io.cube.dataset": ["open_cube"],
        "lczscale.io.cube.lock": ["writer_lock"],
        "lczscale.io.cube.pyramid": ["build_pyramid"],
    },
)
