"""Synthetic cities at 10 m: LCZ layout, surface materials and their embeddings (numpy only).

An LCZ class is not a spectrum but a *neighbourhood*: a mix and arrangement of surface materials
(Stewart & Oke 2012). The generator therefore works in three honest steps:

1. ``lcz_layout`` draws a city's LCZ map at 10 m: a compact core, rings of lower density, an
   industrial sector, an informal settlement, parks, a river, a lake and rural land, with
   boundaries made irregular by smooth random fields.
2. ``render_materials`` paints each LCZ region with materials in a class-specific arrangement
   (street grid, building footprint size, spacing, gardens). Compact and open classes of the
   same height share one roof material, so a single roof pixel cannot tell them apart: only its
   neighbourhood can — exactly what a spatial model must learn.
3. ``render_embedding`` turns materials into 128-d vectors: a fixed prototype per material (some
   deliberately close), per-object variation, sub-pixel mixing at edges, per-pixel noise and a
   per-year drift that is larger for vegetation (phenology).

Everything is a pure function of its random generator, so a seed fixes the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

BANDS = 128

MATERIALS: tuple[str, ...] = (
    "roof_highrise",
    "roof_midrise",
    "roof_lowrise",
    "roof_lightweight",
    "roof_large",
    "roof_industrial",
    "paved",
    "trees",
    "low_plants",
    "bush",
    "bare_soil_sand",
    "bare_rock",
    "water",
)
M: dict[str, int] = {name: i for i, name in enumerate(MATERIALS)}
ROOFS = frozenset(M[n] for n in MATERIALS if n.startswith("roof_"))

# How strongly a vegetation material follows the per-object, per-year phenology (toward bare
# soil: harvested fields, dry years); others do not change with the season.
PHENOLOGY_GAIN = np.zeros(len(MATERIALS), dtype=np.float32)
PHENOLOGY_GAIN[[M["low_plants"], M["bush"], M["trees"]]] = (1.0, 0.6, 0.35)

# (base, derived, closeness): the derived prototype sits at ``closeness`` of its own random
# distance from the base — pairs that a per-pixel classifier will sometimes confuse.
CLOSE_PAIRS: tuple[tuple[str, str, float], ...] = (
    ("roof_midrise", "roof_lowrise", 0.10),
    ("roof_midrise", "roof_highrise", 0.18),
    ("roof_large", "roof_industrial", 0.12),
    ("paved", "bare_rock", 0.15),
    ("trees", "bush", 0.20),
    ("bush", "low_plants", 0.30),
    ("bare_soil_sand", "roof_lightweight", 0.25),
)

PIXEL_NOISE = 1.5  # per-band sd of sensor/model noise
OBJECT_SD = 0.8  # per-band sd of one building's / field's deviation from its material
OBJECT_TABLE = 4096  # distinct object deviations per world


# --------------------------------------------------------------------------------------------
# Materials in embedding space


def material_prototypes(rng: np.random.Generator) -> F32:
    """(materials, 128) prototypes with TESSERA-like magnitudes (mostly within -10..41)."""
    mean = rng.uniform(0.0, 18.0, BANDS)
    mean[rng.choice(BANDS, 6, replace=False)] = rng.uniform(22.0, 30.0, 6)
    dev = rng.normal(0.0, 4.5, (len(MATERIALS), BANDS))
    for base, derived, closeness in CLOSE_PAIRS:
        b, d = M[base], M[derived]
        dev[d] = dev[b] + closeness * (dev[d] - dev[b])
    return np.clip(mean + dev, -8.0, 38.0).astype(np.float32)


def year_drift(rng: np.random.Generator) -> F32:
    """(materials, 128) shift of one year: vegetation moves most (phenology), all a little."""
    sd = np.full(len(MATERIALS), 0.3)
    sd[[M["trees"], M["low_plants"], M["bush"]]] = (0.8, 1.4, 1.0)
    drift = rng.normal(0.0, 1.0, (len(MATERIALS), BANDS)) * sd[:, None]
    drift += rng.normal(0.0, 0.2, BANDS)
    return drift.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Smooth random fields


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> F32:
    """Gaussian-blurred white noise with unit sd (FFT, padded so it does not wrap visibly)."""
    h, w = shape
    pad = int(min(3 * sigma, max(h, w)))
    ph, pw = h + 2 * pad, w + 2 * pad
    white = rng.standard_normal((ph, pw))
    ky = np.fft.fftfreq(ph)[:, None]
    kx = np.fft.rfftfreq(pw)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(ph, pw))[pad : pad + h, pad : pad + w]
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _uniformise(field: F32) -> F32:
    """Rank-transform a field to uniform (0, 1) values, keeping its spatial structure."""
    flat = field.ravel()
    out = np.empty(flat.size, dtype=np.float32)
    out[np.argsort(flat, kind="stable")] = (np.arange(flat.size) + 0.5) / flat.size
    return out.reshape(field.shape)


def _angle_diff(a: npt.NDArray[np.floating], b: float) -> npt.NDArray[np.floating]:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


# --------------------------------------------------------------------------------------------
# LCZ layout


def lcz_layout(n: int, rng: np.random.Generator) -> U8:
    """LCZ map (n, n), values 1..17, of one city centred in the window.

    Distances are in units of the half-width, so every window size holds the whole city; the
    building arrangement (``render_materials``) is in metres, so it does not scale.
    """
    h = n / 2.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    yy = (yy + 0.5 - h) / h
    xx = (xx + 0.5 - h) / h
    r = np.hypot(xx, yy)
    th = np.arctan2(yy, xx)

    big = smooth_noise(rng, (n, n), n / 10)
    mid = smooth_noise(rng, (n, n), n / 25)
    rp = r * (1.0 + 0.22 * big) + 0.05 * mid  # perturbed distance from the centre
    f_mix, f_high, f_ind, f_park, f_forest, f_scrub, f_bare, f_rock = (
        smooth_noise(rng, (n, n), n / s) for s in (14, 18, 16, 20, 12, 14, 16, 20)
    )
    theta_ind = rng.uniform(-np.pi, np.pi)
    theta_inf = theta_ind + np.pi + rng.uniform(-0.6, 0.6)
    theta_lake = theta_ind + rng.choice([-1.0, 1.0]) * rng.uniform(1.2, 1.9)
    phi_river = rng.uniform(0.0, np.pi)
    river_shift, river_phase = rng.uniform(-0.12, 0.12), rng.uniform(0, 2 * np.pi)

    lcz = np.full((n, n), 14, dtype=np.uint8)  # D: farmland unless painted otherwise
    # Urban rings, from the outside in.
    lcz[rp < 0.80] = 9
    ring = rp < 0.66
    lcz[ring] = np.where(f_mix[ring] > 0.8, 5, 6)
    ring = rp < 0.50
    lcz[ring] = np.select([f_high[ring] > 0.9, f_mix[ring] > 0.6], [4, 3], 5)
    ring = rp < 0.28
    lcz[ring] = np.where(f_high[ring] > 1.2, 1, 2)
    lcz[rp < 0.10] = 1
    # Industrial sector along one radial, informal settlement on the opposite side.
    sector = (_angle_diff(th, theta_ind) < 0.55 * (1 + 0.3 * mid)) & (rp > 0.32) & (rp < 0.76)
    lcz[sector] = np.where(f_ind[sector] > 0.25, 10, 8)
    cx, cy = 0.6 * np.cos(theta_inf), 0.6 * np.sin(theta_inf)
    lcz[np.hypot(xx - cx, yy - cy) * (1 + 0.3 * mid) < 0.13] = 7
    # Parks inside the city.
    urban = rp < 0.66
    lcz[urban & (f_park > 1.35)] = 12
    lcz[urban & (f_park > 1.75)] = 11
    # Rural land beyond the built-up area.
    rural = rp >= 0.80
    lcz[rural & (f_forest > 0.35)] = 12
    lcz[rural & (f_forest > 0.55)] = 11
    lcz[rural & (f_scrub > 0.9)] = 13
    lcz[rural & (f_bare > 1.6)] = 16
    lcz[rural & (f_rock > 1.9)] = 15
    # A lake at the edge and a meandering river across the centre.
    lx, ly = 0.8 * np.cos(theta_lake), 0.8 * np.sin(theta_lake)
    lcz[np.hypot(xx - lx, yy - ly) * (1 + 0.15 * mid) < 0.25] = 17
    s = xx * np.cos(phi_river) + yy * np.sin(phi_river)
    d = -xx * np.sin(phi_river) + yy * np.cos(phi_river)
    meander = river_shift + 0.08 * np.sin(2 * np.pi * s / 0.9 + river_phase) + 0.03 * mid
    width = float(np.clip(0.015 * n, 4, 10)) / h
    lcz[np.abs(d - meander) < width / 2] = 17
    return lcz


# --------------------------------------------------------------------------------------------
# Materials at 10 m


def _splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class _Ctx:
    """Per-city state shared by the class recipes (all arrays flat over the window)."""

    x: F32  # column, px
    y: F32  # row, px
    warp_u: F32  # smooth displacement of street grids, px
    warp_v: F32
    fine: F32  # uniform(0,1) field, ~12 m structure: garden trees vs lawn vs paving
    coarse: F32  # uniform(0,1) field, ~30 m structure: clearings, scrub patches
    salt: int
    angles: dict[int, float]

    def hash(self, cls: int, tag: int, *keys: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        h = np.full(keys[0].shape, (self.salt * 1_000_003 + cls * 131 + tag), dtype=np.uint64)
        for k in keys:
            h = _splitmix(h ^ k.astype(np.uint64))
        return h

    def uniform(self, cls: int, tag: int, *keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return (self.hash(cls, tag, *keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class _Blocks:
    """A street grid evaluated at some pixels: block indices and position inside the block."""

    iu: npt.NDArray[np.int64]
    iv: npt.NDArray[np.int64]
    a: npt.NDArray[np.float32]  # position inside the block, from its low corner (px)
    b: npt.NDArray[np.float32]
    street_u: npt.NDArray[np.bool_]  # on the street that bounds the block's low-u side
    street_v: npt.NDArray[np.bool_]


def _blocks(ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int, period: int, street: int) -> _Blocks:
    ang = ctx.angles[cls]
    x, y = ctx.x[idx], ctx.y[idx]
    u = x * np.cos(ang) + y * np.sin(ang) + ctx.warp_u[idx]
    v = -x * np.sin(ang) + y * np.cos(ang) + ctx.warp_v[idx]
    iu = np.floor(u / period).astype(np.int64)
    iv = np.floor(v / period).astype(np.int64)
    fu = (u - iu * period).astype(np.float32)
    fv = (v - iv * period).astype(np.float32)
    return _Blocks(iu, iv, fu - street, fv - street, fu < street, fv < street)


def _pick(u: F32, table: tuple[tuple[str, float], ...]) -> U8:
    """Material per pixel from a uniform field and (material, fraction) pairs."""
    edges = np.cumsum([f for _, f in table])[:-1] / sum(f for _, f in table)
    mats = np.array([M[m] for m, _ in table], dtype=np.uint8)
    return mats[np.searchsorted(edges, u)]


def _compact(
    ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int, roof: str, period: int, street: int,
    merge: float, court: float, street_mat: str = "paved",
) -> tuple[U8, npt.NDArray[np.uint64]]:
    """Connected blocks of one roof material cut by narrow streets; some streets closed
    (merged blocks), some blocks with an inner courtyard."""
    g = _blocks(ctx, idx, cls, period, street)
    mat = np.full(idx.size, M[roof], dtype=np.uint8)
    open_u = ctx.uniform(cls, 1, g.iu, g.iv) >= merge
    open_v = ctx.uniform(cls, 2, g.iu, g.iv) >= merge
    is_street = (g.street_u & (open_u | g.street_v)) | (g.street_v & (open_v | g.street_u))
    mat[is_street] = M[street_mat]
    inner = period - street
    lo, hi = inner * 0.3, inner * 0.7
    yard = (ctx.uniform(cls, 3, g.iu, g.iv) < court) & (g.a >= lo) & (g.a < hi) & (g.b >= lo) & (
        g.b < hi
    )
    mat[yard & ~is_street] = _pick(ctx.fine[idx], (("paved", 0.5), ("low_plants", 0.3),
                                                    ("trees", 0.2)))[yard & ~is_street]
    return mat, ctx.hash(cls, 4, g.iu, g.iv)


def _open(
    ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int, roof: str, period: int, street: int,
    size: tuple[int, int], garden: tuple[tuple[str, float], ...], p_building: float = 1.0,
) -> tuple[U8, npt.NDArray[np.uint64]]:
    """One free-standing building per block, of class-specific size, amid a garden mix."""
    g = _blocks(ctx, idx, cls, period, street)
    inner = period - street
    lo, hi = size
    bh = lo + np.floor(ctx.uniform(cls, 1, g.iu, g.iv) * (hi - lo + 1))
    bw = lo + np.floor(ctx.uniform(cls, 2, g.iu, g.iv) * (hi - lo + 1))
    oa = 1 + np.floor(ctx.uniform(cls, 3, g.iu, g.iv) * np.maximum(inner - bh - 1, 1))
    ob = 1 + np.floor(ctx.uniform(cls, 4, g.iu, g.iv) * np.maximum(inner - bw - 1, 1))
    present = ctx.uniform(cls, 5, g.iu, g.iv) < p_building
    building = present & (g.a >= oa) & (g.a < oa + bh) & (g.b >= ob) & (g.b < ob + bw)
    mat = _pick(ctx.fine[idx], garden)
    mat[building] = M[roof]
    mat[g.street_u | g.street_v] = M["paved"]
    return mat, ctx.hash(cls, 6, g.iu, g.iv)


def _works(
    ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int, roof: str, period: int, street: int,
    cover: tuple[float, float], yard: tuple[tuple[str, float], ...],
) -> tuple[U8, npt.NDArray[np.uint64]]:
    """Large buildings covering a big share of their block; the rest is yard/parking."""
    g = _blocks(ctx, idx, cls, period, street)
    inner = period - street
    fa = cover[0] + (cover[1] - cover[0]) * ctx.uniform(cls, 1, g.iu, g.iv)
    fb = cover[0] + (cover[1] - cover[0]) * ctx.uniform(cls, 2, g.iu, g.iv)
    building = (g.a < np.round(fa * inner)) & (g.b < np.round(fb * inner))
    mat = _pick(ctx.coarse[idx], yard)
    mat[building] = M[roof]
    mat[g.street_u | g.street_v] = M["paved"]
    return mat, ctx.hash(cls, 6, g.iu, g.iv)


def _land(
    ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int, cover: tuple[tuple[str, float], ...],
    parcel: int = 25,
) -> tuple[U8, npt.NDArray[np.uint64]]:
    """Land cover as a patchy mix; objects are parcels (phenology is per parcel)."""
    g = _blocks(ctx, idx, cls, parcel, 0)
    return _pick(ctx.coarse[idx], cover), ctx.hash(cls, 6, g.iu, g.iv)


def _fields(ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int) -> tuple[U8, npt.NDArray[np.uint64]]:
    """Farmland: rectangular fields, some ploughed, some separated by hedgerows.

    An annual embedding sees a ploughed field bare for only part of the year, so its pixels are
    a patchy mix of crop and soil, never the all-year bare soil of LCZ F.
    """
    g = _blocks(ctx, idx, cls, 30, 1)
    ploughed = ctx.uniform(cls, 1, g.iu, g.iv) < 0.15
    furrows = _pick(ctx.fine[idx], (("bare_soil_sand", 0.5), ("low_plants", 0.5)))
    mat = np.where(ploughed, furrows, M["low_plants"]).astype(np.uint8)
    hedge_u = ctx.uniform(cls, 2, g.iu, g.iv) < 0.35
    hedge_v = ctx.uniform(cls, 3, g.iu, g.iv) < 0.35
    mat[(g.street_u & hedge_u) | (g.street_v & hedge_v)] = M["bush"]
    return mat, ctx.hash(cls, 6, g.iu, g.iv)


def _paint(ctx: _Ctx, idx: npt.NDArray[np.intp], cls: int) -> tuple[U8, npt.NDArray[np.uint64]]:
    """Materials of the pixels ``idx`` that belong to LCZ ``cls``: the class's recipe."""
    garden_dense = (("trees", 0.40), ("low_plants", 0.45), ("paved", 0.15))
    if cls == 1:
        return _compact(ctx, idx, cls, "roof_highrise", 8, 2, merge=0.15, court=0.1)
    if cls == 2:
        return _compact(ctx, idx, cls, "roof_midrise", 9, 2, merge=0.35, court=0.3)
    if cls == 3:
        return _compact(ctx, idx, cls, "roof_lowrise", 6, 1, merge=0.30, court=0.1)
    if cls == 4:
        return _open(ctx, idx, cls, "roof_highrise", 16, 2, (4, 6),
                     (("trees", 0.3), ("low_plants", 0.5), ("paved", 0.2)))
    if cls == 5:
        return _open(ctx, idx, cls, "roof_midrise", 11, 2, (3, 5), garden_dense)
    if cls == 6:
        return _open(ctx, idx, cls, "roof_lowrise", 7, 1, (2, 3),
                     (("trees", 0.35), ("low_plants", 0.55), ("paved", 0.10)))
    if cls == 7:
        return _compact(ctx, idx, cls, "roof_lightweight", 5, 1, merge=0.5, court=0.0,
                        street_mat="bare_soil_sand")
    if cls == 8:
        return _works(ctx, idx, cls, "roof_large", 18, 2, (0.6, 0.85),
                      (("paved", 0.85), ("low_plants", 0.15)))
    if cls == 9:
        return _open(ctx, idx, cls, "roof_lowrise", 12, 1, (2, 3),
                     (("trees", 0.25), ("low_plants", 0.65), ("bush", 0.10)), p_building=0.55)
    if cls == 10:
        return _works(ctx, idx, cls, "roof_industrial", 14, 2, (0.4, 0.75),
                      (("paved", 0.5), ("bare_soil_sand", 0.35), ("bare_rock", 0.15)))
    if cls == 11:
        return _land(ctx, idx, cls, (("trees", 0.88), ("bush", 0.07), ("low_plants", 0.05)))
    if cls == 12:
        return _land(ctx, idx, cls, (("trees", 0.30), ("low_plants", 0.65), ("paved", 0.05)))
    if cls == 13:
        return _land(ctx, idx, cls, (("bush", 0.6), ("low_plants", 0.2),
                                     ("bare_soil_sand", 0.2)))
    if cls == 14:
        return _fields(ctx, idx, cls)
    if cls == 15:
        return _land(ctx, idx, cls, (("bare_rock", 0.75), ("paved", 0.2), ("bush", 0.05)))
    if cls == 16:
        return _land(ctx, idx, cls, (("bare_soil_sand", 0.9), ("bush", 0.1)))
    return _land(ctx, idx, cls, (("water", 1.0),))


