"""Transient I/O errors are retried with backoff inside the tile (the real serial executor with
the source's read made flaky in-process); errors that persist fail only their tile; a tile too
big for the workers stops the run before it writes."""

from __future__ import annotations

import collections

import pytest
from cube_compare import assert_same, cube_arrays

from lczscale.config import FaultConfig
from lczscale.execute.run import run_map
from lczscale.io.cube import ledger
from lczscale.io.sources.tessera_zarr import TesseraZarrSource

pytestmark = pytest.mark.integration

FAST = FaultConfig(io_attempts=3, backoff_s=0.01, backoff_max_s=0.02)


def test_flaky_reads_are_retried_and_the_cube_is_unchanged(world, tmp_path, monkeypatch) -> None:
    bbox = tuple(world.summary["cities"][0]["bbox_lonlat"])
    clean = run_map(world.map_config(tmp_path / "clean.zarr", bbox=bbox), progress=False)
    assert clean.computed >= 2

    real_read = TesseraZarrSource.read
    calls: collections.Counter[tuple] = collections.Counter()

    def flaky(self, zone, window, year):  # type: ignore[no-untyped-def]
        calls[(window.row, window.col)] += 1
        if calls[(window.row, window.col)] < 3:  # the first two tries of every tile fail
            raise ConnectionResetError("connection reset by peer (injected)")
        return real_read(self, zone, window, year)

    monkeypatch.setattr(TesseraZarrSource, "read", flaky)
    report = run_map(world.map_config(tmp_path / "flaky.zarr", bbox=bbox, faults=FAST),
                     progress=False)
    assert report.computed == clean.computed
    assert not report.failed
    assert all(r.attempts == 3 for r in report.results)
    assert_same(cube_arrays(str(tmp_path / "clean.zarr"), world),
                cube_arrays(str(tmp_path / "flaky.zarr"), world))


def test_an_outage_that_outlasts_the_retries_fails_only_its_tile(world, tmp_path,
                                                                  monkeypatch) -> None:
    bbox = tuple(world.summary["cities"][0]["bbox_lonlat"])
    real_read = TesseraZarrSource.read
    victim: list[tuple[int, int]] = []

    def down_for_one(self, zone, window, year):  # type: ignore[no-untyped-def]
        if not victim:
            victim.append((window.row, window.col))
        if victim[0] == (window.row, window.col):
            raise TimeoutError("read timed out (injected)")
        return real_read(self, zone, window, year)

    monkeypatch.setattr(TesseraZarrSource, "read", down_for_one)
    out = tmp_path / "outage.zarr"
    report = run_map(world.map_config(out, bbox=bbox, faults=FAST), progress=False)
    assert len(report.failed) == 1
    assert report.computed >= 1
    entry = ledger.read_all(str(out))[report.failed[0].key]
    assert entry["state"] == "failed"
    assert entry["transient"] is True
    assert entry["attempts"] == FAST.io_attempts
    assert "timed out" in entry["error"]


def test_a_tile_too_big_for_the_workers_is_refused_before_anything_is_written(
    world, tmp_path
) -> None:
    from distributed import LocalCluster

    from lczscale.errors import ConfigError

    out = tmp_path / "c.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="250MB",
                      dashboard_address=":0") as cluster:
        cfg = world.map_config(out, executor="dask", scheduler_address=cluster.scheduler_address)
        with pytest.raises(ConfigError, match=r"needs about \d+ MiB.*--tile-size 256"):
            run_map(cfg, progress=False)
    assert not out.exists(), "nothing may be written when the plan cannot run"
