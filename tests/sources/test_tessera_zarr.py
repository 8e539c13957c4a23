"""TESSERA Zarr v3 stores pass the source conformance suite; multi-year; one dataset per store."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from lczscale.errors import SourceError
from lczscale.io.sources.registry import detect_layout, open_source
from lczscale.synth import world as synth
from tests.conformance import SourceCase, SourceConformance
from tests.sources.reference import tessera_reference

YEARS = (2023, 2024)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tessera-zarr")
    synth.write_world(out, cities=1, size_km=1.0, seed=3, years=YEARS, shard_size=64,
                      truth_cube=False)
    return out / "embeddings.zarr"


class TestTesseraZarr(SourceConformance):
    @pytest.fixture(params=YEARS)
    def case(self, store: Path, request: pytest.FixtureRequest) -> SourceCase:
        zone, window, expected = tessera_reference(3, 1, 1.0, request.param)
        return SourceCase(open_source(str(store)), zone, request.param, window, expected,
                          128, "per_pixel_scale")


def test_detected_and_described(store: Path) -> None:
    layout, found = detect_layout(str(store))
    assert layout == "tessera-zarr"
    assert "TESSERA Zarr" in found
    assert "128-d" in found


def test_a_zone_of_another_dataset_version_is_refused(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "mixed.zarr"
    shutil.copytree(store, copy)
    root = zarr.open_group(str(copy), mode="r+", zarr_format=3)
    [name] = [n for n, _ in root.groups()]
    root[name].attrs["tessera:dataset_version"] = "1.1"
    with pytest.warns(UserWarning, match="Consolidated"):
        zarr.consolidate_metadata(str(copy))
    with pytest.raises(SourceError, match="one TESSERA dataset"):
        open_source(str(copy))
