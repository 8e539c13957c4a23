"""Training regions read through the same chunk I/O layer as inference.

A region is a source window of one city that carries labels, with the split of every pixel
(spatial blocks, see ``splits``). Regions are read once and kept in memory as int8 codes; the
sampler (``sampler``) cuts patches from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lczscale.config import GridConfig
from lczscale.core.grid import Aoi, Window, Zone, zone_by_name
from lczscale.errors import NoDataError
from lczscale.io.labels.reader import read_labels
from lczscale.io.sources.protocol import SIGN_SQUARE, EmbeddingSource, EmbeddingWindow
from lczscale.model.unet import encode_location
from lczscale.train.packed import PackedRaster
from lczscale.train.settings import LabelSet, SplitConfig
from lczscale.train.splits import TRAIN, block_splits, boundary_mask

log = logging.getLogger(__name__)

REGION_SIZE = 512
MAX_REGION_BYTES = 4 << 30
DEQUANTISATION = {"alphaearth": "sign_square"}  # every other family: per-pixel scale


@dataclass
class Region:
    """One city's training window: labels, split and loss target (packed: a patch decodes the
    rows under it), and — held in memory — its embeddings and location encoding (``data``
    None: streamed, read per patch)."""
    city: str
    zone: Zone
    data: EmbeddingWindow | None
    labels: PackedRaster  # (h, w) as read, 0 = unlabelled (or, in memory, no embedding)
    target: PackedRaster  # (h, w) what the loss sees: labels of the train split, 0 = ignore
    split: PackedRaster  # (h, w) TRAIN / VAL / TEST per pixel
    location: torch.Tensor | None  # (4F, h, w) float32; None when streamed or not used
    window: Window  # zone pixels of the region

    @property
    def index_bytes(self) -> int:
        """Bytes its labels, split and target take as held (packed)."""
        return self.labels.nbytes + self.target.nbytes + self.split.nbytes


def dequantisation(source: EmbeddingSource) -> str:
    """How the model turns this family's int8 codes into values."""
    return DEQUANTISATION.get(source.kind, "per_pixel_scale")


def training_grid(source: EmbeddingSource) -> GridConfig:
    """Train on the source's native lattice, so embeddings are never resampled."""
    return GridConfig(kind=source.grid_kinds[0])  # type: ignore[arg-type]


def _windows(source: EmbeddingSource, zone: Zone, year: int) -> list[Window]:
    windows: set[Window] = set()
    for block in source.availability(zone, year).windows():
        for r in range(block.row, block.row_stop, REGION_SIZE):
            for c in range(block.col, block.col_stop, REGION_SIZE):
                windows.add(Window(r, c, min(REGION_SIZE, block.row_stop - r),
                                   min(REGION_SIZE, block.col_stop - c)))
    return sorted(windows)


def index_regions(
    source: EmbeddingSource,
    label_sets: tuple[LabelSet, ...],
    year: int,
    split: SplitConfig,
    boundary_ignore: int = 0,
    aoi: Aoi | None = None,
) -> list[Region]:
    """The sample index of streamed training: every labelled window of the given cities where
    the source lists data for ``year`` (its listing, never a pixel of it), with labels, split
    and loss target only, packed (``train.packed``: kilobytes per city, whatever the
    embeddings' width). A pixel without an embedding is found when its patch is read, and
    ignored by the loss then."""
    grid = training_grid(source)
    regions: list[Region] = []
    for name in source.zone_names():
        zone = zone_by_name(name, grid)
        for window in _windows(source, zone, year):
            if aoi is not None and not _meets(zone, window, aoi):
                continue
            for ls in label_sets:
                labels = _labels(ls, zone, window)
                if labels is not None:
                    regions.append(_region(ls.name, zone, window, None, labels, split, None,
                                           boundary_ignore))
    if not regions:
        names = ", ".join(ls.path for ls in label_sets)
        raise NoDataError(
            f"no pixel of {names} lies where {source.url} lists data for {year}; "
            "check that labels and embeddings cover the same place and year"
        )
    log.info("indexed %d labelled regions (%.2f MiB of packed labels)", len(regions),
             sum(r.index_bytes for r in regions) / 2**20)
    return regions


def _labels(ls: LabelSet, zone: Zone, window: Window) -> np.ndarray | None:
    """A label set's classes on a window (inside its bbox), None when it has none there."""
    if ls.bbox is not None and not _overlaps(zone, window, ls.bbox):
        return None
    labels = read_labels(ls.path, zone, window, band=ls.band)
    if ls.bbox is not None:
        labels[~inside_bbox(zone, window, ls.bbox)] = 0
    return labels if labels.any() else None


