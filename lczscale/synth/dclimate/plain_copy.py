"""``write_tessera_plain_zarr``: the world as ``dclimate.zarr``, the Source Cooperative plain
Zarr v3 copy ``tessera/zarr/v1.1-dclimate`` of the Icechunk store: one ``utmNN`` group per
zone holding N ∪ S on one grid, with the source groups' attributes carried along (spec §4)."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import zarr
from affine import Affine
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from lczscale.core.grid import Window, Zone
from lczscale.errors import ConfigError
from lczscale.synth.cities import SynthCity
from lczscale.synth.dclimate.pixel_values import _city_year
from lczscale.synth.dclimate.spec import (
    ASSEMBLED_AT,
    GEOEMB_CONVENTION,
    ICECHUNK_DIR,
    MONTH_ARRAYS,
    MONTHS,
    OBS_ARRAYS,
    PLAIN_DIR,
    PLAIN_INNER,
    PLAIN_SHARD,
    PROJ_CONVENTION,
    ROOT_ATTRS,
    SPATIAL_CONVENTION,
    TIME_ATTRS,
    TIME_YEARS,
    Render,
    _check_years,
    _fresh,
    _time_values,
)
from lczscale.synth.dclimate.zone_groups import HemisphereGroup, _final_group_attrs, _zone_number
from lczscale.synth.layout import BANDS
from lczscale.synth.world import BUILD_VERSION


@dataclass(frozen=True)
class _PlainGrid:
    """The plain copy's ``utmNN`` grid: N ∪ S in EPSG:326NN, rounded up to whole shards."""

    zone: Zone
    window: Window  # canonical zone pixels, padded to shards
    data: Window  # the part N or S covers (never padding)

    @classmethod
    def of(cls, zone: Zone, shard: int = PLAIN_SHARD) -> _PlainGrid:
        n = _zone_number(zone)
        parts = [HemisphereGroup(n, h).window(zone) for h in "NS"]
        r0, c0 = min(p.row for p in parts), min(p.col for p in parts)
        r1, c1 = max(p.row_stop for p in parts), max(p.col_stop for p in parts)
        if sorted(parts)[0].row_stop < sorted(parts)[1].row:  # pragma: no cover - pinned
            raise ConfigError(f"{zone.name}: N and S extents leave a gap")
        h, w = r1 - r0, c1 - c0
        padded = Window(r0, c0, -(-h // shard) * shard, -(-w // shard) * shard)
        return cls(zone, padded, Window(r0, c0, h, w))

    @property
    def transform(self) -> list[float]:
        a = self.zone.affine @ Affine.translation(self.window.col, self.window.row)
        return [a.a, a.b, a.c, a.d, a.e, a.f]

    @property
    def bbox(self) -> list[float]:
        t = self.transform
        return [t[2], t[5] + t[4] * self.window.height, t[2] + t[0] * self.window.width, t[5]]


def _snapshot_id(text: str) -> str:
    """A 20-character Crockford base32 id shaped like an Icechunk snapshot id."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:13], "big")
    return "".join(alphabet[(n >> (5 * i)) & 31] for i in range(20))[::-1]


def _source_snapshot(store: Path, seed: int, years: list[int]) -> str:
    """The tip of ``main`` of the Icechunk repository at ``store`` when there is one."""
    if store.is_dir():
        try:
            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(store)))
            return repo.lookup_branch("main")
        except Exception:  # not a repository: fall back to a made-up id
            pass
    return _snapshot_id(f"lczscale-synth {seed} {years}")


def _plain_array_configs(grid: _PlainGrid) -> list[tuple[str, dict[str, Any]]]:
    h, w, t = grid.window.height, grid.window.width, len(TIME_YEARS)
    spatial = (1, PLAIN_SHARD, PLAIN_SHARD)
    inner = (1, PLAIN_INNER, PLAIN_INNER)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("embeddings", {"shape": (t, BANDS, h, w), "dtype": "int8", "fill_value": 0,
                        "chunks": (1, BANDS, PLAIN_INNER, PLAIN_INNER),
                        "shards": (1, BANDS, PLAIN_SHARD, PLAIN_SHARD),
                        "dimension_names": ["time", "band", "y", "x"], "attributes": {}}),
        ("scales", {"shape": (t, h, w), "dtype": "float32", "fill_value": float("nan"),
                    "chunks": inner, "shards": spatial,
                    "dimension_names": ["time", "y", "x"], "attributes": {}}),
    ]
    for name in OBS_ARRAYS:
        specs.append((name, {"shape": (t, h, w), "dtype": "uint16", "fill_value": 0,
                             "chunks": inner, "shards": spatial,
                             "dimension_names": ["time", "y", "x"], "attributes": {}}))
    for name in MONTH_ARRAYS:
        specs.append((name, {"shape": (t, h, w, MONTHS), "dtype": "int8", "fill_value": 0,
                             "chunks": (*inner, MONTHS), "shards": (*spatial, MONTHS),
                             "dimension_names": ["time", "y", "x", "month"],
                             "attributes": {"dtype": "bool"}}))
    return specs


def _create_plain_group(root: zarr.Group, grid: _PlainGrid, attrs: dict[str, Any]) -> None:
    grp = root.create_group(grid.zone.name, attributes=attrs)
    comp = BloscCodec(cname="zstd", clevel=3)
    config: ArrayConfigParams = {"write_empty_chunks": False}
    for name, spec in _plain_array_configs(grid):
        grp.create_array(name, compressors=comp, config=config, **spec)
    t = grid.transform
    time, bnds = _time_values()
    coords: list[tuple[str, np.ndarray, list[str], dict[str, Any]]] = [
        ("x", t[2] + (np.arange(grid.window.width) + 0.5) * t[0], ["x"], {}),
        ("y", t[5] + (np.arange(grid.window.height) + 0.5) * t[4], ["y"], {}),
        ("time", np.asarray(TIME_YEARS, dtype=np.int32), ["time"], {}),
        ("band", np.arange(BANDS, dtype=np.int32), ["band"], {}),
        ("month", np.arange(1, MONTHS + 1, dtype=np.int16), ["month"], {}),
        ("time_bnds", bnds, ["time", "bnds"], dict(TIME_ATTRS)),
    ]
    del time
    for name, values, vdims, vattrs in coords:
        arr = grp.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                               fill_value=0, compressors=comp, dimension_names=vdims,
                               attributes=vattrs)
        arr[...] = values


def write_tessera_plain_zarr(
    out: Path,
    world: Sequence[SynthCity],
    years: Sequence[int],
    render: Render,
    seed: int,
    *,
    complete_years: Sequence[int] | None = None,
    assembled_at: str = ASSEMBLED_AT,
    source_store: str | None = None,
    source_snapshot: str | None = None,
) -> str:
    """Write ``out/dclimate.zarr``, the plain Zarr v3 copy, and return its path.

    Same pixels as ``write_tessera_icechunk`` with the same ``seed``; ``complete_years`` and
    ``assembled_at`` only feed ``geotessera:source_groups``. ``source_store`` defaults to
    ``out/dclimate.icechunk``; ``source_snapshot`` to that repository's ``main`` tip when it
    exists (else a made-up id).
    """
    out = Path(out)
    years = _check_years(years)
    path = out / PLAIN_DIR
    _fresh(path)
    store = out / ICECHUNK_DIR
    source = source_store or str(store.resolve())
    snapshot = source_snapshot or _source_snapshot(store, seed, years)
    groups = _final_group_attrs(world, years, seed, complete_years, assembled_at)
    zones = dict(sorted({c.zone.name: c.zone for c in world}.items()))
    migration = hashlib.sha256(json.dumps(
        {"source": source, "snapshot": snapshot, "zones": list(zones), "years": years,
         "shard_size": PLAIN_SHARD, "inner_chunk": PLAIN_INNER}, sort_keys=True).encode()
    ).hexdigest()
    root_attrs = {
        **ROOT_ATTRS,
        "zarr_conventions": [GEOEMB_CONVENTION],
        "geotessera:migration_id": migration,
        "geotessera:mask_source": "source_nodata",
        "geoemb:landmask": False,
        "geoemb:build_version": BUILD_VERSION,
        "geotessera:source_snapshot": snapshot,
        "geotessera:source_store": source,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=root_attrs)
    grids = {name: _PlainGrid.of(z) for name, z in zones.items()}
    for grid in grids.values():
        n = _zone_number(grid.zone)
        attrs = {
            "spatial:dimensions": ["y", "x"],
            "spatial:transform_type": "affine",
            "spatial:transform": grid.transform,
            "spatial:shape": [grid.window.height, grid.window.width],
            "spatial:bbox": grid.bbox,
            "spatial:registration": "pixel",
            "proj:code": grid.zone.crs,
            "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
            "geotessera:mask_source": "source_nodata",
            "geotessera:migration_id": migration,
            "geotessera:source_groups": {
                g: a for g, a in groups.items() if int(g[:2]) == n
            },
        }
        _create_plain_group(root, grid, attrs)

    for year in years:
        t = TIME_YEARS.index(year)
        for c in world:
            grid = grids[c.zone.name]
            inner = grid.data.intersection(c.window)
            if inner is None:
                continue
            v = _city_year(c, year, render(c, year), seed)
            src = inner.relative_to(c.window)
            rs, cs = inner.relative_to(grid.window)
            grp = root[c.zone.name]
            assert isinstance(grp, zarr.Group)
            grp["embeddings"][t, :, rs, cs] = v.codes[(slice(None), *src)]  # type: ignore[index]
            grp["scales"][t, rs, cs] = v.scales[src]  # type: ignore[index]
            for name, arr in v.obs.items():
                grp[name][t, rs, cs] = arr[src]  # type: ignore[index]
            for name, flags in v.months.items():
                grp[name][t, rs, cs] = flags[src]  # type: ignore[index]
            del v
    with warnings.catch_warnings():  # the copy is consolidated; zarr warns: not in v3 spec
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))
    return str(path.resolve())
