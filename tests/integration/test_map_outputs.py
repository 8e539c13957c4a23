"""``lczscale map --probabilities --fractions`` end to end on the synthetic world: per-class
probabilities, 100 m fractions / majority / filtered LCZ and the seam layer, their independence
of tile size, block size and executor, and resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from cube_compare import assert_same, cube_arrays

import lczscale
from lczscale.cli import main
from lczscale.config import GridConfig, OutputsConfig, dump_yaml
from lczscale.core.grid import Window, zone_by_name
from lczscale.execute.run import run_map
from lczscale.execute.status import cube_status
from lczscale.io.cube import ledger
from lczscale.io.cube.outputs import CELL_VARIABLES, SEAM_VARIABLES
from lczscale.planning.blocks import LEDGER_PREFIX, BlockTask
from lczscale.products.cells import seam_counts, seam_rates
from lczscale.products.counts import gaussian_mode_filter

pytestmark = pytest.mark.integration

OUTPUTS = OutputsConfig(probabilities=True, fractions=True, block_cells=32)
BASE_ARRAYS = {"lcz", "confidence", "x", "y", "time", "spatial_ref"}
MARGIN = 300  # px around each city, as cube_compare reads


def run(world, out: Path, **kw) -> dict:
    report = run_map(world.map_config(out, **kw), progress=False)
    assert not report.failed, report.summary()["failures"]
    summary = report.summary()
    assert not (summary.get("products") or {}).get("failed"), summary["products"]
    return summary


@pytest.fixture(scope="module")
def on(world, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("outputs") / "on.zarr"
    summary = run(world, out, outputs=OUTPUTS)
    assert summary["products"]["computed"] == summary["products"]["blocks"] > 4
    return str(out)


@pytest.fixture(scope="module")
def off(serial_cube) -> str:
    """The world mapped without outputs: ``run(world, out)``, shared and read-only (the tests
    that write copy it)."""
    summary = serial_cube.summary
    assert not summary["failed"], summary["failures"]
    assert not (summary.get("products") or {}).get("failed"), summary["products"]
    return serial_cube.url


def city_windows(world) -> list[tuple[str, Window, Window]]:
    """(name, 10 m window, 100 m cell window) around each city, aligned to the cells."""
    out = []
    for city in world.summary["cities"]:
        r, c, h, w = city["window"]
        r0, c0 = (r - MARGIN) // 10 * 10, (c - MARGIN) // 10 * 10
        r1, c1 = -(-(r + h + MARGIN) // 10) * 10, -(-(c + w + MARGIN) // 10) * 10
        px = Window(r0, c0, r1 - r0, c1 - c0)
        out.append((city["zone"], px, Window(r0 // 10, c0 // 10, px.height // 10,
                                             px.width // 10)))
    return out


def read(url: str, zone: str, var: str, window: Window, cells: bool = False) -> np.ndarray:
    ds = lczscale.open_cube(url, zone=zone)
    dims = ("y_100m", "x_100m") if cells else ("y", "x")
    sel = {dims[0]: slice(window.row, window.row_stop), "time": 0,
           dims[1]: slice(window.col, window.col_stop)}
    return ds[var].isel(sel).values


def products(url: str, world) -> dict[str, np.ndarray]:
    return {f"{i}/{var}": read(url, zone, var, cells, cells=True)
            for i, (zone, _, cells) in enumerate(city_windows(world)) for var in CELL_VARIABLES}


def numpy_majority(lcz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts of codes 1..17 (h, w, 17), majority) of 10x10 cells, computed here by hand."""
    h, w = lcz.shape
    blocks = lcz.reshape(h // 10, 10, w // 10, 10)
    counts = np.stack([(blocks == k).sum(axis=(1, 3)) for k in range(1, 18)], axis=-1)
    best = counts.argmax(axis=-1) + 1  # first maximum: ties to the lowest code
    return counts, np.where(counts.max(axis=-1) > 0, best, 0).astype(np.uint8)


def test_outputs_off_add_nothing_and_do_not_change_lcz(world, on, off) -> None:
    for url, extra in ((off, set()), (on, {"probability", "class", *CELL_VARIABLES,
                                          *SEAM_VARIABLES, "x_100m", "y_100m",
                                          "spatial_ref_100m", "tile_y", "tile_x"})):
        group = zarr.open_group(url, mode="r")["utm32"]
        assert isinstance(group, zarr.Group)
        assert set(group.array_keys()) == BASE_ARRAYS | extra
    assert "lczscale:outputs" not in zarr.open_group(off, mode="r").attrs
    assert not any(k.startswith(LEDGER_PREFIX) for k in ledger.read_all(off))
    assert_same(cube_arrays(off, world), cube_arrays(on, world))


def test_probabilities_argmax_is_the_class_and_max_is_the_confidence(world, on) -> None:
    for zone, px, _ in city_windows(world):
        prob = read(on, zone, "probability", px).astype(np.int64)
        lcz = read(on, zone, "lcz", px)
        conf = read(on, zone, "confidence", px)
        assert prob.shape == (17, *lcz.shape)
        valid = lcz > 0
        assert valid.sum() > 10_000
        chosen = np.take_along_axis(prob, (lcz.astype(np.int64) - 1).clip(0)[None], axis=0)[0]
        assert np.array_equal(chosen[valid], conf[valid]), "p(class) is the confidence byte"
        assert np.array_equal(chosen[valid], prob.max(axis=0)[valid]), "lcz is an argmax"
        assert np.all(prob[:, ~valid] == 0)
        sums = prob.sum(axis=0)[valid]
        assert np.all(np.abs(sums - 255) <= 9), "17 roundings of a softmax summing to 1"


def test_fractions_majority_and_filter_follow_the_10m_map(world, on) -> None:
    for zone, px, cells in city_windows(world):
        lcz = read(on, zone, "lcz", px)
        counts, maj = numpy_majority(lcz)
        fractions = read(on, zone, "lcz_fraction_100m", cells, cells=True).astype(np.int64)
        valid = counts.sum(axis=-1) > 0
        assert valid.sum() > 1000
        assert np.all(fractions.sum(axis=0)[valid] == 255), "every valid cell sums to 255"
        assert np.all(fractions[:, ~valid] == 0)
        share = counts * 255 / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
        assert np.all(np.abs(np.moveaxis(fractions, 0, -1) - share) < 1)
        assert np.array_equal(read(on, zone, "lcz_100m_majority", cells, cells=True), maj)
        filtered = read(on, zone, "lcz_100m", cells, cells=True)
        inner = (slice(2, -2), slice(2, -2))  # cells whose 5x5 window lies in the read
        assert np.array_equal(filtered[inner], gaussian_mode_filter(maj)[inner])
        assert (filtered != maj).any(), "the filter changes some cells"


def test_products_do_not_depend_on_tile_or_block_size(world, on, tmp_path) -> None:
    out = tmp_path / "t1024.zarr"
    run(world, out, grid=GridConfig(tile_size=1024),
        outputs=OutputsConfig(fractions=True, block_cells=48))
    assert_same(products(on, world), products(str(out), world))
    group = zarr.open_group(str(out), mode="r")["utm32"]
    assert "probability" not in group
    assert group["lcz_100m"].chunks == (1, 48, 48)


def test_dask_gives_the_serial_products(world, on, tmp_path) -> None:
    out = tmp_path / "dask.zarr"
    summary = run(world, out, executor="dask", workers=2, outputs=OUTPUTS)
    assert summary["products"]["computed"] > 4
    assert_same(products(on, world), products(str(out), world))
    for zone, px, _ in city_windows(world):
        assert np.array_equal(read(on, zone, "probability", px),
                              read(str(out), zone, "probability", px))
    for var in SEAM_VARIABLES:
        a = lczscale.open_cube(on, zone="utm32")[var].values
        b = lczscale.open_cube(str(out), zone="utm32")[var].values
        assert np.array_equal(a, b, equal_nan=True), var


def _chunk_files(url: str) -> dict[str, tuple[int, int]]:
    root = Path(url)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.parent != root}


