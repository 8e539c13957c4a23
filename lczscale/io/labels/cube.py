"""An lczscale cube (a Zarr v3 store with ``lczscale:format`` attributes) as a label source.

So a fine 10 m reference — the synthetic ``truth.zarr``, or any cube lczscale wrote — can be
used as training labels or as a coarse reference, like any other label file. A window of a zone
reads the cube's ``lcz`` array of that zone as stored (codes 1–17, 0 = nodata): no warp, the
cube is on the zone lattice already.

- Year: ``year=`` picks one (an error when no zone of the cube has it); by default each zone's
  latest year. Zones and years are read when the source is opened.
- A window of a zone the cube does not have reads as zeros (unlabelled), as other sources do
  outside their footprint — labels are not warped across zones (a UTM cube's ``utm32`` pixels
  do not label a ``utm31`` window that overlaps them).
- A zone of the same name on another grid (CRS, pixel size, or an origin off the cube's pixel
  lattice) is refused: its pixels would not be the cube's pixels. A zone whose origin lies on
  the cube's lattice is read with the offset.
"""

from __future__ import annotations

from typing import Any, override

import numpy as np
from pyproj import CRS

from lczscale.core.grid import UTM_LAT_MAX, UTM_LAT_MIN, Window, Zone
from lczscale.errors import ConfigError, CubeError, SourceError
from lczscale.io.cube.store import cube_attrs, cube_zones, open_root, read_window
from lczscale.io.labels.encoding import LCZ
from lczscale.io.labels.protocol import U8, LabelSource
from lczscale.io.labels.warp import same_crs


def _lonlat_envelope(zone: Zone) -> tuple[float, float, float, float]:
    """Lon/lat box a zone can hold data in (its band for UTM; its extent when geographic)."""
    if CRS.from_user_input(zone.crs).is_geographic:
        a, (h, w) = zone.affine, zone.shape
        return (a.c, a.f + a.e * h, a.c + a.a * w, a.f)
    return (zone.lon_band[0], UTM_LAT_MIN, zone.lon_band[1], UTM_LAT_MAX)


class CubeLabels(LabelSource):
    """Labels from a cube lczscale wrote (or synth's ``truth.zarr``), read on its own lattice."""
    kind = "cube"
    encoding = LCZ

    def __init__(
        self, path: str, year: int | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self._storage_options = storage_options
        try:
            attrs = cube_attrs(path, storage_options)
            zones = cube_zones(path, storage_options)
        except CubeError as exc:
            raise SourceError(f"label store {path} cannot be read as an lczscale cube: {exc}") \
                from exc
        self.product = attrs.get("lczscale:product")
        root = open_root(path, "r", storage_options)
        self.years: dict[str, list[int]] = {}
        for z in zones:
            times = root[z.name]["time"][:]  # type: ignore[index, call-overload]
            self.years[z.name] = sorted(int(v) for v in np.asarray(times))
        if not any(self.years.values()):
            raise SourceError(f"label cube {path} has no zone with a year; nothing to read")
        if year is not None and not any(year in ys for ys in self.years.values()):
            raise SourceError(
                f"label cube {path} has no year {year} (years per zone: {self.years}); "
                "pass one of those, or no year for each zone's latest"
            )
        self.year = year
        self.zones = {z.name: z for z in zones}
        envs = [_lonlat_envelope(z) for z in zones]
        self.crs = "EPSG:4326"
        self.bounds = (min(e[0] for e in envs), min(e[1] for e in envs),
                       max(e[2] for e in envs), max(e[3] for e in envs))

    def year_of(self, zone_name: str) -> int | None:
        """The year read in a zone (None: the zone does not have it, or has no year)."""
        years = self.years.get(zone_name, [])
        if self.year is not None:
            return self.year if self.year in years else None
        return years[-1] if years else None

    @override
    def read(self, zone: Zone, window: Window) -> U8:
        out = np.zeros((window.height, window.width), dtype=np.uint8)
        own = self.zones.get(zone.name)
        year = self.year_of(zone.name)
        if own is None or year is None or window.size == 0:
            return out
        if not same_crs(own.crs, zone.crs):
            raise SourceError(
                f"label cube {self.path} has zone {zone.name} in {own.crs}, but the window is "
                f"asked in {zone.crs}; cube labels are read on the cube's own grid only"
            )
        try:
            dr, dc = own.pixel_offset(zone.affine)
        except ConfigError as exc:
            raise SourceError(
                f"label cube {self.path}: zone {zone.name} of the request is not on the cube's "
                f"pixel lattice ({exc}); cube labels are read on the cube's own grid only"
            ) from exc
        there = Window(window.row + dr, window.col + dc, window.height, window.width)
        out = read_window(self.path, own, year, there, storage_options=self._storage_options)
        if out.size and out.max() > 17:
            bad = sorted(int(v) for v in np.unique(out[out > 17]))
            raise SourceError(
                f"label cube {self.path} zone {zone.name} year {year} holds values {bad} in "
                f"rows {there.row}:{there.row_stop}, cols {there.col}:{there.col_stop}; "
                "an lczscale cube holds LCZ codes 1–17 and 0 = nodata"
            )
        return out

    @override
    def details(self) -> dict[str, Any]:
        return {
            "zones": sorted(self.zones), "years": self.years,
            "year": self.year if self.year is not None else "latest per zone",
            "product": self.product,
        }