def render_materials(
    lcz: U8, rng: np.random.Generator
) -> tuple[U8, npt.NDArray[np.uint32]]:
    """Material (uint8 index into MATERIALS) and object key (uint32) of every pixel."""
    h, w = lcz.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.0, np.pi / 2)
    ctx = _Ctx(
        x=xx.ravel(),
        y=yy.ravel(),
        warp_u=(smooth_noise(rng, (h, w), max(h, w) / 8) * 2.5).ravel(),
        warp_v=(smooth_noise(rng, (h, w), max(h, w) / 8) * 2.5).ravel(),
        fine=_uniformise(smooth_noise(rng, (h, w), 1.2)).ravel(),
        coarse=_uniformise(smooth_noise(rng, (h, w), 3.0)).ravel(),
        salt=int(rng.integers(2**31)),
        angles={c: float(base + rng.normal(0.0, 0.15)) for c in range(1, 18)},
    )
    flat = lcz.ravel()
    material = np.zeros(flat.size, dtype=np.uint8)
    objects = np.zeros(flat.size, dtype=np.uint32)
    for cls in range(1, 18):
        idx = np.flatnonzero(flat == cls)
        if idx.size:
            mat, obj = _paint(ctx, idx, cls)
            material[idx] = mat
            objects[idx] = (obj >> np.uint64(40)).astype(np.uint32)
    return material.reshape(h, w), objects.reshape(h, w)


