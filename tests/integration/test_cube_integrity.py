"""A cube never lies about what made each tile: no silent overwrite or model mix, a ledger that
survives a crash at any point, one writer at a time, a half-created cube or an unreadable
ledger entry that the next run recovers from (issue "A cube never lies", findings 1–4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lczscale.cli import main
from lczscale.errors import CubeError
from lczscale.execute.status import cube_status
from lczscale.io.cube import ledger
from lczscale.io.cube import lock as cube_lock
from lczscale.io.cube.store import cube_attrs
from lczscale.io.sources.registry import open_source
from lczscale.synth import world as synth
from tests.mapping import cube_window, map_source, random_model
from tests.servers import S3Server, environment, s3_server

pytestmark = pytest.mark.integration
YEAR = 2024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("integrity")
    summary = synth.write_world(root / "w", cities=1, size_km=1.2, seed=6, years=(YEAR,),
                                shard_size=64, truth_cube=False)
    source = open_source(summary["embeddings"])
    m1 = random_model(root / "m1", source)
    m2 = root / "m2"
    import shutil

    shutil.copytree(m1, m2)
    _perturb(m2)
    city = summary["cities"][0]
    ref = str(root / "ref-m1.zarr")
    report = map_source(summary["embeddings"], m1, ref, grid=_grid())
    assert report.computed >= 2
    return {"root": root, "source": summary["embeddings"], "m1": m1, "m2": str(m2),
            "city": city, "ref": ref, "tiles": report.computed}


def _grid() -> Any:
    from lczscale.config import GridConfig

    return GridConfig(tile_size=256)


def _perturb(model: Path) -> None:
    """Another model: the same architecture with other weights, saved as a checkpoint is."""
    import torch

    from lczscale.model.checkpoint import load_checkpoint, save_checkpoint

    net, meta, _ = load_checkpoint(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    save_checkpoint(model, net, meta.model_copy(update={"step": meta.step + 1}))


def _window(world: dict[str, Any]) -> tuple[int, int, int, int]:
    r, c, h, w = world["city"]["window"]
    return (r - 32, c - 32, h + 64, w + 64)


def _arrays(url: str, world: dict[str, Any]) -> dict[str, np.ndarray]:
    return cube_window(url, world["city"]["zone"], _window(world))


def _copy(world: dict[str, Any], tmp_path: Path) -> str:
    import shutil

    out = tmp_path / "cube.zarr"
    shutil.copytree(world["ref"], out)
    return str(out)


def _map_cli(world: dict[str, Any], model: str, out: str, *extra: str) -> int:
    return main(["map", "--source", world["source"], "--model", model, "--out", out,
                 "--executor", "serial", "--tile-size", "256", "--patch-size", "64", "--quiet",
                 *extra])


# ---- 1. no silent overwrite or model mix --------------------------------------------------------


def test_another_model_is_refused_unless_overwrite(world: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(world, tmp_path)
    before = _arrays(out, world)
    entries_before = ledger.read_all(out)
    assert _map_cli(world, world["m2"], out) == 2
    err = capsys.readouterr().err
    assert f"{world['tiles']} of the {world['tiles']} tiles" in err
    assert "differs in: model_hash" in err
    assert "--overwrite" in err
    # with a bbox over one tile: refused too (this was the silent model mix)
    b = world["city"]["bbox_lonlat"]
    small = f"{b[0]},{b[1]},{b[0] + 0.001},{b[1] + 0.001}"
    assert _map_cli(world, world["m2"], out, "--bbox", small) == 2
    capsys.readouterr()
    after = _arrays(out, world)
    assert all(np.array_equal(before[k], after[k]) for k in before), "nothing may change"
    assert ledger.read_all(out) == entries_before

    # --overwrite over one tile: a mixed cube, recorded and reported
    assert _map_cli(world, world["m2"], out, "--bbox", small, "--overwrite") == 0
    history = cube_attrs(out)["lczscale:history"]
    assert history[-1]["overwrite"]
    assert history[-1]["overwrote"] >= 1
    status = cube_status(out)
    assert status["mixed_provenance"]
    assert len(status["provenances"]) == 2
    assert status["done"] + status["stale"] == world["tiles"], "every ledger entry counts"
    assert status["stale"] == world["tiles"] - history[-1]["overwrote"]
    assert any("model_hash" in r for r in status["stale_reasons"])


# ---- 2. crash safety ----------------------------------------------------------------------------


class Killed(BaseException):
    """A kill between a tile's chunk write and its done entry (not an Exception: the tile
    runner must not catch it and record a failure, as a real kill records nothing)."""


def test_a_kill_between_chunk_write_and_ledger_leaves_the_tile_not_done(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(world, tmp_path)
    real = ledger.record

    def record(cube: str, key: str, entry: dict[str, Any], *a: Any, **kw: Any) -> None:
        if entry.get("state", ledger.DONE) == ledger.DONE:
            raise Killed(key)  # the m2 chunks are written; the done entry never is
        real(cube, key, entry, *a, **kw)

    monkeypatch.setattr(ledger, "record", record)
    with pytest.raises(Killed):
        map_source(world["source"], world["m2"], out, grid=_grid(), overwrite=True)
    monkeypatch.undo()
    states = [ledger.state(e) for e in ledger.read_all(out).values()]
    assert states.count(ledger.PENDING) == 1, "the killed tile is pending, not done with m1"
    status = cube_status(out)
    assert status["stale_reasons"].get("pending: a run stopped while writing it") == 1
    # an m1 rerun (no --overwrite needed: nothing of m2 is done) remakes exactly that tile
    report = map_source(world["source"], world["m1"], out, grid=_grid())
    assert report.computed == 1
    ref, got = _arrays(world["ref"], world), _arrays(out, world)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_ledger_entries_are_fsynced_and_a_failed_write_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cube = str(tmp_path / "c.zarr")
    ledger.record(cube, "utm32/2024/0_0", {"provenance_hash": "x"})
    assert any(p.endswith(".tmp") for p in synced), "the entry's bytes"
    assert str(tmp_path / "c.zarr/_ledger/utm32/2024") in synced, "the directory (the rename)"

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        ledger.record(cube, "utm32/2024/0_256", {"provenance_hash": "x"})
    assert not list((tmp_path / "c.zarr").rglob("*.tmp")), "no orphan temporary file"


def test_a_full_disk_while_recording_a_failure_is_reported_not_a_traceback(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lczscale.io.cube import sink as sink_module

    def no_space(*a: Any, **kw: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink_module, "write_tile", no_space)
    monkeypatch.setattr(ledger, "record_failure", no_space)
    from lczscale.config import FaultConfig, MapConfig, StitchConfig
    from lczscale.execute.run import run_map

    cfg = MapConfig(source=world["source"], model=world["m1"], out=str(tmp_path / "c.zarr"),
                    executor="serial", grid=_grid(), stitch=StitchConfig(patch_size=64),
                    faults=FaultConfig(io_attempts=1))
    report = run_map(cfg, progress=False)
    assert report.failed
    assert all("ledger entry could not be written" in (r.error or "")
                                 for r in report.failed)


def test_an_unreadable_ledger_entry_counts_as_not_done(world: dict[str, Any],
                                                       tmp_path: Path) -> None:
    out = _copy(world, tmp_path)
    entry = next((Path(out) / "_ledger").rglob("*.json"))
    entry.write_bytes(b"")  # a full disk cut it short
    status = cube_status(out)
    assert status["remaining"] == 1
    assert status["done"] == world["tiles"] - 1
    report = map_source(world["source"], world["m1"], out, grid=_grid())
    assert report.computed == 1
    assert json.loads(entry.read_text())["state"] == ledger.DONE


def test_a_cube_whose_creation_was_cut_short_resumes(world: dict[str, Any],
                                                     tmp_path: Path) -> None:
    import zarr

    out = tmp_path / "half.zarr"
    root = zarr.open_group(str(out), mode="w", zarr_format=3)  # the root, no attributes yet
    root.create_group(world["city"]["zone"])  # and a zone group never registered
    report = map_source(world["source"], world["m1"], str(out), grid=_grid())
    assert report.computed == world["tiles"]
    ref, got = _arrays(world["ref"], world), _arrays(str(out), world)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


# ---- 3. one writer at a time --------------------------------------------------------------------


def test_a_second_writer_exits_2_naming_the_holder(world: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(world, tmp_path)
    before = ledger.read_all(out)
    with cube_lock.writer_lock(out, "lczscale map (the first run)"):
        assert _map_cli(world, world["m1"], out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert "is being written by lczscale map (the first run)" in err
        assert f"(pid {os.getpid()})" in err
        assert "one writer at a time" in err
        # also a new cube that another run is creating
        new = str(tmp_path / "new.zarr")
        with cube_lock.writer_lock(new, "lczscale map (creating)"):
            assert _map_cli(world, world["m1"], new) == 2
            assert "is being written by lczscale map (creating)" in capsys.readouterr().err
    assert ledger.read_all(out) == before
    assert not (Path(out) / cube_lock.LOCK_NAME).exists(), "released"


def test_a_lock_left_by_a_dead_process_is_taken_over(world: dict[str, Any],
                                                     tmp_path: Path) -> None:
    out = _copy(world, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    (Path(out) / cube_lock.LOCK_NAME).write_text(json.dumps({
        "host": socket.gethostname(), "pid": int(dead.stdout), "pid_started": 1.0,
        "command": "lczscale map", "since": "2026-01-01T00:00:00+00:00", "token": "old"}))
    report = map_source(world["source"], world["m1"], out, grid=_grid())
    assert report.computed == 0
    assert report.skipped == world["tiles"]
    assert not (Path(out) / cube_lock.LOCK_NAME).exists()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server, environment(server.env):
        yield server


def test_the_lock_on_an_object_store_is_a_conditional_create(s3: S3Server) -> None:
    s3.create_bucket("cubes")
    url = "s3://cubes/locked.zarr"
    with cube_lock.writer_lock(url, "first"):
        with pytest.raises(CubeError, match="is being written by first"), \
                cube_lock.writer_lock(url, "second"):
            pass
        assert cube_lock.read_holder(url)["command"] == "first"  # type: ignore[index]
    assert cube_lock.read_holder(url) is None
    with cube_lock.writer_lock(url, "third"):
        pass


# ---- 5. staleness per tile, from that tile's own inputs -----------------------------------------


def _prepare(world: dict[str, Any], out: str) -> Any:
    from lczscale.config import MapConfig, StitchConfig
    from lczscale.planning.map_plan import prepare

    return prepare(MapConfig(source=world["source"], model=world["m1"], out=out,
                             executor="serial", grid=_grid(), stitch=StitchConfig(patch_size=64)))


def test_rewriting_one_shard_restales_exactly_the_tiles_that_read_it(
        world: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    import zarr

    from lczscale.core.grid import Window, zone_by_name
    from lczscale.execute.status import INPUTS_REASON

    source = tmp_path / "embeddings.zarr"
    shutil.copytree(world["source"], source)
    local = dict(world, source=str(source))
    out = str(tmp_path / "cube.zarr")
    map_source(str(source), world["m1"], out, grid=_grid())
    assert not _prepare(local, out).tasks, "a resume with nothing changed redoes nothing"

    zone = world["city"]["zone"]
    g = zarr.open_group(str(source), mode="r+", zarr_format=3)[zone]
    scales = g["scales"]
    shard = (scales.shards or scales.chunks)[-1]
    t = zone_by_name(zone, _grid()).pixel_offset(
        __import__("affine").Affine(*g.attrs["spatial:transform"][:6]))
    # add data elsewhere: a shard far from the city in the same zone array, never read
    far = (scales.shape[-2] - 1) // shard * shard, (scales.shape[-1] - 1) // shard * shard
    if far[0] > 2 * shard:
        scales[0, far[0]:far[0] + 1, far[1]:far[1] + 1] = np.float32(0.0)
    assert not _prepare(local, out).tasks, "data added elsewhere restales nothing"
    # rewrite one shard under the city: its own values, a little changed
    r, c = world["city"]["window"][0] - t[0], world["city"]["window"][1] - t[1]
    sr, sc = (r // shard + 1) * shard, (c // shard + 1) * shard
    block = np.asarray(scales[0, sr:sr + shard, sc:sc + shard])
    scales[0, sr:sr + shard, sc:sc + shard] = np.where(np.isfinite(block) & (block > 0),
                                                       block * np.float32(1.01), block)
    changed = Window(t[0] + sr, t[1] + sc, shard, shard)
    plan = _prepare(local, out)
    expected = {task.key for task in plan.planned if task.read.intersection(changed)}
    assert {task.key for task in plan.tasks} == expected
    assert 0 < len(expected) < len(plan.planned)
    status = cube_status(out)
    assert status["stale"] == len(expected)
    assert status["stale_reasons"] == {INPUTS_REASON: len(expected)}
    report = map_source(str(source), world["m1"], out, grid=_grid())
    assert report.computed == len(expected)


def test_the_code_version_is_the_package_version_plus_a_content_hash() -> None:
    import re

    import lczscale
    from lczscale.version import code_version

    assert re.fullmatch(re.escape(lczscale.__version__) + r"\+[0-9a-f]{12}", code_version())
