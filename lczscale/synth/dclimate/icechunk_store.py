"""``write_tessera_icechunk``: the world as ``dclimate.icechunk``, a local Icechunk repository
laid out as ``s3://tessera-embeddings/v1.1/dclimate.icechunk`` (spec §1–§3), one commit per
year with its zone and year tags, and (by default) its tile registry (spec §5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import icechunk
import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from lczscale.core.grid import Window
from lczscale.synth.cities import SynthCity
from lczscale.synth.dclimate.pixel_values import _city_year, _CityYear
from lczscale.synth.dclimate.registry import _write_registry_part
from lczscale.synth.dclimate.spec import (
    ASSEMBLED_AT,
    CHUNK_PX,
    ICECHUNK_DIR,
    MONTH_ARRAYS,
    MONTHS,
    OBS_ARRAYS,
    REGISTRY_DIR,
    ROOT_ATTRS,
    SHARD_PX,
    TIME_ATTRS,
    TIME_YEARS,
    Render,
    _check_years,
    _fresh,
    _time_values,
)
from lczscale.synth.dclimate.zone_groups import (
    HemisphereGroup,
    _final_group_attrs,
    _group_attrs,
    _groups_of,
    hemisphere_groups,
)
from lczscale.synth.layout import BANDS

try:  # zarr >= 3.1 ships the numcodecs bridge; its v3 name is "numcodecs.pcodec"
    from zarr.codecs.numcodecs import PCodec
except ImportError:  # pragma: no cover - older zarr: numcodecs' own v3 wrapper
    from numcodecs.zarr3 import PCodec  # type: ignore[no-redef]


def _create_icechunk_group(root: zarr.Group, g: HemisphereGroup,
                           years_complete: Sequence[int]) -> None:
    grp = root.create_group(g.name, attributes=_group_attrs(g, years_complete, {}))
    h, w = g.shape
    t = len(TIME_YEARS)
    config: ArrayConfigParams = {"write_empty_chunks": False}
    dims = ["time", "northing", "easting"]
    grp.create_array(
        "embeddings", shape=(t, h, w, BANDS), dtype="int8", fill_value=0,
        chunks=(1, CHUNK_PX, CHUNK_PX, BANDS), shards=(1, SHARD_PX, SHARD_PX, BANDS),
        compressors="auto", dimension_names=[*dims, "band"], config=config,
    )
    grp.create_array(
        "scales", shape=(t, h, w), dtype="float32", fill_value=float("nan"),
        chunks=(1, CHUNK_PX, CHUNK_PX), shards=(1, SHARD_PX, SHARD_PX),
        serializer=PCodec(), compressors=None, dimension_names=dims, config=config,
    )
    for name in OBS_ARRAYS:
        grp.create_array(
            name, shape=(t, h, w), dtype="uint16", fill_value=0,
            chunks=(1, CHUNK_PX, CHUNK_PX), shards=(1, SHARD_PX, SHARD_PX),
            compressors="auto", dimension_names=dims, config=config,
        )
    for name in MONTH_ARRAYS:
        grp.create_array(
            name, shape=(t, h, w, MONTHS), dtype="int8", fill_value=0,
            chunks=(1, CHUNK_PX, CHUNK_PX, MONTHS), shards=(1, SHARD_PX, SHARD_PX, MONTHS),
            compressors="auto", dimension_names=[*dims, "month"], config=config,
            attributes={"dtype": "bool"},
        )
    time, bnds = _time_values()
    a = g.transform
    coords: list[tuple[str, np.ndarray, list[str], dict[str, Any]]] = [
        ("time", time, ["time"], {**TIME_ATTRS, "bounds": "time_bnds"}),
        ("time_bnds", bnds, ["time", "bnds"], dict(TIME_ATTRS)),
        ("northing", a[5] + (np.arange(h) + 0.5) * a[4], ["northing"], {}),
        ("easting", a[2] + (np.arange(w) + 0.5) * a[0], ["easting"], {}),
        ("band", np.arange(BANDS, dtype=np.int64), ["band"], {}),
        ("month", np.arange(1, MONTHS + 1, dtype=np.int16), ["month"], {}),
    ]
    for name, values, vdims, attrs in coords:
        arr = grp.create_array(name, shape=values.shape, dtype=values.dtype,
                               chunks=values.shape, dimension_names=vdims, attributes=attrs)
        arr[...] = values


def _write_icechunk_piece(grp: zarr.Group, g: HemisphereGroup, c: SynthCity, t: int,
                          v: _CityYear) -> tuple[Window, tuple[slice, slice]] | None:
    """Write the part of a city-year inside group ``g``; returns (group window, city slices)."""
    gw = g.window(c.zone)
    inner = gw.intersection(c.window)
    if inner is None:
        return None
    src = inner.relative_to(c.window)
    r0, c0 = inner.row - gw.row, inner.col - gw.col
    dst = (t, slice(r0, r0 + inner.height), slice(c0, c0 + inner.width))
    grp["embeddings"][dst] = np.moveaxis(v.codes[(slice(None), *src)], 0, -1)  # type: ignore[index]
    grp["scales"][dst] = v.scales[src]  # type: ignore[index]
    for name, arr in v.obs.items():
        grp[name][dst] = arr[src]  # type: ignore[index]
    for name, flags in v.months.items():
        grp[name][dst] = flags[src]  # type: ignore[index]
    return Window(r0, c0, inner.height, inner.width), src


def write_tessera_icechunk(
    out: Path,
    world: Sequence[SynthCity],
    years: Sequence[int],
    render: Render,
    seed: int,
    *,
    complete_years: Sequence[int] | None = None,
    registry: bool = True,
    assembled_at: str = ASSEMBLED_AT,
) -> str:
    """Write ``out/dclimate.icechunk`` (and ``out/dclimate.registry`` unless ``registry`` is
    False) and return the repository's path.

    Commits: one seeding the groups (all eight arrays and the coordinates), then one per year
    (every city rendered once, written into each group it touches), tagged
    ``zone-<ZONE>-<YEAR>`` for each group and ``year-<YEAR>-complete`` when the year is in
    ``years_complete``. ``years_complete`` on each group is ``complete_years`` if given, else
    the years written so far.
    """
    out = Path(out)
    years = _check_years(years)
    path = out / ICECHUNK_DIR
    _fresh(path)
    if registry:
        _fresh(out / REGISTRY_DIR)
    groups = hemisphere_groups(world)
    final = _final_group_attrs(world, years, seed, complete_years, assembled_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w", zarr_format=3, attributes=ROOT_ATTRS)
    initial = [] if complete_years is None else sorted(int(y) for y in complete_years)
    for g in groups.values():
        _create_icechunk_group(root, g, initial)
    session.commit(f"seed zone groups {', '.join(groups)}")

    done: list[int] = []
    for year in years:
        t = TIME_YEARS.index(year)
        session = repo.writable_session("main")
        root = zarr.open_group(session.store, mode="r+")
        pieces: dict[str, list[tuple[Window, _CityYear, tuple[slice, slice]]]] = {}
        for c in world:
            v = _city_year(c, year, render(c, year), seed)
            for g in _groups_of(c):
                grp = root[g.name]
                assert isinstance(grp, zarr.Group)
                piece = _write_icechunk_piece(grp, g, c, t, v)
                if piece is not None:
                    pieces.setdefault(g.name, []).append((piece[0], v, piece[1]))
            del v
        done.append(year)
        complete = done if complete_years is None else complete_years
        for name in groups:
            grp = root[name]
            assert isinstance(grp, zarr.Group)
            runs: dict[str, Any] = dict(cast(dict[str, Any], grp.attrs.get("runs") or {}))
            runs[str(year)] = final[name]["runs"][str(year)]
            grp.attrs.update({"runs": runs,
                              "years_complete": sorted(int(y) for y in complete)})
        snapshot = session.commit(f"assemble {year}: {', '.join(groups)}")
        for name in groups:
            repo.create_tag(f"zone-{name}-{year}", snapshot)
        if year in {int(y) for y in complete}:
            repo.create_tag(f"year-{year}-complete", snapshot)
        if registry:
            for name, parts in pieces.items():
                _write_registry_part(out / REGISTRY_DIR, groups[name], year,
                                     final[name]["runs"][str(year)], parts)
    return str(path.resolve())
