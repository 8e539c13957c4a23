"""Location-aware attention U-Net for per-pixel LCZ classification of embedding rasters.

The input is a (B, C, H, W) float32 tensor: ``cfg.in_dim`` de-quantised, normalised embedding
channels followed by ``location_channels(cfg)`` sin/cos channels of each pixel's lat/lon (the
caller appends them with ``encode_location``). The network is a plain U-Net (Ronneberger et al.
2015) whose skip connections pass through additive attention gates (Oktay et al. 2018), so the
coarse context decides which fine encoder features reach the decoder.

``receptive_field`` gives the exact side of the input window that one output pixel depends on;
the planner sizes tile halos and patch overlaps from it, which is what makes the stitched cube
independent of tiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lczscale.config import ModelConfig

# --------------------------------------------------------------------------------------------
# Location channels
# --------------------------------------------------------------------------------------------


def location_channels(cfg: ModelConfig) -> int:
    """Number of location channels the model expects after the embedding channels."""
    return 4 * cfg.location_frequencies if cfg.location else 0


def encode_location(
    lon: torch.Tensor, lat: torch.Tensor, frequencies: int
) -> torch.Tensor:
    """Encode per-pixel lon/lat (degrees, shape (..., H, W)) as (..., 4*frequencies, H, W).

    For k = 1..frequencies the channels are sin(k·lat), cos(k·lat), sin(k·lon), cos(k·lon) (in
    radians). sin/cos are periodic, so the antimeridian is seamless. Every value is computed
    element-wise in float64 and only then rounded to float32, so a pixel's encoding does not
    depend on the batch, tile or patch it is computed in; across devices the float64 results
    agree to within an ulp, which the rounding to float32 removes in practice.
    """
    if frequencies < 1:
        raise ValueError(f"frequencies must be ≥ 1, got {frequencies}")
    lon64 = torch.as_tensor(lon).to(torch.float64)
    lat64 = torch.as_tensor(lat).to(torch.float64)
    if lon64.shape != lat64.shape or lon64.ndim < 2:
        raise ValueError(
            f"lon and lat must have the same shape (..., H, W); got lon {tuple(lon64.shape)} "
            f"and lat {tuple(lat64.shape)}"
        )
    lon_rad = torch.deg2rad(lon64)
    lat_rad = torch.deg2rad(lat64)
    # Each float64 channel is rounded straight into the float32 output (no float64 stack).
    out = torch.empty((*lon64.shape[:-2], 4 * frequencies, *lon64.shape[-2:]),
                      dtype=torch.float32, device=lon64.device)
    for k in range(1, frequencies + 1):
        lat_k, lon_k = k * lat_rad, k * lon_rad
        for c, value in enumerate((torch.sin(lat_k), torch.cos(lat_k), torch.sin(lon_k),
                                   torch.cos(lon_k))):
            out.select(-3, 4 * (k - 1) + c).copy_(value)
    return out


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """``convs`` × (3×3 conv → BatchNorm → ReLU); the conv has no bias because BN adds one."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on one skip connection.

    The gating signal ``g`` is the decoder feature map one level coarser than the skip ``x``.
    It is projected by a 1×1 conv at its own resolution and nearest-upsampled ×2; the skip is
    projected by a 1×1 conv at full resolution, so the attention coefficient α ∈ (0, 1) is
    computed per fine pixel: α = σ(ψ(ReLU(θ(x) + up(φ(g))))), output = x · α.
    """

    def __init__(self, skip_channels: int, gate_channels: int) -> None:
        super().__init__()
        inter = max(skip_channels // 2, 1)
        self.theta_x = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter, 1, bias=True)
        self.psi = nn.Conv2d(inter, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Skip features ``x`` weighted by the attention the coarser gate ``g`` gives each pixel."""
        g_up = F.interpolate(self.phi_g(g), scale_factor=2.0, mode="nearest")
        alpha = torch.sigmoid(self.psi(F.relu(self.theta_x(x) + g_up)))
        return x * alpha


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def size_multiple(cfg: ModelConfig) -> int:
    """H and W of the input must be multiples of this (one 2×2 pool per level below the top)."""
    return 2 ** (len(cfg.widths) - 1)


