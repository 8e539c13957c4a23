"""End to end through the real pieces: the cube does not depend on tile size, worker count,
executor or task order — bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cube_compare import assert_same, cube_arrays

import lczscale
from lczscale.cli import main
from lczscale.config import GridConfig
from lczscale.core.grid import utm_zone
from lczscale.execute.run import run_map
from lczscale.execute.status import cube_status
from lczscale.planning import map_plan as plan_module

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference(world, serial_cube) -> tuple[str, dict[str, np.ndarray]]:
    """The world's cube with its default settings (serial, 512 px tiles): read-only."""
    assert serial_cube.computed >= 4, "each 6 km city must span several 512 px tiles"
    return serial_cube.url, cube_arrays(serial_cube.url, world)


def test_tile_size_does_not_change_the_cube(world, reference, tmp_path: Path) -> None:
    report = run_map(world.map_config(tmp_path / "t1024.zarr", grid=GridConfig(tile_size=1024)),
                     progress=False)
    assert report.computed >= 2
    assert_same(reference[1], cube_arrays(str(tmp_path / "t1024.zarr"), world))
    lcz = reference[1][f"{world.summary['cities'][0]['name']}/lcz"]
    assert len(np.unique(lcz[lcz > 0])) >= 3, "the model must predict several classes"


def test_worker_count_and_executor_do_not_change_the_cube(world, reference, dask_cube,
                                                          tmp_path) -> None:
    for workers in (1, 2):
        out = tmp_path / f"dask{workers}.zarr"
        if workers == 2:  # the world's shared cube of 2 worker processes, copied: rerun below
            shutil.copytree(dask_cube.url, out)
            computed = dask_cube.computed
        else:
            computed = run_map(world.map_config(out, executor="dask", workers=workers),
                               progress=False).computed
        assert computed == run_map(world.map_config(out), progress=False).skipped
        assert_same(reference[1], cube_arrays(str(out), world))


def test_task_order_does_not_change_the_cube(world, reference, tmp_path, monkeypatch) -> None:
    original = plan_module.plan_tasks
    monkeypatch.setattr(plan_module, "plan_tasks", lambda *a, **k: original(*a, **k)[::-1])
    run_map(world.map_config(tmp_path / "reversed.zarr"), progress=False)
    assert_same(reference[1], cube_arrays(str(tmp_path / "reversed.zarr"), world))


def test_rerun_skips_finished_tiles_and_status_counts_them(world, serial_cube, tmp_path,
                                                           capsys) -> None:
    cfg = world.map_config(tmp_path / "c.zarr")
    shutil.copytree(serial_cube.url, cfg.out)  # a first run of cfg, made once for all tests
    first = serial_cube
    second = run_map(cfg, progress=False)
    assert second.computed == 0
    assert second.skipped == first.computed
    # a rerun that gives no tile size keeps the cube's (512), not the default (4096)
    unset = cfg.model_copy(update={"grid": GridConfig()})
    assert unset.grid.tile_size != cfg.grid.tile_size
    assert run_map(unset, progress=False).computed == 0
    status = cube_status(cfg.out)
    assert status["done"] == first.computed
    assert status["remaining"] == 0
    assert main(["status", cfg.out, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"done", "stale", "failed", "remaining"} <= printed.keys()


def test_open_cube_gives_crs_and_the_zone_grid(world, reference) -> None:
    url, _ = reference
    ds = lczscale.open_cube(url, zone="utm32")
    zone = utm_zone(32)
    assert ds.odc.geobox.crs.epsg == 32632
    assert tuple(ds.odc.geobox.affine)[:6] == tuple(zone.affine)[:6]
    assert ds["lcz"].dims == ("time", "y", "x")
    assert ds["lcz"].dtype == np.uint8
    city = world.summary["cities"][0]
    sub = lczscale.open_cube(url, bbox=tuple(city["bbox_lonlat"]))
    assert 0 < sub.sizes["y"] <= 700
    assert 0 < sub.sizes["x"] <= 700
    assert (sub["lcz"].values > 0).mean() > 0.5
    assert ds.attrs["lczscale:classes"]["palette"][0] == "#910613"


def test_southern_hemisphere_city_has_negative_northings(southern_world, tmp_path) -> None:
    nairobi = next(c for c in southern_world.summary["cities"] if c["zone"] == "utm37")
    out = tmp_path / "nairobi.zarr"
    report = run_map(southern_world.map_config(out, bbox=tuple(nairobi["bbox_lonlat"])),
                     progress=False)
    assert report.zones == ["utm37"]
    assert report.valid_pixels > 0
    ds = lczscale.open_cube(str(out), bbox=tuple(nairobi["bbox_lonlat"]))
    assert ds.odc.geobox.crs.epsg == 32637
    assert float(ds["y"].max()) < 0
    assert (ds["lcz"].values > 0).mean() > 0.5


def test_cli_eval_and_plot(world, reference, tmp_path, capsys) -> None:
    url, _ = reference
    assert main(["eval", url, "--truth", world.truth, "--baseline", world.coarse, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"miou", "oa", "per_class_iou", "baseline_miou", "kappa"} <= result.keys()
    assert 0 < result["oa"] <= 1
    assert 0 < result["baseline_oa"] <= 1
    png = tmp_path / "map.png"
    city = world.summary["cities"][0]["bbox_lonlat"]
    assert main(["plot", url, "--out", str(png), "--bbox", ",".join(map(str, city))]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
