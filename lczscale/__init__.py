"""lczscale: Local Climate Zone maps at 10 m from Earth-observation embeddings, at any scale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lczscale.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr


def open_cube(
    url: str, bbox: tuple[float, float, float, float] | None = None, **kwargs: Any
) -> xr.Dataset:
    """Open an LCZ cube (or a lon/lat bbox of it) as an xarray Dataset with its CRS and the
    ``ds.lcz`` accessor; with ``crs=`` (and optional ``resolution=``, ``resampling=``) the
    zones the bbox touches are warped onto one grid and stitched. See
    ``lczscale.io.cube.dataset.open_cube``."""
    import lczscale.browse.accessor  # noqa: F401  (registers ``.lcz`` on what is returned)
    from lczscale.io.cube.dataset import open_cube as _open

    return _open(url, bbox, **kwargs)


__all__ = ["__version__", "open_cube"]
