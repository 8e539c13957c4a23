"""A map run whose ledger is compacted at its end: a resume, ``lczscale status`` and a rerun
with another model read the snapshots as they read the per-tile entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lczscale.config import GridConfig
from lczscale.errors import CubeError
from lczscale.execute.status import cube_status
from lczscale.io.cube import compaction, ledger
from lczscale.io.sources.registry import open_source
from lczscale.synth import world as synth
from tests.mapping import map_source, random_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compaction")
    summary = synth.write_world(root / "w", cities=1, size_km=1.2, seed=6, years=(2024,),
                                shard_size=64, truth_cube=False)
    source = open_source(summary["embeddings"])
    return {"source": summary["embeddings"], "m1": random_model(root / "m1", source)}


def test_a_compacted_ledger_resumes_and_reports_like_the_objects(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "cube.zarr")
    monkeypatch.setattr(compaction, "COMPACT_AFTER", 1)  # every run compacts
    first = map_source(world["source"], world["m1"], out, grid=GridConfig(tile_size=256))
    assert first.computed >= 2
    root = Path(out) / ledger.LEDGER_DIR
    assert not list(root.rglob("[!.]*.json")), "the run folded its per-tile entries"
    assert list(root.rglob(ledger.SNAPSHOT))
    entries = ledger.read_all(out)
    assert len(entries) == first.computed
    again = map_source(world["source"], world["m1"], out, grid=GridConfig(tile_size=256))
    assert (again.computed, again.skipped) == (0, first.computed)  # done, from the snapshots
    status = cube_status(out)
    assert (status["done"], status["stale"], status["remaining"]) == (first.computed, 0, 0)
    # a tile whose entry was rewritten since wins over the snapshot: pending, so remade
    key = sorted(entries)[0]
    ledger.record(out, key, entries[key] | {"state": ledger.PENDING})
    assert cube_status(out)["stale"] == 1
    third = map_source(world["source"], world["m1"], out, grid=GridConfig(tile_size=256))
    assert third.computed == 1
    assert ledger.read_all(out)[key]["state"] == ledger.DONE
    # another model is still refused over tiles only the snapshots know
    other = tmp_path / "m2"
    random_model(other, open_source(world["source"]))
    import torch

    from lczscale.model.checkpoint import load_checkpoint, save_checkpoint

    net, meta, _ = load_checkpoint(other)
    with torch.no_grad():
        next(iter(net.parameters())).add_(1.0)
    save_checkpoint(other, net, meta.model_copy(update={"step": meta.step + 1}))
    with pytest.raises(CubeError, match="with another provenance"):
        map_source(world["source"], str(other), out, grid=GridConfig(tile_size=256))
