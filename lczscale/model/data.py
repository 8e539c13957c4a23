"""Training samples read through the same chunk I/O layer as inference.

Regions are source windows that carry labels; patches are drawn from them class-balanced (pick a
class, then a labelled pixel of it, then a patch around it), because LCZ maps are dominated by a
few classes (low plants, water) and a uniform sampler never shows the model the rare built ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lczscale.config import GridConfig
from lczscale.errors import NoDataError
from lczscale.grid import Aoi, Window, Zone, zone_by_name
from lczscale.io.labels import read_labels
from lczscale.io.source import EmbeddingSource, EmbeddingWindow
from lczscale.model.unet import encode_location

REGION_SIZE = 512
MAX_REGION_BYTES = 4 << 30


@dataclass
class Region:
    zone: Zone
    data: EmbeddingWindow
    labels: np.ndarray  # uint8 (h, w), 0 = unlabelled
    location: torch.Tensor | None  # (4F, h, w) float32


def load_regions(
    source: EmbeddingSource,
    labels_path: str,
    year: int,
    grid: GridConfig,
    location_frequencies: int | None,
    aoi: Aoi | None = None,
) -> list[Region]:
    """Read every labelled region of ``REGION_SIZE`` px that the source has data for."""
    regions: list[Region] = []
    total = 0
    for name in source.zone_names():
        zone = zone_by_name(name, grid)
        avail = source.availability(zone, year)
        windows: set[Window] = set()
        for block in avail.windows():
            for r in range(block.row, block.row_stop, REGION_SIZE):
                for c in range(block.col, block.col_stop, REGION_SIZE):
                    windows.add(Window(r, c, min(REGION_SIZE, block.row_stop - r),
                                       min(REGION_SIZE, block.col_stop - c)))
        area = None if aoi is None else aoi.geometry.to_crs(zone.crs)
        for window in sorted(windows):
            if area is not None and (zone.window_geobox(window).extent & area).is_empty:
                continue
            labels = read_labels(labels_path, zone, window)
            if not labels.any():
                continue
            data = source.read(zone, window, year)
            labels[~data.valid] = 0
            if not labels.any():
                continue
            total += data.nbytes
            if total > MAX_REGION_BYTES:
                raise NoDataError(
                    f"the labelled area needs more than {MAX_REGION_BYTES >> 30} GiB of "
                    "embeddings in memory; pass --bbox to train on a smaller area"
                )
            loc = None
            if location_frequencies:
                lon, lat = zone.lonlat(window)
                loc = encode_location(
                    torch.from_numpy(lon), torch.from_numpy(lat), location_frequencies
                )
            regions.append(Region(zone, data, labels, loc))
    if not regions:
        raise NoDataError(
            f"no pixel of {labels_path} overlaps valid embeddings of {source.url} for {year}; "
            "check that labels and embeddings cover the same place and year"
        )
    return regions


class PatchSampler:
    """Class-balanced random patches (codes, scales, valid, location, target) from regions."""

    def __init__(self, regions: list[Region], patch: int, seed: int) -> None:
        self.regions = [r for r in regions if min(r.labels.shape) >= patch]
        if not self.regions:
            raise NoDataError(f"no labelled region is at least {patch}×{patch} px")
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.by_class: dict[int, list[tuple[int, np.ndarray]]] = {}
        counts = np.zeros(18, dtype=np.int64)
        for i, r in enumerate(self.regions):
            counts += np.bincount(r.labels.ravel(), minlength=18)
            for c in np.unique(r.labels):
                if c:
                    self.by_class.setdefault(int(c), []).append(
                        (i, np.flatnonzero(r.labels.ravel() == c))
                    )
        self.counts = counts[1:]
        self.classes = sorted(self.by_class)

    def class_weights(self) -> torch.Tensor:
        """Inverse square-root frequency, normalised to mean 1 over present classes."""
        freq = self.counts.astype(np.float64)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1)), 0.0)
        w = w / w[w > 0].mean()
        return torch.tensor(w, dtype=torch.float32)

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        p = self.patch
        out: dict[str, list[np.ndarray | torch.Tensor]] = {
            k: [] for k in ("codes", "scales", "valid", "target", "location")
        }
        for _ in range(batch):
            cls = self.classes[self.rng.integers(len(self.classes))]
            choices = self.by_class[cls]
            ri, pixels = choices[self.rng.integers(len(choices))]
            region = self.regions[ri]
            h, w = region.labels.shape
            y, x = divmod(int(pixels[self.rng.integers(len(pixels))]), w)
            r0 = int(np.clip(y - self.rng.integers(p), 0, h - p))
            c0 = int(np.clip(x - self.rng.integers(p), 0, w - p))
            sl = (slice(r0, r0 + p), slice(c0, c0 + p))
            k = int(self.rng.integers(4))  # random 90° rotation: LCZ have no preferred direction
            out["codes"].append(np.rot90(region.data.codes[(slice(None), *sl)], k, (1, 2)))
            assert region.data.scales is not None
            out["scales"].append(np.rot90(region.data.scales[sl], k))
            out["valid"].append(np.rot90(region.data.valid[sl], k))
            out["target"].append(np.rot90(region.labels[sl], k).astype(np.int64) - 1)
            if region.location is not None:
                out["location"].append(
                    torch.rot90(region.location[(slice(None), *sl)], k, (1, 2))
                )
        batch_t = {
            k: torch.from_numpy(np.ascontiguousarray(np.stack(v)))  # type: ignore[arg-type]
            for k, v in out.items() if v and k != "location"
        }
        if out["location"]:
            batch_t["location"] = torch.stack(out["location"])  # type: ignore[arg-type]
        return batch_t


def normalisation(regions: list[Region], max_pixels: int = 200_000, seed: int = 0) -> tuple[
    list[float], list[float]
]:
    """Per-dimension mean and std of de-quantised valid embeddings (a random pixel sample)."""
    rng = np.random.default_rng(seed)
    samples = []
    per = max(1, max_pixels // len(regions))
    for r in regions:
        idx = np.flatnonzero(r.data.valid.ravel())
        if len(idx) == 0:
            continue
        idx = rng.choice(idx, size=min(per, len(idx)), replace=False)
        codes = r.data.codes.reshape(r.data.codes.shape[0], -1)[:, idx].astype(np.float32)
        assert r.data.scales is not None
        samples.append(codes * r.data.scales.ravel()[idx])
    x = np.concatenate(samples, axis=1)
    std = np.maximum(x.std(axis=1), 1e-3)
    return x.mean(axis=1).astype(float).tolist(), std.astype(float).tolist()
