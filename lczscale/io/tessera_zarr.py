"""TESSERA embeddings in the ``geoemb:`` Zarr v3 convention (one group per UTM zone).

Layout (see shared/reference/data-formats.md §1.8): ``utmNN/embeddings`` int8 (time, band, y, x),
``utmNN/scales`` float32 (time, y, x) with NaN = water and +inf = land without data, ``time``
(years), ``x``/``y`` pixel centres; zone CRS is EPSG:326NN in both hemispheres (southern
northings negative). The store's zone grids must sit on the cube's 10 m lattice: embeddings are
never resampled.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import numpy as np
import zarr
from affine import Affine

from lczscale.errors import NoDataError, SourceError
from lczscale.grid import Window, Zone
from lczscale.io.shards import inner_chunk_mask, stored_chunks
from lczscale.io.source import EmbeddingWindow
from lczscale.io.stores import open_store, store_filesystem
from lczscale.plan import Availability

log = logging.getLogger(__name__)

# A de-quantised value beyond this is corrupt input (a real v1 tile had -161,685 from a bad
# scales file; normal values lie within about -10..41). Such pixels are masked, not predicted.
MAX_ABS_VALUE = 1000.0


class TesseraZarrSource:
    """Reads windows of a TESSERA Zarr store; picklable (holds only the URL and options)."""

    kind = "tessera"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}

    # Pickle only the address: the opened zarr handles are rebuilt lazily on the worker.
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    @cached_property
    def root(self) -> zarr.Group:
        try:
            store = open_store(self.url, storage_options=self.storage_options)
            root = zarr.open_group(store, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            raise SourceError(
                f"cannot open {self.url} as a Zarr v3 store ({type(exc).__name__}: {exc}); "
                "point --source at a TESSERA Zarr store (e.g. one made by `lczscale synth`)"
            ) from exc
        self._validate(root)
        return root

    def _validate(self, root: zarr.Group) -> None:
        attrs = dict(root.attrs)
        fix = (
            "point --source at a store in the geoemb: convention as published by TESSERA "
            "(or written by `lczscale synth`)"
        )
        quant = attrs.get("geoemb:quantization")
        if "geoemb:dimensions" not in attrs or not isinstance(quant, dict):
            raise SourceError(
                f"{self.url} is not a TESSERA-convention store: root attributes lack "
                f"'geoemb:dimensions'/'geoemb:quantization' (found {sorted(attrs)[:8]}); {fix}"
            )
        if quant.get("method") != "per_pixel_scale":
            raise SourceError(
                f"{self.url}: geoemb:quantization.method is {quant.get('method')!r}, expected "
                f"'per_pixel_scale' for TESSERA; {fix}"
            )
        if attrs.get("geoemb:spatial_layout", "utm_zones") != "utm_zones":
            raise SourceError(
                f"{self.url}: geoemb:spatial_layout is {attrs.get('geoemb:spatial_layout')!r}, "
                f"expected 'utm_zones'; {fix}"
            )
        if not self.zone_names_of(root):
            raise SourceError(f"{self.url} has no utmNN zone groups; {fix}")

    @staticmethod
    def zone_names_of(root: zarr.Group) -> list[str]:
        return sorted(
            name
            for name, node in root.groups()
            if name.startswith("utm") and name[3:].isdigit() and isinstance(node, zarr.Group)
        )

    @property
    def dimensions(self) -> int:
        return int(self.root.attrs["geoemb:dimensions"])  # type: ignore[arg-type]

    @property
    def dataset(self) -> str:
        a = self.root.attrs
        version = a.get("tessera:dataset_version") or a.get("geoemb:model", "unknown")
        variant = a.get("tessera:dataset_variant", "")
        return f"tessera/{version}" + (f"/{variant}" if variant else "")

    def zone_names(self) -> list[str]:
        return self.zone_names_of(self.root)

    @cached_property
    def _groups(self) -> dict[str, zarr.Group]:
        return {n: self.root[n] for n in self.zone_names()}  # type: ignore[misc]

    def _group(self, zone: str) -> zarr.Group:
        try:
            return self._groups[zone]
        except KeyError:
            raise NoDataError(
                f"{self.url} has no group {zone!r} (zones present: {', '.join(self.zone_names())})"
            ) from None

    @cached_property
    def _zone_info(self) -> dict[str, tuple[Affine, dict[int, int], zarr.Array, zarr.Array]]:
        """Per zone: transform, year→time index, embeddings and scales arrays."""
        info = {}
        for name, g in self._groups.items():
            try:
                emb, scales = g["embeddings"], g["scales"]
                years = [int(v) for v in g["time"][:]]  # type: ignore[union-attr, index]
            except KeyError as exc:
                raise SourceError(
                    f"{self.url}/{name} lacks array {exc}: a TESSERA zone group holds "
                    "'embeddings', 'scales' and 'time'"
                ) from None
            assert isinstance(emb, zarr.Array) and isinstance(scales, zarr.Array)
            if emb.dtype != np.int8 or emb.ndim != 4:
                raise SourceError(
                    f"{self.url}/{name}/embeddings is {emb.dtype} with {emb.ndim} dims; TESSERA "
                    "stores int8 (time, band, y, x)"
                )
            if emb.shape[1] != self.dimensions:
                raise SourceError(
                    f"{self.url}/{name}/embeddings has {emb.shape[1]} bands but the store "
                    f"declares geoemb:dimensions={self.dimensions}; the store is inconsistent"
                )
            t = g.attrs.get("spatial:transform")
            if t is None:
                raise SourceError(f"{self.url}/{name} lacks the 'spatial:transform' attribute")
            coeffs = [float(v) for v in t][:6]  # type: ignore[union-attr, arg-type]
            info[name] = (Affine(*coeffs), {y: i for i, y in enumerate(years)}, emb, scales)
        return info

    @property
    def years(self) -> list[int]:
        return sorted({y for _, ty, _, _ in self._zone_info.values() for y in ty})

    def _locate(self, zone: Zone, year: int) -> tuple[tuple[int, int], int, zarr.Array, zarr.Array]:
        transform, tindex, emb, scales = self._zone_info[self._group(zone.name).basename]
        if year not in tindex:
            raise NoDataError(
                f"{self.url}/{zone.name} has no year {year} (years: {sorted(tindex)}); pass "
                "--year with one of them"
            )
        return zone.pixel_offset(transform), tindex[year], emb, scales

    def availability(
        self, zone: Zone, year: int, within: Window | None = None
    ) -> Availability:
        """Stored shards, and which inner chunks hold data for shards meeting ``within``."""
        if zone.name not in self._groups:
            return Availability((1, 1), (0, 0), frozenset())
        offset, t, emb, _ = self._locate(zone, year)
        # List the stored embeddings chunks (shards): all-water or never-written areas are
        # not stored under either scales convention (NaN- or +inf-filled).
        block = emb.shards or emb.chunks
        stored = stored_chunks(emb, (t, 0))
        fs, _ = store_filesystem(emb.store_path.store)
        cells: dict[tuple[int, int], np.ndarray] = {}
        if emb.shards is not None:
            for (r, c), path in stored.items():
                shard = Window(offset[0] + r * block[2], offset[1] + c * block[3], *block[2:])
                if within is not None and within.intersection(shard) is None:
                    continue
                mask = inner_chunk_mask(fs, path, emb)
                if mask is not None:
                    cells[(r, c)] = mask
        cell = (emb.chunks[2], emb.chunks[3]) if cells else None
        return Availability((block[2], block[3]), offset, frozenset(stored), cell, cells)

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        (r_off, c_off), t, emb, scales = self._locate(zone, year)
        bands = emb.shape[1]
        codes = np.zeros((bands, window.height, window.width), dtype=np.int8)
        sc = np.full((window.height, window.width), np.nan, dtype=np.float32)
        extent = Window(r_off, c_off, emb.shape[2], emb.shape[3])
        inner = window.intersection(extent)
        if inner is not None:
            src = (slice(inner.row - r_off, inner.row_stop - r_off),
                   slice(inner.col - c_off, inner.col_stop - c_off))
            dst = inner.relative_to(window)
            codes[(slice(None), *dst)] = emb[(t, slice(None), *src)]
            sc[dst] = scales[(t, *src)]
        water = np.isnan(sc)
        if inner is not None:
            outside = np.ones_like(water)
            outside[inner.relative_to(window)] = False
            water &= ~outside
        else:
            water[:] = False
        valid = np.isfinite(sc)
        corrupt = valid & (np.abs(sc) * 127.0 > MAX_ABS_VALUE)
        if corrupt.any():
            log.warning(
                "%s %s year %d: %d pixels with |value| > %g masked as corrupt input",
                self.url, zone.name, year, int(corrupt.sum()), MAX_ABS_VALUE,
            )
            valid &= ~corrupt
        codes[:, ~valid] = 0
        sc[~valid] = 0.0
        return EmbeddingWindow(window, codes, sc, valid, water, "per_pixel_scale")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "dataset": self.dataset,
            "dimensions": self.dimensions,
            "build_version": self.root.attrs.get("geoemb:build_version"),
        }