def edge_mix(material: U8, rng: np.random.Generator) -> tuple[U8, F32]:
    """For pixels on a material boundary: the neighbouring material and its sub-pixel share.

    A 10 m pixel on the edge of a roof also sees the street or garden next to it; the share is
    0 for pure pixels.
    """
    h, w = material.shape
    pad = np.pad(material, 1, mode="edge")
    other = material.copy()
    mixed = np.zeros((h, w), dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        nb = pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        new = (nb != material) & ~mixed
        other[new] = nb[new]
        mixed |= new
    share = rng.uniform(0.1, 0.45, (h, w)).astype(np.float32) * mixed
    return other, share


# --------------------------------------------------------------------------------------------
# Embeddings


@dataclass(frozen=True)
class WorldSpace:
    """The embedding space of one world: material prototypes and object deviations."""

    prototypes: F32  # (materials, 128)
    objects: F32  # (OBJECT_TABLE, 128)

    @classmethod
    def make(cls, rng: np.random.Generator) -> WorldSpace:
        """A random placement of the world's cities."""
        protos = material_prototypes(rng)
        objects = rng.normal(0.0, OBJECT_SD, (OBJECT_TABLE, BANDS)).astype(np.float32)
        return cls(protos, objects)


def render_embedding(
    space: WorldSpace,
    material: U8,
    other: U8,
    share: F32,
    objects: npt.NDArray[np.uint32],
    drift: F32,
    phenology: F32,
    rng: np.random.Generator,
) -> F32:
    """Float32 (128, H, W) embedding of one city in one year.

    ``drift`` (materials, 128) is the year's shift; ``phenology`` (OBJECT_TABLE,) the year's
    per-object move of vegetation toward bare soil; ``rng`` draws the pixel noise.
    """
    h, w = material.shape
    table = np.ascontiguousarray((space.prototypes + drift).T)  # (128, materials)
    mat = material.ravel()
    emb = np.take(table, mat, axis=1)  # (128, H*W)
    edge = np.flatnonzero(share.ravel() > 0)
    if edge.size:
        emb[:, edge] += share.ravel()[edge] * (table[:, other.ravel()[edge]] - table[:, mat[edge]])
    key = objects.ravel() % np.uint32(OBJECT_TABLE)
    emb += np.take(np.ascontiguousarray(space.objects.T), key, axis=1)
    veg = np.flatnonzero(PHENOLOGY_GAIN[mat] > 0)
    if veg.size:
        wgt = phenology[key[veg]] * PHENOLOGY_GAIN[mat[veg]]
        soil = table[:, M["bare_soil_sand"], None]
        emb[:, veg] += wgt * (soil - table[:, mat[veg]])
    noise = rng.standard_normal(emb.shape, dtype=np.float32)
    noise *= PIXEL_NOISE
    emb += noise
    return emb.reshape(BANDS, h, w)
