"""A deterministic, offline stand-in for where the Earth's land is, for planning benchmarks.

Coarse continental outlines (a few dozen lon/lat vertices each, written by hand) give a land
fraction per 1°×1° cell (from 0.1° sample points); the fractions are then scaled so that the
land within the UTM grid's latitudes (80°S–84°N) totals the Earth's land area, 148.9 million
km² ≈ 1.49 × 10¹² pixels at 10 m (the little land poleward of those limits is thereby counted
inside them). Within a cell of fraction f the land is a centred square of side √f cells, so
land is contiguous and its area is exact.

``zone_availability`` turns that into what a TESSERA Zarr source reports for a UTM zone when a
whole year is planned: 4096 px shards that hold land, and per shard the 128 × 128 grid of
32 px inner chunks that hold data (sampled every 512 px and repeated; all-land shards have
all-True grids).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import shapely
from pyproj import Transformer

from lczscale.core.grid import UTM_LAT_MAX, UTM_LAT_MIN, Zone
from lczscale.core.tiling import Availability

EARTH_LAND_KM2 = 148.9e6
EARTH_RADIUS_KM = 6371.0072  # authalic radius: cell areas on the sphere of the Earth's area
SHARD = 4096  # TESSERA shard edge (px)
INNER = 32  # TESSERA inner chunk edge (px)

# (lon, lat) outlines, coarse on purpose: only the land area per cell matters here.
OUTLINES: dict[str, list[tuple[float, float]]] = {
    "north_america": [
        (-168, 66), (-162, 70), (-156, 71), (-141, 70), (-128, 70), (-115, 68), (-95, 68),
        (-85, 70), (-80, 67), (-78, 62), (-65, 60), (-61, 56), (-56, 52), (-60, 47), (-66, 44),
        (-70, 42), (-76, 38), (-76, 35), (-81, 31), (-80, 25), (-82, 27), (-84, 30), (-89, 30),
        (-94, 29), (-97, 26), (-97, 21), (-94, 18), (-90, 21), (-87, 21), (-88, 16), (-83, 15),
        (-83, 10), (-80, 8), (-77, 8), (-78, 7), (-81, 7), (-86, 11), (-92, 14), (-97, 16),
        (-105, 20), (-106, 23), (-112, 29), (-117, 32), (-121, 35), (-124, 40), (-124, 47),
        (-130, 54), (-137, 59), (-145, 60), (-152, 58), (-158, 56), (-165, 54), (-162, 58),
        (-166, 62),
    ],
    "hudson_bay": [(-95, 59), (-87, 56), (-80, 55), (-77, 60), (-78, 63), (-86, 64), (-94, 61)],
    "arctic_archipelago": [(-120, 70), (-80, 70), (-62, 82), (-90, 82), (-120, 77)],
    "greenland": [
        (-73, 78), (-60, 82), (-40, 83.5), (-20, 83), (-18, 77), (-22, 70), (-30, 68), (-40, 65),
        (-43, 60), (-48, 61), (-53, 66), (-55, 70), (-60, 76),
    ],
    "south_america": [
        (-77, 8), (-72, 12), (-64, 10), (-60, 8), (-52, 5), (-50, 0), (-44, -2), (-35, -5),
        (-35, -9), (-39, -14), (-41, -22), (-48, -26), (-53, -34), (-57, -36), (-57, -39),
        (-62, -40), (-65, -45), (-66, -48), (-69, -51), (-68, -55), (-72, -54), (-75, -50),
        (-74, -44), (-73, -38), (-71, -30), (-70, -18), (-76, -14), (-80, -7), (-81, -4),
        (-80, 0), (-78, 3),
    ],
    "africa": [
        (-17, 15), (-17, 21), (-13, 28), (-9, 32), (-6, 36), (10, 37), (11, 33), (20, 31),
        (25, 32), (32, 31), (35, 28), (39, 22), (43, 12), (51, 12), (51, 10), (44, 2), (40, -3),
        (39, -8), (40, -15), (35, -24), (33, -28), (27, -34), (20, -35), (18, -32), (15, -27),
        (12, -18), (13, -12), (9, -1), (9, 4), (5, 6), (-4, 5), (-8, 4), (-13, 8),
    ],
    "eurasia": [
        (-10, 36), (-9, 43), (-2, 44), (-5, 48), (2, 51), (8, 54), (8, 57), (10, 59), (5, 62),
        (15, 69), (25, 71), (40, 68), (44, 68), (60, 69), (70, 73), (80, 73), (100, 78),
        (113, 74), (130, 72), (140, 72), (160, 70), (180, 69), (180, 65), (178, 64), (170, 60),
        (163, 58), (156, 51), (156, 57), (162, 62), (150, 59), (142, 59), (137, 54), (141, 52),
        (140, 48), (133, 43), (129, 41), (129, 35), (126, 35), (126, 38), (121, 40), (122, 37),
        (119, 35), (121, 31), (122, 28), (117, 23), (110, 21), (108, 22), (106, 18), (109, 12),
        (105, 9), (100, 13), (100, 7), (104, 1), (101, 3), (98, 8), (98, 16), (94, 17), (92, 22),
        (87, 22), (80, 16), (77, 8), (73, 16), (73, 21), (67, 24), (61, 25), (57, 26), (56, 27),
        (52, 28), (48, 30), (50, 27), (56, 24), (59, 22), (55, 17), (52, 16), (45, 13),
        (43, 14), (39, 21), (35, 28), (33, 31), (35, 33), (36, 36), (27, 37), (26, 40),
        (23, 40), (21, 37), (22, 40), (19, 42), (15, 45), (12, 44), (18, 40), (16, 38),
        (12, 42), (9, 44), (3, 43), (-1, 37), (-5, 36),
    ],
    "chukotka": [(-180, 65), (-180, 69), (-170, 66), (-172, 64)],
    "british_isles": [
        (-5, 50), (2, 51), (0, 53), (-2, 57), (-5, 59), (-7, 57), (-5, 54), (-6, 52), (-10, 52),
        (-10, 54),
    ],
    "iceland": [(-24, 64), (-22, 66), (-14, 66), (-13, 64)],
    "svalbard": [(10, 77), (27, 80), (20, 80.5), (10, 79.5)],
    "japan": [(130, 31), (135, 34), (140, 35), (142, 40), (141, 45), (145, 44), (140, 41),
              (136, 36), (130, 34)],
    "australia": [
        (114, -22), (114, -26), (115, -34), (118, -35), (123, -34), (129, -32), (134, -32),
        (138, -35), (140, -38), (146, -39), (150, -37), (153, -32), (153, -25), (146, -19),
        (145, -15), (142, -11), (141, -17), (136, -12), (132, -11), (129, -15), (126, -14),
        (122, -18),
    ],
    "new_zealand": [(166, -46), (172, -41), (175, -37), (178, -38), (174, -42), (168, -47)],
    "borneo": [(109, 2), (117, 7), (119, 5), (116, -4), (111, -3)],
    "sumatra": [(95, 5), (98, 4), (106, -6), (102, -5)],
    "java": [(105, -6), (114, -7), (114, -8.5), (105, -7)],
    "new_guinea": [(131, -1), (141, -3), (150, -10), (143, -9), (138, -8)],
    "philippines": [(120, 18), (122, 18), (126, 7), (122, 7)],
    "madagascar": [(44, -25), (47, -25), (50, -15), (49, -12), (44, -17)],
    "caribbean": [(-85, 22), (-74, 20), (-77, 20)],
    "antarctica": [
        (-180, -80), (180, -80), (180, -70), (160, -70), (140, -66), (100, -66), (60, -67),
        (20, -70), (0, -70), (-20, -72), (-40, -78), (-60, -74), (-62, -64), (-70, -68),
        (-80, -73), (-100, -73), (-140, -75), (-160, -78), (-180, -78),
    ],
}
WATER = ("hudson_bay",)  # outlines cut out of the land


def outline_land() -> shapely.Geometry:
    """The outlines as one geometry (hand-drawn rings may cross themselves: made valid)."""
    def polygons(keep: bool) -> shapely.Geometry:
        return shapely.union_all([shapely.make_valid(shapely.Polygon(v))
                                  for k, v in OUTLINES.items() if (k in WATER) != keep])

    return shapely.difference(polygons(True), polygons(False))


def cell_areas_km2() -> np.ndarray:
    """(rows, 360) areas of the 1° cells from 84°N (row 0) down to 80°S, on the sphere."""
    tops = np.arange(UTM_LAT_MAX, UTM_LAT_MIN, -1.0)
    band = np.sin(np.radians(tops)) - np.sin(np.radians(tops - 1))
    return np.repeat((EARTH_RADIUS_KM**2 * math.radians(1.0) * band)[:, None], 360, axis=1)


@functools.cache
def outline_fractions() -> np.ndarray:
    """(rows, 360) land fraction of each 1° cell of the outlines (0.1° samples)."""
    lat = UTM_LAT_MAX - (np.arange(int(UTM_LAT_MAX - UTM_LAT_MIN) * 10) + 0.5) / 10
    lon = -180 + (np.arange(3600) + 0.5) / 10
    land = outline_land()
    shapely.prepare(land)
    xx, yy = np.meshgrid(lon, lat)
    inside = shapely.contains_xy(land, xx, yy)
    rows, cols = inside.shape
    return inside.reshape(rows // 10, 10, cols // 10, 10).mean(axis=(1, 3))


def land_area_km2(fractions: np.ndarray) -> float:
    return float((fractions * cell_areas_km2()).sum())


@functools.cache
def land_fractions(total_km2: float = EARTH_LAND_KM2) -> np.ndarray:
    """The outlines' fractions scaled (and clipped at 1) so that the land totals ``total_km2``
    (the scale found by bisection; the outlines alone give ~147.7 million km²)."""
    base = outline_fractions()
    lo, hi = 0.0, 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if land_area_km2(np.minimum(1.0, base * mid)) < total_km2:
            lo = mid
        else:
            hi = mid
    f = np.minimum(1.0, base * (lo + hi) / 2)
    f.setflags(write=False)
    return f


def is_land(lon: np.ndarray, lat: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Land at points: inside the centred square of side √f of the point's 1° cell."""
    lon = np.mod(np.asarray(lon) + 180.0, 360.0) - 180.0
    lat = np.asarray(lat)
    row = np.clip(np.floor(UTM_LAT_MAX - lat).astype(np.int64), 0, fractions.shape[0] - 1)
    col = np.clip(np.floor(lon + 180.0).astype(np.int64), 0, 359)
    half = np.sqrt(fractions[row, col]) / 2
    u = (lon + 180.0) - np.floor(lon + 180.0) - 0.5
    v = (UTM_LAT_MAX - lat) - np.floor(UTM_LAT_MAX - lat) - 0.5
    inside = (np.abs(u) < half) & (np.abs(v) < half)
    return inside & (lat >= UTM_LAT_MIN) & (lat <= UTM_LAT_MAX)


