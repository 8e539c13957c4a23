"""``benchmarks/ledger_scale.py``'s synthetic entries are shaped like the done entries a map
run writes (``execute/tile.py``), so its timings are of real entry sizes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from lczscale.core.grid import Window
from lczscale.core.tiling import TileTask
from lczscale.execute.tile import tile_entry
from lczscale.io.cube import ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ledger_scale


def test_synthetic_entries_have_the_fields_of_a_done_tile() -> None:
    ctx = SimpleNamespace(provenance_hash="h" * 64, provenance_parts={"model_hash": "m" * 16})
    task = TileTask("utm32", 2024, Window(0, 0, 4096, 4096), Window(0, 0, 4400, 4400))
    done = tile_entry(ctx, task, "host:1") | {  # type: ignore[arg-type]
        "inputs": "0" * 16, "valid_pixels": 1, "patches": 1, "finished_at": 0.0}
    attrs = {"lczscale:provenance_hash": "h" * 64, "lczscale:provenance": {"model_hash": "x"}}
    entries = list(ledger_scale.synthetic_entries(120, attrs, "utm32"))
    assert len({k for k, _ in entries}) == 120
    for key, entry in entries:
        assert set(entry) == set(done)
        assert entry["provenance_hash"] == "h" * 64
        assert key == f"{entry['zone']}/2024/{entry['core'][0]}_{entry['core'][1]}"
        assert entry["zone"] != "utm32"
        assert ledger.folder_of(key) == f"{entry['zone']}/2024"
