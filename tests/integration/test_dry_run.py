"""``lczscale map --dry-run``: the plan and its cost equal what a real run then does, nothing is
written, the JSON contract holds, and the hours follow the stored rates (or say there are none).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lczscale.cli import main
from lczscale.config import GridConfig, MapConfig, StitchConfig
from lczscale.core.grid import Aoi, Window, zone_by_name, zones_for_aoi
from lczscale.core.grid import tiles_for_geometry as aoi_tiles
from lczscale.core.tiling import Availability
from lczscale.execute.run import run_map
from lczscale.io.sources.registry import open_source
from lczscale.planning import rates as rates_module
from lczscale.planning.dry_run import dry_run
from lczscale.planning.map_plan import prepare
from lczscale.synth.world import write_world
from tests.mapping import random_model

pytestmark = pytest.mark.integration
YEAR = 2024
KEYS = {"tiles", "pixels", "land_share", "input_bytes", "input_bytes_basis", "coverage_gaps",
        "done_tiles", "workers", "gpu_hours", "wall_hours", "bound", "rates"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Zurich, 1.5 km (four 256 px tiles), and a random model."""
    root = tmp_path_factory.mktemp("dry")
    summary = write_world(root / "w", cities=1, size_km=1.5, seed=0, years=(YEAR,),
                          truth_cube=False)
    source = str(root / "w" / "embeddings.zarr")
    return {"root": root, "source": source, "summary": summary,
            "model": random_model(root / "model", open_source(source))}


def config(world: dict[str, Any], out: Path | str, **kw: Any) -> MapConfig:
    base: dict[str, Any] = {
        "source": world["source"], "model": world["model"], "out": str(out),
        "executor": "serial", "grid": GridConfig(tile_size=256),
        "stitch": StitchConfig(patch_size=64, batch_size=4)}
    return MapConfig.model_validate(base | kw)


def cli_args(world: dict[str, Any], out: Path | str, *extra: str) -> list[str]:
    return ["map", "--source", world["source"], "--model", world["model"], "--out", str(out),
            "--executor", "serial", "--tile-size", "256", "--patch-size", "64", *extra]


def rates_file(path: Path, model_px_s: float, read_px_s: float | None,
               device: str = "cpu") -> Path:
    """A results file with one known model_forward line (and a read_source line)."""
    ctx = {"host": "testhost", "cpu": "x86_64", "cpu_count": 8,
           "gpus": ["Test GPU"] if device == "cuda" else [], "git_sha": "abc1234",
           "dirty": False}
    lines = [{"benchmark": "model_forward", "name": "model_forward", "device": device,
              "input": "int8", "dtype": "fp32", "channels_last": False, "batch_size": 4,
              "patch_size": 64, "threads": 1, "px_per_s": model_px_s, "context": ctx}]
    if read_px_s is not None:
        lines.append({"benchmark": "read", "name": "read_source", "layout": "tessera-zarr",
                      "mpx_per_s": read_px_s / 1e6, "store": "local", "window": 128,
                      "context": ctx})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes (and every directory)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_the_plan_is_what_the_run_does(world, tmp_path) -> None:
    cfg = config(world, tmp_path / "c.zarr")
    before = dry_run(cfg)
    assert before["tiles"] == 4
    assert before["done_tiles"] == 0
    assert before["todo_tiles"] == 4
    report = run_map(cfg, progress=False)
    assert report.computed == before["tiles"]
    assert report.skipped == before["done_tiles"]
    assert report.core_pixels == before["pixels"] == before["todo_pixels"]
    # availability is per 32 px inner chunk: at least every valid pixel, never more than all
    assert report.valid_pixels / report.core_pixels <= before["land_share"] <= 1
    # the patches the predictor evaluated: those touching a valid pixel, at most all of them
    evaluated = sum(r.patches for r in report.results)
    assert evaluated <= before["patches"] < before["patch_amplification"] * before["pixels"] / 64**2
    assert before["patches"] <= 1.25 * evaluated
    after = dry_run(cfg)
    assert after["done_tiles"] == after["tiles"] == 4
    assert after["todo_tiles"] == 0
    assert after["input_bytes"] == 0
    assert after["gpu_hours"] == 0
    assert run_map(cfg, progress=False).skipped == after["done_tiles"]


def test_done_tiles_after_a_partial_run_are_those_the_next_run_skips(world, tmp_path) -> None:
    west, _, _, north = world["summary"]["cities"][0]["bbox_lonlat"]
    part = run_map(config(world, tmp_path / "p.zarr", bbox=(west, north - 0.0005, west + 0.0005,
                                                              north)), progress=False)
    assert 1 <= part.computed < 4
    cfg = config(world, tmp_path / "p.zarr")
    planned = dry_run(cfg)
    assert planned["done_tiles"] == part.computed
    assert planned["todo_tiles"] == planned["tiles"] - part.computed
    report = run_map(cfg, progress=False)
    assert report.skipped == planned["done_tiles"]
    assert report.computed == planned["todo_tiles"]


