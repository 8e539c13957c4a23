"""``lczscale change``: the change codes, the areas and the transition matrix, on small cubes
made by hand (exact values), and its refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from pyproj import Transformer

from lczscale.cli import main
from lczscale.config import ChangeConfig, CubeConfig, GridConfig
from lczscale.core.grid import Window, global_zone, utm_zone
from lczscale.errors import ConfigError, CubeError
from lczscale.io.cube.store import create_cube, open_root, write_tile
from lczscale.products.transitions import (
    N_CODES,
    NODATA,
    STRIDE,
    UNCERTAIN,
    code_areas,
    decode,
    encode_change,
    summary,
    transition_matrix,
)
from lczscale.studies.change import AUTHALIC_RADIUS_M, change_between, row_areas_m2

ZONE = utm_zone(32)
TILE = 256
# Two tiles near Zurich (zone pixels, on the 256 px chunk grid), side by side.
A = Window(1599 * TILE, 119 * TILE, TILE, TILE)
B = Window(1599 * TILE, 120 * TILE, TILE, TILE)
PX_KM2 = 100 / 1e6  # one 10 m pixel


# -- the codes -------------------------------------------------------------------------------


def test_codes_say_from_and_to_where_trusted_else_no_change_or_uncertain() -> None:
    a = np.array([[14, 12, 11, 17, 0, 3]], dtype=np.uint8)
    b = np.array([[6, 8, 11, 0, 5, 3]], dtype=np.uint8)
    ca = np.array([[128, 127, 1, 255, 0, 0]], dtype=np.uint8)
    cb = np.array([[200, 255, 1, 0, 200, 0]], dtype=np.uint8)
    code = encode_change(a, b, ca, cb, min_confidence=128)
    # confident change 14→6 (128 counts: ≥); 12→8 with one year at 127: uncertain; 11→11 stays
    # "no change" at any confidence; 17→nodata and nodata→5: nodata; 3→3 with confidence 0
    assert code.tolist() == [[14 * 18 + 6, UNCERTAIN, 11 * 18 + 11, NODATA, NODATA, 3 * 18 + 3]]
    assert code.dtype == np.uint16
    frm, to = decode(code)
    assert frm.tolist() == [[14, 0, 11, 0, 0, 3]]
    assert to.tolist() == [[6, 0, 11, 0, 0, 3]]


def test_every_pair_round_trips_and_no_reserved_code_is_written() -> None:
    a, b = (x.astype(np.uint8) for x in np.meshgrid(np.arange(18), np.arange(18), indexing="ij"))
    conf = np.full(a.shape, 255, dtype=np.uint8)
    code = encode_change(a, b, conf, conf, 128)
    frm, to = decode(code)
    valid = (a > 0) & (b > 0)
    assert np.array_equal(frm[valid], a[valid])
    assert np.array_equal(to[valid], b[valid])
    assert set(np.unique(code[~valid]).tolist()) == {NODATA}
    assert int(code.max()) == 17 * STRIDE + 17 == N_CODES - 1
    low = encode_change(a, b, conf * 0, conf * 0, 1)  # nothing confident
    used = set(np.unique(low).tolist()) | set(np.unique(code).tolist())
    assert not used & set(range(2, STRIDE + 1)), "codes 2-18 are reserved"


def test_areas_matrix_and_totals_exactly() -> None:
    code = np.array([[258, 258, 1], [209, 0, 258]], dtype=np.uint16)
    areas = code_areas(code, 100.0)
    assert areas[258] == 300.0
    assert areas[209] == 100.0
    assert areas[UNCERTAIN] == 100.0
    assert transition_matrix(areas) == {"D": {"6": 0.0003}, "A": {"A": 0.0001}}
    assert summary(areas) == {"changed_km2": 0.0003, "unchanged_km2": 0.0001,
                              "uncertain_km2": 0.0001, "valid_km2": 0.0005}
    per_row = code_areas(code, np.array([1.0, 10.0]), inside=np.array([[1, 1, 1], [1, 1, 0]],
                                                                      dtype=bool))
    assert per_row[258] == 2.0
    assert per_row[209] == 10.0
    assert per_row[1] == 1.0


def test_geographic_rows_shrink_toward_the_poles_and_add_up_to_the_sphere() -> None:
    zone = global_zone(360.0 / 4_007_520, 83.68570533713473)
    rows = row_areas_m2(zone, Window(0, 0, zone.shape[0], 1))
    assert isinstance(rows, np.ndarray)
    assert rows.shape == (zone.shape[0],)
    top = math.radians(83.68570533713473)
    sphere_part = 2 * math.pi * AUTHALIC_RADIUS_M ** 2 * (1 + math.sin(top))
    assert float(rows.sum()) * zone.shape[1] == pytest.approx(sphere_part, rel=1e-9)
    equator = zone.shape[0] - round(90 / (360.0 / 4_007_520))
    side = AUTHALIC_RADIUS_M * math.radians(360.0 / 4_007_520)
    assert rows[equator] == pytest.approx(side * side, rel=1e-6)
    assert row_areas_m2(ZONE, A) == 100.0


# -- on a cube -------------------------------------------------------------------------------


def _tile(rows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, ...]:
    """A 256 px tile of four 64-row bands: (class then, class now, confidence then, now)."""
    out = [np.zeros((TILE, TILE), dtype=np.uint8) for _ in range(4)]
    for i, values in enumerate(rows):
        for arr, v in zip(out, values, strict=True):
            arr[i * 64:(i + 1) * 64] = v
    return tuple(out)


BANDS = [(14, 6, 200, 200),  # D → 6, both confident: a change
         (12, 8, 50, 255),  # B → 8, 2023 unsure: uncertain
         (11, 11, 10, 10),  # A stays A: no change, whatever the confidence
         (17, 0, 255, 0)]  # no class in 2024: nodata


def _cube(path: Path) -> str:
    """Tile A in 2023 and 2024 (the four bands), tile B in 2024 only."""
    url = str(path)
    create_cube(url, [ZONE], [2023, 2024], GridConfig(tile_size=TILE), CubeConfig(), {})
    then, now, c_then, c_now = _tile(BANDS)
    write_tile(url, ZONE, 2023, A, then, c_then)
    write_tile(url, ZONE, 2024, A, now, c_now)
    write_tile(url, ZONE, 2024, B, now, c_now)
    return url


def _layer(url: str, name: str = "lcz_change_2023_2024") -> zarr.Array:
    arr = open_root(url, "r", None)["utm32"][name]  # type: ignore[index]
    assert isinstance(arr, zarr.Array)
    return arr


def test_the_layer_and_the_matrix_of_a_small_cube(tmp_path) -> None:
    url = _cube(tmp_path / "c.zarr")
    result = change_between(url, 2023, 2024, min_confidence=128)
    band = 64 * TILE * PX_KM2
    assert result["matrix"] == {"D": {"6": band}, "A": {"A": band}}
    assert result["totals"] == {"changed_km2": band, "unchanged_km2": band,
                                "uncertain_km2": band, "valid_km2": round(3 * band, 6)}
    assert result["zones"]["utm32"]["blocks"] == 1  # B is stored for 2024 only
    layer = _layer(url)
    assert layer.dtype == np.uint16
    assert layer.shape == ZONE.shape
    assert tuple(layer.chunks) == (TILE, TILE)
    assert layer.attrs["lczscale:from_year"] == 2023
    assert layer.attrs["lczscale:to_year"] == 2024
    assert layer.attrs["lczscale:min_confidence"] == 128
    got = np.asarray(layer[A.row:A.row_stop, A.col:B.col_stop])
    expect = np.zeros((TILE, 2 * TILE), dtype=np.uint16)
    for i, code in enumerate((14 * 18 + 6, UNCERTAIN, 11 * 18 + 11, NODATA)):
        expect[i * 64:(i + 1) * 64, :TILE] = code
    assert np.array_equal(got, expect)


def test_a_bbox_makes_its_blocks_and_counts_its_pixels_only(tmp_path) -> None:
    url = _cube(tmp_path / "c.zarr")
    to_lonlat = Transformer.from_crs(ZONE.crs, "EPSG:4326", always_xy=True)

    def lonlat(row: float, col: float) -> tuple[float, float]:
        return to_lonlat.transform(*(ZONE.affine @ (col, row)))

    # a lon/lat box well inside the D → 6 band of tile A (rows 10..50, cols 40..200)
    (x0, y0), (x1, y1) = lonlat(A.row + 50, A.col + 40), lonlat(A.row + 10, A.col + 200)
    result = change_between(url, 2023, 2024, 128, bbox=(x0, y0, x1, y1))
    assert list(result["matrix"]) == ["D"]
    assert list(result["matrix"]["D"]) == ["6"]
    assert result["matrix"]["D"]["6"] == pytest.approx(40 * 160 * PX_KM2, rel=0.03)
    assert result["totals"]["uncertain_km2"] == 0.0


def test_refusals_are_one_line_exit_2_and_leave_the_layer_as_it_was(tmp_path, capsys) -> None:
    url = _cube(tmp_path / "c.zarr")
    assert main(["change", url, "--from", "2023", "--to", "2024"]) == 0
    before = np.asarray(_layer(url)[A.row:A.row_stop, A.col:A.col_stop])
    capsys.readouterr()
    for argv in (["--from", "2023", "--to", "2023"],  # the same year twice
                 ["--from", "2019", "--to", "2024"],  # a year the cube lacks
                 ["--from", "2023", "--to", "2024", "--min-confidence", "10"]):  # other threshold
        assert main(["change", url, *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("lczscale change: error:")
    assert main(["change", str(tmp_path / "none.zarr"), "--from", "2023", "--to", "2024"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.zarr").exists()
    assert np.array_equal(np.asarray(_layer(url)[A.row:A.row_stop, A.col:A.col_stop]), before)
    with pytest.raises(ConfigError, match="both 2023"):
        change_between(url, 2023, 2023, 128)
    with pytest.raises(CubeError, match="no year 2019"):
        change_between(url, 2019, 2024, 128)
    # --overwrite makes the layer again with the new threshold: B → 8 now counts
    remade = change_between(url, 2023, 2024, 10, overwrite=True)
    assert remade["matrix"]["B"] == {"8": 64 * TILE * PX_KM2}


def test_cli_json_last_line_is_the_matrix_and_config_gives_the_default(tmp_path, capsys) -> None:
    url = _cube(tmp_path / "c.zarr")
    config = tmp_path / "change.yaml"
    config.write_text("min_confidence: 40\n")
    report, png = tmp_path / "report.json", tmp_path / "m.png"
    assert main(["change", url, "--from", "2023", "--to", "2024", "--json", "--config",
                 str(config), "--report", str(report), "--plot", str(png)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    band = 64 * TILE * PX_KM2
    assert json.loads(last) == {"D": {"6": band}, "B": {"8": band}, "A": {"A": band}}
    full = json.loads(report.read_text())
    assert full["min_confidence"] == 40
    assert full["zones"]["utm32"]["matrix"] == json.loads(last)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert ChangeConfig().min_confidence == 128
