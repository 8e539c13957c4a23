"""The synthetic cities in memory: the real sites, each city's LCZ layout, materials, masks and
float embeddings on its zone's 10 m grid, and the seeded random streams they are drawn from.

Every layout writer and label writer of ``lczscale.synth`` starts from these ``SynthCity``
objects; ``world.write_world`` writes them to disk, ``make_world`` keeps them in memory (tests).
Every random draw comes from ``SeedSequence(seed, spawn_key=(site, purpose, ...))``: a city is
identical whatever other cities are generated with it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import Transformer

from lczscale.core.grid import Window, Zone, utm_zone, utm_zone_number
from lczscale.errors import ConfigError
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.synth.layout import (
    OBJECT_TABLE,
    WorldSpace,
    edge_mix,
    lcz_layout,
    render_embedding,
    render_materials,
    year_drift,
)

__all__ = ["CHANGES", "SITES", "City", "SynthCity", "build_cities", "change_masks",
           "change_year_of", "city_window", "make_world", "quantise"]

NODATA_STRIP_FRACTION = 0.03

# The changing city (opt-in): (from, to, (row0, col0, row1, col1) as fractions of the city's
# window). Farmland (D, 14) is built up as open low-rise (6), and scattered trees (B, 12) give
# way to large low-rise (8). Both areas lie in the window's left half, away from the no-data
# strip (right half) and clear of the centre; their water pixels never change.
CHANGES: tuple[tuple[int, int, tuple[float, float, float, float]], ...] = (
    (14, 6, (0.12, 0.10, 0.34, 0.32)),
    (12, 8, (0.62, 0.12, 0.84, 0.34)),
)

# Purposes of the random streams (spawn keys); never reorder, or every world changes.
_SPACE, _LAYOUT, _MATERIALS, _MIX, _STRIP, _YEAR, _PIXELS, _REFERENCE = range(8)


@functools.cache
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


@dataclass(frozen=True)
class City:
    """A site: name and centre (degrees)."""

    name: str
    lon: float
    lat: float


SITES: tuple[City, ...] = (
    City("zurich", 8.54, 47.37),  # utm32
    City("basel", 7.59, 47.56),  # utm32, same zone as Zurich
    City("nairobi", 36.82, -1.29),  # utm37, south: negative northings
    City("london", -0.12, 51.51),  # utm30
    City("paris", 2.35, 48.86),  # utm31
    City("bogota", -74.08, 4.71),  # utm18
    City("sydney", 151.197, -33.898),  # utm56 south: central Sydney, under real references
    # Appended (never insert or reorder: a city's random streams are keyed by its index here),
    # so that ``--cities 12`` spreads over eleven zones on five continents, north and south.
    City("tokyo", 139.69, 35.69),  # utm54
    City("cairo", 31.24, 30.04),  # utm36
    City("delhi", 77.21, 28.61),  # utm43
    City("sao_paulo", -46.63, -23.55),  # utm23 south
    City("chicago", -87.63, 41.88),  # utm16
)


@dataclass
class SynthCity:
    """One synthetic city on its zone's canonical 10 m grid."""

    city: City
    site: int  # index in SITES; seeds depend on it, not on the list a city came in
    zone: Zone
    window: Window  # zone pixels
    truth: npt.NDArray[np.uint8]  # (H, W) LCZ 1..17
    material: npt.NDArray[np.uint8]  # (H, W) index into MATERIALS
    mix_other: npt.NDArray[np.uint8]  # (H, W) neighbouring material of edge pixels
    mix_share: npt.NDArray[np.float32]  # (H, W) its sub-pixel share; 0 = pure pixel
    objects: npt.NDArray[np.uint32]  # (H, W) building / parcel key
    water: npt.NDArray[np.bool_]  # (H, W) truth is water: scale NaN in the store
    nodata: npt.NDArray[np.bool_]  # (H, W) land without data yet: scale +inf in the store
    embeddings: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    seed: int = 0  # the world's seed: the coarse reference's errors are drawn from it
    # A changing city: ``truth`` and the surface above are its state from ``change_year`` on;
    # ``before`` holds (truth, material, mix_other, mix_share, objects) of the years before.
    change_year: int | None = None
    before: tuple[npt.NDArray[Any], ...] | None = None

    def truth_in(self, year: int) -> npt.NDArray[np.uint8]:
        """The LCZ truth of ``year`` (the same every year unless the city changes)."""
        if self.before is None or self.change_year is None or year >= self.change_year:
            return self.truth
        return self.before[0]

    def surface(self, year: int) -> tuple[npt.NDArray[Any], ...]:
        """(material, mix_other, mix_share, objects) of ``year``."""
        if self.before is None or self.change_year is None or year >= self.change_year:
            return self.material, self.mix_other, self.mix_share, self.objects
        return self.before[1:]

    def in_year(self, year: int) -> SynthCity:
        """This city as it is in ``year`` (its truth and surface then), for label writers."""
        if self.before is None or self.change_year is None or year >= self.change_year:
            return self
        truth, material, other, share, objects = self.before
        return replace(self, truth=truth, material=material, mix_other=other,
                       mix_share=share, objects=objects, change_year=None, before=None)

    @property
    def bbox_lonlat(self) -> tuple[float, float, float, float]:
        """(minlon, minlat, maxlon, maxlat) of the window."""
        w, a = self.window, self.zone.affine
        t = np.linspace(0.0, 1.0, 33)
        rows = np.concatenate([t, t, np.zeros_like(t), np.ones_like(t)]) * w.height + w.row
        cols = np.concatenate([np.zeros_like(t), np.ones_like(t), t, t]) * w.width + w.col
        lon, lat = _transformer(self.zone.crs, "EPSG:4326").transform(
            a.c + a.a * cols, a.f + a.e * rows
        )
        return (float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat)))

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        """Pixels whose embedding is stored (finite scale)."""
        return ~(self.water | self.nodata)



