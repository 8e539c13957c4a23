"""The read-ahead inference path: a tile read in bands by another thread gives the same bytes
as one whole read, reader errors reach the model thread, and the inference options are
checked and recorded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lczscale.config import InferenceConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.errors import ConfigError
from lczscale.execute.run import inference_numerics
from lczscale.grid import Window, utm_zone
from lczscale.io.source import EmbeddingWindow
from lczscale.model.checkpoint import InputSpec, load_checkpoint, save_untrained
from lczscale.model.predict import Predictor, patch_activation_bytes, resolve_batch_size
from lczscale.model.tile_input import TileInput, row_bands

CPU = torch.device("cpu")
TINY = ModelConfig(in_dim=6, widths=(4, 8), convs_per_block=1)


def random_window(window: Window, dims: int = 6, seed: int = 0,
                  method: str = "per_pixel_scale") -> EmbeddingWindow:
    rng = np.random.default_rng(seed)
    h, w = window.height, window.width
    valid = rng.random((h, w)) > 0.2
    valid[: h // 3, : w // 3] = False  # a block of no data: some patches are skipped
    water = ~valid & (rng.random((h, w)) > 0.5)
    codes = rng.integers(-127, 128, (dims, h, w), dtype=np.int8) * valid
    scales = (rng.random((h, w), dtype=np.float32) * valid) if method == "per_pixel_scale" \
        else None
    return EmbeddingWindow(window, codes.astype(np.int8), scales, valid, water, method)  # type: ignore[arg-type]


def band_of(data: EmbeddingWindow, band: Window) -> EmbeddingWindow:
    rows = slice(band.row - data.window.row, band.row_stop - data.window.row)
    return EmbeddingWindow(band, data.codes[:, rows], None if data.scales is None
                           else data.scales[rows], data.valid[rows], data.water[rows],
                           data.dequantisation)


def fill_in_thread(tile: TileInput, data: EmbeddingWindow, rows: int,
                   pause: float = 0.002) -> threading.Thread:
    def run() -> None:
        for band in row_bands(data.window, rows):
            time.sleep(pause)  # the model thread must really wait for some bands
            tile.put(band_of(data, band))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_row_bands_partition_the_window_on_zone_aligned_rows() -> None:
    w = Window(1000, 7, 700, 30)
    bands = row_bands(w, 256)
    assert [b.row for b in bands] == [1000, 1024, 1280, 1536]
    assert bands[-1].row_stop == 1700 and sum(b.height for b in bands) == w.height
    assert all(b.col == 7 and b.width == 30 for b in bands)
    assert row_bands(Window(512, 0, 256, 4), 256) == [Window(512, 0, 256, 4)]


@pytest.mark.parametrize("method", ["per_pixel_scale", "sign_square"])
def test_banded_tile_holds_what_a_whole_read_holds(method: str) -> None:
    zone = utm_zone(32)
    data = random_window(Window(5_000_013, 40_000, 150, 90), method=method)

    def location(w: Window) -> torch.Tensor:
        lon, lat = zone.lonlat(w)
        return torch.from_numpy(np.stack([lon, lat]).astype(np.float32))

    whole = TileInput.whole(data, CPU, location, 2)
    whole.wait(data.window.height)
    banded = TileInput(data.window, CPU, location, 2)
    thread = fill_in_thread(banded, data, 32)
    banded.wait(10)  # the first rows arrive before the rest
    banded.wait(data.window.height)
    thread.join()
    for name in ("codes", "scales", "valid_t", "location"):
        a, b = getattr(whole, name), getattr(banded, name)
        assert (a is None) == (b is None) == (name == "scales" and method == "sign_square")
        if a is not None:
            assert torch.equal(a, b), name
    assert np.array_equal(whole.water, banded.water)


def test_a_reader_error_reaches_the_model_thread() -> None:
    data = random_window(Window(0, 0, 64, 16))
    tile = TileInput(data.window, CPU)
    tile.put(band_of(data, Window(0, 0, 32, 16)))
    tile.wait(32)  # available without the failing band
    tile.fail(OSError("band 2 is gone"))
    with pytest.raises(OSError, match="band 2 is gone"):
        tile.wait(64)


def test_bands_must_arrive_in_order() -> None:
    data = random_window(Window(0, 0, 64, 16))
    tile = TileInput(data.window, CPU)
    with pytest.raises(ValueError, match="does not continue"):
        tile.put(band_of(data, Window(32, 0, 32, 16)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tiny")
    save_untrained(directory, TINY, InputSpec(kind="tessera", dataset="tessera/test",
                                              dimensions=6, dequantisation="per_pixel_scale"))
    return str(directory)


def test_prediction_from_bands_equals_prediction_from_a_whole_read(tiny_model: str) -> None:
    model, meta, _ = load_checkpoint(tiny_model)
    predictor = Predictor(model, meta, StitchConfig(patch_size=32, batch_size=3), CPU)
    zone = utm_zone(32)
    core = Window(5_000_064, 40_064, 96, 64)
    read = predictor.lattice.read_window(core)
    data = random_window(read, seed=3)
    whole = predictor.predict(zone, core, data)
    tile = predictor.start_tile(zone, read)
    thread = fill_in_thread(tile, data, 32)
    banded = predictor.predict_tile(core, tile)
    thread.join()
    assert whole.patches == banded.patches > 0 and whole.valid_pixels == banded.valid_pixels
    assert np.array_equal(whole.lcz, banded.lcz) and np.array_equal(whole.confidence,
                                                                    banded.confidence)
    assert (whole.lcz == 17).any() and (whole.lcz == 0).any()  # water and no-data kept
    assert tile.waited_s > 0


def test_fp16_needs_cuda_and_bf16_runs_on_a_cpu(tiny_model: str) -> None:
    model, meta, _ = load_checkpoint(tiny_model)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        Predictor(model, meta, StitchConfig(patch_size=32), CPU, inference=InferenceConfig(
            dtype="fp16"))
    bf16 = Predictor(model, meta, StitchConfig(patch_size=32), CPU,
                     inference=InferenceConfig(dtype="bf16", channels_last=True))
    core = Window(0, 0, 32, 32)
    pred = bf16.predict(utm_zone(32), core, random_window(bf16.lattice.read_window(core)))
    assert pred.patches > 0 and set(np.unique(pred.lcz)) <= set(range(18))


def test_batch_size_auto_is_eight_on_a_cpu_and_activation_estimate_scales() -> None:
    assert resolve_batch_size(5, TINY, 64, CPU) == 5
    assert resolve_batch_size("auto", TINY, 64, CPU) == 8
    assert patch_activation_bytes(TINY, 128) > 3.9 * patch_activation_bytes(TINY, 64)
    assert patch_activation_bytes(TINY, 64, 2) < patch_activation_bytes(TINY, 64, 4)


def test_only_settings_that_change_the_bytes_are_provenance(tmp_path: Path) -> None:
    base = {"source": "s", "model": "m", "out": str(tmp_path / "c.zarr")}
    assert inference_numerics(MapConfig.model_validate(base), "cpu") == {}
    ahead = MapConfig.model_validate(base | {"inference": {"read_ahead": False,
                                                           "band_rows": 64}})
    assert inference_numerics(ahead, "cpu") == {}
    bf16 = MapConfig.model_validate(base | {"inference": {"dtype": "bf16"}})
    assert inference_numerics(bf16, "cpu") == {"dtype": "bf16"}
    auto = MapConfig.model_validate(base | {"stitch": {"batch_size": "auto"}})
    assert inference_numerics(auto, "cpu") == {}
    assert inference_numerics(auto, "cuda") == {"batch_size": "auto"}
