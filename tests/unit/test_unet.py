"""LczUNet: shapes, input checks, location encoding, receptive field, batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from lczscale.config import ModelConfig
from lczscale.model.unet import (
    LczUNet,
    _output_reach,
    encode_location,
    location_channels,
    receptive_field,
    size_multiple,
)


def small(**kw: object) -> ModelConfig:
    return ModelConfig.model_validate({"widths": (8, 16), **kw})


@pytest.mark.parametrize("in_dim", [128, 64])
@pytest.mark.parametrize("location", [True, False])
def test_forward_shape(in_dim: int, location: bool) -> None:
    cfg = small(in_dim=in_dim, location=location, location_frequencies=2)
    model = LczUNet(cfg).eval()
    channels = in_dim + (8 if location else 0)
    assert model.in_channels == channels == in_dim + location_channels(cfg)
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 48))  # H != W: axis order is kept
    assert out.shape == (2, cfg.num_classes, 32, 48)
    assert out.dtype == torch.float32


def test_three_levels_shape() -> None:
    cfg = small(in_dim=16, widths=(4, 8, 8), convs_per_block=1)
    with torch.no_grad():
        out = LczUNet(cfg).eval()(torch.randn(1, 20, 24, 16))
    assert out.shape == (1, 17, 24, 16)


def test_sizes_not_multiple_rejected() -> None:
    cfg = small(in_dim=16, widths=(4, 8, 8))
    model = LczUNet(cfg).eval()
    assert size_multiple(cfg) == 4
    with pytest.raises(ValueError, match=r"multiples of 4.*30×32"):
        model(torch.randn(1, 20, 30, 32))
    with pytest.raises(ValueError, match=r"multiples of 4"):
        model(torch.randn(1, 20, 32, 34))


def test_wrong_channels_rejected() -> None:
    model = LczUNet(small(in_dim=16))
    with pytest.raises(ValueError, match=r"\(B, 20, H, W\) = 16 embedding \+ 4 location"):
        model(torch.randn(1, 16, 32, 32))


def test_location_channels() -> None:
    assert location_channels(ModelConfig()) == 4
    assert location_channels(ModelConfig(location_frequencies=3)) == 12
    assert location_channels(ModelConfig(location=False, location_frequencies=3)) == 0


def test_encode_location_values() -> None:
    lon = torch.tensor([[0.0, 90.0], [-180.0, 45.0]], dtype=torch.float64)
    lat = torch.tensor([[30.0, 0.0], [-90.0, 60.0]], dtype=torch.float64)
    enc = encode_location(lon, lat, 2)
    assert enc.shape == (8, 2, 2)
    assert enc.dtype == torch.float32
    la, lo = math.radians(60.0), math.radians(45.0)
    expect = [math.sin(la), math.cos(la), math.sin(lo), math.cos(lo)]
    expect += [math.sin(2 * la), math.cos(2 * la), math.sin(2 * lo), math.cos(2 * lo)]
    assert enc[:, 1, 1].tolist() == pytest.approx(expect, abs=1e-7)
    # float32 input, leading batch dims, and one pixel alone all give the same bits
    batched = encode_location(torch.stack([lon, lon + 1]), torch.stack([lat, lat - 1]), 2)
    assert batched.shape == (2, 8, 2, 2)
    assert torch.equal(batched[0], enc)
    assert torch.equal(encode_location(lon[1:, 1:], lat[1:, 1:], 2), enc[:, 1:, 1:])
    with pytest.raises(ValueError, match="same shape"):
        encode_location(lon, lat[:1], 1)


# The receptive field is checked against autograd: the input pixels with a non-zero gradient of
# one output pixel's logits are (a subset of) the pixels it depends on. Max-pooling passes the
# gradient to one pixel per window and ReLUs cut some paths, so autograd can only under-report;
# with random weights and two random inputs it reports every dependency. The dependency window
# of a pixel is not centred on it: its left/right reach depends on the pixel's position in the
# pooling grid (period size_multiple(cfg)). receptive_field() is the smallest *centred* window
# covering every alignment (what a halo must cover), so it exceeds the widest single-pixel
# extent by at most size_multiple(cfg) - 1 px: that is the documented margin.
@pytest.mark.parametrize(
    "cfg",
    [
        small(in_dim=8, location=False),
        small(in_dim=4, widths=(4, 8, 8), convs_per_block=1),
    ],
    ids=["2-levels-2-convs", "3-levels-1-conv"],
)
def test_receptive_field_matches_autograd(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = LczUNet(cfg).eval()
    rf, m, n = receptive_field(cfg), size_multiple(cfg), 128
    assert rf % 2 == 1
    assert rf < n // 2
    xs = [torch.randn(1, model.in_channels, n, n, requires_grad=True) for _ in range(2)]
    outs = [model(x) for x in xs]
    reach = _output_reach(cfg)
    widest = radius = 0
    for offset in range(m):  # every alignment with the pooling grid
        c = n // 2 + offset
        support = torch.zeros(n, n, dtype=torch.bool)
        for x, out in zip(xs, outs, strict=True):
            (grad,) = torch.autograd.grad(out[0, :, c, c].sum(), x, retain_graph=True)
            support |= (grad[0] != 0).any(dim=0)
        rows = support.any(dim=1).nonzero().flatten()
        cols = support.any(dim=0).nonzero().flatten()
        lo, hi = int(rows.min()) - c, int(rows.max()) - c
        assert (int(cols.min()) - c, int(cols.max()) - c) == (lo, hi)  # square kernels
        # the layer walk is exact for every alignment
        first, last = reach.at(c)
        assert (first - c, last - c) == (lo, hi)
        assert hi - lo + 1 <= rf
        assert max(-lo, hi) <= rf // 2
        widest, radius = max(widest, hi - lo + 1), max(radius, -lo, hi)
    assert 2 * radius + 1 == rf  # the centred window is not overestimated at all
    assert 0 <= rf - widest <= m - 1  # the documented margin over one pixel's extent


def test_default_receptive_field() -> None:
    assert receptive_field(ModelConfig()) == 47


def test_batch_composition_independence() -> None:
    """A patch's logits must not depend on what it is batched with (the cube invariant)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = LczUNet(small(in_dim=16, widths=(8, 16, 16))).eval()
        x = torch.randn(4, model.in_channels, 32, 32)
        with torch.no_grad():
            full = model(x)
            for i in range(len(x)):
                assert torch.equal(full[i : i + 1], model(x[i : i + 1]))
            assert torch.equal(full[[3, 1]], model(x[[3, 1]]))
    finally:
        torch.set_num_threads(threads)
