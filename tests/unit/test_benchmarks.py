"""The benchmarks' own arithmetic: halo and patch amplification from a plan, the land stand-in's
area, the end-to-end ratio, the scaling efficiency, the streamed-training line, the patch-read
windows, and the plots.
(The benchmarks' JSON output is checked in tests/integration/test_benchmarks_run.py.)"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from lczscale.core.grid import Window, utm_zone
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import TileTask, patch_amplification, read_amplification
from lczscale.execute.run import MapReport
from lczscale.execute.tile import TileResult
from lczscale.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import amplification
import land
import patch_read
import plot
import scaling
import throughput
import train_throughput


def task(core: Window, lattice: Lattice) -> TileTask:
    return TileTask("utm32", 2024, core, lattice.read_window(core))


def test_amplification_of_one_tile_by_hand() -> None:
    lattice = Lattice(32, 16)
    t = task(Window(64, 64, 64, 64), lattice)
    # patches overlapping rows 64..127 start at 48, 64, …, 112: the read spans rows 48..143
    assert t.read == Window(48, 48, 96, 96)
    assert read_amplification([t]) == pytest.approx((96 / 64) ** 2)
    assert patch_amplification([t], lattice) == pytest.approx(25 * 32**2 / 64**2)
    with pytest.raises(ValueError, match="empty"):
        read_amplification([])


def test_amplification_falls_with_tile_size_and_is_at_least_one() -> None:
    small, large = amplification.geometric(512, 256), amplification.geometric(8192, 256)
    assert 1 < large["read_amplification"] < small["read_amplification"]
    assert large["chunk_read_amplification"] >= large["read_amplification"]
    assert small["patch_amplification"] > (256 / small["stride"]) ** 2
    default = amplification.geometric(4096, 256)
    assert default["default"]
    assert not small["default"]
    assert default["meets_target"] == (default["read_amplification"] <= 1.15)
    assert amplification.geometric(2048, 256)["read_amplification"] > 1.15
    # mean halo per side lies between the overlap and the patch size
    assert default["overlap"] <= default["halo_mean_px"] < 256


def test_chunk_alignment_rounds_out_to_32_px() -> None:
    assert amplification.chunk_aligned(Window(33, 0, 30, 64)) == Window(32, 0, 32, 64)
    assert amplification.chunk_aligned(Window(-5, 31, 10, 2)) == Window(-32, 0, 64, 64)


def test_cell_areas_add_up_to_the_sphere_band() -> None:
    r = land.EARTH_RADIUS_KM
    band = 2 * math.pi * r**2 * (math.sin(math.radians(84)) - math.sin(math.radians(-80)))
    assert land.cell_areas_km2().sum() == pytest.approx(band, rel=1e-9)


def test_land_stand_in_has_the_earths_land_area() -> None:
    f = land.land_fractions()
    assert land.land_area_km2(f) == pytest.approx(148.9e6, rel=1e-3)
    # the hand-drawn outlines alone are already close: the scaling is a small correction
    assert land.land_area_km2(land.outline_fractions()) == pytest.approx(148.9e6, rel=0.05)
    assert ((f >= 0) & (f <= 1)).all()
    assert (f == 1).mean() > 0.15
    assert (f == 0).mean() > 0.5
    # a few places: Sahara land, mid-Pacific water
    assert land.is_land(np.array([15.5]), np.array([22.5]), f).all()
    assert not land.is_land(np.array([-150.5]), np.array([0.5]), f).any()


def test_land_inside_a_cell_is_a_square_of_its_fraction() -> None:
    f = np.zeros((164, 360))
    f[20, 200] = 0.36  # the cell 64°N–63°N, 20°E–21°E
    rng = np.random.default_rng(0)
    lon, lat = 20 + rng.random(20_000), 63 + rng.random(20_000)
    assert land.is_land(lon, lat, f).mean() == pytest.approx(0.36, abs=0.01)


def test_zone_availability_holds_the_zones_land() -> None:
    f = land.land_fractions()
    zone = utm_zone(32)  # 6°E–12°E
    avail = land.zone_availability(zone, f, all_masks=True)
    px = sum(m.mean() for m in avail.cells.values()) * land.SHARD**2
    expected = (f[:, 186:192] * land.cell_areas_km2()[:, 186:192]).sum() * 1e4  # px of 100 m²
    assert px == pytest.approx(expected, rel=0.05)
    assert avail.block == (4096, 4096)
    assert avail.cell == (32, 32)
    assert set(avail.cells) == set(avail.blocks)
    lean = land.zone_availability(zone, f)
    assert lean.blocks == avail.blocks
    assert len(lean.cells) < len(avail.cells)
    assert all(not m.all() for m in lean.cells.values())


def test_end_to_end_ratio_is_end_to_end_over_model_only() -> None:
    results = [TileResult("a", 600, 1000, 5, 0.1, 1.0, 0.1),
               TileResult("b", 400, 1000, 3, 0.1, 1.0, 0.1)]
    report = MapReport("c", 2024, 2, 0, 2000, 1000, 4.0, ["utm32"], results)
    got = throughput.figures(report, model_wall=2.5, patches=8)
    assert got["px_per_s"] == 250
    assert got["model_px_per_s"] == 400
    assert got["ratio"] == pytest.approx(got["px_per_s"] / got["model_px_per_s"])
    assert got["km2_per_hour"] == pytest.approx(250 * 3600 / 1e4)


def test_scaling_efficiency() -> None:
    points = [{"workers": 1, "px_per_s": 100.0}, {"workers": 2, "px_per_s": 180.0},
              {"workers": 4, "px_per_s": 300.0}]
    curve = scaling.curve(points)
    assert curve["efficiency"] == [1.0, 0.9, 0.75]
    assert curve["efficiency_at_max"] == 0.75
    assert points[2]["speedup"] == 3.0


def test_plots_are_written(tmp_path: Path) -> None:
    import json

    ctx = {"cpu_count": 2, "gpus": []}
    lines = [
        {"name": "model_forward", "dtype": "fp32", "channels_last": False, "input": "float",
         "patch_size": 64, "batch_size": b, "px_per_s": 1e5 * b, "context": ctx}
        for b in (1, 4)
    ] + [
        {"name": "scaling", "status": "run", "cluster": "local", "workers": [1, 2],
         "px_per_s": [10.0, 18.0], "efficiency": [1.0, 0.9], "context": ctx},
        {"name": "halo_amplification", "tile_size": 2048, "patch_size": 256,
         "read_amplification": 1.3, "default": True, "context": ctx},
        {"name": "halo_amplification_measured", "tile_size": 64, "patch_size": 96,
         "read_amplification": 9.0, "measured_read_amplification": 4.4, "context": ctx},
    ]
    results = tmp_path / "r.jsonl"
    results.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert plot.main([str(results), "--out", str(tmp_path / "png")]) == 0
    for name in ("model_throughput", "scaling", "amplification"):
        assert (tmp_path / "png" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def _child(samples_per_s: float, rss: int, streamed: bool) -> dict:
    out = {"samples_per_s": samples_per_s, "seconds": 1.0, "rss_peak": rss,
           "rss_peak_loop": rss - 100, "data": "stream" if streamed else "memory"}
    return out | ({"block_reads": 7, "cache_hits": 30} if streamed else {})


def test_train_stream_line_from_the_children() -> None:
    runs = {(2, "stream"): _child(50.0, 1000, True), (2, "memory"): _child(50.0, 1000, False),
            (12, "stream"): _child(41.0, 1050, True), (12, "memory"): _child(50.0, 1600, False)}
    settings = train_throughput.stream_settings(quick=True)
    assert (settings["steps"], settings["size_km"], settings["patch_size"]) == (40, 3.0, 64)
    assert (settings["cache_mb"], settings["read_block"]) == (TrainConfig().cache_mb,
                                                              TrainConfig().read_block)
    assert train_throughput.stream_settings(True, cache_mb=32, read_block=16)["read_block"] == 16
    line = train_throughput.stream_line(runs, settings | {"quick": True},
                                        {2: 180_000, 12: 1_080_000})
    assert line["name"] == "train_stream"
    assert line["context"].keys() >= {"host", "cpu_count", "gpus", "git_sha"}
    assert line["samples_per_s_streamed"] == 41.0
    assert line["samples_per_s_in_memory"] == 50.0
    assert line["samples_per_s_streamed_small"] == line["samples_per_s_in_memory_small"] == 50
    assert line["ratio_streamed_vs_memory"] == pytest.approx(0.82)
    assert (line["rss_peak_small"], line["rss_peak_large"]) == (1000, 1050)
    assert (line["rss_peak_small_in_memory"], line["rss_peak_large_in_memory"]) == (1000, 1600)
    assert line["rss_ratio_large_vs_small"] == pytest.approx(1.05)
    assert line["rss_ratio_large_vs_small_in_memory"] == pytest.approx(1.6)
    assert line["rss_ratio_large_vs_small_loop"] == pytest.approx(950 / 900, abs=1e-3)
    assert line["meets_throughput_target"]
    assert line["meets_memory_target"]
    assert line["targets"] == {"ratio_streamed_vs_memory": ">= 0.8",
                               "rss_ratio_large_vs_small": "<= 1.1"}
    assert line["pixels"] == {"2": 180_000, "12": 1_080_000}
    assert line["embeddings_bytes"]["12"] == 1_080_000 * 132
    assert line["block_reads"] == {"2": 7, "12": 7}
    assert line["cache_hits"] == {"2": 30, "12": 30}
    assert set(line["runs"]) == {"2-stream", "2-memory", "12-stream", "12-memory"}
    assert (line["steps"], line["batch_size"], line["cities"]) == (40, 8, [2, 12])
    # a slower stream or a growing one misses its target
    runs[12, "stream"] = _child(39.0, 1200, True)
    worse = train_throughput.stream_line(runs, settings, {2: 1, 12: 6})
    assert not worse["meets_throughput_target"]
    assert not worse["meets_memory_target"]


def test_patch_read_windows_are_aligned_and_inside_the_city() -> None:
    area = Window(1003, 2010, 600, 600)
    for side, align in patch_read.KINDS.values():
        got = patch_read.windows(area, side, align, 50, seed=1)
        assert len(got) == 50
        assert len(set(got)) > 1
        for w in got:
            assert (w.row % align, w.col % align, w.height, w.width) == (0, 0, side, side)
            assert area.intersection(w) == w, "wholly inside: no padding is timed"
