"""The Icechunk zone groups (``37N``, ``37S``): where each lies on the canonical UTM zone, which
groups a city touches (cities crossing the equator touch both) and the group attributes both
writers record (spec §1, §2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from affine import Affine
from pyproj import CRS

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError
from lczscale.synth.cities import SynthCity
from lczscale.synth.dclimate.spec import (
    FALSE_NORTHING,
    N_SHAPE,
    N_TRANSFORM,
    PROJ_CONVENTION,
    S_SHAPE,
    S_TRANSFORM,
    SPATIAL_CONVENTION,
)


@dataclass(frozen=True)
class HemisphereGroup:
    """One Icechunk zone group (``37N``, ``37S``) and where it lies on the canonical zone."""

    number: int
    hemisphere: str  # "N" or "S"

    @property
    def name(self) -> str:
        """The group's name: zone number (two digits) and hemisphere, e.g. ``37S``."""
        return f"{self.number:02d}{self.hemisphere}"

    @property
    def crs(self) -> str:
        """EPSG:326NN for N, EPSG:327NN (false northing 10,000,000 m) for S."""
        return f"EPSG:{(32600 if self.hemisphere == 'N' else 32700) + self.number}"

    @property
    def transform(self) -> tuple[float, ...]:
        """Corner-origin affine (a, b, c, d, e, f) in the group's own CRS."""
        return N_TRANSFORM if self.hemisphere == "N" else S_TRANSFORM

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the group's full extent: the same for every zone."""
        return N_SHAPE if self.hemisphere == "N" else S_SHAPE

    @property
    def bbox(self) -> list[float]:
        """[xmin, ymin, xmax, ymax] of the extent, in the group's own CRS."""
        t, (h, w) = self.transform, self.shape
        return [t[2], t[5] + t[4] * h, t[2] + t[0] * w, t[5]]

    def northern_affine(self) -> Affine:
        """The transform in the northern frame (EPSG:326NN): S northings minus 10,000,000."""
        t = self.transform
        shift = 0.0 if self.hemisphere == "N" else FALSE_NORTHING
        return Affine(t[0], t[1], t[2], t[3], t[4], t[5] - shift)

    def window(self, zone: Zone) -> Window:
        """The group's extent in canonical zone pixels (raises unless on the zone's lattice)."""
        row, col = zone.pixel_offset(self.northern_affine())
        return Window(row, col, *self.shape)


def _zone_number(zone: Zone) -> int:
    return int(zone.name.removeprefix("utm"))


def hemisphere_groups(world: Sequence[SynthCity]) -> dict[str, HemisphereGroup]:
    """The zone groups the world's cities touch (a city may touch N and S), sorted by name."""
    out: dict[str, HemisphereGroup] = {}
    for c in world:
        for g in _groups_of(c):
            out[g.name] = g
    return dict(sorted(out.items()))


def _groups_of(c: SynthCity) -> list[HemisphereGroup]:
    n = _zone_number(c.zone)
    groups = [HemisphereGroup(n, h) for h in "NS"]
    return [g for g in groups if g.window(c.zone).intersection(c.window) is not None]


def equator_row(zone: Zone) -> int:
    """Canonical zone row whose top edge is the equator (northing 0)."""
    row = -zone.affine.f / zone.affine.e
    if abs(row - round(row)) > 1e-9:
        raise ConfigError(f"zone {zone.name}: the equator is not a pixel edge")
    return int(round(row))


def equator_city(c: SynthCity, rows_north: int) -> SynthCity:
    """A copy of ``c`` moved (same pixels, same zone) so that ``rows_north`` of its rows lie
    north of the equator and the rest south: a city crossing northing 0, for tests."""
    w = c.window
    return dataclasses.replace(
        c, window=Window(equator_row(c.zone) - rows_north, w.col, w.height, w.width)
    )


# --------------------------------------------------------------------------------------------
# Group attributes


def _run_id(group: str, year: int, seed: int) -> str:
    return f"{group}-{year}-{seed:04d}-a"


def _group_attrs(g: HemisphereGroup, years_complete: Sequence[int],
                 runs: dict[str, Any]) -> dict[str, Any]:
    """A zone group's attributes (spec §2; corner-origin transform)."""
    crs = CRS.from_user_input(g.crs)
    return {
        "crs": g.crs,
        "years_complete": sorted(int(y) for y in years_complete),
        "zone_scheme": "utm_6deg_nominal",
        "time_convention": "calendar_year",
        "layout": "global",
        "proj:code": g.crs,
        "proj:wkt2": crs.to_wkt("WKT2_2019"),
        "proj:projjson": crs.to_json_dict(),
        "spatial:dimensions": ["northing", "easting"],
        "spatial:transform_type": "affine",
        "spatial:transform": list(g.transform),
        "spatial:shape": list(g.shape),
        "spatial:bbox": g.bbox,
        "spatial:registration": "pixel",
        "zarr_conventions": [PROJ_CONVENTION, SPATIAL_CONVENTION],
        "runs": runs,
    }


def _run_record(g: str, year: int, seed: int, assembled_at: str, empty: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"run_id": _run_id(g, year, seed), "assembled_at": assembled_at}
    if empty:
        rec["empty"] = True
    return rec


def _final_group_attrs(world: Sequence[SynthCity], years: list[int], seed: int,
                       complete_years: Sequence[int] | None,
                       assembled_at: str) -> dict[str, dict[str, Any]]:
    """Every group's attributes once all ``years`` are written (what both writers record)."""
    out = {}
    for name, g in hemisphere_groups(world).items():
        runs = {str(y): _run_record(name, y, seed, assembled_at, _empty(world, g, y))
                for y in years}
        done = years if complete_years is None else complete_years
        out[name] = _group_attrs(g, done, runs)
    return out


def _empty(world: Sequence[SynthCity], g: HemisphereGroup, year: int) -> bool:
    """No embedded pixel of any city inside the group (year-independent here)."""
    for c in world:
        inner = g.window(c.zone).intersection(c.window) if _zone_number(c.zone) == g.number \
            else None
        if inner is not None and (~c.nodata[inner.relative_to(c.window)]).any():
            return False
    return True
