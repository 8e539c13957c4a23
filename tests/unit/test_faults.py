"""Fault handling pieces: what is retried, the failed-tile ledger, plan-time safety checks."""

from __future__ import annotations

import errno
import json
from typing import ClassVar

import pytest

from lczscale.config import FaultConfig, GridConfig, MapConfig, StitchConfig
from lczscale.core.grid import Aoi, Window, utm_zone, zones_for_aoi
from lczscale.core.stitch import Lattice
from lczscale.core.tiling import TileTask, check_disjoint_writes, check_halo
from lczscale.errors import ConfigError, CubeError
from lczscale.execute.faults import describe, is_transient, with_retries
from lczscale.execute.run import check_memory
from lczscale.io.cube import ledger
from lczscale.io.stores import child_url

FAST = FaultConfig(io_attempts=3, backoff_s=0.0, backoff_max_s=0.0)


def test_transient_errors_are_told_apart_from_the_tiles_own() -> None:
    assert is_transient(ConnectionResetError("reset by peer"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(OSError(errno.EIO, "i/o error"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(OSError(errno.ENOSPC, "disk full"))
    assert not is_transient(ValueError("corrupt"))

    class EndpointConnectionError(Exception):  # botocore's, matched by name
        pass

    wrapped = RuntimeError("read failed")
    wrapped.__cause__ = EndpointConnectionError("no route")
    assert is_transient(wrapped)


def test_transient_errors_are_retried_and_others_are_not() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert with_retries(flaky, FAST) == "ok"
    assert len(calls) == 3
    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        with_retries(broken, FAST)
    assert len(calls) == 1, "a deterministic failure must not be retried"
    calls.clear()

    def down() -> None:
        calls.append(1)
        raise TimeoutError("still down")

    with pytest.raises(TimeoutError):
        with_retries(down, FAST)
    assert len(calls) == FAST.io_attempts


def test_describe_gives_type_message_and_place() -> None:
    try:
        raise ValueError("bad\n  scales")
    except ValueError as exc:
        info = describe(exc)
    assert info["error_type"] == "ValueError"
    assert info["error"] == "bad scales"
    assert "test_faults.py:" in info["where"]


def test_a_failure_never_undoes_a_finished_tile(tmp_path) -> None:
    cube = str(tmp_path / "c.zarr")
    key = "utm32/2024/0_0"
    ledger.record(cube, key, {"provenance_hash": "h1"})
    assert not ledger.record_failure(cube, key, {"provenance_hash": "h1", "error": "late dup"})
    assert ledger.state(ledger.read_all(cube)[key]) == ledger.DONE
    # a failure under a new provenance replaces the old done entry: the tile is not done now
    assert ledger.record_failure(cube, key, {"provenance_hash": "h2", "error": "boom"})
    entry = ledger.read_all(cube)[key]
    assert ledger.state(entry) == ledger.FAILED
    assert entry["error"] == "boom"
    ledger.record(cube, key, {"provenance_hash": "h2"})  # a successful retry replaces it
    assert ledger.state(ledger.read_one(cube, key) or {}) == ledger.DONE


def test_names_that_would_leave_the_cube_are_refused(tmp_path) -> None:
    cube = str(tmp_path / "c.zarr")
    assert child_url(cube, "_ledger", "utm32", "0_0.json").startswith(cube)
    for bad in ("..", "../x", "/etc", "a/b", ""):
        with pytest.raises(CubeError, match="cube root"):
            child_url(cube, bad)
    with pytest.raises(CubeError):
        ledger.record(cube, "utm32/../../escape", {"provenance_hash": "x"})
    assert not (tmp_path / "escape.json").exists()
    assert json.dumps(ledger.read_all(cube)) == "{}"


def tasks_for(zone_name: str, cores: list[Window], lattice: Lattice) -> list[TileTask]:
    return [TileTask(zone_name, 2024, c, lattice.read_window(c)) for c in cores]


def test_tiles_sharing_a_chunk_are_refused_before_anything_runs() -> None:
    zone = utm_zone(32)
    shapes = {zone.name: zone.shape}
    lattice = Lattice(128, 80)
    good = tasks_for(zone.name, [Window(0, 0, 512, 512), Window(0, 512, 512, 512)], lattice)
    check_disjoint_writes(good, (512, 512), shapes)
    with pytest.raises(ConfigError, match="not aligned"):
        check_disjoint_writes(
            tasks_for(zone.name, [Window(0, 256, 512, 512)], lattice), (512, 512), shapes
        )
    with pytest.raises(ConfigError, match="not aligned"):  # tile 256 in a cube of 512 chunks
        check_disjoint_writes(good[:1] + tasks_for(zone.name, [Window(0, 512, 256, 256)],
                                                   lattice), (512, 512), shapes)
    twice = good + [TileTask(zone.name, 2024, Window(0, 0, 512, 512), Window(0, 0, 600, 600))]
    with pytest.raises(ConfigError, match="both write chunk"):
        check_disjoint_writes(twice, (512, 512), shapes)


def test_a_halo_smaller_than_the_receptive_radius_is_refused() -> None:
    zone = utm_zone(32)
    shapes = {zone.name: zone.shape}
    core = Window(1024, 1024, 512, 512)
    check_halo(tasks_for(zone.name, [core], Lattice(128, 80)), 23, shapes)
    thin = TileTask(zone.name, 2024, core, Window(1014, 1014, 532, 532))
    with pytest.raises(ConfigError, match="receptive radius"):
        check_halo([thin], 23, shapes)
    edge = Window(0, 0, 512, 512)  # at the zone's own edge there is nothing more to read
    check_halo([TileTask(zone.name, 2024, edge, Window(0, 0, 600, 600))], 23, shapes)


def test_a_tile_too_big_for_the_workers_is_refused_with_a_size_that_fits() -> None:
    class Plan:
        cfg = MapConfig(source="s", model="m", out="o", grid=GridConfig(tile_size=2048))
        tile_bytes_by_size: ClassVar = {2048: 3 * 2**30, 1024: 2**31, 512: 2**30, 256: 2**29}
        tile_bytes = 3 * 2**30

    check_memory(Plan(), [16 * 2**30], "workers have")  # type: ignore[arg-type]
    check_memory(Plan(), [0], "workers have")  # type: ignore[arg-type]  # no limit known
    with pytest.raises(ConfigError, match=r"--tile-size 1024") as err:
        check_memory(Plan(), [4 * 2**30, 8 * 2**30], "the smallest worker has")  # type: ignore
    assert "3.0 GiB" in str(err.value)
    assert "4.0 GiB" in str(err.value)
    with pytest.raises(ConfigError, match=r"no tile size down to 256 px fits"):
        check_memory(Plan(), [2**29], "the smallest worker has")  # type: ignore[arg-type]


def test_aoi_across_the_antimeridian_is_split_into_both_zones() -> None:
    aoi = Aoi.from_bbox((179.2, -17.0, -179.5, -16.5))  # Fiji
    parts = zones_for_aoi(aoi, GridConfig())
    assert [z.name for z, _ in parts] == ["utm01", "utm60"]
    areas = [p.area for _, p in parts]
    assert areas[0] < areas[1]  # 0.5° west of 180 in zone 1 vs 0.8° east in zone 60
    with pytest.raises(ConfigError, match="swapped"):
        Aoi.from_bbox((9.0, 47.0, 8.0, 48.0))
    ring = [[179.5, -17], [-179.5, -17], [-179.5, -16], [179.5, -16], [179.5, -17]]
    with pytest.raises(ConfigError, match="antimeridian"):
        Aoi.from_geojson(json.dumps({"type": "Polygon", "coordinates": [ring]}))


def test_polar_aoi_on_utm_is_a_clear_error_and_works_on_the_global_grid() -> None:
    aoi = Aoi.from_bbox((10.0, 84.5, 20.0, 85.5))
    with pytest.raises(ConfigError, match="global"):
        zones_for_aoi(aoi, GridConfig())
    [(zone, part)] = zones_for_aoi(aoi, GridConfig(kind="global"))
    assert zone.name == "global"
    assert part.area > 0


def test_credentials_in_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="environment") as err:
        MapConfig(source="s3://AKIAXXX:top-secret@bucket/emb.zarr", model="m", out="o")
    assert "top-secret" not in str(err.value)
    MapConfig(source="s3://bucket/emb.zarr", model="m", out="https://host/cube.zarr")


def test_overlap_rules_come_from_the_receptive_field() -> None:
    assert StitchConfig(patch_size=128).stride(47) == 80
    with pytest.raises(ConfigError):
        StitchConfig(patch_size=128, overlap=20).stride(47)
