"""Batched patch inference on the global lattice, blended into one tile's core.

For every lattice patch that overlaps the core (row-major order), the model's class
probabilities are weighted by a smooth window and added into the core; the sum is normalised by
the summed weights. The set of patches covering a pixel and the order of their addition are the
same in every tile, batches are padded to a fixed size, and the CPU thread count is pinned, so
the result is bit-identical whatever the tile size, worker count or task order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lczscale.config import ModelConfig, StitchConfig
from lczscale.grid import Window, Zone
from lczscale.io.source import EmbeddingWindow
from lczscale.model.checkpoint import CheckpointMeta, load_checkpoint
from lczscale.model.features import model_input
from lczscale.model.unet import LczUNet, encode_location, receptive_field
from lczscale.stitch import Lattice, blend_window, patch_overlap

WATER_CLASS = 17


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """CPU GEMM results depend on the thread count, so inference always uses the same one."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TilePrediction:
    lcz: np.ndarray  # uint8 (h, w), 0 = nodata
    confidence: np.ndarray  # uint8 (h, w)
    patches: int  # patches evaluated
    valid_pixels: int


class Predictor:
    """A loaded model plus the lattice and batching that make its output reproducible."""

    def __init__(
        self,
        model: LczUNet,
        meta: CheckpointMeta,
        stitch: StitchConfig,
        device: torch.device,
        threads: int = 1,
    ) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.threads = threads
        self.batch_size = stitch.batch_size
        rf = receptive_field(meta.model)
        self.lattice = Lattice(stitch.patch_size, stitch.stride(rf))
        multiple = 2 ** (len(meta.model.widths) - 1)
        if stitch.patch_size % multiple:
            raise ValueError(
                f"patch_size {stitch.patch_size} must be a multiple of {multiple} for a U-Net "
                f"with {len(meta.model.widths)} levels"
            )
        self.window = torch.from_numpy(blend_window(stitch.patch_size)).to(device)
        norm = meta.normalisation
        self.mean = torch.tensor(norm.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(norm.std, dtype=torch.float32, device=device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

    @classmethod
    def from_checkpoint(
        cls, directory: str, stitch: StitchConfig, device: str = "auto", threads: int = 1
    ) -> Predictor:
        dev = pick_device(device)
        model, meta, _ = load_checkpoint(directory, device=str(dev))
        return cls(model, meta, stitch, dev, threads)

    def predict(self, zone: Zone, core: Window, data: EmbeddingWindow) -> TilePrediction:
        """Class and confidence for ``core``; ``data`` must cover ``lattice.read_window(core)``."""
        read = data.window
        need = self.lattice.read_window(core)
        if need.intersection(read) != need:
            raise ValueError(f"read window {read} does not cover the halo {need} of {core}")
        p = self.lattice.patch
        core_valid = data.valid[core.relative_to(read)]
        jobs = []
        for origin in self.lattice.origins(core):
            overlap = patch_overlap(origin, p, core)
            assert overlap is not None
            if core_valid[overlap[1]].any():  # a patch with no valid core pixel changes nothing
                jobs.append((origin, overlap))
        water = data.water[core.relative_to(read)]
        lcz = np.zeros((core.height, core.width), dtype=np.uint8)
        conf = np.zeros_like(lcz)
        lcz[water] = WATER_CLASS
        conf[water] = 255
        if not jobs:
            return TilePrediction(lcz, conf, 0, 0)
        acc = torch.zeros((self.meta.model.num_classes, core.height, core.width),
                          dtype=torch.float32, device=self.device)
        wsum = torch.zeros((core.height, core.width), dtype=torch.float32, device=self.device)
        location = self._location(zone, read) if self.meta.model.location else None
        with pinned_threads(self.threads), torch.inference_mode():
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start : start + self.batch_size]
                probs = self._forward(data, location, [o for o, _ in batch])
                for i, (_, (ps, cs)) in enumerate(batch):
                    w = self.window[ps]
                    acc[(slice(None), *cs)] += probs[(i, slice(None), *ps)] * w
                    wsum[cs] += w
        prob = acc / wsum.clamp_min(1e-12)
        best, idx = prob.max(dim=0)
        codes = (idx + 1).to(torch.uint8).cpu().numpy()
        score = torch.round(best * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
        lcz[core_valid] = codes[core_valid]
        conf[core_valid] = score[core_valid]
        return TilePrediction(lcz, conf, len(jobs), int(core_valid.sum()))

    def _location(self, zone: Zone, read: Window) -> torch.Tensor:
        lon, lat = zone.lonlat(read)
        loc = encode_location(
            torch.from_numpy(lon), torch.from_numpy(lat), self.meta.model.location_frequencies
        )
        return loc

    def _forward(
        self, data: EmbeddingWindow, location: torch.Tensor | None, origins: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Softmax probabilities (B, C, P, P) for a batch padded to the fixed batch size."""
        p = self.lattice.patch
        # cuDNN may choose kernels by batch size, so GPU batches are padded to a fixed size;
        # the CPU model runs each sample alone (see LczUNet.forward), so padding is waste there.
        n = self.batch_size if self.device.type == "cuda" else len(origins)
        d = data.codes.shape[0]
        codes = np.zeros((n, d, p, p), dtype=np.int8)
        scales = np.zeros((n, p, p), dtype=np.float32)
        valid = np.zeros((n, p, p), dtype=bool)
        loc = None if location is None else torch.zeros((n, location.shape[0], p, p))
        for i, (r, c) in enumerate(origins):
            sl = Window(r, c, p, p).relative_to(data.window)
            codes[i] = data.codes[(slice(None), *sl)]
            valid[i] = data.valid[sl]
            if data.scales is not None:
                scales[i] = data.scales[sl]
            if loc is not None and location is not None:
                loc[i] = location[(slice(None), *sl)]
        dev = self.device
        nb = dev.type == "cuda"
        x = model_input(
            torch.from_numpy(codes).to(dev, non_blocking=nb),
            torch.from_numpy(scales).to(dev, non_blocking=nb)
            if data.scales is not None else None,
            torch.from_numpy(valid).to(dev, non_blocking=nb),
            None if loc is None else loc.to(dev, non_blocking=nb),
            self.mean,
            self.std,
            data.dequantisation,
        )
        return torch.softmax(self.model(x), dim=1)


def tile_memory_bytes(
    read: Window, core: Window, dimensions: int, meta_model: ModelConfig, stitch: StitchConfig,
    device_type: str = "cpu",
) -> int:
    """Peak host memory one tile needs on a worker, estimated from the arrays it allocates.

    The read (int8 codes, twice for zarr's decode buffers, plus scales and masks), the location
    channels, the per-class accumulators over the core, and one batch of patches through the
    U-Net (inputs and the activations of every level, ~6 live tensors per level). On a GPU the
    batch lives in device memory, so only the host side is counted.
    """
    px_read, px_core = read.size, core.size
    loc = 4 * meta_model.location_frequencies if meta_model.location else 0
    classes = meta_model.num_classes
    reading = px_read * (2 * dimensions + 4 + 2) + px_read * loc * 4
    accumulate = px_core * (2 * classes + 2) * 4 + px_core * 2
    p, b = stitch.patch_size, stitch.batch_size
    batch_in = b * p * p * (dimensions + 1 + 4 + loc * 4)
    levels = sum(w * (p >> i) ** 2 for i, w in enumerate(meta_model.widths))
    activations = (1 if device_type == "cpu" else 0) * 6 * 4 * levels + b * classes * p * p * 8
    return int(reading + accumulate + 2 * batch_in + activations)