def test_a_dry_run_writes_nothing(world, tmp_path, capsys) -> None:
    out = tmp_path / "new.zarr"
    source_before = snapshot(Path(world["source"]))
    assert main(cli_args(world, out, "--dry-run")) == 0
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert snapshot(Path(world["source"])) == source_before
    # an existing, half-done cube: byte for byte the same afterwards, no lock left either
    west, _, _, north = world["summary"]["cities"][0]["bbox_lonlat"]
    cube = tmp_path / "old.zarr"
    run_map(config(world, cube, bbox=(west, north - 0.0005, west + 0.0005, north)),
            progress=False)
    before = snapshot(cube)
    assert main(cli_args(world, cube, "--dry-run", "--json")) == 0
    assert snapshot(cube) == before
    assert "nothing written" in capsys.readouterr().out


def test_the_json_contract(world, tmp_path, capsys) -> None:
    assert main(cli_args(world, tmp_path / "j.zarr", "--dry-run", "--json", "--workers", "3",
                         "--rates", str(rates_file(tmp_path / "r.jsonl", 1000.0, 2000.0)))) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    result = json.loads(stdout[-1])
    assert result.keys() >= KEYS
    assert result["workers"] == 3
    assert result["bound"] in ("compute", "read")
    assert result["input_bytes_basis"].startswith("shard sizes")
    assert isinstance(result["coverage_gaps"], list)
    for rate in result["rates"].values():
        assert {"value", "unit", "file", "device", "git_sha"} <= rate.keys()
        assert rate["file"].endswith("r.jsonl")
        assert rate["git_sha"] == "abc1234"


def test_wall_time_scales_as_one_over_workers(world, tmp_path) -> None:
    cfg = config(world, tmp_path / "w.zarr")
    one, four = dry_run(cfg, workers=1), dry_run(cfg, workers=4)
    assert one["gpu_hours"]
    assert one["gpu_hours"] == pytest.approx(four["gpu_hours"])
    assert one["wall_hours"] == pytest.approx(4 * four["wall_hours"])
    assert one["wall_hours"] == pytest.approx(one["gpu_hours"])