def test_resume_redoes_only_what_changed(world, on, tmp_path) -> None:
    url = str(tmp_path / "resume.zarr")
    shutil.copytree(on, url)
    before = products(url, world)
    files = _chunk_files(url)
    again = run(world, url, outputs=OUTPUTS)
    assert again["computed"] == 0
    assert again["products"]["computed"] == 0
    assert again["products"]["seam_tiles_written"] == 0
    assert _chunk_files(url) == files, "a resume with nothing new writes nothing"
    status = cube_status(url)
    assert status["products_100m"]["blocks_done"] == again["products"]["blocks"]
    assert status["done"] == again["skipped"]
    assert status["products_100m"]["blocks_failed"] == 0

    # Without the flags the cube's outputs stay on (and current): still nothing to do.
    quiet = run(world, url)
    assert quiet["computed"] == 0
    assert quiet["products"]["computed"] == 0

    # A tile made again (its ledger entry gone): it and exactly the blocks under it are redone.
    entries = ledger.read_all(url)
    tile_key = sorted(k for k in entries if not k.startswith(LEDGER_PREFIX))[0]
    tile = entries[tile_key]
    (Path(url) / "_ledger" / f"{tile_key}.json").unlink()
    zone = zone_by_name(tile["zone"], GridConfig(tile_size=512))
    core = Window(*tile["core"])
    blocks = [k for k, e in entries.items() if k.startswith(LEDGER_PREFIX) and "block" in e]
    under = [k for k in blocks if BlockTask(zone.name, tile["year"],
                                            Window(*entries[k]["block"]["cells"]),
                                            "").read.intersection(core)]
    redo = run(world, url, outputs=OUTPUTS)
    assert redo["computed"] == 1
    assert redo["products"]["computed"] == len(under) > 0
    assert_same(before, products(url, world))

    # A block whose entry is lost (a crash before its ledger write) is the only one redone.
    (Path(url) / "_ledger" / f"{blocks[0]}.json").unlink()
    assert run(world, url, outputs=OUTPUTS)["products"]["computed"] == 1


