"""Batched patch inference on the global lattice, blended into one tile's core.

For every lattice patch that overlaps the core (row-major order), the model's class
probabilities are weighted by a smooth window and added into the core; the sum is normalised by
the summed weights. The set of patches covering a pixel and the order of their addition are the
same in every tile, batches are padded to a fixed size, and the CPU thread count is pinned, so
the result is bit-identical whatever the tile size, worker count or task order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lczscale.config import InferenceConfig, ModelConfig, StitchConfig
from lczscale.errors import ConfigError
from lczscale.grid import LonLatNodes, Window, Zone
from lczscale.io.source import EmbeddingWindow
from lczscale.model.checkpoint import CheckpointMeta, load_checkpoint
from lczscale.model.features import model_input
from lczscale.model.tile_input import TileInput
from lczscale.model.unet import LczUNet, encode_location, location_channels, receptive_field
from lczscale.stitch import Lattice, blend_window, patch_overlap

WATER_CLASS = 17
N_PROBABILITY_CLASSES = 17  # the cube's class axis: LCZ codes 1..17


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
    # uint8 (17, h, w) round(p * 255) of the blended softmax, only when asked for; water
    # pixels hold 255 for class 17 (like ``confidence``), nodata pixels 0 for every class.
    probability: np.ndarray | None = None


class Predictor:
    """A loaded model plus the lattice and batching that make its output reproducible."""

    def __init__(
        self,
        model: LczUNet,
        meta: CheckpointMeta,
        stitch: StitchConfig,
        device: torch.device,
        threads: int = 1,
        inference: InferenceConfig | None = None,
    ) -> None:
        self.inference = inference = inference or InferenceConfig()
        if inference.dtype == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"inference.dtype fp16 needs a CUDA device, this worker has {device}; use bf16 "
                "(or fp32, the reference) on a CPU"
            )
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.threads = threads
        if inference.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # torch.compile traces lazily, on the first batch; the eager module stays available.
        self.network: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if inference.compile else self.model  # type: ignore[assignment]
        )
        self.amp_dtype = AMP_DTYPES[inference.dtype]
        rf = receptive_field(meta.model)
        self.lattice = Lattice(stitch.patch_size, stitch.stride(rf))
        multiple = 2 ** (len(meta.model.widths) - 1)
        if stitch.patch_size % multiple:
            raise ValueError(
                f"patch_size {stitch.patch_size} must be a multiple of {multiple} for a U-Net "
                f"with {len(meta.model.widths)} levels"
            )
        self.batch_size = resolve_batch_size(stitch.batch_size, meta.model, stitch.patch_size,
                                             device, inference.dtype)
        self.window = torch.from_numpy(blend_window(stitch.patch_size)).to(device)
        norm = meta.normalisation
        self.mean = torch.tensor(norm.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(norm.std, dtype=torch.float32, device=device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

    @classmethod
    def from_checkpoint(
        cls, directory: str, stitch: StitchConfig, device: str = "auto", threads: int = 1,
        inference: InferenceConfig | None = None,
    ) -> Predictor:
        dev = pick_device(device)
        model, meta, _ = load_checkpoint(directory, device=str(dev))
        return cls(model, meta, stitch, dev, threads, inference)

    def start_tile(self, zone: Zone, read: Window) -> TileInput:
        """An empty read window for a reader thread to fill (``put``) band by band."""
        return TileInput(read, self.device, lambda w: self.location(zone, w),
                         location_channels(self.meta.model))

    def location(self, zone: Zone, window: Window) -> torch.Tensor:
        """Location channels of a window on the device; computed per pixel, so a band's
        channels equal the same rows of the whole window's.

        Off a CPU only the projected nodes (1/64 of the pixels) cross to the device, and the
        interpolation and sin/cos run there in float64: 16 bytes per pixel the host neither
        computes nor sends."""
        nodes = zone.lonlat_nodes(window)
        if self.device.type == "cpu":
            lon, lat = torch.from_numpy(nodes.interpolate(nodes.lon)), torch.from_numpy(
                nodes.interpolate(nodes.lat))
        else:
            lon, lat = (_interpolate_on(self.device, v, nodes) for v in (nodes.lon, nodes.lat))
        return encode_location(lon, lat, self.meta.model.location_frequencies)

    def predict(self, zone: Zone, core: Window, data: EmbeddingWindow,
                probabilities: bool = False) -> TilePrediction:
        """Class and confidence for ``core``; ``data`` must cover ``lattice.read_window(core)``."""
        tile = TileInput.whole(data, self.device, lambda w: self.location(zone, w),
                               location_channels(self.meta.model))
        return self.predict_tile(core, tile, probabilities)

    def predict_tile(self, core: Window, tile: TileInput,
                     probabilities: bool = False) -> TilePrediction:
        """Like ``predict``, on a read window that may still be arriving: each batch waits only
        for the rows its patches need. The patches evaluated, their batches and the order of
        their addition are those of a whole read, so the result is the same bit for bit."""
        read = tile.window
        need = self.lattice.read_window(core)
        if need.intersection(read) != need:
            raise ValueError(f"read window {read} does not cover the halo {need} of {core}")
        rel = core.relative_to(read)
        acc: torch.Tensor | None = None
        wsum: torch.Tensor | None = None
        patches = 0
        with pinned_threads(self.threads), torch.inference_mode():
            for batch in _batches(self._jobs(core, tile), self.batch_size):
                if acc is None:
                    acc = torch.zeros((self.meta.model.num_classes, core.height, core.width),
                                      dtype=torch.float32, device=self.device)
                    wsum = torch.zeros((core.height, core.width), dtype=torch.float32,
                                       device=self.device)
                assert wsum is not None
                probs = self._forward(tile, [o for o, _ in batch])
                for i, (_, (ps, cs)) in enumerate(batch):
                    w = self.window[ps]
                    acc[(slice(None), *cs)] += probs[(i, slice(None), *ps)] * w
                    wsum[cs] += w
                patches += len(batch)
            tile.wait(read.height)  # every band in: the masks below cover the whole core
            core_valid = tile.valid[rel]
            water = tile.water[rel]
            lcz = np.zeros((core.height, core.width), dtype=np.uint8)
            conf = np.zeros_like(lcz)
            lcz[water] = WATER_CLASS
            conf[water] = 255
            per_class: np.ndarray | None = None
            if probabilities:
                per_class = np.zeros((N_PROBABILITY_CLASSES, core.height, core.width), np.uint8)
                per_class[WATER_CLASS - 1][water] = 255
            if acc is None or wsum is None:
                return TilePrediction(lcz, conf, 0, 0, per_class)
            prob = acc / wsum.clamp_min(1e-12)
            best, idx = prob.max(dim=0)
            codes = (idx + 1).to(torch.uint8).cpu().numpy()
            score = torch.round(best * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
            if per_class is not None:
                # The same rounding of the same values as ``score``: the chosen class's
                # probability equals the confidence byte for byte.
                scaled = torch.round(prob * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
                per_class[: scaled.shape[0], core_valid] = scaled[:, core_valid]
        lcz[core_valid] = codes[core_valid]
        conf[core_valid] = score[core_valid]
        return TilePrediction(lcz, conf, patches, int(core_valid.sum()), per_class)

    def _jobs(self, core: Window, tile: TileInput) -> Iterator[Job]:
        """Row-major lattice patches over ``core`` that touch a valid core pixel, each yielded
        once the rows it reads have arrived (a patch with no valid core pixel changes nothing)."""
        p = self.lattice.patch
        read = tile.window
        for origin in self.lattice.origins(core):
            overlap = patch_overlap(origin, p, core)
            assert overlap is not None
            tile.wait(origin[0] + p - read.row)
            cs = overlap[1]
            rows = slice(cs[0].start + core.row - read.row, cs[0].stop + core.row - read.row)
            cols = slice(cs[1].start + core.col - read.col, cs[1].stop + core.col - read.col)
            if tile.valid[rows, cols].any():
                yield origin, overlap

    def _forward(self, tile: TileInput, origins: list[tuple[int, int]]) -> torch.Tensor:
        """Softmax probabilities (B, C, P, P) for a batch padded to the fixed batch size."""
        assert tile.codes is not None and tile.valid_t is not None
        p = self.lattice.patch
        # cuDNN may choose kernels by batch size, so GPU batches are padded to a fixed size;
        # the CPU model runs each sample alone (see LczUNet.forward), so padding is waste there.
        n = self.batch_size if self.device.type == "cuda" else len(origins)
        at = [Window(r, c, p, p).relative_to(tile.window) for r, c in origins]
        x = model_input(
            _gather(tile.codes, at, n),
            None if tile.scales is None else _gather(tile.scales, at, n),
            _gather(tile.valid_t, at, n),
            None if tile.location is None else _gather(tile.location, at, n),
            self.mean,
            self.std,
            tile.dequantisation,
        )
        if self.inference.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            logits = self.network(x)
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                logits = self.network(x)
        return torch.softmax(logits.float(), dim=1)


Job = tuple[tuple[int, int], tuple[tuple[slice, slice], tuple[slice, slice]]]
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


def _batches(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    """Consecutive runs of ``size`` jobs (the last may be shorter), pulled lazily."""
    batch: list[Job] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _interpolate_on(device: torch.device, v: np.ndarray, nodes: LonLatNodes) -> torch.Tensor:
    """``nodes.interpolate(v)`` on ``device``: the same float64 operations, one per kernel."""
    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    vt, i, j, fy, fx = put(v), put(nodes.i), put(nodes.j), put(nodes.fy), put(nodes.fx)
    across = vt[:, j] * (1 - fx) + vt[:, j + 1] * fx
    return across[i] * (1 - fy) + across[i + 1] * fy


def _gather(t: torch.Tensor, at: list[tuple[slice, slice]], n: int) -> torch.Tensor:
    """(n, ..., P, P) stack of the windows ``at`` of ``t`` (..., H, W); zeros past ``len(at)``."""
    first = t[(..., *at[0])]
    out = t.new_zeros((n, *first.shape))
    for i, sl in enumerate(at):
        out[i] = t[(..., *sl)]
    return out


def resolve_batch_size(
    wanted: int | str, model: ModelConfig, patch: int, device: torch.device, dtype: str = "fp32"
) -> int:
    """``wanted``, or for ``"auto"`` the largest power of two whose activations fit in half of
    the free GPU memory (8 on a CPU, where patches run one at a time anyway)."""
    if isinstance(wanted, int):
        return wanted
    if device.type != "cuda":
        return 8
    free, _ = torch.cuda.mem_get_info(device)
    per_patch = patch_activation_bytes(model, patch, 4 if dtype == "fp32" else 2)
    fits = max(1, int(0.5 * free // per_patch))
    return min(1024, 2 ** (fits.bit_length() - 1))


def patch_activation_bytes(model: ModelConfig, patch: int, element_bytes: int = 4) -> int:
    """Device memory one patch needs in a forward pass: the float32 input, and ~8 live maps
    per level (conv, norm, the attention gate's maps, the decoder's concatenation) plus the
    class maps — a deliberate over-estimate, since running out of memory costs a tile."""
    levels = sum(w * (patch >> i) ** 2 for i, w in enumerate(model.widths))
    inputs = (model.in_dim + location_channels(model)) * patch * patch * 4
    return int(inputs + 8 * levels * element_bytes + 3 * model.num_classes * patch * patch * 4)


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
    p = stitch.patch_size
    b = stitch.batch_size if isinstance(stitch.batch_size, int) else 8
    batch_in = b * p * p * (dimensions + 1 + 4 + loc * 4)
    levels = sum(w * (p >> i) ** 2 for i, w in enumerate(meta_model.widths))
    activations = (1 if device_type == "cpu" else 0) * 6 * 4 * levels + b * classes * p * p * 8
    return int(reading + accumulate + 2 * batch_in + activations)
