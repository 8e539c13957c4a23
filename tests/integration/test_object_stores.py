"""Sources and cubes on object stores: a real S3 endpoint (moto's server on loopback, started
here) and plain HTTP(S) reads of the same objects. The cube made from ``s3://`` and
``http://`` input, written to ``s3://`` by Dask worker processes, equals the local one byte for
byte; credentials come from the environment and never enter a pickle or the cube.

AlphaEarth COGs too: the ``aef-cogs`` tree of ``synth.write_world`` uploaded to a bucket (in a
Source Cooperative-like path) passes the source conformance suite read from S3 — GDAL's
/vsis3/ with the endpoint taken from ``AWS_ENDPOINT_URL`` — and maps to the local cube."""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lczscale.config import CubeConfig, GridConfig, MapConfig
from lczscale.core.grid import utm_zone
from lczscale.errors import ConfigError, SourceError
from lczscale.execute.tile import MapContext
from lczscale.io.cube.sink import ZarrCubeSink
from lczscale.io.cube.store import create_cube
from lczscale.io.sources.aef_cogs import AefCogSource
from lczscale.io.sources.registry import open_source
from lczscale.io.stores import filesystem
from lczscale.planning.map_plan import prepare
from lczscale.synth import world as synth
from tests.conformance import SourceCase, SourceConformance
from tests.cube_sink_conformance import TILE as SINK_TILE
from tests.cube_sink_conformance import CubeSinkConformance, SinkCase
from tests.mapping import cube_window, map_source, random_model
from tests.servers import S3_SECRET, S3Server, environment, free_port, need_module, s3_server
from tests.sources.reference import aef_reference

pytestmark = pytest.mark.integration
YEAR = 2024
AEF_SEED, AEF_CITIES, AEF_KM = 6, 3, 1.0  # Zurich, Basel (utm32) and Nairobi (utm37, south)
AEF_GRID = GridConfig(tile_size=512)  # AEF availability is whole 1024 px files: 16 tiles


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    need_module("moto", "pip install 'moto[server]' (the dev extra)")
    with s3_server(tmp_path_factory.mktemp("moto")) as server, environment(server.env):
        yield server


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2 km Zurich as a TESSERA Zarr store, a random model and the local reference cube."""
    root = tmp_path_factory.mktemp("stores")
    summary = synth.write_world(root / "world", cities=1, size_km=2.0, seed=4, years=(YEAR,),
                                shard_size=64, truth_cube=False)
    source = summary["embeddings"]
    model = random_model(root / "model", open_source(source))
    map_source(source, model, str(root / "ref.zarr"))
    city = summary["cities"][0]
    return {"root": root, "source": source, "model": model, "ref": str(root / "ref.zarr"),
            "zone": city["zone"], "window": city["window"]}


@pytest.fixture(scope="module")
def uploaded(s3: S3Server, local: dict[str, Any]) -> dict[str, str]:
    s3.create_bucket("public", public_read=True)
    s3.create_bucket("cubes")
    url = s3.upload(Path(local["source"]), "public", "world/embeddings.zarr")
    return {"s3": url, "http": s3.http_url("public", "world/embeddings.zarr")}


def _same_as_reference(local: dict[str, Any], cube: str) -> None:
    ref = cube_window(local["ref"], local["zone"], local["window"])
    got = cube_window(cube, local["zone"], local["window"])
    for var in ref:
        assert np.array_equal(ref[var], got[var]), f"{var}: {(ref[var] != got[var]).sum()} px"
    assert (ref["lcz"] > 0).any()


def test_s3_source_to_s3_cube_on_dask_workers(
    local: dict[str, Any], uploaded: dict[str, str], s3: S3Server
) -> None:
    out = "s3://cubes/zurich.zarr"
    report = map_source(uploaded["s3"], local["model"], out, executor="dask", workers=2)
    assert report.computed > 1
    _same_as_reference(local, out)
    fs, path = filesystem(out)
    assert fs.exists(f"{path}/zarr.json")
    stored = b"".join(fs.cat_file(p) for p in fs.find(path) if p.endswith(".json"))
    assert S3_SECRET.encode() not in stored, "a credential was written into the cube"
    # a rerun resumes from the ledger on S3: nothing left to do
    again = map_source(uploaded["s3"], local["model"], out)
    assert again.computed == 0
    assert again.skipped == report.computed


def test_http_source(local: dict[str, Any], uploaded: dict[str, str], tmp_path: Path) -> None:
    """Plain HTTP cannot list: planning probes the shards under the AOI instead."""
    source = open_source(uploaded["http"])
    assert source.layout == "tessera-zarr"
    out = str(tmp_path / "http.zarr")
    city = synth.make_world(cities=1, size_km=2.0, seed=4, years=(YEAR,))[0]
    map_source(uploaded["http"], local["model"], out, bbox=city.bbox_lonlat)
    _same_as_reference(local, out)


def test_credentials_stay_out_of_the_task(local: dict[str, Any], uploaded: dict[str, str]
                                          ) -> None:
    cfg = MapConfig(source=uploaded["s3"], model=local["model"], out="s3://cubes/none.zarr",
                    grid=GridConfig(tile_size=128))
    ctx = MapContext.from_plan(prepare(cfg))
    blob = pickle.dumps(ctx)
    assert S3_SECRET.encode() not in blob
    assert b"lczscale-test-key-id" not in blob


def test_credentials_in_options_are_refused(local: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="credential"):
        MapConfig(source="s3://public/world/embeddings.zarr", model=local["model"],
                  out="x.zarr", source_options={"secret": S3_SECRET})


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_unreachable_url_is_retried_then_named(scheme: str, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    if scheme == "http":
        url = f"http://{dead}/world/embeddings.zarr"
    else:
        url = "s3://public/world/embeddings.zarr"
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{dead}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients: make one for this endpoint
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match=r"failed 4 times") as err:
            open_source(url)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert url.split("://")[1].split("/")[0] in str(err.value) or url in str(err.value)
    assert time.monotonic() - t0 > 1.0  # it waited between attempts


# --------------------------------------------------------------------------------------------
# AlphaEarth COGs on S3


@pytest.fixture(scope="module")
def aef_local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three cities as AlphaEarth COGs (bottom-up, both hemispheres), a random model for
    them and the local reference cube."""
    root = tmp_path_factory.mktemp("aef-stores")
    summary = synth.write_world(root / "world", cities=AEF_CITIES, size_km=AEF_KM,
                                seed=AEF_SEED, years=(YEAR,), layouts=("aef-cogs",),
                                truth_cube=False)
    tree = summary["layouts"]["aef-cogs"]["root"]
    model = random_model(root / "model", open_source(tree))
    map_source(tree, model, str(root / "ref.zarr"), grid=AEF_GRID)
    return {"tree": tree, "model": model, "ref": str(root / "ref.zarr"),
            "cities": [(c["zone"], c["window"]) for c in summary["cities"]]}


