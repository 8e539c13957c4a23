"""Model-only forward throughput (patch px/s) vs batch size, dtype and memory format.

``input: float``: the bare U-Net on a float32 batch already on the device. ``input: int8``: the
path a map takes per batch — int8 codes, scales and validity (pinned host memory on CUDA) to
the device, de-quantised and normalised there (``model_input``), then the forward pass. FLOPs
per pixel come from torch's FlopCounterMode; on CUDA a line ``h2d`` gives the host→device
bandwidth of pinned int8, so px/s can be set against both limits (compute and the link).

CPU runs use one torch thread, as a map worker does by default (``threads_per_worker``).

    python benchmarks/model_forward.py [--quick]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from common import main_quick, model_summary, record
from torch.utils.flop_counter import FlopCounterMode

from lczscale.config import ModelConfig
from lczscale.infer.features import model_input
from lczscale.infer.predict import AMP_DTYPES, pick_device, pinned_threads
from lczscale.model.unet import LczUNet, location_channels

BYTES_PER_PX_INT8 = 128 + 4 + 1  # TESSERA: 128 int8 codes, a float32 scale, a validity byte


def flops_per_px(model: LczUNet, cfg: ModelConfig, patch: int, device: torch.device) -> float:
    x = torch.zeros(1, cfg.in_dim + location_channels(cfg), patch, patch, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops()) / patch**2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Any, device: torch.device, min_seconds: float) -> tuple[float, int]:
    """(seconds, calls) of repeating ``step`` for at least ``min_seconds`` after a warm-up."""
    step()
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed, calls


def int8_batch(cfg: ModelConfig, batch: int, patch: int, pin: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    parts = {
        "codes": torch.randint(-127, 128, (batch, cfg.in_dim, patch, patch), generator=g,
                               dtype=torch.int8),
        "scales": torch.rand(batch, patch, patch, generator=g),
        "valid": torch.ones(batch, patch, patch, dtype=torch.bool),
        "location": torch.rand(batch, location_channels(cfg), patch, patch, generator=g),
    }
    return {k: v.pin_memory() for k, v in parts.items()} if pin else parts


def float_step(cfg: ModelConfig, model: LczUNet, batch: int, patch: int, channels_last: bool,
               amp: torch.dtype | None, device: torch.device) -> Callable[[], None]:
    """One forward pass on a float32 batch already on the device."""
    x = torch.randn(batch, cfg.in_dim + location_channels(cfg), patch, patch, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)

    return step


def int8_step(cfg: ModelConfig, model: LczUNet, batch: int, patch: int, mean: torch.Tensor,
              std: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """Host int8 batch → device → de-quantise and normalise there → forward pass."""
    cuda = device.type == "cuda"
    host = int8_batch(cfg, batch, patch, pin=cuda)

    def step() -> None:
        on = {k: v.to(device, non_blocking=cuda) for k, v in host.items()}
        model(model_input(on["codes"], on["scales"], on["valid"], on["location"], mean, std,
                          "per_pixel_scale"))

    return step


def forward_lines(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    cfg = ModelConfig()
    cuda = device.type == "cuda"
    patch = (128 if quick else 256) if cuda else (64 if quick else 256)
    batches = ([4, 32] if quick else [1, 4, 8, 16, 32, 64, 128]) if cuda else \
        ([1, 4] if quick else [1, 2, 4, 8, 16])
    dtypes = ["fp32", "bf16"] + (["fp16"] if cuda else [])
    min_seconds = 0.3 if quick else 2.0
    threads = 1
    base = LczUNet(cfg).eval().to(device)
    flops = flops_per_px(base, cfg, patch, device)
    models = {False: base,
              True: copy.deepcopy(base).to(memory_format=torch.channels_last)}  # type: ignore[call-overload]
    mean = torch.zeros(cfg.in_dim, device=device)
    std = torch.ones(cfg.in_dim, device=device)
    lines = []
    for dtype in dtypes:
        amp = AMP_DTYPES[dtype]
        for channels_last, model in models.items():
            for batch in batches:
                inputs = ["float"] + (["int8"] if dtype == "fp32" and not channels_last else [])
                for kind in inputs:
                    step = (float_step(cfg, model, batch, patch, channels_last, amp, device)
                            if kind == "float" else
                            int8_step(cfg, model, batch, patch, mean, std, device))
                    with pinned_threads(threads), torch.inference_mode():
                        seconds, calls = timed(step, device, min_seconds)
                    px_s = calls * batch * patch**2 / seconds
                    lines.append(record(
                        "model_forward", device=str(device), input=kind, dtype=dtype,
                        channels_last=channels_last, batch_size=batch, patch_size=patch,
                        threads=threads if device.type == "cpu" else None,
                        px_per_s=round(px_s, 1), flops_per_px=round(flops),
                        achieved_tflops=round(px_s * flops / 1e12, 4),
                        seconds=round(seconds, 3), calls=calls, model=model_summary(cfg),
                    ))
    return lines


def h2d_line(device: torch.device, quick: bool) -> dict[str, Any]:
    """Pinned and pageable host→device copy bandwidth for int8 (CUDA only)."""
    n = (64 if quick else 512) * 2**20
    out = {}
    for label, pin in (("pinned", True), ("pageable", False)):
        host = torch.zeros(n, dtype=torch.int8, pin_memory=pin)
        dev = torch.empty(n, dtype=torch.int8, device=device)

        def copy_once(host: torch.Tensor = host, dev: torch.Tensor = dev,
                      pin: bool = pin) -> None:
            dev.copy_(host, non_blocking=pin)

        seconds, calls = timed(copy_once, device, 0.5 if quick else 2.0)
        out[f"{label}_gb_per_s"] = round(n * calls / seconds / 1e9, 2)
    return record("h2d", device=str(device), bytes=n, **out,
                  bytes_per_px_int8=BYTES_PER_PX_INT8,
                  px_per_s_bound=round(out["pinned_gb_per_s"] * 1e9 / BYTES_PER_PX_INT8))


def run(quick: bool) -> list[dict[str, Any]]:
    device = pick_device("auto")
    lines = forward_lines(quick, device)
    if device.type == "cuda":
        lines.append(h2d_line(device, quick))
    return lines


if __name__ == "__main__":
    main_quick(run, __doc__)