def load_regions(
    source: EmbeddingSource,
    label_sets: tuple[LabelSet, ...],
    year: int,
    split: SplitConfig,
    location_frequencies: int | None,
    boundary_ignore: int = 0,
    aoi: Aoi | None = None,
) -> list[Region]:
    """Read every labelled region of the given cities that the source has data for in ``year``
    and keep its embeddings in memory (at most ``MAX_REGION_BYTES``).

    Held-out cities are the caller's business: pass only the cities to read.
    """
    grid = training_grid(source)
    regions: list[Region] = []
    total = 0
    for name in source.zone_names():
        zone = zone_by_name(name, grid)
        for window in _windows(source, zone, year):
            if aoi is not None and not _meets(zone, window, aoi):
                continue
            data: EmbeddingWindow | None = None
            for ls in label_sets:
                labels = _labels(ls, zone, window)
                if labels is None:
                    continue
                data = data or source.read(zone, window, year)
                labels[~data.valid] = 0
                if not labels.any():
                    continue
                total += data.nbytes
                if total > MAX_REGION_BYTES:
                    raise NoDataError(
                        f"the labelled area needs more than {MAX_REGION_BYTES >> 30} GiB of "
                        "embeddings in memory; pass --bbox to train on a smaller area"
                    )
                regions.append(_region(ls.name, zone, window, data, labels, split,
                                       location_frequencies, boundary_ignore))
    if not regions:
        names = ", ".join(ls.path for ls in label_sets)
        raise NoDataError(
            f"no pixel of {names} overlaps valid embeddings of {source.url} for {year}; "
            "check that labels and embeddings cover the same place and year"
        )
    log.info("read %d labelled regions (%.1f MiB)", len(regions), total / 2**20)
    return regions


def _meets(zone: Zone, window: Window, aoi: Aoi) -> bool:
    """Whether a window touches a lon/lat AOI. The window (a few km) goes to lon/lat, not the
    AOI to the zone: a continent- or world-wide box projected into one UTM zone is distorted
    past use (it can miss every city, or keep zones far outside it)."""
    return not (zone.window_geobox(window).extent.to_crs("EPSG:4326") & aoi.geometry).is_empty


def _overlaps(zone: Zone, window: Window, bbox: tuple[float, float, float, float]) -> bool:
    return _meets(zone, window, Aoi.from_bbox(bbox))


def inside_bbox(zone: Zone, window: Window,
                bbox: tuple[float, float, float, float]) -> np.ndarray:
    """(h, w) True where the pixel centre lies in the lon/lat box."""
    lon, lat = zone.lonlat(window)
    minlon, minlat, maxlon, maxlat = bbox
    in_lon = (lon >= minlon) & (lon <= maxlon) if minlon <= maxlon else (lon >= minlon) | (
        lon <= maxlon)
    return np.asarray(in_lon & (lat >= minlat) & (lat <= maxlat))


def _region(city: str, zone: Zone, window: Window, data: EmbeddingWindow | None,
            labels: np.ndarray, split: SplitConfig, freqs: int | None,
            boundary_ignore: int) -> Region:
    codes = block_splits(zone.name, window, split.block_size, split.val_fraction,
                         split.test_fraction, split.seed)
    target = np.where(codes == TRAIN, labels, 0).astype(np.uint8)
    target[boundary_mask(labels, boundary_ignore)] = 0
    loc = None
    if freqs:
        lon, lat = zone.lonlat(window)
        loc = encode_location(torch.from_numpy(lon), torch.from_numpy(lat), freqs)
    return Region(city, zone, data, PackedRaster(labels), PackedRaster(target),
                  PackedRaster(codes), loc, window)


def pixel_values(data: EmbeddingWindow, idx: np.ndarray) -> np.ndarray:
    """(band, n) float32 de-quantised values of the pixels at flat indices ``idx`` (only those
    columns are de-quantised, not the whole window)."""
    codes = data.codes.reshape(data.codes.shape[0], -1)[:, idx]
    if data.dequantisation == "sign_square":
        return SIGN_SQUARE[codes.astype(np.int16) + 128]
    assert data.scales is not None
    return codes.astype(np.float32) * data.scales.ravel()[idx]


def normalisation(regions: list[Region], max_pixels: int = 200_000, seed: int = 0) -> tuple[
    list[float], list[float]
]:
    """Per-dimension mean and std of de-quantised embeddings of training pixels (a sample)."""
    rng = np.random.default_rng(seed)
    samples = []
    per = max(1, max_pixels // len(regions))
    for r in regions:
        assert r.data is not None, "normalisation of in-memory regions"
        idx = np.flatnonzero((r.data.valid & (r.split.unpack() == TRAIN)).ravel())
        if len(idx) == 0:
            continue
        idx = np.sort(rng.choice(idx, size=min(per, len(idx)), replace=False))
        samples.append(pixel_values(r.data, idx))
    if not samples:
        raise NoDataError("no training-split pixel has an embedding; lower split.val_fraction")
    x = np.concatenate(samples, axis=1)
    std = np.maximum(x.std(axis=1), 1e-3)
    return x.mean(axis=1).astype(float).tolist(), std.astype(float).tolist()