@pytest.fixture(scope="module")
def aef_s3(s3: S3Server, aef_local: dict[str, Any]) -> str:
    s3.create_bucket("aef-cogs")
    return s3.upload(Path(aef_local["tree"]), "aef-cogs", "tge-labs/aef/v1/annual")


class TestAefCogsOnS3(SourceConformance):
    @pytest.fixture(params=[0, 2], ids=["zurich", "nairobi"])
    def case(self, aef_s3: str, request: pytest.FixtureRequest) -> SourceCase:
        zone, extent, expected = aef_reference(AEF_SEED, AEF_CITIES, AEF_KM, YEAR,
                                               request.param)
        source = AefCogSource.open(aef_s3)
        assert all(f.href.startswith(f"{aef_s3}/{YEAR}/") for f in source.files)
        return SourceCase(source, zone, YEAR, extent, expected, 64, "sign_square")


def test_aef_cogs_on_s3_map_like_local(aef_local: dict[str, Any], aef_s3: str,
                                       tmp_path: Path) -> None:
    """``lczscale map`` over the S3 copy, on Dask worker processes (each reads the endpoint
    and credentials from its own environment), writes the local cube."""
    source = open_source(aef_s3)
    assert source.layout == "aef-cogs"
    assert S3_SECRET.encode() not in pickle.dumps(source)
    out = str(tmp_path / "aef.zarr")  # cubes on S3: test_s3_source_to_s3_cube_on_dask_workers
    report = map_source(aef_s3, aef_local["model"], out, grid=AEF_GRID, executor="dask",
                        workers=2)
    assert report.computed > 1
    for zone, window in aef_local["cities"]:
        ref = cube_window(aef_local["ref"], zone, window)
        got = cube_window(out, zone, window)
        for var in ref:
            assert np.array_equal(ref[var], got[var]), f"{zone} {var}"
        assert (ref["lcz"] > 0).any()


class TestS3ZarrSink(CubeSinkConformance):
    """The cube sink on an S3 server (moto) passes the same suite as on local disk."""

    @pytest.fixture(scope="class")
    def bucket(self, s3: S3Server) -> str:
        s3.create_bucket("sinks")
        return "sinks"

    @pytest.fixture
    def case(self, bucket: str) -> SinkCase:
        zone = utm_zone(32)
        url = f"s3://{bucket}/{uuid.uuid4().hex}.zarr"
        create_cube(url, [zone], [2024], GridConfig(tile_size=SINK_TILE), CubeConfig(), {})
        return SinkCase(ZarrCubeSink(url), zone, 2024)
