"""Coarse 100 m LCZ labels made and stored as the global LCZ map (Demuzere et al. 2022) is: the
reference a model is trained on and its maps are compared with.

``coarse_labels`` makes a city's ``LCZ_Filter`` band from its 10 m truth (mode per cell, the
map's typical confusions in patches, the Gaussian majority filter); ``_write_coarse`` writes
``lcz_coarse/{city}.tif`` and the ``lcz_coarse.tif`` / ``lcz_coarse.vrt`` mosaic in the map's
format (EPSG:4326, 0.000898315284120° pixels, 1..17, 0 = nodata, embedded palette).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from lczscale.products.counts import gaussian_mode_filter
from lczscale.synth.cities import _REFERENCE, SynthCity, _rng
from lczscale.synth.layout import smooth_noise

__all__ = [
    "CONFUSED_WITH",
    "LCZ_COARSE_RES",
    "LCZ_PALETTE",
    "coarse_labels",
    "coarse_mode",
    "reference_errors",
]

LCZ_COARSE_RES = 0.000898315284120  # degrees: the Demuzere et al. (2022) global map's pixel
MAX_COARSE_PIXELS = 20_000_000
COARSE_FILTER_SIGMA = 1.0  # cells: the global LCZ map's Gaussian post-classification filter
REFERENCE_ERROR_RATE = 0.10  # cells of the coarse reference misclassified (real map: ~0.23)

# The "official" palette embedded in the global LCZ GeoTIFF (Demuzere readme), classes 1..17.
LCZ_PALETTE: dict[int, str] = dict(
    enumerate(
        [
            "#910613", "#D9081C", "#FF0A22", "#C54F1E", "#FF6628", "#FF985E", "#FDED3F",
            "#BBBBBB", "#FFCBAB", "#565656", "#006A18", "#00A926", "#628432", "#B5DA7F",
            "#000000", "#FCF7B1", "#656BFA",
        ],
        start=1,
    )
)


def _coarse_grid(bbox: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(row0, col0, height, width) on the global map's lattice (origin -180, 90) covering bbox."""
    minlon, minlat, maxlon, maxlat = bbox
    c0 = math.floor((minlon + 180.0) / LCZ_COARSE_RES)
    c1 = math.ceil((maxlon + 180.0) / LCZ_COARSE_RES)
    r0 = math.floor((90.0 - maxlat) / LCZ_COARSE_RES)
    r1 = math.ceil((90.0 - minlat) / LCZ_COARSE_RES)
    return r0, c0, r1 - r0, c1 - c0


def _coarse_transform(row0: int, col0: int) -> Affine:
    return Affine(
        LCZ_COARSE_RES, 0.0, -180.0 + col0 * LCZ_COARSE_RES,
        0.0, -LCZ_COARSE_RES, 90.0 - row0 * LCZ_COARSE_RES,
    )


def _rgba(hex_colour: str) -> tuple[int, int, int, int]:
    v = hex_colour.lstrip("#")
    return (int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16), 255)


def _colormap() -> dict[int, tuple[int, int, int, int]]:
    cmap = {0: (0, 0, 0, 0)}
    cmap.update({k: _rgba(v) for k, v in LCZ_PALETTE.items()})
    return cmap