def pixel_mask(avail: Availability, window: Window) -> np.ndarray:
    """Per pixel of ``window``: in a block with data, and in a cell with data where the block
    has a cell mask (the source's availability, pixel by pixel)."""
    (bh, bw), (ch, cw) = avail.block, avail.cell or avail.block
    rows = np.arange(window.row, window.row_stop) - avail.origin[0]
    cols = np.arange(window.col, window.col_stop) - avail.origin[1]
    out = np.zeros((rows.size, cols.size), dtype=bool)
    for r, c in avail.blocks:
        in_r, in_c = rows // bh == r, cols // bw == c
        mask = avail.cells.get((r, c))
        out[np.ix_(in_r, in_c)] = True if mask is None else mask[
            np.ix_((rows[in_r] - r * bh) // ch, (cols[in_c] - c * bw) // cw)]
    return out


def test_known_rates_give_the_hand_computed_hours(world, tmp_path) -> None:
    cfg = config(world, tmp_path / "k.zarr")
    plan = prepare(cfg)
    assert (plan.lattice.patch, plan.lattice.stride) == (64, 48)  # this model's lattice
    avail = plan.source.availability(zone_by_name("utm32", cfg.grid), YEAR)
    # by hand: the 64 px patches every 48 px over each core that meet a pixel with data, and
    # the read windows' pixels with data
    patches = read_px = 0
    for t in plan.tasks:
        read = pixel_mask(avail, t.read)
        read_px += int(read.sum())
        core = read[t.core.row - t.read.row:t.core.row_stop - t.read.row,
                     t.core.col - t.read.col:t.core.col_stop - t.read.col]
        for r0, c0 in plan.lattice.origins(t.core):
            r, c = max(r0 - t.core.row, 0), max(c0 - t.core.col, 0)
            patches += bool(core[r:r0 + 64 - t.core.row, c:c0 + 64 - t.core.col].any())
    compute_s, read_s = patches * 64 * 64 / 1000.0, read_px / 10.0
    compute_bound = dry_run(cfg, 2, rates_file(tmp_path / "fast.jsonl", 1000.0, 1e9))
    assert compute_bound["bound"] == "compute"
    assert compute_bound["patches"] == patches
    assert compute_bound["gpu_hours"] == pytest.approx(compute_s / 3600)
    assert compute_bound["wall_hours"] == pytest.approx(compute_s / 3600 / 2)
    assert compute_bound["rates"]["model"]["value"] == 1000.0
    read_bound = dry_run(cfg, 2, rates_file(tmp_path / "slow.jsonl", 1000.0, 10.0))
    assert read_s > compute_s
    assert read_bound["bound"] == "read"
    assert read_bound["gpu_hours"] == pytest.approx(read_s / 3600)
    needed = math.ceil(read_s / compute_s)
    assert read_bound["readers_needed"] == needed > 1
    # that many concurrent band reads per worker make the same run compute bound
    many = cfg.model_copy(update={"inference": cfg.inference.model_copy(
        update={"read_concurrency": needed})})
    fed = dry_run(many, 2, rates_file(tmp_path / "slow.jsonl", 1000.0, 10.0))
    assert fed["read_concurrency"] == needed
    assert fed["read_hours"] == pytest.approx(read_s / needed / 3600)
    assert fed["bound"] == "compute"
    assert fed["gpu_hours"] == pytest.approx(compute_s / 3600)


def test_no_stored_rates_still_gives_the_plan(world, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(rates_module, "DEFAULT_RATES", tmp_path / "absent")  # installed package
    assert main(cli_args(world, tmp_path / "n.zarr", "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "no stored rates" in printed
    assert "4 tile(s)" in printed
    result = dry_run(config(world, tmp_path / "n.zarr"))
    assert result["tiles"] == 4
    assert result["gpu_hours"] is None
    assert result["bound"] is None
    assert result["rates"] == {"model": None, "read": None}


def test_without_a_gpu_rate_the_cpu_rate_is_used_and_labelled(world, tmp_path) -> None:
    cluster = tmp_path / "slurm.yaml"
    cluster.write_text("kind: slurm\ngpus_per_job: 1\nprocesses: 1\njobs: 3\n")
    cfg = config(world, tmp_path / "g.zarr", executor="dask", cluster=str(cluster))
    result = dry_run(cfg, rates=rates_file(tmp_path / "cpu.jsonl", 1000.0, 2000.0))
    assert result["device_type"] == "cuda"
    assert result["workers"] == 3
    assert result["hours_device"] == "cpu"
    assert result["rates"]["model"]["device_type"] == "cpu"
    assert any("no GPU rate stored" in n for n in result["notes"])
    gpu = dry_run(cfg, rates=rates_file(tmp_path / "gpu.jsonl", 1000.0, 2000.0, "cuda"))
    assert gpu["hours_device"] == "cuda"
    assert gpu["rates"]["model"]["device"] == "Test GPU"


def test_the_aoi_tiles_without_data_are_the_gaps(world, tmp_path) -> None:
    west, south, east, north = world["summary"]["cities"][0]["bbox_lonlat"]
    bbox = (west - 0.05, south, east + 0.05, north)  # 4 km either side: more tiles
    result = dry_run(config(world, tmp_path / "a.zarr", bbox=bbox))
    aoi_count = sum(sum(1 for _ in aoi_tiles(z, part, 256))
                    for z, part in zones_for_aoi(Aoi.from_bbox(bbox), GridConfig(tile_size=256)))
    [gap] = result["coverage_gaps"]
    assert gap["zone"] == "utm32"
    assert gap["tiles"] == aoi_count
    assert gap["tiles_without_data"] == aoi_count - result["tiles"] > 0


def test_bad_flags_exit_2_with_one_line(world, tmp_path, capsys) -> None:
    assert main(cli_args(world, tmp_path / "b.zarr", "--json")) == 2
    assert main(cli_args(world, tmp_path / "b.zarr", "--dry-run", "--rates",
                         str(tmp_path / "none.jsonl"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("lczscale map: error:")]
    assert len(err) == 2
    assert "--dry-run" in err[-2]
    assert "none.jsonl" in err[-1]
    assert not (tmp_path / "b.zarr").exists()


def test_the_icechunk_store_reports_its_coverage(tmp_path) -> None:
    summary = write_world(tmp_path / "w", cities=1, size_km=1.0, seed=0, years=(YEAR,),
                          truth_cube=False, layouts=("tessera-icechunk",))
    source = summary["layouts"]["tessera-icechunk"]
    model = random_model(tmp_path / "model", open_source(source))
    store_before = snapshot(Path(source))
    result = dry_run(MapConfig(source=source, model=model, out=str(tmp_path / "c.zarr"),
                               executor="serial", grid=GridConfig(tile_size=256),
                               bbox=tuple(summary["cities"][0]["bbox_lonlat"]),
                               stitch=StitchConfig(patch_size=64, batch_size=4)))
    assert result["coverage_basis"].startswith("years_complete and registry")
    assert result["coverage"]
    assert all(row["complete"] for row in result["coverage"])
    assert result["coverage_gaps"] == []
    assert result["input_bytes_basis"].startswith("estimate")
    assert not (tmp_path / "c.zarr").exists()
    assert snapshot(Path(source)) == store_before
