"""Peak memory of one tile on a worker, by tile size: streamed (the reader two bands ahead, rows
released as the model passes them) vs the whole read window held at once.

A tile's memory decides the largest tile a worker can run, and the tile size decides the halo's
share of every read (``amplification.py``): memory that grows with the tile's width rather than
its area is what lets the default tile be 4096 px. Each measurement runs in a child process: a
random-weight model with 128-d input and a reader thread that ``put``s freshly made int8 bands
(what a source returns), so the figure is the inference path's own, with no store in between.
``peak_mib`` is the resident memory the tile added (sampled every 5 ms), ``estimate_mib``
what ``tile_memory_bytes`` (the planner's memory check) predicts for it.

    python benchmarks/tile_memory.py [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
MODEL_WIDTHS = (8, 16)  # memory, not accuracy: a small net keeps a 4096 px tile to seconds
PATCH, BATCH, BAND, DIMS = 64, 8, 256, 128


def child(tile: int, streamed: bool) -> dict[str, Any]:
    """The measurement (in the child process)."""
    import numpy as np
    import torch
    from planning import PeakRss

    from lczscale.config import InferenceConfig, ModelConfig, StitchConfig
    from lczscale.core.grid import Window, utm_zone
    from lczscale.infer.predict import Predictor, tile_memory_bytes
    from lczscale.infer.tile_input import row_bands
    from lczscale.io.sources.protocol import EmbeddingWindow
    from lczscale.model.checkpoint import InputSpec, load_checkpoint, save_untrained

    model_cfg = ModelConfig(in_dim=DIMS, widths=MODEL_WIDTHS, convs_per_block=1)
    stitch = StitchConfig(patch_size=PATCH, batch_size=BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        save_untrained(tmp, model_cfg, InputSpec(kind="tessera", dataset="bench",
                                                 dimensions=DIMS,
                                                 dequantisation="per_pixel_scale"))
        model, meta, _ = load_checkpoint(tmp)
    predictor = Predictor(model, meta, stitch, torch.device("cpu"))
    zone = utm_zone(32)
    core = Window(5_120_000, 409_600, tile, tile)
    read = predictor.lattice.read_window(core)
    rng = np.random.default_rng(0)
    pattern = rng.integers(-127, 128, (DIMS, BAND, 61), dtype=np.int8)

    def band_data(w: Window) -> EmbeddingWindow:  # a fresh array per band, as a source gives
        reps = (-(-w.height // BAND), -(-w.width // pattern.shape[2]))
        codes = np.tile(pattern, (1, *reps))[:, : w.height, : w.width]
        valid = np.ones((w.height, w.width), dtype=bool)
        return EmbeddingWindow(w, np.ascontiguousarray(codes),
                               np.full((w.height, w.width), 0.01, np.float32), valid,
                               np.zeros_like(valid), "per_pixel_scale")

    proc = psutil.Process()
    base = proc.memory_info().rss
    t0 = time.perf_counter()
    with PeakRss() as peak:
        if streamed:
            data = predictor.start_tile(zone, read, 2 * BAND)

            def reader() -> None:
                for band in row_bands(read, BAND):
                    data.put(band_data(band))

            thread = threading.Thread(target=reader)
            thread.start()
            pred = predictor.predict_tile(core, data)
            thread.join()
        else:
            pred = predictor.predict(zone, core, band_data(read))
    seconds = time.perf_counter() - t0
    estimate = tile_memory_bytes(read, core, DIMS, model_cfg, stitch,
                                 inference=InferenceConfig(read_ahead=streamed))
    return {
        "tile_size": tile, "streamed": streamed, "read_rows": read.height,
        "input_rows": pred.input_rows, "sum_rows": pred.sum_rows,
        "peak_mib": round((peak.peak - base) / 2**20, 1),
        "estimate_mib": round(estimate / 2**20, 1),
        "whole_input_mib": round(read.size * (DIMS + 4 + 1) / 2**20, 1),
        "seconds": round(seconds, 2), "px_per_s": round(core.size / seconds),
        "patch_size": PATCH, "batch_size": BATCH, "band_rows": BAND, "dimensions": DIMS,
        "model_widths": list(MODEL_WIDTHS), "dtype": "fp32", "threads": 1, "device": "cpu",
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """One child per (tile size, streamed or whole); quick: 2048 px only."""
    from common import record

    sizes = (2048,) if quick else (1024, 2048, 4096)
    lines = []
    for tile in sizes:
        for streamed in (True, False):
            out = subprocess.run(
                [sys.executable, str(HERE / "tile_memory.py"), "--child", str(tile),
                 "streamed" if streamed else "whole"],
                capture_output=True, text=True, check=True, cwd=HERE)
            lines.append(record("tile_memory", **json.loads(out.stdout.strip().splitlines()[-1])))
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import torch

        torch.set_num_threads(1)
        print(json.dumps(child(int(sys.argv[2]), sys.argv[3] == "streamed")))
    else:
        from common import main_quick

        main_quick(run, __doc__)
