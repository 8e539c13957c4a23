"""A secret given the legitimate way — the environment of the machines — is never written into a
file lczscale makes, nor into what it pickles for the workers: a map from S3 (moto's server on
loopback, reading with the planted credentials) on Dask worker processes, ``lczscale deploy
kubernetes`` and a short ``lczscale train``. Every file under the test's directory is read as
bytes and searched; so are every object the map's client pickled for the cluster and an
explicit pickle of a tile task, the map context and the source."""

from __future__ import annotations

import json
import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed.client
import pytest
import yaml
from distributed.protocol import pickle as dask_pickle

from lczscale.cli import main
from lczscale.config import GridConfig, MapConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.execute.tile import MapContext
from lczscale.io.sources.registry import open_source
from lczscale.planning.map_plan import prepare
from lczscale.synth import world as synth
from tests.mapping import random_model
from tests.servers import S3Server, environment, need_module, s3_server

pytestmark = pytest.mark.integration
YEAR = 2024

_TAG = secrets.token_hex(6)
PLANTED = {  # the environment variables s3fs/botocore, adlfs and friends read credentials from
    "AWS_ACCESS_KEY_ID": f"AKIAPLANTED{_TAG.upper()}",
    "AWS_SECRET_ACCESS_KEY": f"planted-aws-secret-{_TAG}",
    "AWS_SESSION_TOKEN": f"planted-aws-session-token-{_TAG}",
    "AZURE_STORAGE_SAS_TOKEN": f"sv=2024-01-01&sig=planted-sas-{_TAG}",
    "GOOGLE_OAUTH_ACCESS_TOKEN": f"ya29.planted-{_TAG}",
}
NEEDLES = [v.encode() for v in PLANTED.values()] + [_TAG.encode(), _TAG.upper().encode()]


def leaks(blob: bytes) -> list[str]:
    return [n.decode() for n in NEEDLES if n in blob]


def files_leaking(root: Path) -> dict[str, list[str]]:
    """Every file under ``root`` (walked, read as bytes) that holds a planted value."""
    found = {}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"nothing was written under {root}"
    for p in files:
        hit = leaks(p.read_bytes())
        if hit:
            found[str(p.relative_to(root))] = hit
    return found


def test_the_scan_finds_a_planted_value(tmp_path: Path) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "blob.bin").write_bytes(b"\x00" + NEEDLES[1] + b"\xff")
    (tmp_path / "clean.txt").write_text("nothing here")
    assert files_leaking(tmp_path) == {"deep/er/blob.bin": [NEEDLES[1].decode(), _TAG]}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    need_module("moto", "pip install 'moto[server]' (the dev extra)")
    with s3_server(tmp_path_factory.mktemp("moto")) as server, environment(server.env):
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> dict[str, Any]:
    """A 2 km Zurich uploaded to S3, its coarse labels and a random model (kept locally)."""
    root = tmp_path_factory.mktemp("planted-world")
    summary = synth.write_world(root / "world", cities=1, size_km=2.0, seed=4, years=(YEAR,),
                                shard_size=64, truth_cube=False)
    model = random_model(root / "model", open_source(summary["embeddings"]))
    s3.create_bucket("embeddings")
    url = s3.upload(Path(summary["embeddings"]), "embeddings", "world/embeddings.zarr")
    return {"source": url, "model": model, "coarse": str(summary["coarse_labels"]),
            "bbox": tuple(summary["cities"][0]["bbox_lonlat"])}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The credentials in the environment (moto accepts any key), before workers start."""
    import s3fs

    for k, v in PLANTED.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    yield PLANTED
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_map_from_s3_writes_and_pickles_no_secret(world: dict[str, Any], planted: dict,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[bytes] = []
    real_dumps = dask_pickle.dumps

    def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        blob = real_dumps(obj, *args, **kwargs)
        captured.append(bytes(blob))
        return blob

    monkeypatch.setattr(dask_pickle, "dumps", spy)
    monkeypatch.setattr(distributed.client, "dumps", spy)
    out = tmp_path / "cube.zarr"
    cfg = MapConfig(source=world["source"], source_options={"anon": False}, model=world["model"],
                    out=str(out), bbox=world["bbox"], executor="dask", workers=1,
                    grid=GridConfig(tile_size=128), stitch=StitchConfig(patch_size=64,
                                                                         batch_size=4))
    report = run_map(cfg, progress=False)
    assert report.computed >= 2, report.summary()
    assert not report.failed, report.summary()
    graph = b"".join(captured)
    assert b"TileTask" in graph, "the graph was captured"
    assert b"RunnerPlugin" in graph, "the graph was captured"
    assert world["source"].encode() in graph, "the source travelled (by its address)"
    assert not leaks(graph), "a planted credential travelled in the task graph"
    plan = prepare(cfg.model_copy(update={"out": str(tmp_path / "other.zarr")}))
    for what in (plan.tasks[0], MapContext.from_plan(plan), plan.source):
        assert not leaks(pickle.dumps(what)), type(what).__name__
    assert not files_leaking(tmp_path)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["lczscale:run"]["source"] == world["source"]  # what was stored is the URL


def test_deploy_kubernetes_writes_no_secret(world: dict[str, Any], planted: dict,
                                           tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "kind": "kubernetes", "name": "lcz", "namespace": "maps", "workers": 2,
        "env_secret": "lcz-storage", "volume_claim": "lcz-data",
        "env": {"AWS_ENDPOINT_URL": "http://minio.storage:9000", "AWS_DEFAULT_REGION": "eu"}}))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({
        "source": world["source"], "model": "/data/model", "out": "s3://cubes/lcz.zarr",
        "source_options": {"anon": False, "client_kwargs": {"region_name": "eu"}},
        "bbox": list(world["bbox"]), "year": YEAR}))
    (tmp_path / "train.json").write_text(json.dumps({
        "source": world["source"], "out": "/data/model",
        "labels": [{"name": "zurich", "path": "/data/labels/zurich.tif"}]}))
    out = tmp_path / "manifests"
    assert main(["deploy", "kubernetes", "--cluster", str(tmp_path / "cluster.yaml"), "--map",
                 str(tmp_path / "map.yaml"), "--train", str(tmp_path / "train.json"),
                 "--ranks", "2", "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
    assert "map/configmap.yaml" in written
    assert "tls/secret.yaml" in written
    assert not files_leaking(tmp_path)


def test_a_short_training_writes_no_secret(world: dict[str, Any], planted: dict,
                                          tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "steps": 2, "batch_size": 2, "patch_size": 32, "log_every": 1, "checkpoint_every": 1,
        "epoch_samples": 8, "prefetch": 0, "device": "cpu"}))
    model = tmp_path / "model"
    assert main(["train", "--source", world["source"], "--labels", world["coarse"], "--out",
                 str(model), "--config", str(tmp_path / "train.yaml"), "--quiet"]) == 0
    assert (model / "train_job.json").is_file()
    assert (model / "checkpoint.json").is_file()
    assert not files_leaking(tmp_path)
