"""Generic ``geoemb:`` pixel-embedding stores (float or linearly quantised int8) pass the
source conformance suite; AlphaEarth declared as linear is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from lczscale.errors import SourceError
from lczscale.io.sources.registry import detect_layout, open_source
from lczscale.synth import world as synth
from tests.conformance import SourceCase, SourceConformance
from tests.sources.reference import tessera_reference

YEAR = 2024
SEED = 3


def write_geoemb(path: Path, model: str = "https://example.org/encoder",
                 quantization: dict | None = None) -> None:
    """One 1 km city as a float32 ``geoemb:`` store (utm_zones), NaN where there is no data."""
    c = synth.make_world(cities=1, size_km=1.0, seed=SEED, years=(YEAR,))[0]
    emb = c.embeddings[YEAR].copy()
    emb[:, ~c.valid] = np.nan
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({
        "geoemb:type": "pixel", "geoemb:dimensions": 128, "geoemb:model": model,
        "geoemb:source_data": ["https://example.org/s2"], "geoemb:data_type": "float32",
        "geoemb:spatial_layout": "utm_zones",
        **({"geoemb:quantization": quantization} if quantization else {}),
    })
    g = root.create_group(c.zone.name)
    a = c.zone.affine
    t = [a.a, 0.0, a.c + c.window.col * a.a, 0.0, a.e, a.f + c.window.row * a.e]
    g.attrs.update({"proj:code": c.zone.crs, "spatial:transform": t})
    arr = g.create_array("embeddings", shape=(1, 128, *emb.shape[1:]), dtype="float32",
                         chunks=(1, 128, 64, 64), fill_value=np.nan)
    arr[0] = emb
    g.create_array("time", shape=(1,), dtype="int32", fill_value=0)[:] = [YEAR]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geoemb") / "emb.zarr"
    write_geoemb(path)
    return path


class TestGeoembZarr(SourceConformance):
    @pytest.fixture
    def case(self, store: Path) -> SourceCase:
        zone, window, expected = tessera_reference(SEED, 1, 1.0, YEAR)
        return SourceCase(open_source(str(store)), zone, YEAR, window, expected, 128,
                          "per_pixel_scale")


def test_detected(store: Path) -> None:
    layout, found = detect_layout(str(store))
    assert layout == "geoemb-zarr"
    assert "float32" in found


def test_alphaearth_declared_linear_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aef-linear.zarr"
    write_geoemb(path, model="https://deepmind.google/alphaearth",
                 quantization={"method": "linear", "original_dtype": "float32",
                               "scale": {"type": "scalar", "scale": 0.0078125}})
    with pytest.raises(SourceError, match="sign-square"):
        open_source(str(path))
