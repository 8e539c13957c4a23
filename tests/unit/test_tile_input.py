"""The read-ahead inference path: a tile read in bands by another thread gives the same bytes
as one whole read, reader errors reach the model thread, and the inference options are
checked and recorded."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lczscale.config import InferenceConfig, MapConfig, ModelConfig, StitchConfig
from lczscale.core.grid import Window, utm_zone
from lczscale.core.stitch import patch_overlap
from lczscale.errors import ConfigError
from lczscale.infer.blend import RowAccumulator
from lczscale.infer.predict import Predictor, patch_activation_bytes, resolve_batch_size
from lczscale.infer.tile_input import TileInput, row_bands
from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.model.checkpoint import InputSpec, load_checkpoint, save_untrained
from lczscale.planning.map_plan import inference_numerics

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
    assert bands[-1].row_stop == 1700
    assert sum(b.height for b in bands) == w.height
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
    h, w = data.window.height, data.window.width
    everything = [Window(0, 0, h, w)]
    windows = [Window(0, 0, 50, 40), Window(20, 5, 50, 40), Window(h - 50, w - 40, 50, 40)]
    for name in ("codes", "scales", "valid", "location"):
        a, b = whole.patches(name, everything, 1), banded.patches(name, everything, 1)
        assert (a is None) == (b is None) == (name == "scales" and method == "sign_square")
        if a is not None and b is not None:
            assert torch.equal(a, b), name
            c = banded.patches(name, windows, 4)  # windows across band edges, zero padded
            assert c is not None
            assert c.shape[0] == 4
            assert not c[3].any()
            for i, win in enumerate(windows):
                assert torch.equal(c[i], a[0][..., win.row:win.row_stop, win.col:win.col_stop])
    assert np.array_equal(whole.water, banded.water)


def test_the_reader_stays_a_few_bands_ahead_and_released_rows_are_gone() -> None:
    data = random_window(Window(0, 0, 640, 8))
    tile = TileInput(data.window, CPU, ahead=64)
    thread = fill_in_thread(tile, data, 32, pause=0)
    # Before the model asks for anything the reader puts its 64 rows ahead, then holds back.
    # (Waiting for that, not for a time, keeps this independent of how loaded the host is.)
    deadline = time.monotonic() + 30
    while tile.peak_rows < 64 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)  # room for a reader that would not hold back to overshoot
    assert tile.peak_rows == 64
    for top in range(0, 640 - 32, 32):  # a model that needs 32 rows at a time, top down
        tile.wait(top + 32)
        got = tile.patches("codes", [Window(top, 0, 32, 8)], 1)
        assert got is not None
        assert np.array_equal(got[0].numpy(), data.codes[:, top:top + 32])
        tile.release(top + 32)
    thread.join()
    # Rows held: what the model asked for (32), the band it was in, and 64 ahead.
    assert 64 <= tile.peak_rows <= 32 + 32 + 64 + 32
    with pytest.raises(ValueError, match="not all held"):
        tile.patches("codes", [Window(0, 0, 32, 8)], 1)


def test_an_unbounded_reader_reads_everything_at_once() -> None:
    data = random_window(Window(0, 0, 256, 8))
    tile = TileInput(data.window, CPU)
    fill_in_thread(tile, data, 32, pause=0).join()
    assert tile.peak_rows == 256


def test_a_reader_error_reaches_the_model_thread() -> None:
    data = random_window(Window(0, 0, 64, 16))
    tile = TileInput(data.window, CPU)
    tile.put(band_of(data, Window(0, 0, 32, 16)))
    tile.wait(32)  # available without the failing band
    tile.fail(OSError("band 2 is gone"))
    with pytest.raises(OSError, match="band 2 is gone"):
        tile.wait(64)


def test_a_reader_that_stops_without_an_error_is_reported_not_waited_for() -> None:
    data = random_window(Window(0, 0, 64, 16))
    tile = TileInput(data.window, CPU)
    tile.put(band_of(data, Window(0, 0, 32, 16)))
    tile.reader_finished()
    tile.wait(32)
    with pytest.raises(RuntimeError, match="stopped at row 32 without an error"):
        tile.wait(64)


def test_a_band_whose_arrays_are_not_its_rows_is_refused() -> None:
    data = random_window(Window(0, 0, 64, 16))
    band = band_of(data, Window(0, 0, 32, 16))
    tile = TileInput(data.window, CPU)
    for bad in (replace(band, codes=band.codes[:, :16]), replace(band, water=band.water[:16])):
        with pytest.raises(ValueError, match="not the band's rows and columns"):
            tile.put(bad)


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
    assert whole.patches == banded.patches > 0
    assert whole.valid_pixels == banded.valid_pixels
    assert np.array_equal(whole.lcz, banded.lcz)
    assert np.array_equal(whole.confidence,
                                                                    banded.confidence)
    assert (whole.lcz == 17).any()
    assert (whole.lcz == 0).any()
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
    assert pred.patches > 0
    assert set(np.unique(pred.lcz)) <= set(range(18))


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


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_a_tall_tile_holds_a_few_patch_rows_and_gives_the_whole_reads_bytes(
        tiny_model: str, batch: int) -> None:
    model, meta, _ = load_checkpoint(tiny_model)
    predictor = Predictor(model, meta, StitchConfig(patch_size=32, batch_size=batch), CPU)
    zone = utm_zone(32)
    core = Window(5_000_064, 40_064, 320, 64)
    read = predictor.lattice.read_window(core)
    data = random_window(read, seed=5)
    whole = predictor.predict(zone, core, data, probabilities=True)
    tile = predictor.start_tile(zone, read, ahead=32)
    thread = fill_in_thread(tile, data, 32, pause=0)
    streamed = predictor.predict_tile(core, tile, probabilities=True)
    thread.join()
    assert streamed.patches == whole.patches > 0
    for name in ("lcz", "confidence", "probability"):
        assert np.array_equal(getattr(streamed, name), getattr(whole, name)), name
    assert whole.input_rows == read.height  # one whole read
    assert streamed.input_rows < read.height // 2
    assert streamed.sum_rows < core.height // 2


def test_rows_made_final_early_equal_one_whole_core_pass() -> None:
    rng = np.random.default_rng(1)
    h, w, classes, p = 70, 9, 5, 16
    origins = [(r, c) for r in range(-8, h, 12) for c in range(-8, w, 12)]
    weight = torch.from_numpy(rng.random((p, p), dtype=np.float32))
    probs = torch.from_numpy(rng.random((len(origins), classes, p, p), dtype=np.float32))
    core = Window(0, 0, h, w)
    jobs = [patch_overlap(o, p, core) for o in origins]
    at = [j for j in jobs if j is not None]
    probs = probs[[i for i, j in enumerate(jobs) if j is not None]]
    valid = rng.random((h, w)) > 0.1
    water = ~valid & (rng.random((h, w)) > 0.5)
    once = RowAccumulator(h, w, classes, CPU, probabilities=True)
    once.add(probs, weight, at)
    streamed = RowAccumulator(h, w, classes, CPU, probabilities=True)
    for k in range(0, len(at), 4):
        streamed.add(probs[k:k + 4], weight, at[k:k + 4])
        streamed.finalise(at[min(k + 3, len(at) - 1)][1][0].start)
    for a, b in zip(once.outputs(valid, water, True), streamed.outputs(valid, water, True),
                    strict=True):
        assert a is not None
        assert b is not None
        assert np.array_equal(a, b)
    assert streamed.peak_rows < once.peak_rows == h
    with pytest.raises(ValueError, match="already final"):
        streamed.add(probs[:1], weight, at[:1])


class SlowSource:
    """Reads bands of one random window, each after a pause, counting reads in flight."""

    def __init__(self, data: EmbeddingWindow, pause: float = 0.08) -> None:
        self.data, self.pause = data, pause
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.bands: list[int] = []

    def read(self, zone: object, window: Window, year: int) -> EmbeddingWindow:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.bands.append(window.row)
        time.sleep(self.pause)
        with self.lock:
            self.in_flight -= 1
        return band_of(self.data, window)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrent_band_reads_are_in_flight_at_once_and_give_the_same_bytes(
        tiny_model: str, concurrency: int) -> None:
    from lczscale.config import GridConfig
    from lczscale.core.tiling import TileTask
    from lczscale.execute.tile import MapContext, TileRunner

    stitch = StitchConfig(patch_size=32, batch_size=2)
    model, meta, _ = load_checkpoint(tiny_model)
    whole_predictor = Predictor(model, meta, stitch, CPU)
    zone, core = utm_zone(32), Window(5_000_064, 40_064, 320, 64)
    read = whole_predictor.lattice.read_window(core)
    data = random_window(read, seed=9)
    source = SlowSource(data)
    ctx = MapContext(
        source_url="slow", source=source, model_dir=tiny_model, cube_url="unused",  # type: ignore[arg-type]
        grid=GridConfig(tile_size=256), stitch=stitch, device="cpu", threads=1,
        provenance_hash="x", inference=InferenceConfig(band_rows=32,
                                                       read_concurrency=concurrency))
    runner = TileRunner(ctx)
    pred, _ = runner._predict(zone, TileTask("utm32", 2024, core, read))
    whole = whole_predictor.predict(zone, core, data)
    assert np.array_equal(pred.lcz, whole.lcz)
    assert np.array_equal(pred.confidence,
                                                                  whole.confidence)
    assert sorted(source.bands) == [b.row for b in row_bands(read, 32)]  # each band once
    # serialised reads would never overlap; at most ``concurrency`` run at once
    assert source.most == concurrency