def test_cube_made_without_outputs_gains_them_on_resume(world, off, on, tmp_path,
                                                          capsys) -> None:
    url = tmp_path / "gained.zarr"
    shutil.copytree(off, url)
    config = tmp_path / "map.yaml"
    config.write_text(dump_yaml(world.map_config(url)))
    capsys.readouterr()
    assert main(["map", "--config", str(config), "--quiet", "--fractions",
                 "--probabilities"]) == 0
    summary = json.loads(capsys.readouterr().out)
    done = len(ledger.read_all(off))
    assert summary["computed"] == done, "tiles without probabilities are made again"
    assert summary["products"]["computed"] == summary["products"]["blocks"]
    assert_same(products(on, world), products(str(url), world))
    assert_same(cube_arrays(on, world), cube_arrays(str(url), world))
    zone, px, _ = city_windows(world)[0]
    assert np.array_equal(read(on, zone, "probability", px),
                          read(str(url), zone, "probability", px))


def test_fractions_added_to_a_finished_cube_are_made_on_the_cluster(world, off,
                                                                    tmp_path) -> None:
    """Every tile is done, only the 100 m blocks are new: they still run on the Dask workers
    (a planetary cube's aggregation must not fall back to the driver process)."""
    url = tmp_path / "blocks.zarr"
    shutil.copytree(off, url)
    summary = run(world, url, executor="dask", workers=2,
                  outputs=OutputsConfig(fractions=True, block_cells=32))
    assert summary["computed"] == 0
    assert summary["skipped"] > 0
    assert summary["products"]["computed"] == summary["products"]["blocks"] > 4
    blocks = [e for k, e in ledger.read_all(str(url)).items()
              if k.startswith(LEDGER_PREFIX) and "block" in e]
    workers = {e["worker"] for e in blocks}
    assert len(blocks) == summary["products"]["blocks"]
    assert all(not w.endswith(f":{os.getpid()}") for w in workers), workers


