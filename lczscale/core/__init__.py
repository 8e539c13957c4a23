"""The pure core: the fixed global grid, the tile plan, and the global patch lattice.

numpy and odc-geo only (no pydantic, no I/O): everything that decides which pixels a tile
owns and which patches cover them lives here, so the central invariant (the cube does not
depend on tile size, worker count or order) can be checked without a store or a model.
"""

from lczscale.core.grid import Aoi, GridSpec, Window, Zone, zone_by_name, zones_for_aoi
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import Availability, TileTask, plan_tasks

__all__ = [
    "Aoi",
    "Availability",
    "GridSpec",
    "Lattice",
    "TileTask",
    "Window",
    "Zone",
    "plan_tasks",
    "zone_by_name",
    "zones_for_aoi",
]
