"""LCZ label rasters (GeoTIFF, COG, VRT, any GDAL raster), local or remote, in any encoding.

Covers the global 100 m map (EPSG:4326, 1–17, palette; its nodata is read from the tag, which
the docs leave unconfirmed), LCZ Generator / WUDAPT outputs, float and int32 re-exports and
projected copies. Only the part under the requested window is read, so a 1.7 GB global COG
costs a few range requests per tile.

Band choice: a one-band file uses band 1. LCZ Generator rasters carry three int16 bands,
``lcz`` (the per-pixel random-forest class), ``lczFilter`` (the same after the Gaussian
post-classification filter — the product the Generator delivers and the global map
recommends as ``LCZ_Filter``) and ``classProbability`` (0–100 %, not a class). So a multi-band
file uses the band whose description is ``lczFilter`` / ``LCZ_Filter``, else ``lcz`` / ``LCZ``;
``band=N`` overrides, and a multi-band file with no such name needs it.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, override

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError, WindowError
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds
from rasterio.windows import Window as Win

from lczscale.core.grid import Window, Zone
from lczscale.errors import SourceError
from lczscale.io.labels.encoding import (
    LCZ,
    check_convention,
    decode,
    nodata_name,
    nodata_values,
)
from lczscale.io.labels.protocol import U8, LabelSource, ResamplingName, resampling_for
from lczscale.io.labels.warp import warp
from lczscale.io.stores import filesystem, is_remote

SAMPLE_FULL = 16_000_000  # pixels: read the whole band to detect the encoding up to this size
SAMPLE_SIDE = 2048  # else a decimated read (overviews) of at most this many pixels a side
MARGIN = 2  # source pixels read beyond the window, so the warp never lacks a neighbour
BAND_NAMES = ("lczfilter", "lcz")  # preferred band descriptions (lower case, letters only)


def _key(name: str | None) -> str:
    return re.sub(r"[^a-z]", "", (name or "").lower())


class RasterLabels(LabelSource):
    """Labels from any GDAL raster, its encoding and band detected, warped onto the zone window."""
    kind = "raster"

    def __init__(
        self,
        path: str,
        band: int | None = None,
        storage_options: dict[str, Any] | None = None,
        resampling: ResamplingName = "auto",
    ) -> None:
        self.path = path
        self._storage_options = storage_options
        self.resampling: ResamplingName = resampling
        with self._open() as ds:
            if ds.crs is None:
                raise SourceError(f"label raster {path} has no CRS; it must be georeferenced")
            self.band, self.band_choice = self._choose_band(ds, band)
            self.dtype = np.dtype(ds.dtypes[self.band - 1])
            declared = ds.nodatavals[self.band - 1]
            self.declared_nodata = None if declared is None else float(declared)
            where = f"label raster {path} band {self.band}"
            self._nodata = nodata_values(self.dtype, self.declared_nodata, where)
            sample = self._sample(ds)
            codes, self.convention = decode(sample, self._nodata, f"{where} (sample)")
            has_m1 = self.dtype.kind == "f" and bool((sample == -1).any())
            nod = nodata_name(self.dtype, self.declared_nodata, has_m1)
            cls = self.convention or LCZ
            self.encoding = cls if nod is None else f"{cls}; {nod}"
            self.classes = [int(v) for v in np.unique(codes[codes > 0])]
            self.labelled_share = float((codes > 0).mean()) if codes.size else 0.0
            self.sampled = "whole band" if sample.shape == (ds.height, ds.width) else (
                f"decimated to {sample.shape[1]}x{sample.shape[0]}"
            )
            self.crs = ds.crs.to_string()
            b = ds.bounds
            self.bounds = (b.left, b.bottom, b.right, b.top)
            self._facts = {
                "band": self.band, "band_choice": self.band_choice,
                "bands": list(ds.descriptions), "dtype": self.dtype.name,
                "nodata_tag": None if declared is None else (
                    "nan" if math.isnan(float(declared)) else float(declared)
                ),
                "size": [ds.width, ds.height], "res": list(ds.res),
                "palette": _has_palette(ds, self.band), "driver": ds.driver,
            }

    def _open(self) -> DatasetReader:
        try:
            with warnings.catch_warnings():  # a missing CRS gets our own, clearer error
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                if is_remote(self.path):
                    fs, _ = filesystem(self.path, self._storage_options)
                    return rasterio.open(self.path, opener=fs)
                return rasterio.open(self.path)
        except RasterioIOError as exc:
            raise SourceError(f"cannot read label raster {self.path}: {exc}") from exc

    def _choose_band(self, ds: DatasetReader, band: int | None) -> tuple[int, str]:
        names = list(ds.descriptions)
        if band is not None:
            if not 1 <= band <= ds.count:
                raise SourceError(
                    f"label raster {self.path} has {ds.count} band(s) {names}; band {band} "
                    "does not exist"
                )
            return band, "given"
        if ds.count == 1:
            return 1, "single band"
        keys = [_key(n) for n in names]
        for want in BAND_NAMES:
            if want in keys:
                i = keys.index(want)
                return i + 1, f"named {names[i]!r}"
        raise SourceError(
            f"label raster {self.path} has {ds.count} bands {names} and none is named like an "
            "LCZ class band (lczFilter / LCZ_Filter, lcz / LCZ); pass band=N"
        )

    def _sample(self, ds: DatasetReader) -> np.ndarray:
        h, w = ds.height, ds.width
        if h * w <= SAMPLE_FULL:
            return np.asarray(ds.read(self.band))
        f = max(h, w) / SAMPLE_SIDE
        shape = (max(1, round(h / f)), max(1, round(w / f)))
        return np.asarray(ds.read(self.band, out_shape=shape))  # nearest, from overviews

    @override
    def read(self, zone: Zone, window: Window) -> U8:
        out = np.zeros((window.height, window.width), dtype=np.uint8)
        if window.size == 0:
            return out
        gbox = zone.window_geobox(window)
        with self._open() as ds:
            bounds = transform_bounds(zone.crs, ds.crs, *gbox.extent.boundingbox)
            if not all(math.isfinite(v) for v in bounds):
                return out
            fwin = ds.window(*bounds)
            ratio = abs(fwin.width * fwin.height) / window.size
            win = fwin.round_offsets().round_lengths()
            win = Win(win.col_off - MARGIN, win.row_off - MARGIN, win.width + 2 * MARGIN,
                      win.height + 2 * MARGIN)
            try:
                win = win.intersection(Win(0, 0, ds.width, ds.height))
            except WindowError:  # the window lies outside the label raster: all unlabelled
                return out
            src = ds.read(self.band, window=win)
            where = (f"label raster {self.path} band {self.band} (rows {win.row_off}:"
                     f"{win.row_off + win.height}, cols {win.col_off}:{win.col_off + win.width})")
            codes, seen = decode(src, self._nodata, where)
            check_convention(seen, self.convention, where)
            if not codes.any():
                return out
            return warp(codes, ds.window_transform(win), self.crs, zone, window,
                        resampling_for(ratio, self.resampling), ratio)

    @override
    def details(self) -> dict[str, Any]:
        return self._facts | {
            "classes": self.classes, "labelled_share": round(self.labelled_share, 4),
            "sample": self.sampled, "resampling": self.resampling,
        }


def _has_palette(ds: DatasetReader, band: int) -> bool:
    try:
        return bool(ds.colormap(band))
    except ValueError:
        return False
