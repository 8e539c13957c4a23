"""STAC discovery against a real STAC API (``rustac serve`` on loopback, started here) and a
static stac-geoparquet index: the AlphaEarth COGs found through STAC make the same cube as
the same COGs found through their ``aef_index.parquet``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rustac

from lczscale.cli import main
from lczscale.io.sources.registry import open_source
from lczscale.io.sources.stac_search import search_api
from lczscale.synth import world as synth
from tests.mapping import cube_window, random_model
from tests.servers import stac_api

pytestmark = pytest.mark.integration
YEAR = 2024
COLLECTION = "aef-synthetic"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stac")
    summary = synth.write_world(root / "w", cities=1, size_km=1.5, seed=6, years=(2023, YEAR),
                                truth_cube=False, layouts=("aef-cogs",))
    aef = root / "w" / "aef"
    model = random_model(root / "model", open_source(str(aef)))
    return {"root": root, "aef": aef, "model": model, "city": summary["cities"][0]}


@pytest.fixture(scope="module")
def api(world: dict[str, Any]) -> Iterator[str]:
    """The static index's items, with absolute hrefs, loaded into a STAC API server."""
    index = world["aef"] / "aef_index_stac_geoparquet.parquet"
    items = rustac.read_sync(str(index))["features"]
    for item in items:
        item["assets"]["data"]["href"] = str(world["aef"] / item["assets"]["data"]["href"])
        item["links"] = []
    path = world["root"] / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with stac_api([path], world["root"]) as url:
        yield url


def _map(world: dict[str, Any], out: Path, *source: str) -> int:
    bbox = ",".join(str(v) for v in world["city"]["bbox_lonlat"])
    return main(["map", *source, "--model", world["model"], "--out", str(out), "--bbox", bbox,
                 "--year", str(YEAR), "--executor", "serial", "--tile-size", "128",
                 "--patch-size", "64", "--quiet"])


def test_search_finds_the_covering_files_of_the_year(world: dict[str, Any], api: str) -> None:
    assets = search_api(api, COLLECTION, tuple(world["city"]["bbox_lonlat"]), YEAR)
    assert assets
    assert all(a.year == YEAR for a in assets)
    assert all(Path(a.href).is_file() and f"/{YEAR}/" in a.href for a in assets)
    assert all(a.crs == "EPSG:32632" for a in assets)


def test_stac_api_and_static_index_map_like_the_index(world: dict[str, Any], api: str) -> None:
    root: Path = world["root"]
    assert _map(world, root / "index.zarr", "--source", str(world["aef"])) == 0
    assert _map(world, root / "api.zarr", "--stac", api, "--collection", COLLECTION) == 0
    geoparquet = str(world["aef"] / "aef_index_stac_geoparquet.parquet")
    assert _map(world, root / "static.zarr", "--stac", geoparquet) == 0
    city = world["city"]
    ref = cube_window(str(root / "index.zarr"), city["zone"], city["window"])
    assert (ref["lcz"] > 0).mean() > 0.5
    for name in ("api", "static"):
        got = cube_window(str(root / f"{name}.zarr"), city["zone"], city["window"])
        for var in ref:
            assert np.array_equal(ref[var], got[var]), f"{name} {var}"


def test_no_items_is_a_clear_error(world: dict[str, Any], api: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["map", "--stac", api, "--collection", COLLECTION, "--model", world["model"],
                 "--out", str(tmp_path / "x.zarr"), "--bbox", "100,10,100.1,10.1",
                 "--year", str(YEAR), "--executor", "serial"])
    assert code == 2
    assert "no items" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