def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sites(cities: int, seed: int, names: Sequence[str] | None = None) -> tuple[int, ...]:
    """Indices into SITES of the world's cities: the first ``cities``, or those ``names``."""
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if names:
        known = [c.name for c in SITES]
        unknown = [n for n in names if n not in known]
        if unknown or len(set(names)) != len(names):
            raise ConfigError(f"sites must be distinct names among {known}, got {list(names)}")
        return tuple(known.index(n) for n in names)
    if not 1 <= cities <= len(SITES):
        raise ConfigError(f"cities must be 1..{len(SITES)} (the built-in SITES), got {cities}")
    return tuple(range(cities))


def _size_px(size_km: float) -> int:
    n = round(size_km * 100)
    if n < 32:
        raise ConfigError(f"size_km={size_km} gives a {n} px window; use size_km >= 0.32")
    return n


def city_window(city: City, n: int) -> tuple[Zone, Window]:
    """The city's zone and its n×n window, centred on the city, on the zone's pixel lattice."""
    zone = utm_zone(utm_zone_number(city.lon))
    x, y = _transformer("EPSG:4326", zone.crs).transform(city.lon, city.lat)
    col, row = ~zone.affine @ (x, y)
    return zone, Window(round(row - n / 2), round(col - n / 2), n, n)


def change_masks(truth: npt.NDArray[np.uint8]) -> list[tuple[int, int, npt.NDArray[np.bool_]]]:
    """(from, to, mask) of each change of ``CHANGES`` in a city of this layout (not water)."""
    n = truth.shape[0]
    out = []
    for frm, to, (r0, c0, r1, c1) in CHANGES:
        mask = np.zeros(truth.shape, dtype=bool)
        mask[round(r0 * n):round(r1 * n), round(c0 * n):round(c1 * n)] = True
        out.append((frm, to, mask & (truth != 17)))
    return out


