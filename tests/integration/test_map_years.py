"""Several years in one map run (``map --years``), and the change between them (``change``).

A world of one 1.6 km city that changes between 2023 and 2024 (``synth --changing-city``:
farmland D becomes open low-rise 6, scattered trees B become large low-rise 8).

- The plumbing, with a small seeded model (what it predicts does not matter here): one run of
  both years gives, for each year, exactly the cube a run of that year alone gives (bit for
  bit, ledger provenance included, so a one-year run over it has nothing to do); the dry run
  counts both years; runs killed part-way, of one year and of both, resume every year from the
  one ledger into the same cube.
- The detection, on the world's truth cube (both years, confidence 255): a model trained in
  a test's minute does not tell these classes apart well enough to measure a detector by (its
  change recall was a few per cent), so the change is measured on the truth, where it is known
  pixel by pixel. Stated rates: the change is found in ≥ 99 % of the changed pixels with the
  right from/to classes, and flagged on ≤ 0.1 % of the unchanged pixels (both exact here: 100 %
  and 0 %, the truth being confident everywhere). Then ``change`` runs on the mapped cube too,
  and its layer equals the codes computed from the whole arrays at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mapping import random_model

import lczscale
from lczscale.cli import main
from lczscale.config import GridConfig, MapConfig, StitchConfig
from lczscale.execute.run import run_map
from lczscale.execute.status import cube_status
from lczscale.io.cube import ledger
from lczscale.io.sources.registry import open_source
from lczscale.products.transitions import decode, encode_change
from lczscale.synth.world import write_world

pytestmark = pytest.mark.integration

YEARS = (2023, 2024)
MIN_RECALL = 0.99  # share of the changed pixels found, with their from and to classes
MAX_FALSE_CHANGE = 0.001  # share of the unchanged pixels flagged as a (confident) change


class Killed(Exception):
    """The run stopped part-way (as a kill would stop it, after a tile's ledger entry)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("years")
    summary = write_world(root / "world", cities=1, size_km=1.6, years=YEARS,
                          changing_city=True)
    source = str(root / "world" / "embeddings.zarr")
    model = random_model(root / "model", open_source(source))
    return {"root": root, "summary": summary, "source": source, "model": model}


def _cfg(setup: dict, out: Path, **kw) -> MapConfig:
    return MapConfig.model_validate({
        "source": setup["source"], "model": setup["model"], "out": str(out),
        "executor": "serial", "grid": GridConfig(tile_size=128),
        "stitch": StitchConfig(patch_size=64, batch_size=4)} | kw)


def _arrays(url: str, setup: dict, year: int) -> dict[str, np.ndarray]:
    r, c, h, w = setup["summary"]["cities"][0]["window"]
    ds = lczscale.open_cube(url, zone="utm32", year=year)
    return {v: ds[v].isel(y=slice(r - 128, r + h + 128), x=slice(c - 128, c + w + 128)).values
            for v in ("lcz", "confidence")}


def _hashes(url: str, year: int) -> dict[str, str]:
    return {k: e["provenance_hash"] for k, e in ledger.read_all(url).items()
            if e.get("year") == year and ledger.state(e) == ledger.DONE}


@pytest.fixture(scope="module")
def both(setup) -> str:
    """Both years mapped in one run through the command line."""
    out = setup["root"] / "both.zarr"
    assert main(["map", "--source", setup["source"], "--model", setup["model"], "--out",
                 str(out), "--years", "2023,2024", "--executor", "serial", "--tile-size",
                 "128", "--patch-size", "64", "--quiet"]) == 0
    return str(out)


def test_two_years_in_one_run_are_each_year_mapped_alone(setup, both, tmp_path,
                                                         capsys) -> None:
    capsys.readouterr()
    assert lczscale.open_cube(both, zone="utm32")["time"].values.tolist() == list(YEARS)
    status = cube_status(both)  # of the cube's recorded run: both years
    assert status["done"] == status["planned"] == len(_hashes(both, 2023)) * 2
    assert status["years"] == list(YEARS)
    assert not status["mixed_provenance"]
    assert status["stale"] == status["remaining"] == 0
    for year in YEARS:
        alone = run_map(_cfg(setup, tmp_path / f"{year}.zarr", year=year), progress=False)
        assert alone.computed > 0
        assert not alone.failed
        one, many = _arrays(alone.cube, setup, year), _arrays(both, setup, year)
        for var in ("lcz", "confidence"):
            assert np.array_equal(one[var], many[var]), f"{var} {year}"
        _, _, h, w = setup["summary"]["cities"][0]["window"]
        assert (many["lcz"] > 0).sum() > 0.8 * h * w  # the city less its water and strip
        assert _hashes(both, year) == _hashes(alone.cube, year)  # the same lineage per year
        # a one-year run over the two-year cube finds that year done
        again = run_map(_cfg(setup, both, year=year), progress=False)
        assert again.computed == 0
        assert again.skipped == alone.computed
    # now the recorded run is 2024's alone: the 2023 tiles still count as done, each tile
    # judged by the provenance of its own year
    status = cube_status(both)
    assert status["planned"] == len(_hashes(both, 2024))
    assert status["done"] == 2 * status["planned"]
    assert status["stale"] == 0


def test_the_dry_run_counts_every_year_and_flags_conflict(setup, tmp_path, capsys) -> None:
    base = ["map", "--source", setup["source"], "--model", setup["model"], "--out",
            str(tmp_path / "dry.zarr"), "--tile-size", "128", "--patch-size", "64",
            "--executor", "serial"]
    tiles = {}
    for years in (["--year", "2024"], ["--years", "2023-2024"]):
        capsys.readouterr()
        assert main([*base, *years, "--dry-run", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        tiles[years[0]] = result["tiles"]
        assert result["years"] == ([2024] if years[0] == "--year" else list(YEARS))
    assert tiles["--years"] == 2 * tiles["--year"] > 0
    assert not (tmp_path / "dry.zarr").exists()
    assert main([*base, "--year", "2024", "--years", "2023,2024"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not both" in err[0]
    assert main([*base, "--years", "2023,2031"]) == 2
    assert "no year 2031" in capsys.readouterr().err


def test_killed_runs_resume_every_year_from_one_ledger(setup, both, tmp_path) -> None:
    out = tmp_path / "resumed.zarr"

    def kill_after(n: int):
        seen = []

        def on_result(result) -> None:
            seen.append(result.key)
            if len(seen) == n:
                raise Killed(result.key)
        return on_result

    with pytest.raises(Killed):  # 2024 alone, 2 tiles made
        run_map(_cfg(setup, out, year=2024), progress=False, on_result=kill_after(2))
    with pytest.raises(Killed):  # both years: 3 tiles of 2023 made, 2024's two skipped
        run_map(_cfg(setup, out, years=YEARS), progress=False, on_result=kill_after(3))
    assert (len(_hashes(str(out), 2023)), len(_hashes(str(out), 2024))) == (3, 2)
    final = run_map(_cfg(setup, out, years=list(YEARS)), progress=False)
    per_year = len(_hashes(both, 2023))
    assert (final.skipped, final.computed) == (5, 2 * per_year - 5)
    assert final.summary()["years"] == list(YEARS)
    for year in YEARS:
        a, b = _arrays(str(out), setup, year), _arrays(both, setup, year)
        assert all(np.array_equal(a[v], b[v]) for v in a)


def test_the_change_is_found_where_it_happened_and_nowhere_else(setup, both,
                                                                capsys) -> None:
    import shutil

    truth = setup["root"] / "truth-copy.zarr"  # change writes into the cube: a copy
    shutil.copytree(setup["summary"]["truth"], truth)
    capsys.readouterr()
    assert main(["change", str(truth), "--from", "2023", "--to", "2024", "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r, c, h, w = setup["summary"]["cities"][0]["window"]
    ds = lczscale.open_cube(str(truth), zone="utm32")
    codes = ds["lcz_change_2023_2024"].isel(y=slice(r, r + h), x=slice(c, c + w)).values
    lcz = ds["lcz"].isel(y=slice(r, r + h), x=slice(c, c + w)).values
    changed = np.zeros((h, w), dtype=bool)
    right = np.zeros((h, w), dtype=bool)
    frm, to = decode(codes)
    for change in setup["summary"]["changes"]:
        cr, cc, ch, cw = change["window"]
        area = np.zeros((h, w), dtype=bool)
        area[cr - r:cr - r + ch, cc - c:cc - c + cw] = True
        area &= lcz[0] != 17  # the change areas less their water
        assert area.sum() == change["pixels"]
        changed |= area
        right |= area & (frm == change["from"]) & (to == change["to"])
    valid = codes > 0
    flagged = (frm != to) & (frm > 0)
    recall = (right & changed & valid).sum() / (changed & valid).sum()
    false_change = (flagged & ~changed & valid).sum() / (~changed & valid).sum()
    assert recall >= MIN_RECALL, recall
    assert false_change <= MAX_FALSE_CHANGE, false_change
    # the printed matrix: the two changes' areas (km²), and the rest unchanged
    moved = {(k, t): v for k, row in matrix.items() for t, v in row.items() if k != t}
    assert moved == {("D", "6"): round(setup["summary"]["changes"][0]["pixels"] * 1e-4, 6),
                     ("B", "8"): round(setup["summary"]["changes"][1]["pixels"] * 1e-4, 6)}

    # on the mapped cube: the layer, written block by block, is the codes of the whole arrays
    mapped = setup["root"] / "both-copy.zarr"
    shutil.copytree(both, mapped)
    assert main(["change", str(mapped), "--from", "2023", "--to", "2024", "--min-confidence",
                 "0"]) == 0
    ds = lczscale.open_cube(str(mapped), zone="utm32").isel(  # every block the city touches
        y=slice(r - 128, r + h + 128), x=slice(c - 128, c + w + 128))
    whole = encode_change(*(ds[v].isel(time=t).values for v in ("lcz", "confidence")
                            for t in (0, 1)), min_confidence=0)
    assert (whole > 0).sum() > 0.5 * h * w
    assert np.array_equal(ds["lcz_change_2023_2024"].values, whole)
