"""Turn what a source read into model input, on the compute device.

Shared by training and inference so both see exactly the same features. int8 codes travel to
the device and are de-quantised there (4× fewer bytes than float32 over the host link).
"""

from __future__ import annotations

import torch

# AlphaEarth: value = sign(q)·(q/127.5)², via an exact 256-entry table indexed by q+128.
_SIGN_SQUARE = torch.tensor(
    [0.0 if q == -128 else (1 if q > 0 else -1) * (q / 127.5) ** 2 for q in range(-128, 128)],
    dtype=torch.float32,
)


def dequantise(
    codes: torch.Tensor, scales: torch.Tensor | None, method: str
) -> torch.Tensor:
    """int8 codes (B, D, H, W) → float32 embeddings on the codes' device."""
    if method == "per_pixel_scale":
        assert scales is not None
        return codes.to(torch.float32) * scales.unsqueeze(1)
    if method == "sign_square":
        lut = _SIGN_SQUARE.to(codes.device)
        return lut[codes.to(torch.int64) + 128]
    raise ValueError(f"unknown de-quantisation {method!r}")


def model_input(
    codes: torch.Tensor,
    scales: torch.Tensor | None,
    valid: torch.Tensor,
    location: torch.Tensor | None,
    mean: torch.Tensor,
    std: torch.Tensor,
    method: str,
) -> torch.Tensor:
    """(B, D [+ loc], H, W) float32: normalised embeddings, zero where invalid, then location."""
    x = dequantise(codes, scales, method)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    x = x * valid.unsqueeze(1).to(x.dtype)
    if location is not None:
        x = torch.cat([x, location], dim=1)
    return x