def _build_city(site: int, n: int, seed: int, strip: bool,
                change_year: int | None = None) -> SynthCity:
    """Layout, materials and masks of one city (no embeddings yet); with ``change_year`` the
    ``CHANGES`` happen in it that year (the surface elsewhere is the same in every year: a
    pixel's material depends on its class and place only)."""
    city = SITES[site]
    zone, window = city_window(city, n)
    truth = lcz_layout(n, _rng(seed, site, _LAYOUT))
    before: tuple[npt.NDArray[Any], ...] | None = None
    if change_year is not None:
        old = truth.copy()
        for frm, to, mask in change_masks(truth):
            old[mask], truth[mask] = frm, to
        m_old, o_old = render_materials(old, _rng(seed, site, _MATERIALS))
        before = (old, m_old, *edge_mix(m_old, _rng(seed, site, _MIX)), o_old)
    material, objects = render_materials(truth, _rng(seed, site, _MATERIALS))
    other, share = edge_mix(material, _rng(seed, site, _MIX))
    water = truth == 17
    nodata = np.zeros_like(water)
    if strip:  # a swath not processed yet: TESSERA marks such land +inf
        width = max(1, round(NODATA_STRIP_FRACTION * n))
        c0 = int(_rng(seed, site, _STRIP).integers(n // 2, n - width))
        nodata[:, c0 : c0 + width] = True
        nodata &= ~water
    return SynthCity(city, site, zone, window, truth, material, other, share, objects, water,
                     nodata, seed=seed, change_year=change_year, before=before)


def _render(c: SynthCity, seed: int, year: int, space: WorldSpace) -> npt.NDArray[np.float32]:
    """Float32 (128, H, W) embedding of a city in a year."""
    yrng = _rng(seed, 1_000_000 + year, _YEAR)  # one drift per world and year, all cities
    drift = year_drift(yrng)
    phenology = yrng.uniform(0.0, 0.35, OBJECT_TABLE).astype(np.float32)
    material, other, share, objects = c.surface(year)
    return render_embedding(space, material, other, share, objects, drift, phenology,
                            _rng(seed, c.site, _PIXELS, year))


def change_year_of(years: Sequence[int]) -> int:
    """The year the changing city changes in: the middle one of ``years`` (the later of
    two); the years before it show the old state."""
    ordered = sorted(int(y) for y in years)
    if len(ordered) < 2:
        raise ConfigError(f"a changing city needs at least two years to change between, got "
                          f"{ordered}")
    return ordered[len(ordered) // 2]


def build_cities(cities: int, n: int, seed: int, years: Sequence[int],
                 changing_city: bool = False,
                 sites: Sequence[str] | None = None) -> list[SynthCity]:
    """The first ``cities`` SITES, or the ``sites`` named (no embeddings); the first carries
    the no-data strip, and with ``changing_city`` the last one changes (``CHANGES``) in
    ``change_year_of(years)``. A city is the same whichever others come with it."""
    chosen = _sites(cities, seed, sites)
    change = change_year_of(years) if changing_city else None
    return [_build_city(site, n, seed, strip=(i == 0),
                        change_year=change if i == len(chosen) - 1 else None)
            for i, site in enumerate(chosen)]


def make_world(
    cities: int = 2, size_km: float = 4.0, seed: int = 0, years: tuple[int, ...] = (2023, 2024),
    changing_city: bool = False, sites: Sequence[str] | None = None,
) -> list[SynthCity]:
    """The first ``cities`` SITES as in-memory SynthCities with float embeddings for ``years``.

    The first city carries the no-data strip; with ``changing_city`` the last city changes
    (``CHANGES``) in the middle year. Memory: 512 B per pixel and year (float32 x 128).
    """
    n = _size_px(size_km)
    space = WorldSpace.make(_rng(seed, _SPACE))
    world = []
    for c in build_cities(cities, n, seed, years, changing_city, sites):
        c.embeddings = {int(y): _render(c, seed, int(y), space) for y in years}
        world.append(c)
    return world


def quantise(
    emb: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """TESSERA-style int8 codes and per-pixel scale: scale = max|v|/127, codes = round(v/scale).

    De-quantised ``codes * scale`` is within ``scale / 2`` of ``v`` in every band.
    """
    return quantise_per_pixel(emb)
