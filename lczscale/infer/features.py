"""Turn what a source read into model input, on the compute device.

Shared by training and inference so both see exactly the same features. int8 codes travel to
the device and are de-quantised there (4× fewer bytes than float32 over the host link).
"""

from __future__ import annotations

import torch

from lczscale.io.sources.protocol import SIGN_SQUARE

# AlphaEarth: value = sign(q)·(q/127.5)², via an exact 256-entry table indexed by q+128
# (evaluated in float64, then rounded once to float32: the same table as the host reference).
_SIGN_SQUARE = torch.from_numpy(SIGN_SQUARE.copy())


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
    """(B, D [+ loc], H, W) float32: normalised embeddings, zero where invalid, then location.

    Written in place into one output tensor (four passes over the embeddings, no
    concatenation): on a CPU this preparation costs a fair part of a small model's forward.
    """
    b, d, h, w = codes.shape
    extra = 0 if location is None else location.shape[1]
    x = torch.empty((b, d + extra, h, w), dtype=torch.float32, device=codes.device)
    e = x[:, :d]
    if method == "per_pixel_scale":
        assert scales is not None
        e.copy_(codes)
        e.mul_((scales * valid).unsqueeze(1))  # masking the (B, H, W) scales is cheap
    else:
        e.copy_(dequantise(codes, scales, method))
        e.mul_(valid.unsqueeze(1))
    inv_std = (1.0 / std).view(1, -1, 1, 1)
    e.mul_(inv_std)
    # shift by -mean/std only where valid: invalid pixels stay exactly 0
    e.addcmul_((-mean).view(1, -1, 1, 1) * inv_std, valid.unsqueeze(1).to(torch.float32))
    if location is not None:
        x[:, d:] = location
    return x