def _write_lcz_tif(path: Path, data: npt.NDArray[np.uint8], row0: int, col0: int) -> None:
    profile = {
        "driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": "uint8", "crs": "EPSG:4326", "transform": _coarse_transform(row0, col0),
        "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
        "compress": "deflate", "interleave": "band",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.write_colormap(1, _colormap())
        dst.set_band_description(1, "LCZ_Filter")


def coarse_labels(c: SynthCity) -> tuple[npt.NDArray[np.uint8], int, int]:
    """The city's 100 m reference, made as the global LCZ map's recommended ``LCZ_Filter`` band
    is, with (row0, col0).

    The mode of the 10 m truth in each cell (``coarse_mode``) stands for what a perfect 100 m
    classifier would say; the real map's random forest is wrong on about a quarter of its cells
    (reported OA ≈ 0.77), mostly between neighbouring types and in patches, so
    ``REFERENCE_ERROR_RATE`` of the cells, in patches, take the type they are most often
    confused with (``reference_errors``); then the Gaussian-weighted majority filter (σ = 1
    cell). Like the real product it loses features under ~200 m.
    """
    mode, row0, col0 = coarse_mode(c)
    noisy = reference_errors(mode, _rng(c.seed, c.site, _REFERENCE))
    return gaussian_mode_filter(noisy, sigma=COARSE_FILTER_SIGMA), row0, col0


# The LCZ type a 100 m classifier most often takes each type for: the next denser or sparser
# type of the same family (compact ↔ compact, open → sparser, trees ↔ scattered trees, …).
CONFUSED_WITH = np.array([0, 2, 3, 2, 5, 6, 9, 3, 10, 6, 8, 12, 11, 14, 13, 16, 15, 17],
                         dtype=np.uint8)


def reference_errors(
    mode: npt.NDArray[np.uint8], rng: np.random.Generator, rate: float | None = None
) -> npt.NDArray[np.uint8]:
    """``mode`` with ``rate`` of its labelled cells, in patches of a few cells (a smooth random
    field above its quantile), relabelled as the type they are most often confused with."""
    rate = REFERENCE_ERROR_RATE if rate is None else rate
    field_ = smooth_noise(rng, mode.shape, 1.0)
    labelled = mode > 0
    if rate <= 0 or not labelled.any():
        return mode.copy()
    wrong = labelled & (field_ > np.quantile(field_[labelled], 1.0 - rate))
    return np.where(wrong, CONFUSED_WITH[mode], mode).astype(np.uint8)


def coarse_mode(c: SynthCity) -> tuple[npt.NDArray[np.uint8], int, int]:
    """The city's truth as 100 m EPSG:4326 labels (mode of 10 m pixels), with (row0, col0)."""
    row0, col0, h, w = _coarse_grid(c.bbox_lonlat)
    dst = np.zeros((h, w), dtype=np.uint8)
    reproject(
        c.truth, dst,
        src_transform=c.zone.window_geobox(c.window).affine, src_crs=c.zone.crs, src_nodata=0,
        dst_transform=_coarse_transform(row0, col0), dst_crs="EPSG:4326", dst_nodata=0,
        resampling=Resampling.mode,
    )
    return dst, row0, col0


def _write_vrt(path: Path, parts: Sequence[tuple[Path, int, int, int, int]],
               grid: tuple[int, int, int, int]) -> None:
    """A GDAL VRT mosaic of per-city GeoTIFFs on the same lattice (no pixels copied)."""
    row0, col0, h, w = grid
    t = _coarse_transform(row0, col0)
    wkt = CRS.from_epsg(4326).to_wkt()
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
        for _, (r, g, b, a) in sorted(_colormap().items())
    )
    sources = "".join(
        f"""
    <ComplexSource>
      <SourceFilename relativeToVRT="1">{escape(p.relative_to(path.parent).as_posix())}\
</SourceFilename>
      <SourceBand>1</SourceBand>
      <SourceProperties RasterXSize="{pw}" RasterYSize="{ph}" DataType="Byte" \
BlockXSize="256" BlockYSize="256"/>
      <SrcRect xOff="0" yOff="0" xSize="{pw}" ySize="{ph}"/>
      <DstRect xOff="{pc - col0}" yOff="{pr - row0}" xSize="{pw}" ySize="{ph}"/>
      <NODATA>0</NODATA>
    </ComplexSource>"""
        for p, pr, pc, ph, pw in parts
    )
    path.write_text(
        f"""<VRTDataset rasterXSize="{w}" rasterYSize="{h}">
  <SRS dataAxisToSRSAxisMapping="2,1">{escape(wkt)}</SRS>
  <GeoTransform>{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <Description>LCZ_Filter</Description>
    <NoDataValue>0</NoDataValue>
    <ColorInterp>Palette</ColorInterp>
    <ColorTable>{entries}</ColorTable>{sources}
  </VRTRasterBand>
</VRTDataset>
"""
    )


def _write_coarse(out: Path, world: Sequence[SynthCity]) -> tuple[Path, list[Path]]:
    """Per-city GeoTIFFs, plus one mosaic: a GeoTIFF when small, else a VRT over the parts."""
    (out / "lcz_coarse").mkdir(parents=True, exist_ok=True)
    parts = []
    for c in world:
        data, r0, c0 = coarse_labels(c)
        p = out / "lcz_coarse" / f"{c.city.name}.tif"
        _write_lcz_tif(p, data, r0, c0)
        parts.append((p, r0, c0, data.shape[0], data.shape[1], data))
    r0 = min(p[1] for p in parts)
    c0 = min(p[2] for p in parts)
    h = max(p[1] + p[3] for p in parts) - r0
    w = max(p[2] + p[4] for p in parts) - c0
    if h * w <= MAX_COARSE_PIXELS:
        mosaic = np.zeros((h, w), dtype=np.uint8)
        for _, pr, pc, ph, pw, data in parts:
            view = mosaic[pr - r0 : pr - r0 + ph, pc - c0 : pc - c0 + pw]
            np.copyto(view, data, where=data > 0)
        path = out / "lcz_coarse.tif"
        _write_lcz_tif(path, mosaic, r0, c0)
    else:  # cities on different continents: a mosaic GeoTIFF would be gigapixels of nodata
        path = out / "lcz_coarse.vrt"
        _write_vrt(path, [p[:5] for p in parts], (r0, c0, h, w))
    return path, [p[0] for p in parts]
