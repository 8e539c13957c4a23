"""The CUDA inference path (skipped without a CUDA device): pinned, asynchronous band uploads
give the cube of a plain whole read; bf16/fp16 autocast, channels-last and torch.compile agree
with fp32; on-device location channels match the host's; a batch size chosen from free memory
runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cube_compare import assert_same, cube_arrays

from lczscale.config import InferenceConfig, StitchConfig
from lczscale.core.grid import Window, utm_zone
from lczscale.execute.run import run_map
from lczscale.infer.predict import Predictor
from lczscale.io.cube.store import cube_attrs
from lczscale.model.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_map(world, out, **kw):  # type: ignore[no-untyped-def]
    cfg = world.map_config(out, device="cuda", **kw)
    report = run_map(cfg, progress=False)
    assert report.computed >= 4
    assert not report.failed
    return cube_arrays(str(out), world)


@pytest.fixture(scope="module")
def fp32(world, tmp_path_factory):  # type: ignore[no-untyped-def]
    return cuda_map(world, tmp_path_factory.mktemp("gpu") / "fp32.zarr")


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    same = total = 0
    for key in a:
        if key.endswith("/lcz"):
            mapped = b[key] > 0
            assert np.array_equal(a[key] > 0, mapped), key
            same += int((a[key][mapped] == b[key][mapped]).sum())
            total += int(mapped.sum())
    return same / total


def test_pinned_band_uploads_give_the_cube_of_a_whole_read(world, fp32, tmp_path) -> None:
    plain = cuda_map(world, tmp_path / "plain.zarr", inference=InferenceConfig(read_ahead=False))
    assert_same(plain, fp32)
    small = cuda_map(world, tmp_path / "b32.zarr", inference=InferenceConfig(band_rows=32))
    assert_same(small, fp32)


def test_the_gpu_cube_agrees_with_the_cpu_cube(world, fp32, tmp_path) -> None:
    """Outputs come back from the device asynchronously (pinned buffers, an event per batch):
    a row read on the host before its copy landed would show here as zeros or stale classes."""
    report = run_map(world.map_config(tmp_path / "cpu.zarr", device="cpu"), progress=False)
    assert report.computed >= 4
    assert not report.failed
    cpu = cube_arrays(str(tmp_path / "cpu.zarr"), world)
    assert agreement(fp32, cpu) >= 0.99
    for key in cpu:
        if key.endswith("/confidence"):
            lcz = key.replace("/confidence", "/lcz")
            same = (cpu[lcz] > 0) & (cpu[lcz] == fp32[lcz])
            diff = np.abs(fp32[key][same].astype(int) - cpu[key][same].astype(int))
            assert np.percentile(diff, 99) <= 2, key  # GEMM rounding, not stale bytes


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_agrees_with_fp32_and_is_recorded(world, fp32, tmp_path, dtype) -> None:
    out = tmp_path / f"{dtype}.zarr"
    low = cuda_map(world, out, inference=InferenceConfig(dtype=dtype))
    assert agreement(low, fp32) >= 0.99
    assert cube_attrs(str(out))["lczscale:provenance"]["inference"] == {"dtype": dtype}


def test_channels_last_and_compile_agree_with_fp32(world, fp32, tmp_path) -> None:
    for name, inference in (("cl", InferenceConfig(channels_last=True)),
                            ("compiled", InferenceConfig(compile=True))):
        assert agreement(cuda_map(world, tmp_path / f"{name}.zarr", inference=inference),
                         fp32) >= 0.999


def test_auto_batch_size_fits_and_runs(world, fp32, tmp_path) -> None:
    out = tmp_path / "auto.zarr"
    auto = cuda_map(world, out, stitch=StitchConfig(patch_size=128, batch_size="auto"))
    assert agreement(auto, fp32) >= 0.999
    assert cube_attrs(str(out))["lczscale:provenance"]["inference"] == {"batch_size": "auto"}
    model, meta, _ = load_checkpoint(world.model)
    predictor = Predictor(model, meta, StitchConfig(patch_size=128, batch_size="auto"),
                          torch.device("cuda"))
    b = predictor.batch_size
    assert 1 <= b <= 1024
    assert b & (b - 1) == 0


def test_location_channels_on_the_device_match_the_host(world) -> None:
    model, meta, _ = load_checkpoint(world.model)
    stitch = StitchConfig(patch_size=128)
    gpu = Predictor(model, meta, stitch, torch.device("cuda"))
    cpu = Predictor(*load_checkpoint(world.model)[:2], stitch, torch.device("cpu"))
    zone, window = utm_zone(32), Window(5_200_000, 45_000, 300, 260)
    a, b = gpu.location(zone, window).cpu(), cpu.location(zone, window)
    assert a.shape == b.shape
    assert a.dtype == b.dtype == torch.float32
    assert (a == b).float().mean() >= 0.9999
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