class LczUNet(nn.Module):
    """Attention U-Net: (B, in_dim + location channels, H, W) → (B, num_classes, H, W) logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels = cfg.in_dim + location_channels(cfg)
        widths = cfg.widths
        c = cfg.convs_per_block

        # Encoder: one conv block per level, a 2×2 max-pool between levels.
        self.encoder = nn.ModuleList(
            conv_block(self.in_channels if i == 0 else widths[i - 1], w, c)
            for i, w in enumerate(widths)
        )
        # Decoder, deepest level first: up-sample, gate the skip, concatenate, conv block.
        levels = range(len(widths) - 2, -1, -1)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in levels
        )
        self.gates = nn.ModuleList(AttentionGate(widths[i], widths[i + 1]) for i in levels)
        self.decoder = nn.ModuleList(conv_block(2 * widths[i], widths[i], c) for i in levels)
        self.head = nn.Conv2d(widths[0], cfg.num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes, h, w) of inputs (batch, channels, h, w); on CPU in eval mode one
        sample at a time, so that a patch's output does not depend on its batch."""
        self._check_input(x)
        if x.device.type == "cpu" and not self.training and x.shape[0] > 1:
            # oneDNN picks a different convolution algorithm for batch 1 than for batch N, which
            # changes the last bits of the logits; running each sample alone makes a patch's
            # output independent of what it is batched with (and is no slower on CPU).
            return torch.cat([self._forward(x[i : i + 1]) for i in range(x.shape[0])])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for level, block in enumerate(self.encoder):
            if level > 0:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        d = skips.pop()  # the bottleneck
        for up, gate, block in zip(self.ups, self.gates, self.decoder, strict=True):
            skip = skips.pop()
            d = block(torch.cat([up(d), gate(skip, d)], dim=1))
        return self.head(d)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            loc = location_channels(self.cfg)
            raise ValueError(
                f"LczUNet expects input (B, {self.in_channels}, H, W) = {self.cfg.in_dim} "
                f"embedding + {loc} location channels, got shape {tuple(x.shape)}"
            )
        m = size_multiple(self.cfg)
        height, width = x.shape[-2:]
        if height % m or width % m:
            raise ValueError(
                f"LczUNet input H and W must be multiples of {m} (2**(len(widths)-1) for "
                f"widths={self.cfg.widths}), got {height}×{width}; pad or crop the patch, e.g. to "
                f"{-(-height // m) * m}×{-(-width // m) * m}"
            )


# --------------------------------------------------------------------------------------------
# Receptive field
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reach:
    """Which input pixels each pixel of a feature map depends on, along one axis.

    Pixel j of a map with ``stride`` s (input pixels per map pixel) depends on input pixels
    ``s*j + lo[j % p] … s*j + hi[j % p]`` with period p = len(lo). The period is needed because
    2×2 pooling and ×2 up-sampling make the dependency depend on where j sits in the pooling
    grid. Every operation of the net maps such a description to another one exactly; square
    kernels make the two axes identical, so one axis suffices.
    """

    stride: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def period(self) -> int:
        return len(self.lo)

    def at(self, j: int) -> tuple[int, int]:
        r = j % self.period
        return self.stride * j + self.lo[r], self.stride * j + self.hi[r]

    @staticmethod
    def build(stride: int, period: int, interval: Callable[[int], tuple[int, int]]) -> _Reach:
        """Tabulate ``interval(j) -> (first, last)`` (absolute) over one period."""
        spans = [interval(j) for j in range(period)]
        return _Reach(
            stride,
            tuple(a - stride * j for j, (a, _) in enumerate(spans)),
            tuple(b - stride * j for j, (_, b) in enumerate(spans)),
        )


def _hull(spans: list[tuple[int, int]]) -> tuple[int, int]:
    return min(a for a, _ in spans), max(b for _, b in spans)


def _conv(r: _Reach, kernel: int) -> _Reach:
    """k×k conv, stride 1, 'same' padding: pixel j sees pixels j-k//2 … j+k//2."""
    k = kernel // 2
    return _Reach.build(
        r.stride, r.period, lambda j: _hull([r.at(j + d) for d in range(-k, k + 1)])
    )


def _pool(r: _Reach) -> _Reach:
    """2×2 stride-2 max-pool: coarse pixel j sees fine pixels 2j and 2j+1."""
    period = r.period // 2 if r.period % 2 == 0 else r.period
    return _Reach.build(2 * r.stride, period, lambda j: _hull([r.at(2 * j), r.at(2 * j + 1)]))


def _up(r: _Reach) -> _Reach:
    """×2 up-sampling (2×2 stride-2 transposed conv, or nearest): fine pixel i sees coarse i//2."""
    return _Reach.build(r.stride // 2, 2 * r.period, lambda i: r.at(i // 2))


def _union(a: _Reach, b: _Reach) -> _Reach:
    """Element-wise combination (concat, sum, product) of two maps of the same resolution."""
    assert a.stride == b.stride
    return _Reach.build(a.stride, math.lcm(a.period, b.period), lambda j: _hull([a.at(j), b.at(j)]))


def _output_reach(cfg: ModelConfig) -> _Reach:
    """Walk ``LczUNet.forward`` layer by layer (1×1 convs change nothing and are omitted)."""
    r = _Reach(1, (0,), (0,))
    skips: list[_Reach] = []
    for level in range(len(cfg.widths)):
        if level > 0:
            r = _pool(r)
        for _ in range(cfg.convs_per_block):
            r = _conv(r, 3)
        skips.append(r)
    d = skips.pop()
    while skips:
        skip = skips.pop()
        gated = _union(skip, _up(d))  # θ(x) + up(φ(g)), then ψ, σ and x·α: all point-wise
        d = _union(_up(d), gated)  # concat with the transposed-conv up-sampling of d
        for _ in range(cfg.convs_per_block):
            d = _conv(d, 3)
    return d


def receptive_field(cfg: ModelConfig) -> int:
    """Side, in input pixels, of the smallest centred odd window holding every output pixel's
    dependencies: 2·radius + 1 where radius is the farthest any output pixel reaches.

    Exact, not an estimate: the layer walk tracks each pixel's position in the pooling grid.
    The set one pixel depends on is not centred on it (pooling shifts it by up to
    ``size_multiple(cfg) - 1`` px one way or the other depending on alignment), so the centred
    window is what a halo must cover, and it may be slightly wider than any single pixel's
    dependency extent.
    """
    r = _output_reach(cfg)
    radius = max(max(-lo, hi) for lo, hi in zip(r.lo, r.hi, strict=True))
    return 2 * radius + 1