def test_status_counts_a_tile_without_the_cubes_probabilities_as_stale(world, on,
                                                                       tmp_path) -> None:
    """A tile made before the cube gained probabilities is remade by the next run; status
    says so rather than counting it done. The cube is a copy: status reads this cube's ledger,
    not the one at the ``out`` its recorded run names."""
    url = str(tmp_path / "status.zarr")
    shutil.copytree(on, url)
    before = cube_status(url)
    assert before["stale"] == 0
    assert before["done"] > 1
    entries = ledger.read_all(url)
    key = sorted(k for k in entries if not k.startswith(LEDGER_PREFIX))[0]
    path = Path(url) / "_ledger" / f"{key}.json"
    entry = json.loads(path.read_text())
    del entry["outputs"]
    path.write_text(json.dumps(entry))
    after = cube_status(url)
    assert after["done"] == before["done"] - 1
    assert after["stale"] == 1
    assert after["stale_reasons"] == {"outputs: probability": 1}
    assert run(world, url, outputs=OUTPUTS)["computed"] == 1


def test_seam_layer_is_low_on_the_pipeline_cube_and_flags_a_broken_tile(world, on,
                                                                         tmp_path) -> None:
    ds = lczscale.open_cube(on, zone="utm32")
    ratio = ds["seam_ratio"].values[0]
    defined = np.argwhere(~np.isnan(ratio))
    assert len(defined) >= 5
    assert np.all(ratio[~np.isnan(ratio)] < 1.5), ratio[~np.isnan(ratio)]
    # The stored layer is what the pure function gives on the map read back.
    ty, tx = (int(v) for v in defined[0])
    window = Window(ty * 512, tx * 512, 513, 513)
    lcz = read(on, "utm32", "lcz", window)
    counts = seam_counts(lcz, 512, (window.row, window.col), (window.row, window.col, 512, 512))
    assert np.isclose(seam_rates(counts)[0][0, 0], ratio[ty, tx])

    # Break one tile (its classes permuted, as a tile made by another model would differ) and
    # mark it remade: the blocks under it are redone and its seam ratio jumps.
    url = str(tmp_path / "broken.zarr")
    shutil.copytree(on, url)
    lcz_arr = zarr.open_group(url, mode="r+")["utm32"]["lcz"]
    rows, cols = slice(ty * 512, ty * 512 + 512), slice(tx * 512, tx * 512 + 512)
    tile = np.asarray(lcz_arr[0, rows, cols])
    perm = np.r_[0, np.roll(np.arange(1, 18), 5)].astype(np.uint8)
    lcz_arr[0, rows, cols] = perm[tile]
    key = f"utm32/{int(ds['time'].values[0])}/{ty * 512}_{tx * 512}"
    entry = ledger.read_all(url)[key]
    ledger.record(url, key, entry | {"finished_at": entry["finished_at"] + 1})
    summary = run(world, url, outputs=OUTPUTS)
    assert summary["computed"] == 0
    assert summary["products"]["computed"] > 0
    after = lczscale.open_cube(url, zone="utm32")
    # Every valid border pair now changes class; the ratio can reach only 1 / interior rate,
    # which this small model's busy map keeps near 3 (the synthetic checkerboards of
    # tests/unit/test_products.py show > 3).
    assert after["seam_border_rate"].values[0, ty, tx] > 0.95
    assert after["seam_ratio"].values[0, ty, tx] > 2 * max(1.0, ratio[ty, tx])


