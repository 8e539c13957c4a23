"""Bad input gets one clear error naming the problem and the fix — and loses nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import zarr

from lczscale.cli import main
from lczscale.model.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.integration


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def map_args(world, out: Path, *extra: str) -> list[str]:
    return ["map", "--source", world.source, "--model", world.model, "--out", str(out),
            "--executor", "serial", "--patch-size", "128", "--quiet", *extra]


def test_store_not_in_the_tessera_convention(world, tmp_path, capsys) -> None:
    plain = tmp_path / "plain.zarr"
    g = zarr.open_group(str(plain), mode="w", zarr_format=3)
    g.create_array("data", shape=(4, 4), dtype="int8")
    code, err = run_cli(map_args(world, tmp_path / "c.zarr")[:2] + [str(plain)]
                        + map_args(world, tmp_path / "c.zarr")[3:], capsys)
    assert code == 2
    assert "not an embedding source lczscale recognises" in err
    assert "geoemb:" in err
    assert not (tmp_path / "c.zarr").exists()


def test_missing_source_path(world, tmp_path, capsys) -> None:
    args = map_args(world, tmp_path / "c.zarr")
    args[2] = str(tmp_path / "nowhere.zarr")
    code, err = run_cli(args, capsys)
    assert code == 2
    assert "does not exist" in err


def test_store_with_a_wrong_embedding_dimension(world, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.zarr"
    shutil.copytree(world.source, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    meta["attributes"]["geoemb:dimensions"] = 64
    meta.pop("consolidated_metadata", None)
    (bad / "zarr.json").write_text(json.dumps(meta))
    args = map_args(world, tmp_path / "c.zarr")
    args[2] = str(bad)
    code, err = run_cli(args, capsys)
    assert code == 2
    assert "64" in err
    assert "128" in err


def test_checkpoint_for_another_input(world, tmp_path, capsys) -> None:
    model, meta, _ = load_checkpoint(world.model)
    other = meta.model_copy(update={"input": meta.input.model_copy(update={"kind": "alphaearth"})})
    save_checkpoint(tmp_path / "ae-model", model, other)
    args = map_args(world, tmp_path / "c.zarr")
    args[4] = str(tmp_path / "ae-model")
    code, err = run_cli(args, capsys)
    assert code == 2
    assert "alphaearth" in err
    assert "tessera" in err


@pytest.fixture
def existing_cube(serial_cube, tmp_path) -> tuple[Path, str]:
    """A finished cube (a copy of the world's default one) and the digest of all its bytes."""
    cube = tmp_path / "c.zarr"
    shutil.copytree(serial_cube.url, cube)
    return cube, tree_digest(cube)


def test_aoi_without_data_is_an_error_not_an_empty_cube(
    world, tmp_path, capsys, existing_cube
) -> None:
    cube, before = existing_cube
    code, err = run_cli(map_args(world, cube, "--bbox", "8.0,46.0,8.05,46.05"), capsys)
    assert code == 2
    assert "no embeddings" in err
    assert "bbox" in err
    code, err = run_cli(map_args(world, tmp_path / "new.zarr", "--bbox", "100,10,100.1,10.1"),
                        capsys)
    assert code == 2
    assert "utm47" in err
    assert "utm32" in err
    assert not (tmp_path / "new.zarr").exists()
    assert tree_digest(cube) == before, "a failed run must not change the existing cube"


def test_bad_bbox_and_year(world, tmp_path, capsys) -> None:
    code, err = run_cli(map_args(world, tmp_path / "c.zarr", "--bbox", "8,48,9,47"), capsys)
    assert code == 2
    assert "minlat < maxlat" in err
    code, err = run_cli(map_args(world, tmp_path / "c.zarr", "--bbox", "9,47,8,48"), capsys)
    assert code == 2
    assert "antimeridian" in err
    assert "8.0,47.0,9.0,48.0" in err
    code, err = run_cli(map_args(world, tmp_path / "c.zarr", "--year", "1999"), capsys)
    assert code == 2
    assert "1999" in err
    assert "2024" in err
    with pytest.raises(SystemExit):
        main(["map", "--bbox", "1,2,3"])


def test_existing_cube_with_another_layout_is_refused(world, capsys, existing_cube) -> None:
    cube, before = existing_cube
    code, err = run_cli(map_args(world, cube, "--tile-size", "1024"), capsys)
    # refused before anything is written: as another provenance (the grid's tile size), or,
    # where no tile conflicts, by the cube's layout
    assert code == 2
    assert ("layout" in err or "differs in: grid" in err)
    assert (
        "new --out" in err or "another --out" in err)
    assert tree_digest(cube) == before
