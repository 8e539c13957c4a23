"""Corrupt input end to end: each damaged place fails its own tiles only, with a clear error;
every other tile is made exactly as from intact input; repairing the input and rerunning
makes only the failed tiles; a corrupt or mismatched checkpoint stops the run before it writes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from lczscale.cli import main
from lczscale.config import GridConfig, MapConfig, ModelConfig
from lczscale.core.grid import Window, zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.execute.status import cube_status
from lczscale.io.cube import ledger
from lczscale.io.cube.store import read_window
from lczscale.io.sources.tessera_zarr import TesseraZarrSource
from lczscale.model.checkpoint import (
    InputSpec,
    Normalisation,
    load_checkpoint,
    save_checkpoint,
    save_untrained,
)
from lczscale.model.unet import LczUNet
from lczscale.planning.map_plan import prepare
from lczscale.synth.world import write_world

pytestmark = pytest.mark.integration

SHARD = 256  # small shards so that each kind of damage sits in its own
YEAR = 2024


@dataclass(frozen=True)
class Damage:
    name: str
    region: Window  # zone pixels
    expect: tuple[str, ...]  # the failed tile's error contains one of these


def random_checkpoint(directory: Path, source: TesseraZarrSource) -> None:
    """A small model with random weights (receptive field 11 px, so 32 px patches and thin
    halos): the test is about what reaches the cube, not about accuracy."""
    save_untrained(directory, ModelConfig(widths=(8, 16), convs_per_block=1),
                   InputSpec(kind="tessera", dataset=source.dataset,
                             dimensions=source.dimensions, dequantisation="per_pixel_scale"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corrupt")
    summary = write_world(root / "world", cities=1, size_km=8.0, seed=5, years=(YEAR,),
                          shard_size=SHARD, truth_cube=False)
    source = summary["embeddings"]
    random_checkpoint(root / "model", TesseraZarrSource(source))
    keep = root / "pristine.zarr"
    shutil.copytree(source, keep)
    ref = root / "ref.zarr"
    code = main(map_args(source, root / "model", ref, executor="serial"))
    assert code == 0
    return {"root": root, "source": source, "model": root / "model", "keep": keep, "ref": ref,
            "zone": summary["cities"][0]["zone"]}


def map_args(source: str | Path, model: str | Path, out: str | Path,
             executor: str = "dask") -> list[str]:
    return ["map", "--source", str(source), "--model", str(model), "--out", str(out),
            "--tile-size", "256", "--patch-size", "32", "--executor", executor, "--workers",
            "2", "--quiet"]


def damage_store(source: str, zone_name: str) -> list[Damage]:
    """Five kinds of damage, each in its own shard of year 2024, chosen where there is data."""
    src = TesseraZarrSource(source)
    zone = zone_by_name(zone_name, GridConfig())
    (r_off, c_off), t, _, scales = src._locate(zone, YEAR)
    sc = np.asarray(scales[t])
    rows, cols = sc.shape[0] // SHARD, sc.shape[1] // SHARD
    full = sorted(
        ((float(np.isfinite(sc[r * SHARD:(r + 1) * SHARD, c * SHARD:(c + 1) * SHARD]).mean()),
          r, c) for r in range(rows) for c in range(cols)),
        reverse=True,
    )
    shards = [(r, c) for frac, r, c in full if frac > 0.6][:5]
    assert len(shards) == 5, f"the synthetic city must fill five shards, got {full}"
    store = Path(source) / zone_name
    group = zarr.open_group(str(Path(source)), mode="r+", zarr_format=3)[zone_name]

    def shard_window(r: int, c: int) -> Window:
        return Window(r_off + r * SHARD, c_off + c * SHARD, SHARD, SHARD)

    def centre_block(r: int, c: int) -> tuple[Window, tuple[slice, slice]]:
        """A 32 px block of the shard, all data (no water), nearest the shard's centre."""
        centre = (r * SHARD + SHARD // 2 - 16, c * SHARD + SHARD // 2 - 16)
        blocks = sorted(
            (abs(y - centre[0]) + abs(x - centre[1]), y, x)
             for y in range(r * SHARD, (r + 1) * SHARD, 32)
             for x in range(c * SHARD, (c + 1) * SHARD, 32)
             if np.isfinite(sc[y:y + 32, x:x + 32]).all()
        )
        assert blocks, "damage must hit pixels with data"
        _, y, x = blocks[0]
        return Window(r_off + y, c_off + x, 32, 32), (slice(y, y + 32), slice(x, x + 32))

    damages = []
    (r, c) = shards[0]
    (store / "embeddings" / "c" / str(t) / "0" / str(r) / str(c)).unlink()
    damages.append(Damage("deleted embeddings shard", shard_window(r, c),
                          ("all-zero embeddings",)))
    (r, c) = shards[1]
    (store / "embeddings" / "c" / str(t) / "0" / str(r) / str(c)).write_bytes(b"")
    # zarr reads an empty shard as fill (codes 0) or fails its index checksum: both are caught
    damages.append(Damage("zero-byte embeddings shard", shard_window(r, c),
                          ("all-zero embeddings", "cannot be decoded")))
    for (r, c), value, name, expect in zip(
        shards[2:], (np.nan, -np.inf, 1e4),
        ("NaN scales over data", "-inf scales", "absurd values"),
        ("nonzero embeddings", "negative or -inf scale", "|value| > 1000"), strict=True,
    ):
        region, (ys, xs) = centre_block(r, c)
        group["scales"][t, ys, xs] = np.float32(value)
        damages.append(Damage(name, region, (expect,)))
    return damages


def hits(task: TileTask, damage: Damage) -> bool:
    return task.read.intersection(damage.region) is not None


def test_each_corrupt_place_fails_only_its_tiles_and_a_repaired_rerun_completes(
    pristine, tmp_path, capsys
) -> None:
    source, model, zone_name = pristine["source"], pristine["model"], pristine["zone"]
    damages = damage_store(source, zone_name)
    out = tmp_path / "cube.zarr"
    code = main(map_args(source, model, out))
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 1, "a run with failed tiles must end with a non-zero exit code"
    assert "failed" in captured.err

    cfg_args = {"source": source, "model": str(model), "out": str(out),
                "grid": {"tile_size": 256}, "stitch": {"patch_size": 32}}

    plan = prepare(MapConfig.model_validate(cfg_args))
    entries = ledger.read_all(str(out))
    failed = {k for k, e in entries.items() if ledger.state(e) == ledger.FAILED}
    assert summary["failed"] == len(failed) > 0
    assert summary["computed"] == len(plan.planned) - len(failed)
    tasks = {t.key: t for t in plan.planned}

    for key in failed:  # nothing fails without cause
        assert any(hits(tasks[key], d) for d in damages), f"{key} failed without damage"
    for d in damages:  # every damage is reported, with what it is (one error may list several)
        named = [k for k in failed if hits(tasks[k], d)
                 and any(e in entries[k]["error"] for e in d.expect)]
        assert named, f"{d.name}: no failed tile reports it"
        assert all(entries[k]["error_type"] == "SourceError" for k in named)

    zone = zone_by_name(zone_name, GridConfig())
    for key, task in tasks.items():  # the rest of the cube is exactly what intact input gives
        for var in ("lcz", "confidence"):
            got = read_window(str(out), zone, YEAR, task.core, var)
            if key in failed:
                assert not got.any(), f"failed tile {key} must stay nodata"
            else:
                want = read_window(str(pristine["ref"]), zone, YEAR, task.core, var)
                assert np.array_equal(got, want), f"{key} {var} differs from intact input"

    status = cube_status(str(out))
    assert status["failed"] == len(failed)
    assert status["remaining"] == 0
    assert status["done"] == len(plan.planned) - len(failed)
    assert all(k in failed for k in status["failures"])

    # repair the input: the rerun makes exactly the failed tiles, and the cube is complete
    shutil.rmtree(source)
    shutil.copytree(pristine["keep"], source)
    code = main(map_args(source, model, out))
    rerun = json.loads(capsys.readouterr().out)
    assert code == 0
    assert rerun["failed"] == 0
    assert rerun["computed"] == len(failed)
    assert rerun["skipped"] == len(plan.planned) - len(failed)
    for task in tasks.values():
        for var in ("lcz", "confidence"):
            assert np.array_equal(read_window(str(out), zone, YEAR, task.core, var),
                                  read_window(str(pristine["ref"]), zone, YEAR, task.core, var))
    assert cube_status(str(out))["done"] == len(plan.planned)


def tree_digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_corrupt_or_mismatched_checkpoint_stops_before_writing(pristine, tmp_path,
                                                                capsys) -> None:
    cube = tmp_path / "cube.zarr"
    shutil.copytree(pristine["ref"], cube)
    before = tree_digest(cube)
    broken = tmp_path / "broken-model"
    shutil.copytree(pristine["model"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = main(map_args(pristine["keep"], broken, cube, executor="serial"))
    err = capsys.readouterr().err
    assert code == 2
    assert "safetensors" in err.lower()

    _, meta, _ = load_checkpoint(str(pristine["model"]))
    wide = meta.model_copy(update={
        "model": meta.model.model_copy(update={"in_dim": 64}),
        "input": meta.input.model_copy(update={"dimensions": 64}),
        "normalisation": Normalisation(mean=[0.0] * 64, std=[1.0] * 64),
    })
    save_checkpoint(tmp_path / "ae64", LczUNet(wide.model).eval(), wide)
    code = main(map_args(pristine["keep"], tmp_path / "ae64", cube, executor="serial"))
    err = capsys.readouterr().err
    assert code == 2
    assert "64" in err
    assert "128" in err
    assert tree_digest(cube) == before, "a refused run must not change the existing cube"
