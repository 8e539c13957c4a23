"""The zone groups of the dClimate TESSERA v1.1 store, and how each sits in an lczscale zone.

The store has groups ``01N`` … ``60N`` (EPSG:326NN) and ``01S`` … ``60S`` (EPSG:327NN, positive
northings), each a fixed extent snapped outward to whole 2048 px shards.

Each lczscale zone ``utmNN`` (EPSG:326NN, southern northings negative) is read from the group of
its own hemisphere: ``NNN`` owns the rows north of the equator and ``NNS`` the rows south of it,
so the 1,472 rows by which ``NNS`` reaches north of the equator are never taken from it. The
neighbouring-zone overlap (a group's extent reaches past its 6° band) is read into its own zone;
the cube's stitching rule then takes every point from the zone that owns its longitude.

Georeferencing comes from the coordinate arrays and the ``proj:``/``spatial:`` attributes,
checked against each other (``spatial:transform`` is the pixel-corner origin since 2026-09-14;
older snapshots carry the first pixel's centre, ADR 024, and are accepted as such).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import zarr
from affine import Affine

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError, SourceError
from lczscale.io.sources import dclimate_release as dc

GROUP = re.compile(r"^(\d\d)([NS])$")
FALSE_NORTHING = 10_000_000.0  # EPSG:327NN northing − this = EPSG:326NN northing


@dataclass(frozen=True)
class GroupPart:
    """One zone group as read into the canonical zone: where it sits and what it owns."""

    group: str  # "33N"
    offset: tuple[int, int]  # canonical zone (row, col) of the group's pixel (0, 0)
    shape: tuple[int, int]  # the group's (rows, cols)
    owned: Window  # canonical pixels this group is the nominal source of (its hemisphere)
    block: tuple[int, int]  # the group's shard (rows, cols)
    inner: tuple[int, int]  # the inner chunk (rows, cols) of its scales
    complete: tuple[int, ...]  # years_complete
    tindex: tuple[tuple[int, int], ...]  # (year, time index)


def group_part(zone: Zone, group: str, g: zarr.Group, url: str, dimensions: int) -> GroupPart:
    """Where group ``group`` (``33N``) of the store at ``url`` sits in ``zone`` and which of its
    rows the zone takes from it; a SourceError when its arrays or georeferencing disagree."""
    where = f"{url}/{group}"
    try:
        emb, scales = g["embeddings"], g["scales"]
        times = g["time"][:]  # type: ignore[index]
    except KeyError as exc:
        raise SourceError(f"{where} lacks array {exc}: a TESSERA v1.1 zone group holds "
                          "'embeddings', 'scales', 'time', 'northing' and 'easting'") from None
    assert isinstance(emb, zarr.Array) and isinstance(scales, zarr.Array)
    if emb.dtype != np.int8 or emb.ndim != 4 or emb.shape[3] != dimensions:
        raise SourceError(f"{where}/embeddings is {emb.dtype} {emb.shape}; the v1.1 store "
                          f"holds int8 (time, northing, easting, {dimensions})")
    if scales.shape != emb.shape[:3]:
        raise SourceError(f"{where}/scales has shape {scales.shape}, embeddings "
                          f"{emb.shape[:3]} (+ bands): the group is inconsistent")
    transform = group_transform(zone, group, g, (emb.shape[1], emb.shape[2]), where)
    try:
        offset = zone.pixel_offset(transform)
    except ConfigError as exc:
        raise SourceError(f"{where}: {exc}") from None
    equator = round((0.0 - zone.affine.f) / zone.affine.e)
    rows = (offset[0], offset[0] + emb.shape[1])
    r0, r1 = (rows[0], min(rows[1], equator)) if group[-1] == "N" else (
        max(rows[0], equator), rows[1])
    owned = Window(r0, offset[1], max(0, r1 - r0), emb.shape[2])
    complete = dc.years_complete(dict(g.attrs), where)
    shards = emb.shards or emb.chunks
    return GroupPart(group, offset, (emb.shape[1], emb.shape[2]), owned,
                     (shards[1], shards[2]), (scales.chunks[1], scales.chunks[2]),
                     tuple(complete),
                     tuple((y, i) for i, y in enumerate(years_of(np.asarray(times)))))


def group_transform(zone: Zone, group: str, g: zarr.Group, shape: tuple[int, int],
                    where: str) -> Affine:
    """The group's grid in the zone's CRS (326NN), from its attributes checked against its
    coordinate arrays; a SourceError naming both when they disagree."""
    number, hemisphere = int(group[:2]), group[2]
    expected = f"EPSG:{(32600 if hemisphere == 'N' else 32700) + number}"
    crs = g.attrs.get("proj:code") or g.attrs.get("crs")
    if str(crs).upper() != expected:
        raise SourceError(f"{where} declares CRS {crs!r}; a {hemisphere} group of zone "
                          f"{number} is {expected}: the store is inconsistent")
    t = g.attrs.get("spatial:transform")
    if not isinstance(t, list) or len(t) < 6:
        raise SourceError(f"{where} lacks a 'spatial:transform' attribute")
    a, b, c, d, e, f = (float(v) for v in t[:6])
    declared = g.attrs.get("spatial:shape")
    if declared is not None and [int(v) for v in declared] != list(shape):  # type: ignore[union-attr, arg-type]
        raise SourceError(f"{where}: spatial:shape {declared} differs from the arrays' "
                          f"{list(shape)}: the store is inconsistent")
    try:
        east = np.asarray(g["easting"][:2], dtype=np.float64)  # type: ignore[index]
        north = np.asarray(g["northing"][:2], dtype=np.float64)  # type: ignore[index]
    except KeyError as exc:
        raise SourceError(f"{where} lacks coordinate array {exc}") from None
    centre = (c + a / 2, f + e / 2)
    if np.allclose((east[0], north[0]), centre, atol=1e-6) and np.allclose(
            (east[1] - east[0], north[1] - north[0]), (a, e), atol=1e-6):
        pass  # the corner origin (the store since 2026-09-14)
    elif np.allclose((east[0], north[0]), (c, f), atol=1e-6):
        c, f = c - a / 2, f - e / 2  # a snapshot from before ADR 024: the centre origin
    else:
        raise SourceError(
            f"{where}: coordinates disagree with spatial:transform {t[:6]}: the first pixel "
            f"centre is ({east[0]}, {north[0]}) but the transform puts it at {centre}; the "
            "store's georeferencing is inconsistent, so lczscale will not guess it"
        )
    if abs(a - zone.affine.a) > 1e-9 or abs(e - zone.affine.e) > 1e-9 or b or d:
        raise SourceError(f"{where}: pixel size ({a}, {e}) is not the zone's "
                          f"({zone.affine.a}, {zone.affine.e}); embeddings are never resampled")
    if hemisphere == "S":
        f -= FALSE_NORTHING
    return Affine(a, 0.0, c, 0.0, e, f)


def years_of(times: np.ndarray) -> list[int]:
    """Calendar years of the ``time`` coordinate: int64 ns since 1970 (CF), or plain years."""
    values = np.asarray(times)
    if values.dtype.kind in "iu" and values.size and np.abs(values).max() > 100_000:
        return [int(v) for v in values.astype("datetime64[ns]").astype("datetime64[Y]")
                .astype(np.int64) + 1970]
    return [int(v) for v in values]
