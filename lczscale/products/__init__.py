"""Pure per-block maths of the products made from a finished 10 m map (numpy only, no I/O).

``counts``: class counts and majority in coarse cells aligned to the zone's pixel lattice, so
results do not depend on how a region was cut into windows; ``cells``: the 100 m fractions,
majority and filtered majority of a block, and the seam statistics between tiles;
``transitions``: the change code of each pixel between two years, and transition areas.
"""

from lczscale.products.cells import CellProducts, SeamCounts, cell_products, seam_counts
from lczscale.products.counts import block_counts, majority
from lczscale.products.transitions import encode_change, transition_matrix

__all__ = [
    "CellProducts",
    "SeamCounts",
    "block_counts",
    "cell_products",
    "encode_change",
    "majority",
    "seam_counts",
    "transition_matrix",
]
