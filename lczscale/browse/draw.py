"""Draw an array of LCZ codes on matplotlib axes: the official colours and a legend.

The primitives every LCZ picture shares (``plot_lcz`` and ``plot_cube`` in
``lczscale.browse.plot``, ``ds.lcz.plot()``), kept apart so that the xarray queries can draw
without depending on the cube plots that use those queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

from lczscale import classes

MAX_SIDE = 2000


def lcz_colormap() -> ListedColormap:
    """The official LCZ colours for codes 0–17 (0 = nodata, transparent); use with
    ``vmin=-0.5, vmax=17.5`` so that code c takes colour c."""
    colours: list[tuple[float, float, float, float]] = [(1.0, 1.0, 1.0, 0.0)] + [
        (r / 255, g / 255, b / 255, 1.0) for r, g, b in classes.palette_rgb()
    ]
    return ListedColormap(colours, name="lcz")


def lcz_legend(ax: Axes, codes: Sequence[int]) -> None:
    """A legend of ``codes`` (label, name, colour) to the right of ``ax``."""
    rgb = [(r / 255, g / 255, b / 255) for r, g, b in classes.palette_rgb()]
    handles = [
        Patch(color=rgb[c - 1], label=f"{classes.LCZ_LABELS[c - 1]}  "
              f"{classes.LCZ_CLASS_NAMES[c - 1]}")
        for c in codes
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False, title="LCZ")


def draw_lcz(
    ax: Axes,
    lcz: np.ndarray,
    extent: tuple[float, float, float, float] | None = None,
    title: str = "",
    legend: bool = True,
) -> AxesImage:
    """Draw LCZ codes on ``ax`` (decimated to at most ``MAX_SIDE`` px a side, nearest) with a
    legend of the classes present; shared by ``plot_lcz`` and the ``.lcz.plot()`` accessor."""
    step = max(1, int(np.ceil(max(lcz.shape) / MAX_SIDE)))
    img = np.asarray(lcz)[::step, ::step]
    im = ax.imshow(img, cmap=lcz_colormap(), vmin=-0.5, vmax=17.5, interpolation="nearest",
                   extent=extent)
    if legend:
        lcz_legend(ax, [int(c) for c in np.unique(img) if c > 0])
    ax.set_title(title)
    if extent is not None:
        ax.set_xlabel("easting / longitude")
        ax.set_ylabel("northing / latitude")
    return im
