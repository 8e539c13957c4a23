"""Any pixel-embedding Zarr store in the ``geoemb:`` convention that is not a TESSERA store.

The convention (github.com/geo-embeddings/embeddings-zarr-convention v1) puts ``geoemb:``
attributes on the root group; the embeddings sit in an ``embeddings`` array (time, band, y, x),
either in one ``utmNN`` group per UTM zone (``geoemb:spatial_layout: utm_zones``, like TESSERA)
or in one global EPSG:4326 grid (``global``: root-level arrays with ``proj:code`` and
``spatial:transform``). Three encodings are read:

- int8 with a per-pixel scale array (``per_pixel_scale``): as TESSERA, all its checks included;
- int8 with one scalar scale and zero offset (``linear``): codes × scale, exact;
- float (no quantisation, or ``linear`` with an offset): quantised on the host to int8 codes
  with a per-pixel scale max|v|/127 — error at most half a step per value — so that every
  source hands the model the same kind of input. NaN vectors are no data.

The convention's own AlphaEarth example declares ``linear`` 1/128, which is wrong for AEF
(sign-square); such a store is refused with a pointer to the AlphaEarth layouts.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import zarr
from affine import Affine

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import NoDataError, SourceError
from lczscale.io import zarr_calls
from lczscale.io.sources.protocol import EmbeddingWindow, quantise_per_pixel
from lczscale.io.sources.tessera_zarr import TesseraZarrSource, nan_scale_meaning
from lczscale.io.stores import open_store, root_attributes
from lczscale.io.zarr_calls import ZarrArray

FIX = "check the store's geoemb: attributes (github.com/geo-embeddings/embeddings-zarr-convention)"


class GeoembZarrSource(TesseraZarrSource):
    """A generic ``geoemb:`` pixel-embedding store; picklable (URL and options only)."""

    kind = "geoemb"
    layout = "geoemb-zarr"

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What a root carrying ``geoemb:type: pixel`` and ``geoemb:dimensions`` holds, or None."""
        attrs = root_attributes(url, storage_options)
        if attrs.get("geoemb:type") != "pixel" or "geoemb:dimensions" not in attrs:
            return None
        quant = attrs.get("geoemb:quantization") or {}
        dtype = attrs.get("geoemb:data_type")
        return (f"geoemb: Zarr store ({attrs['geoemb:dimensions']}-d {dtype}, "
                f"quantisation {quant.get('method', 'none')}, layout "
                f"{attrs.get('geoemb:spatial_layout', 'global')}, "
                f"model {attrs.get('geoemb:model')})")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> GeoembZarrSource:
        """The store at ``url``, validated now: convention, zone groups and encoding."""
        source = cls(url, storage_options)
        _ = source.root
        _ = source._zone_info
        return source

    @property
    def nan_is_water(self) -> bool:  # type: ignore[override]
        """Only where the store declares geotessera's convention (nodata +inf, NaN = water):
        a generic store's NaN is a pixel without an embedding, never water."""
        return nan_scale_meaning(dict(self.root.attrs)) == "water"

    @property
    def grid_kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        """``("utm",)`` for a store of zone groups, ``("global",)`` for one EPSG:4326 grid."""
        return ("global",) if self._layout_name == "global" else ("utm",)

    @property
    def _layout_name(self) -> str:
        return str(self.root.attrs.get("geoemb:spatial_layout", "global"))

    @cached_property
    def root(self) -> zarr.Group:
        """The root group, its ``geoemb:`` attributes checked (an AEF example is refused)."""
        try:
            root = zarr.open_group(open_store(self.url, storage_options=self.storage_options),
                                   mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            raise SourceError(f"cannot open {self.url} as a Zarr v3 store: {exc}") from exc
        attrs = dict(root.attrs)
        if attrs.get("geoemb:type") != "pixel":
            raise SourceError(f"{self.url}: geoemb:type is {attrs.get('geoemb:type')!r}; only "
                              f"pixel embeddings can be mapped; {FIX}")
        method = self._method(attrs)
        model = str(attrs.get("geoemb:model", "")).lower()
        if method == "linear" and ("alphaearth" in model or "aef" in model
                                   or "satellite_embedding" in model):
            raise SourceError(
                f"{self.url} declares linear quantisation for AlphaEarth embeddings, which are "
                "sign-square quantised (v = sign(q)·(q/127.5)²); read the AlphaEarth COGs or "
                "global mosaic instead (--source-kind aef-cogs or aef-mosaic)"
            )
        if self._layout(attrs) not in ("utm_zones", "global"):
            raise SourceError(f"{self.url}: geoemb:spatial_layout {self._layout(attrs)!r} is "
                              f"neither 'utm_zones' nor 'global'; {FIX}")
        return root

    @staticmethod
    def _method(attrs: dict[str, Any]) -> str:
        quant = attrs.get("geoemb:quantization") or {}
        return str(quant.get("method", "none")) if isinstance(quant, dict) else "none"

    @staticmethod
    def _layout(attrs: dict[str, Any]) -> str:
        return str(attrs.get("geoemb:spatial_layout", "global"))

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """The ``utmNN`` groups, or ``global`` for a global store."""
        if grid_kind not in (None, *self.grid_kinds):
            return []
        if self._layout_name == "global":
            return ["global"]
        return self.zone_names_of(self.root)

    @property
    def dataset(self) -> str:
        """``geoemb/<model>``: the store's ``geoemb:model`` is all that names its feature space."""
        return f"geoemb/{self.root.attrs.get('geoemb:model', 'unknown')}"

    @cached_property
    def _groups(self) -> dict[str, zarr.Group]:
        if self._layout_name == "global":
            return {"global": self.root}
        return {n: self.root[n] for n in self.zone_names()}  # type: ignore[misc]

    @cached_property
    def _zone_info(self) -> dict[str, tuple[Affine, dict[int, int], ZarrArray, ZarrArray]]:
        info = {}
        for name, g in self._groups.items():
            if "embeddings" not in g or "time" not in g:
                raise SourceError(f"{self.url}/{name} lacks the 'embeddings' or 'time' array; "
                                  f"{FIX}")
            with zarr_calls.fused_reads():
                emb = g["embeddings"]
                scales = g["scales"] if self._method(dict(self.root.attrs)) == \
                    "per_pixel_scale" else emb
            assert isinstance(emb, zarr.Array)
            if emb.ndim != 4 or emb.shape[1] != self.dimensions:
                raise SourceError(
                    f"{self.url}/{name}/embeddings has shape {emb.shape}; expected (time, "
                    f"{self.dimensions}, y, x) as geoemb:dimensions says; {FIX}")
            assert isinstance(scales, zarr.Array)
            t = g.attrs.get("spatial:transform") or self.root.attrs.get("spatial:transform")
            if t is None:
                raise SourceError(f"{self.url}/{name} lacks 'spatial:transform'; {FIX}")
            years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr]
            coeffs = [float(v) for v in t][:6]  # type: ignore[union-attr, arg-type]
            info[name] = (Affine(*coeffs), {y: i for i, y in enumerate(years)}, emb, scales)
        return info

    def availability(self, zone: Zone, year: int, within: Window | None = None
                     ) -> Availability:
        """As TESSERA for per-pixel scales; otherwise every block of the zone's grid (the codes
        carry no nodata marker that planning could read without reading pixels)."""
        if self._method(dict(self.root.attrs)) == "per_pixel_scale":
            return super().availability(zone, year, within)
        if zone.name not in self._groups:
            return Availability((1, 1), (0, 0), frozenset())
        offset, _, emb, _ = self._locate(zone, year)
        block = (emb.shards or emb.chunks)[-2:]
        rows = -(-emb.shape[2] // block[0])
        cols = -(-emb.shape[3] // block[1])
        return Availability((block[0], block[1]), offset,
                            frozenset((r, c) for r in range(rows) for c in range(cols)))

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """As TESSERA for per-pixel scales; otherwise de-quantised (or float) values re-quantised to
        int8 codes with a per-pixel scale, NaN vectors invalid."""
        method = self._method(dict(self.root.attrs))
        if method == "per_pixel_scale":
            return super().read(zone, window, year)
        if zone.name not in self._groups:
            raise NoDataError(f"{self.url} has no zone {zone.name}")
        (r_off, c_off), t, emb, _ = self._locate(zone, year)
        d = emb.shape[1]
        values = np.full((d, window.height, window.width), np.nan, dtype=np.float32)
        inner = window.intersection(Window(r_off, c_off, emb.shape[2], emb.shape[3]))
        if inner is not None:
            src = (slice(inner.row - r_off, inner.row_stop - r_off),
                   slice(inner.col - c_off, inner.col_stop - c_off))
            raw = np.asarray(zarr_calls.getitem(emb, (t, slice(None), *src)))
            values[(slice(None), *inner.relative_to(window))] = self._decode(raw)
        return _quantised(window, values)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        quant: Any = self.root.attrs.get("geoemb:quantization") or {}
        scale: Any = quant.get("scale", {}) if isinstance(quant, dict) else {}
        if not np.issubdtype(raw.dtype, np.integer):
            return raw.astype(np.float32)
        if scale.get("type") != "scalar":
            raise SourceError(f"{self.url}: integer embeddings without a scalar or array scale "
                              f"cannot be de-quantised; {FIX}")
        out = raw.astype(np.float32) * np.float32(scale["scale"]) + np.float32(
            scale.get("offset", 0.0))
        nodata = quant.get("nodata")
        if nodata is not None:
            out[:, (raw == nodata).all(axis=0)] = np.nan
        return out


def _quantised(window: Window, values: np.ndarray) -> EmbeddingWindow:
    """Per-pixel int8 quantisation of float embeddings (NaN = no data)."""
    valid = np.isfinite(values).all(axis=0)
    codes, scale = quantise_per_pixel(np.where(valid, values, 0))
    water = np.zeros_like(valid)
    return EmbeddingWindow(window, codes, np.where(valid, scale, 0).astype(np.float32),
                           valid, water,
                           "per_pixel_scale")
