"""More bad input, every command: one line on stderr naming the problem and the fix, exit code
2, no traceback — and nothing written, nothing already written changed.

The tests run as root here, which permission bits do not stop, so "read-only filesystem" is
the kernel's own: /proc and /sys refuse to create a file even for root (ENOENT / EACCES or
EROFS). They are refused by name; the write probe behind that name check is tested on them too
with the name check switched off, and, for a non-root user, on a directory chmod 0o555.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from lczscale.cli import main
from lczscale.config import GridConfig, MapConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.io import out_path
from lczscale.io.sources.registry import open_source
from lczscale.synth.world import write_world
from tests.mapping import random_model

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Small:
    dir: Path
    source: str
    labels: str
    model: str
    cube: str
    bbox: str  # a bbox inside the cube, MINLON,MINLAT,MAXLON,MAXLAT


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """One 0.5 km city, a random-weight model and a two-tile cube of it."""
    root = tmp_path_factory.mktemp("bad-input")
    summary = write_world(root / "world", cities=1, size_km=0.5, seed=0, truth_cube=False)
    source = str(root / "world" / "embeddings.zarr")
    model = random_model(root / "model", open_source(source, "auto"))
    cube = str(root / "cube.zarr")
    run_map(MapConfig.model_validate({
        "source": source, "model": model, "out": cube, "executor": "serial",
        "grid": GridConfig(tile_size=128), "stitch": StitchConfig(patch_size=64, batch_size=4),
    }), progress=False)
    w, s, e, n = summary["cities"][0]["bbox_lonlat"]
    return Small(root, source, str(summary["coarse_labels"]), model, cube,
                 ",".join(map(str, (w, s, e, n))))


def digest(*roots: Path | str) -> str:
    """sha256 over every path and file's bytes under ``roots`` (a snapshot of the disk)."""
    h = hashlib.sha256()
    for root in map(Path, roots):
        for p in sorted(root.rglob("*")):
            h.update(str(p).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Run the CLI; assert exit 2 and one `lczscale CMD: error: …` line holding ``words``."""
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lczscale {args[0]}: error: "), err
    for word in words:
        assert word in lines[0], (word, err)
    return lines[0]


@pytest.fixture
def scene(small: Small, tmp_path: Path) -> tuple[Small, Path]:
    """The small world and a scratch directory holding a plain file and bad YAML files."""
    (tmp_path / "plain.txt").write_text("not a store\n")
    (tmp_path / "bad.yaml").write_text("workers: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- source: x\n- model: y\n")
    (tmp_path / "scalar.yaml").write_text("just some words\n")
    return small, tmp_path


def map_args(s: Small, out: Path | str, *extra: str) -> list[str]:
    return ["map", "--source", s.source, "--model", s.model, "--out", str(out), "--executor",
            "serial", "--tile-size", "128", "--patch-size", "64", "--quiet", *extra]


def train_args(s: Small, out: Path | str, *extra: str) -> list[str]:
    return ["train", "--source", s.source, "--labels", s.labels, "--out", str(out),
            "--steps", "1", "--batch-size", "1", "--quiet", *extra]


# -- the cases of the issue ------------------------------------------------------------------


def test_map_source_is_a_plain_file(scene, capsys) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    args = map_args(s, tmp / "c.zarr")
    args[2] = str(tmp / "plain.txt")
    refused(args, capsys, "plain.txt", "is a file", "embedding store")
    assert digest(tmp, s.dir) == before


def test_out_under_a_file(scene, capsys) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    refused(map_args(s, tmp / "plain.txt" / "cube.zarr"), capsys, "plain.txt", "is a file",
            "--out")
    refused(map_args(s, tmp / "plain.txt"), capsys, "plain.txt", "existing file",
            "must be a directory")
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("kernel", ["/proc", "/sys"])
def test_out_under_proc_or_sys(scene, capsys, kernel) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    refused(map_args(s, f"{kernel}/lczscale-test/cube.zarr"), capsys, kernel,
            "kernel filesystem", "choose a directory on a disk")
    assert not Path(f"{kernel}/lczscale-test").exists()
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("kernel", ["/proc", "/sys"])
def test_out_on_a_filesystem_nobody_can_write_is_probed(scene, capsys, monkeypatch,
                                                        kernel) -> None:
    """The write probe itself, as root: /proc and /sys with the name check switched off."""
    s, tmp = scene
    monkeypatch.setattr(out_path, "KERNEL_FS", ())
    before = digest(tmp, s.dir)
    refused(map_args(s, f"{kernel}/lczscale-test/cube.zarr"), capsys, "not writable",
            f"cannot create a file in {kernel}", "choose a writable location")
    assert digest(tmp, s.dir) == before


def test_out_in_a_read_only_directory() -> None:
    """A directory its user cannot write into (0o555). Root ignores the mode, so as root the
    check runs with the effective uid and gid of ``nobody``, as an ordinary user would."""
    import contextlib
    import shutil
    import tempfile

    from lczscale.errors import LczscaleError

    base = Path(tempfile.mkdtemp(prefix="lczscale-ro-", dir="/tmp"))
    base.chmod(0o755)
    ro = base / "ro"
    ro.mkdir()
    ro.chmod(0o555)

    @contextlib.contextmanager
    def as_nobody():  # type: ignore[no-untyped-def]
        if os.geteuid() != 0:
            yield
            return
        os.setegid(65534)
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    try:
        with as_nobody(), pytest.raises(LczscaleError, match="not writable") as err:
            out_path.check_writable_out(str(ro / "cube.zarr"), "map --out", "dir")
        assert str(ro) in str(err.value)
        assert "\n" not in str(err.value)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.parametrize("command", ["map", "train"])
def test_config_with_bad_yaml_syntax(scene, capsys, command) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    args = (map_args(s, tmp / "c.zarr") if command == "map" else train_args(s, tmp / "m"))
    refused([*args, "--config", str(tmp / "bad.yaml")], capsys, "bad.yaml", "not valid YAML",
            "line 2", "fix the syntax")
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("command", ["map", "train"])
@pytest.mark.parametrize(("name", "holds"), [("list.yaml", "list"), ("scalar.yaml", "str")])
def test_config_yaml_that_is_not_a_mapping(scene, capsys, command, name, holds) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    args = (map_args(s, tmp / "c.zarr") if command == "map" else train_args(s, tmp / "m"))
    refused([*args, "--config", str(tmp / name)], capsys, name, "must be a YAML mapping",
            f"holds a {holds}")
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("command", ["map", "train"])
def test_missing_config_file(scene, capsys, command) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    args = (map_args(s, tmp / "c.zarr") if command == "map" else train_args(s, tmp / "m"))
    refused([*args, "--config", str(tmp / "nowhere.yaml")], capsys, "nowhere.yaml",
            "does not exist")
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("command", ["map", "coverage"])
def test_missing_geojson_file(scene, capsys, command) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    missing = str(tmp / "nowhere.geojson")
    args = (map_args(s, tmp / "c.zarr", "--geojson", missing) if command == "map" else
            ["coverage", "--source", s.source, "--year", "2024", "--geojson", missing])
    refused(args, capsys, "--geojson", "nowhere.geojson", "does not exist", "GeoJSON file")
    refused([*args[:-1], str(tmp)], capsys, "is a directory, not a file")
    assert digest(tmp, s.dir) == before


def test_train_out_is_an_existing_file(scene, capsys) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    refused(train_args(s, tmp / "plain.txt"), capsys, "plain.txt", "existing file",
            "must be a directory")
    assert (tmp / "plain.txt").read_text() == "not a store\n"
    assert digest(tmp, s.dir) == before


@pytest.mark.parametrize("bbox", ["9,47,8,48", "8,48,9,47", "200,47,201,48"])
def test_export_refuses_the_bbox_map_refuses(scene, capsys, bbox) -> None:
    """The same rule and the same words as map (a box map accepts, export accepts)."""
    s, tmp = scene
    before = digest(tmp, s.dir)
    on_map = refused(map_args(s, tmp / "c.zarr", "--bbox", bbox), capsys, "bbox")
    on_export = refused(["export", s.cube, "--bbox", bbox, "--out", str(tmp / "e.tif")],
                        capsys, "bbox")
    on_plot = refused(["plot", s.cube, "--bbox", bbox, "--out", str(tmp / "p.png")], capsys,
                      "bbox")
    reason = on_map.split("bbox: ", 1)[1]  # map: `invalid map settings: bbox: <reason>`
    assert on_export.endswith(reason)
    assert on_plot.endswith(reason)
    if bbox == "9,47,8,48":
        assert "antimeridian" in reason
        assert "8.0,47.0,9.0,48.0" in reason
    assert digest(tmp, s.dir) == before


def test_export_still_takes_a_good_bbox(scene, capsys) -> None:
    s, tmp = scene
    assert main(["export", s.cube, "--bbox", s.bbox, "--out", str(tmp / "e.tif")]) == 0
    assert (tmp / "e.tif").stat().st_size > 0


def test_failed_runs_leave_an_existing_cube_and_model_alone(scene, capsys) -> None:
    s, tmp = scene
    before = digest(s.cube, s.model)
    refused(map_args(s, s.cube, "--config", str(tmp / "bad.yaml")), capsys, "not valid YAML")
    refused(map_args(s, s.cube, "--geojson", str(tmp / "nowhere.geojson")), capsys,
            "does not exist")
    refused(map_args(s, s.cube, "--cluster", str(tmp / "bad.yaml")), capsys, "--cluster",
            "not valid YAML")
    refused(train_args(s, s.model, "--config", str(tmp / "list.yaml")), capsys,
            "must be a YAML mapping")
    refused(train_args(s, s.model, "--bbox", "9,47,8,48"), capsys, "antimeridian")
    assert digest(s.cube, s.model) == before


# -- any like it: every command, a missing path, a file for a directory, bad YAML -------------


def cases(s: Small, tmp: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    f, nowhere = str(tmp / "plain.txt"), str(tmp / "nowhere.zarr")
    under = str(tmp / "plain.txt" / "sub")
    bad = str(tmp / "bad.yaml")
    return [
        (map_args(s, tmp / "c.zarr")[:2] + [nowhere] + map_args(s, tmp / "c.zarr")[3:],
         ("does not exist",)),
        (map_args(s, tmp / "c.zarr", "--geojson", str(s.dir)), ("is a directory",)),
        (train_args(s, tmp / "m")[:2] + [f] + train_args(s, tmp / "m")[3:],
         ("is a file", "embedding store")),
        (train_args(s, tmp / "m")[:2] + [nowhere] + train_args(s, tmp / "m")[3:],
         ("does not exist",)),
        (train_args(s, under), ("is a file, not a directory",)),
        (["eval", nowhere, "--truth", s.cube], ("no cube at",)),
        (["eval", f, "--truth", s.cube], ("not a Zarr v3 group",)),
        (["eval", s.cube, "--truth", s.cube, "--report", f], ("existing file",)),
        (["eval", s.cube, "--truth", s.cube, "--report", under], ("is a file",)),
        (["status", nowhere], ("no cube at",)),
        (["status", f], ("not a Zarr v3 group",)),
        (["plot", nowhere, "--out", str(tmp / "p.png")], ("no cube at",)),
        (["plot", f, "--out", str(tmp / "p.png")], ("not a Zarr v3 group",)),
        (["plot", s.cube, "--out", under], ("is a file",)),
        (["plot", s.cube, "--out", str(tmp)], ("existing directory",)),
        (["plot", "--confusion", bad, "--out", str(tmp / "p.png")], ("cannot read evaluation",)),
        (["export", nowhere, "--bbox", s.bbox, "--out", str(tmp / "e.tif")], ("no cube at",)),
        (["export", f, "--bbox", s.bbox, "--out", str(tmp / "e.tif")], ("not a Zarr v3 group",)),
        (["export", s.cube, "--bbox", s.bbox, "--out", under], ("is a file",)),
        (["export", s.cube, "--bbox", s.bbox, "--out", "/proc/e.tif"], ("/proc",)),
        (["export", s.cube, "--bbox", s.bbox, "--out", str(tmp), "--overwrite"],
         ("existing directory",)),
        (["pyramid", nowhere], ("no cube at",)),
        (["pyramid", f], ("not a Zarr v3 group",)),
        (["serve", nowhere, "--static", str(tmp / "site")], ("no cube at",)),
        (["serve", f, "--static", str(tmp / "site")], ("not a Zarr v3 group",)),
        (["serve", s.cube, "--static", f], ("existing file",)),
        (["serve", s.cube, "--static", under], ("is a file",)),
        (["serve", s.cube, "--static", "/proc/site"], ("/proc",)),
        (["stac", nowhere, "--out", str(tmp / "stac")], ("no cube at",)),
        (["stac", f, "--out", str(tmp / "stac")], ("not a Zarr v3 group",)),
        (["stac", s.cube, "--out", f], ("existing file",)),  # it used to write beside the file
        (["stac", s.cube, "--out", under], ("is a file",)),
        (["coverage", "--source", f, "--year", "2024", "--bbox", s.bbox], ("is a file",)),
        (["coverage", "--source", nowhere, "--year", "2024", "--bbox", s.bbox],
         ("does not exist",)),
        (["synth", f, "--size-km", "0.5"], ("existing file",)),
        (["synth", under, "--size-km", "0.5"], ("is a file",)),
        (["synth", "/proc/world", "--size-km", "0.5"], ("/proc",)),
        (["experiment", "transfer", "--world", nowhere, "--out", str(tmp / "x")],
         ("does not exist",)),
        (["experiment", "transfer", "--world", f, "--out", str(tmp / "x")], ("is a file",)),
        (["experiment", "transfer", "--config", bad, "--out", str(tmp / "x")],
         ("not valid YAML",)),
        (["experiment", "transfer", "--world", str(s.dir / "world"), "--out", f],
         ("existing file",)),
        (["deploy", "kubernetes", "--cluster", bad, "--map", bad, "--out", str(tmp / "k")],
         ("not valid YAML",)),
        (["demo", "--dir", f, "--quick"], ("existing file",)),
    ]


def test_every_command_refuses_bad_paths_in_one_line(scene, capsys) -> None:
    s, tmp = scene
    before = digest(tmp, s.dir)
    for args, words in cases(s, tmp):
        refused(args, capsys, *words)
        assert digest(tmp, s.dir) == before, f"{args} wrote or changed something"


# -- the check itself --------------------------------------------------------------------------


def test_check_writable_out_passes_remote_urls_and_writable_paths(tmp_path) -> None:
    out_path.check_writable_out("s3://bucket/cube.zarr")
    out_path.check_writable_out("https://example.org/cube.zarr")
    out_path.check_writable_out(tmp_path / "a" / "b" / "cube.zarr")
    out_path.check_writable_out(f"file://{tmp_path}/cube.zarr")
    out_path.check_writable_out(tmp_path / "e.tif", kind="file")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
