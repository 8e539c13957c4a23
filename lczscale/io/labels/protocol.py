"""What every LCZ label source is: ``read(zone, window)`` → uint8 (h, w) codes 1–17, 0 = nodata.

Labels are categorical, so they move between grids with nearest neighbour or mode, never
bilinear (which would invent a class between two codes: 3 and 5 averaging to 4). Coarse → fine
(a 100 m map onto the 10 m zone grid) uses **nearest**: every 10 m pixel gets the class of the
coarse cell that holds its centre, which is exactly what the coarse map claims about that spot;
mode would give the same answer, as each fine pixel sees one coarse cell. Fine → coarse (a 10 m
source onto a coarser zone) uses **mode**, the majority class of the source pixels under each
output pixel, because nearest would pick one arbitrary sample of many. Rasters are warped by
``warp``, not GDAL, so that a pixel gets the same label whatever window it is read in.

Polygons (training areas, So2Sat patch footprints) are burnt with pixel-centre inclusion
(``all_touched=False``), the polygon analogue of nearest. Overlaps follow one deterministic rule:
a pixel covered by polygons of *one* class gets that class; a pixel covered by polygons of
*different* classes gets 0 — contradictory training labels are excluded, never arbitrated by
file order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError

U8 = npt.NDArray[np.uint8]
I32 = npt.NDArray[np.int32]
ResamplingName = Literal["auto", "nearest", "mode"]
MODE_RATIO = 4.0  # source pixels per output pixel above which "auto" switches to mode


class LabelSource(ABC):
    """One opened label file: its kind, detected encoding, CRS and bounds, and a window reader."""

    kind: str
    path: str
    encoding: str
    crs: str  # CRS of ``bounds``
    bounds: tuple[float, float, float, float]

    @abstractmethod
    def read(self, zone: Zone, window: Window) -> U8:
        """uint8 (window.height, window.width) LCZ codes 1–17 on the zone window, 0 = nodata."""

    def units(self, zone: Zone, window: Window) -> I32 | None:
        """Per pixel, the sampling unit its label comes from (1, 2, … the same number in every
        window; 0 = none), for sources made of independent units: training polygons, patches.
        None for maps (rasters, cubes), whose pixels have no such unit: an evaluation then
        resamples square blocks. Pixels of one unit are not independent samples."""
        return None

    def details(self) -> dict[str, Any]:
        """Kind-specific facts for ``describe``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What was opened and how it will be read (JSON-friendly)."""
        return {
            "path": self.path, "kind": self.kind, "encoding": self.encoding, "crs": self.crs,
            "bounds": list(self.bounds),
        } | self.details()


def resampling_for(ratio: float, choice: ResamplingName) -> Resampling:
    """Nearest for coarse → fine (or similar) grids; mode when several source pixels fall in one
    output pixel. ``ratio`` is source pixels per output pixel."""
    if choice == "nearest":
        return Resampling.nearest
    if choice == "mode" or ratio > MODE_RATIO:
        return Resampling.mode
    return Resampling.nearest


def burn(shapes: Iterable[tuple[shapely.Geometry, int]], zone: Zone, window: Window) -> U8:
    """Rasterise (geometry in the zone CRS, code 1–17) pairs onto a window; conflicts → 0."""
    by_class: dict[int, list[shapely.Geometry]] = {}
    for g, code in shapes:
        by_class.setdefault(int(code), []).append(g)
    shape = (window.height, window.width)
    out = np.zeros(shape, dtype=np.uint8)
    if not by_class or window.size == 0:
        return out
    transform = zone.window_geobox(window).affine
    conflict = np.zeros(shape, dtype=bool)
    for code in sorted(by_class):
        mask = rasterize(
            ((g, 1) for g in by_class[code]), out_shape=shape, transform=transform, fill=0,
            all_touched=False, dtype="uint8",
        ).astype(bool)
        conflict |= mask & (out != 0)
        out[mask & (out == 0)] = code
    out[conflict] = 0
    return out


def burn_units(shapes: Iterable[tuple[shapely.Geometry, int]], zone: Zone,
                window: Window) -> I32:
    """Rasterise (geometry in the zone CRS, unit number ≥ 1) pairs onto a window with the same
    pixel-centre rule as ``burn``; where units overlap the later one wins (such pixels get no
    class from ``burn`` when the classes differ, so they are not scored anyway)."""
    shape = (window.height, window.width)
    pairs = [(g, int(u)) for g, u in shapes]
    if not pairs or window.size == 0:
        return np.zeros(shape, dtype=np.int32)
    return np.asarray(rasterize(
        pairs, out_shape=shape, transform=zone.window_geobox(window).affine, fill=0,
        all_touched=False, dtype="int32",
    ), dtype=np.int32)


def check_options(kind: str, options: dict[str, Any], allowed: set[str]) -> None:
    """Refuse options that mean nothing for this kind of file (a typo, or the wrong file)."""
    extra = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if extra:
        raise ConfigError(
            f"option(s) {extra} do not apply to a {kind} label source (it takes "
            f"{sorted(allowed) or 'no options'})"
        )