def zone_availability(zone: Zone, fractions: np.ndarray, samples: int = 8,
                      all_masks: bool = False) -> Availability:
    """What a TESSERA Zarr source of the stand-in land reports for ``zone`` (no AOI): its
    4096 px shards holding land in the zone's longitude band, each with its inner-chunk grid
    (land sampled on ``samples``² points per shard, bilinear lon/lat between exact corners).
    Like the source, only shards that are not all land carry a grid (a full one needs none);
    ``all_masks`` keeps one for every shard (the same availability, about 3× the memory)."""
    h, w = zone.shape
    nr, nc = -(-h // SHARD), -(-w // SHARD)
    a = zone.affine
    xx, yy = np.meshgrid(a.c + a.a * np.arange(nc + 1) * SHARD,
                         a.f + a.e * np.arange(nr + 1) * SHARD)
    lon_n, lat_n = Transformer.from_crs(zone.crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    t = (np.arange(samples) + 0.5) / samples
    ty, tx = t[None, None, :, None], t[None, None, None, :]

    def inside(v: np.ndarray) -> np.ndarray:  # (nr, nc, samples, samples)
        top = v[:-1, :-1, None, None] * (1 - tx) + v[:-1, 1:, None, None] * tx
        bottom = v[1:, :-1, None, None] * (1 - tx) + v[1:, 1:, None, None] * tx
        return top * (1 - ty) + bottom * ty

    lon, lat = inside(lon_n), inside(lat_n)
    west, east = zone.lon_band
    mask = is_land(lon, lat, fractions) & (lon >= west) & (lon < east)
    stored = mask.any(axis=(2, 3))
    full = mask.all(axis=(2, 3))
    repeat = SHARD // INNER // samples
    cells = {
        (int(r), int(c)): np.repeat(np.repeat(mask[r, c], repeat, 0), repeat, 1)
        for r, c in zip(*np.nonzero(stored & (~full | all_masks)), strict=True)
    }
    blocks = frozenset((int(r), int(c)) for r, c in zip(*np.nonzero(stored), strict=True))
    return Availability((SHARD, SHARD), (0, 0), blocks, (INNER, INNER), cells)
