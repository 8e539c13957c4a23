"""Inference options through the whole pipeline on a CPU: read-ahead (bands read on a thread
while the model runs) gives the very cube a whole read gives; bf16 is recorded in the cube's
provenance and makes the run's tiles stale for an fp32 rerun; a failing band read fails its
tile instead of hanging the run."""

from __future__ import annotations

import numpy as np
import pytest
from cube_compare import assert_same, cube_arrays

from lczscale.config import InferenceConfig
from lczscale.execute.run import run_map
from lczscale.io.cube.store import cube_attrs
from lczscale.io.sources.tessera_zarr import TesseraZarrSource

pytestmark = pytest.mark.integration


def test_read_ahead_in_bands_gives_the_cube_of_a_whole_read(world, serial_cube,
                                                           tmp_path) -> None:
    plain = tmp_path / "plain.zarr"
    run_map(world.map_config(plain, inference=InferenceConfig(read_ahead=False)), progress=False)
    reference = cube_arrays(str(plain), world)
    # read-ahead in bands of 256 rows is the default: the world's shared cube was made so
    assert InferenceConfig(band_rows=256) == InferenceConfig()
    runs = {256: (serial_cube.url, serial_cube.computed, serial_cube.failed)}
    out = tmp_path / "bands32.zarr"
    report = run_map(world.map_config(out, inference=InferenceConfig(band_rows=32)),
                     progress=False)
    runs[32] = (str(out), report.computed, len(report.failed))
    for rows, (url, computed, failed) in runs.items():
        assert computed >= 4, rows
        assert not failed, rows
        assert_same(reference, cube_arrays(url, world))


def test_bf16_is_recorded_and_close_to_fp32(world, serial_cube, tmp_path) -> None:
    out = tmp_path / "bf16.zarr"
    run_map(world.map_config(out, inference=InferenceConfig(dtype="bf16")), progress=False)
    attrs = cube_attrs(str(out))
    assert attrs["lczscale:provenance"]["inference"] == {"dtype": "bf16"}
    assert attrs["lczscale:run"]["inference"]["dtype"] == "bf16"
    fp32 = serial_cube.url  # the world's cube with the default (fp32) settings: read-only
    assert "inference" not in cube_attrs(str(fp32))["lczscale:provenance"]
    a, b = cube_arrays(str(out), world), cube_arrays(str(fp32), world)
    for key in a:
        if key.endswith("/lcz"):
            mapped = b[key] > 0
            assert (a[key] > 0).sum() == mapped.sum()
            assert (a[key][mapped] == b[key][mapped]).mean() >= 0.9, key
    # the fp32 settings do not count bf16 tiles as done: another lineage, so they are
    # remade only when asked (--overwrite), never silently
    from lczscale.errors import CubeError

    with pytest.raises(CubeError, match=r"differs in: inference.*--overwrite"):
        run_map(world.map_config(out), progress=False)
    rerun = run_map(world.map_config(out, overwrite=True), progress=False)
    assert rerun.skipped == 0
    assert rerun.computed > 0


def test_a_failing_band_fails_its_tile_not_the_run(world, tmp_path, monkeypatch) -> None:
    original = TesseraZarrSource.read
    calls = {"n": 0}

    def flaky(self, zone, window, year):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the second band of the first tile
            raise ValueError("damaged chunk in band 2")
        return original(self, zone, window, year)

    monkeypatch.setattr(TesseraZarrSource, "read", flaky)
    report = run_map(world.map_config(tmp_path / "c.zarr",
                                      inference=InferenceConfig(band_rows=64)), progress=False)
    assert len(report.failed) == 1
    assert "damaged chunk in band 2" in report.failed[0].error
    assert report.computed >= 3
    assert np.isfinite(report.seconds)