def test_open_cube_gives_100m_coordinates_and_georeferencing(world, on) -> None:
    city = world.summary["cities"][0]
    sub = lczscale.open_cube(on, bbox=tuple(city["bbox_lonlat"]))
    assert sub.sizes["y_100m"] == pytest.approx(sub.sizes["y"] / 10, abs=2)
    assert abs(float(sub["y_100m"][0]) - float(sub["y"][0])) < 100
    assert abs(float(sub["x_100m"][0]) - float(sub["x"][0])) < 100
    full = lczscale.open_cube(on, zone="utm32")
    zone = zone_by_name("utm32", GridConfig())
    a = zone.affine
    assert float(full["x_100m"][3]) == a.c + 100 * 3.5
    sr = zarr.open_group(on, mode="r")["utm32"]["spatial_ref_100m"]
    assert sr.attrs["GeoTransform"].split() == [repr(v) for v in (a.c, 100.0, 0.0, a.f, 0.0,
                                                                  -100.0)]
    # the grid mapping is decoded (a coordinate of every variable): each names its own
    assert full["lcz_100m"].encoding["grid_mapping"] == "spatial_ref_100m"
    assert full["lcz_100m"].odc.geobox.resolution.x == 100.0
    assert full["lcz"].encoding["grid_mapping"] == "spatial_ref"
    assert full["lcz"].odc.geobox.resolution.x == 10.0
    assert list(full["class"].values) == list(range(1, 18))


def test_gdal_reads_the_100m_products_with_their_own_georeferencing(world, on) -> None:
    from gdal_reader import read_with_gdal

    _, _, cells = city_windows(world)[0]
    window = (cells.row, cells.col, 8, 8)
    seen = read_with_gdal(on, "utm32", "lcz_100m", 0, window)
    zone = zone_by_name("utm32", GridConfig())
    a = zone.affine
    assert seen["epsg"] == 32632
    assert seen["transform"] == [100.0, 0.0, a.c, 0.0, -100.0, a.f]
    assert (seen["height"], seen["width"]) == (-(-zone.shape[0] // 10), -(-zone.shape[1] // 10))
    mine = read(on, "utm32", "lcz_100m", Window(*window), cells=True)
    assert np.array_equal(np.asarray(seen["values"]), mine)


def test_soft_fractions_are_the_cells_mean_probabilities(world, off, on, tmp_path,
                                                         capsys) -> None:
    """``--fractions soft``: each 100 m cell's fractions are the shares of the blended
    probabilities summed over its classified pixels (computed here by hand), not of the hard
    classes; the map, the probabilities and the majority layers are those of a hard run. A
    cube holding one kind refuses the other in one line."""
    url = tmp_path / "soft.zarr"
    shutil.copytree(off, url)
    config = tmp_path / "map.yaml"
    config.write_text(dump_yaml(world.map_config(url)))
    capsys.readouterr()
    assert main(["map", "--config", str(config), "--quiet", "--fractions", "soft"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["products"]["computed"] == summary["products"]["blocks"] > 4
    assert_same(cube_arrays(on, world), cube_arrays(str(url), world))
    differ = 0
    for zone, px, cells in city_windows(world):
        lcz = read(str(url), zone, "lcz", px)
        prob = read(str(url), zone, "probability", px).astype(np.int64)
        assert np.array_equal(prob, read(on, zone, "probability", px))
        h, w = lcz.shape
        sums = np.where(lcz > 0, prob, 0).reshape(17, h // 10, 10, w // 10, 10).sum(axis=(2, 4))
        soft = read(str(url), zone, "lcz_fraction_100m", cells, cells=True).astype(np.int64)
        valid = sums.sum(axis=0) > 0
        assert np.all(soft.sum(axis=0)[valid] == 255)
        assert np.all(soft[:, ~valid] == 0)
        share = sums * 255 / np.maximum(sums.sum(axis=0, keepdims=True), 1)
        assert np.all(np.abs(soft - share) < 1), "largest-remainder rounding of the shares"
        hard = read(on, zone, "lcz_fraction_100m", cells, cells=True)
        differ += int((soft != hard).any(axis=0).sum())
        for var in ("lcz_100m_majority", "lcz_100m"):
            assert np.array_equal(read(str(url), zone, var, cells, cells=True),
                                  read(on, zone, var, cells, cells=True))
    assert differ > 100, "mixed cells keep the model's shares, not the hard votes"
    capsys.readouterr()
    assert main(["map", "--config", str(config), "--quiet", "--fractions"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "fractions count probabilities, this run asks for classes" in err[-1]
    assert sum("fractions count" in line for line in err) == 1
