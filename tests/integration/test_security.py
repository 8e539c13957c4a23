"""Security: no pickle anywhere, no credentials in the task graph, strict config, no writes
outside the cube."""

from __future__ import annotations

import re
from pathlib import Path

import distributed.client
import pytest
import yaml
from distributed.protocol import pickle as dask_pickle

import lczscale
from lczscale.cli import main
from lczscale.config import GridConfig
from lczscale.errors import CubeError
from lczscale.execute.run import run_map
from lczscale.io.cube.store import cube_zones, open_root

pytestmark = pytest.mark.integration

SECRET = "lczscale-test-secret-7f3a9c"
PACKAGE = Path(lczscale.__file__).parent


def test_no_code_path_can_unpickle() -> None:
    """Checkpoints are safetensors + JSON only; nothing in the package deserialises pickles
    (``test_checkpoint`` proves a pickle payload offered as weights is refused unexecuted)."""
    forbidden = re.compile(
        r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|joblib|dill\.|"
        r"cloudpickle\.loads?\(|shelve\.|marshal\.loads?\("
    )
    offenders = [
        f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for p in PACKAGE.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert not offenders, offenders


def test_credentials_never_travel_in_the_task_graph(world, tmp_path, monkeypatch) -> None:
    """Map with secrets in the environment (where s3fs and friends read them) and capture
    every object the client pickles for the cluster: tasks, the worker plugin, the context."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + SECRET[-8:].upper())
    captured: list[bytes] = []
    real_dumps = dask_pickle.dumps

    def spy(obj, *args, **kwargs):  # type: ignore[no-untyped-def]
        blob = real_dumps(obj, *args, **kwargs)
        captured.append(bytes(blob))
        return blob

    monkeypatch.setattr(dask_pickle, "dumps", spy)
    monkeypatch.setattr(distributed.client, "dumps", spy)  # imported by name there (plugins)
    city = world.summary["cities"][0]
    cfg = world.map_config(tmp_path / "c.zarr", executor="dask", workers=1,
                           bbox=tuple(city["bbox_lonlat"]), grid=GridConfig(tile_size=1024))
    report = run_map(cfg, progress=False)
    assert report.computed >= 1
    assert not report.failed
    graph = b"".join(captured)
    key = report.results[0].key.encode()
    assert key.split(b"/")[0] in graph, "the task graph was captured"
    assert b"TileTask" in graph, "the task graph was captured"
    assert b"RunnerPlugin" in graph, "the worker plugin was captured"
    assert SECRET.encode() not in graph
    assert SECRET[-8:].upper().encode() not in graph


def test_unknown_config_keys_are_refused(world, tmp_path, capsys) -> None:
    cfg = tmp_path / "map.yaml"
    cfg.write_text(yaml.safe_dump({"source": world.source, "model": world.model,
                                   "out": str(tmp_path / "c.zarr"), "wokers": 4}))
    code = main(["map", "--config", str(cfg), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "wokers" in err
    assert "Extra inputs are not permitted" in err
    assert not (tmp_path / "c.zarr").exists()


def test_urls_with_credentials_are_refused_without_echoing_them(world, tmp_path,
                                                                capsys) -> None:
    code = main(["map", "--source", f"s3://AKIAEXAMPLE:{SECRET}@bucket/emb.zarr", "--model",
                 world.model, "--out", str(tmp_path / "c.zarr"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "environment" in err
    assert SECRET not in err


def test_a_tampered_cube_cannot_make_lczscale_write_outside_it(world, tmp_path,
                                                                 capsys) -> None:
    cube = tmp_path / "c.zarr"
    city = world.summary["cities"][0]
    run_map(world.map_config(cube, bbox=tuple(city["bbox_lonlat"])), progress=False)
    root = open_root(str(cube), "r+", None)
    zones = dict(root.attrs["lczscale:zones"])  # type: ignore[arg-type]
    zones["../../evil"] = next(iter(zones.values()))
    root.attrs["lczscale:zones"] = zones
    with pytest.raises(CubeError, match="cube root"):
        cube_zones(str(cube))
    code = main(["plot", str(cube), "--out", str(tmp_path / "p.png")])
    assert code == 2
    assert "cube root" in capsys.readouterr().err
    assert not (tmp_path.parent / "evil").exists()
