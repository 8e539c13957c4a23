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
from lczscale.core.grid import LonLatNodes, Window, Zone
from lczscale.core.stitch import Lattice, blend_window, patch_overlap
from lczscale.errors import ConfigError
from lczscale.infer.blend import N_PROBABILITY_CLASSES, RowAccumulator
from lczscale.infer.features import model_input
from lczscale.infer.tile_input import TileInput
from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.model.checkpoint import CheckpointMeta, load_checkpoint
from lczscale.model.unet import LczUNet, encode_location, location_channels, receptive_field


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA where there is one, else the CPU; otherwise the named torch device."""
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
    """What predicting one tile gives: classes, confidence, optional probabilities and counts."""
    lcz: np.ndarray  # uint8 (h, w), 0 = nodata
    confidence: np.ndarray  # uint8 (h, w)
    patches: int  # patches evaluated
    valid_pixels: int
    # uint8 (17, h, w) round(p * 255) of the blended softmax, only when asked for; water
    # pixels hold 255 for class 17 (like ``confidence``), nodata pixels 0 for every class.
    probability: np.ndarray | None = None
    # Most rows held at once: read-window rows of input, core rows of float sums (the memory
    # a tile really used, whatever its size).
    input_rows: int = 0
    sum_rows: int = 0


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
        """A predictor for the checkpoint in ``directory``, on ``device``."""
        dev = pick_device(device)
        model, meta, _ = load_checkpoint(directory, device=str(dev))
        return cls(model, meta, stitch, dev, threads, inference)

    def start_tile(self, zone: Zone, read: Window, ahead: int | None = None) -> TileInput:
        """An empty read window for a reader thread to fill (``put``) band by band, at most
        ``ahead`` rows past what the model has asked for (None: no limit)."""
        return TileInput(read, self.device, lambda w: self.location(zone, w),
                         location_channels(self.meta.model), ahead)

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
        for the rows its patches need, and rows above the next patch row are released (input)
        or made final (output) as soon as the batches are past them. The patches evaluated,
        their batches and the order of their addition are those of a whole read, so the result
        is the same bit for bit."""
        read = tile.window
        need = self.lattice.read_window(core)
        if need.intersection(read) != need:
            raise ValueError(f"read window {read} does not cover the halo {need} of {core}")
        sums = RowAccumulator(core.height, core.width, self.meta.model.num_classes,
                              self.device, probabilities)
        with pinned_threads(self.threads), torch.inference_mode():
            for batch in _batches(self._jobs(core, tile), self.batch_size):
                probs = self._forward(tile, [o for o, _ in batch])
                sums.add(probs, self.window, [overlap for _, overlap in batch])
                # Later patches start at or below this batch's last one: nothing above it is
                # read or added to again.
                last = batch[-1][0][0]
                sums.finalise(last - core.row)
                tile.release(last - read.row)
            tile.wait(read.height, land=False)  # every band in: masks for the whole core
            rel = core.relative_to(read)
            lcz, conf, per_class = sums.outputs(tile.valid[rel], tile.water[rel], probabilities)
        return TilePrediction(lcz, conf, sums.added, int(tile.valid[rel].sum()), per_class,
                              tile.peak_rows, sums.peak_rows)

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
        p = self.lattice.patch
        # cuDNN may choose kernels by batch size, so GPU batches are padded to a fixed size;
        # the CPU model runs each sample alone (see LczUNet.forward), so padding is waste there.
        n = self.batch_size if self.device.type == "cuda" else len(origins)
        at = [Window(r - tile.window.row, c - tile.window.col, p, p) for r, c in origins]
        codes, valid = tile.patches("codes", at, n), tile.patches("valid", at, n)
        assert codes is not None and valid is not None
        x = model_input(
            codes,
            tile.patches("scales", at, n),
            valid,
            tile.patches("location", at, n),
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
    device_type: str = "cpu", inference: InferenceConfig | None = None,
    probabilities: bool = False,
) -> int:
    """Peak host memory one tile needs on a worker, estimated from the arrays it allocates.

    Whole-window host masks and whole-core uint8 outputs; the input rows held at once (with
    read-ahead: a batch's span of patch rows, a patch, the reader's two bands ahead and the
    band being decoded, each as int8 codes, scales and location channels; without it, the
    whole read window with zarr's decode buffers); float32 class sums for a batch's span plus a
    patch of core rows; one batch of patches through the U-Net (inputs and the activations of
    every level, ~6 live tensors per level). On a GPU the batch, the held codes and the sums
    live in device memory, so only the host side (pinned bands, masks, outputs) is counted.
    """
    inference = inference or InferenceConfig()
    cpu = device_type == "cpu"
    loc = 4 * meta_model.location_frequencies if meta_model.location else 0
    classes = meta_model.num_classes
    p = stitch.patch_size
    stride = stitch.stride(receptive_field(meta_model))
    b = stitch.batch_size if isinstance(stitch.batch_size, int) else 8
    per_row = -(-core.width // stride) + 1  # patches per lattice row over the core
    span = -(-b // per_row) * stride  # rows between a batch's first and last patch origin
    band = inference.band_rows
    held_px = dimensions + 4 + 1 + (loc * 4 if cpu else 0)  # codes, scale, valid, location
    if inference.read_ahead:
        rows = min(read.height, span + p + 4 * band)
        # plus the bands read at once beyond those (each as read, and its dequantised copy)
        fetched = max(1, inference.read_concurrency)
        rows = min(read.height, rows + (fetched - 1) * band)
        reading = rows * read.width * held_px + fetched * band * read.width * 2 * dimensions
    else:
        reading = read.size * (2 * dimensions + held_px)
    masks = read.size * 2
    sums = min(core.height, span + p) * core.width * (classes + 1) * 4 if cpu else 0
    outputs = core.size * (2 + (N_PROBABILITY_CLASSES if probabilities else 0))
    batch_in = b * p * p * (dimensions + 1 + 4 + loc * 4)
    levels = sum(w * (p >> i) ** 2 for i, w in enumerate(meta_model.widths))
    activations = (6 * 4 * levels if cpu else 0) + b * classes * p * p * 8
    return int(reading + masks + sums + outputs + 2 * batch_in + activations)
