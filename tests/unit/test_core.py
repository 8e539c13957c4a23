"""Unit checks of the pure pieces, the feature preparation and the cube/ledger writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from odc.geo import geom

from lczscale.config import CubeConfig, GridConfig, MapConfig, StitchConfig, auto_overlap
from lczscale.core.grid import Aoi, Window, utm_zone, utm_zone_number, zones_for_aoi
from lczscale.errors import ConfigError, CubeError
from lczscale.infer.features import dequantise, model_input
from lczscale.io.cube import ledger
from lczscale.io.cube.store import create_cube, cube_zones, read_window, write_tile


def test_utm_zone_numbers_follow_tessera() -> None:
    assert utm_zone_number(8.54) == 32
    assert utm_zone_number(-180) == 1
    assert utm_zone_number(180) == 60
    assert utm_zone_number(36.82) == 37


def test_southern_points_get_negative_northings_in_the_northern_epsg() -> None:
    zone = utm_zone(37)
    assert zone.crs == "EPSG:32637"
    pt = geom.point(36.82, -1.29, "EPSG:4326").to_crs(zone.crs)
    assert pt.coords[0][1] < 0
    row, _ = (~zone.affine) * pt.coords[0]
    assert 0 < row < zone.shape[0]


def test_aoi_across_a_zone_edge_is_split_without_overlap() -> None:
    parts = zones_for_aoi(Aoi.from_bbox((5.9, 47.0, 6.1, 47.1)), GridConfig())
    assert [z.name for z, _ in parts] == ["utm31", "utm32"]
    areas = [p.to_crs("EPSG:4326").area for _, p in parts]
    assert abs(sum(areas) - 0.2 * 0.1) < 1e-6


def test_polar_aoi_is_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match="global"):
        zones_for_aoi(Aoi.from_bbox((10, 84.5, 11, 85)), GridConfig())


def test_config_rejects_unknown_keys_and_bad_bbox() -> None:
    with pytest.raises(ValueError, match="extra"):
        MapConfig.model_validate({"source": "a", "model": "b", "out": "c", "colour": 1})
    with pytest.raises(ValueError, match="minlat < maxlat"):
        MapConfig.model_validate({"source": "a", "model": "b", "out": "c", "bbox": [8, 48, 9, 47]})
    across = MapConfig.model_validate(
        {"source": "a", "model": "b", "out": "c", "bbox": [179, -17, -179, -16]}
    )
    assert across.bbox == (179, -17, -179, -16)  # MINLON > MAXLON: across the antimeridian


def test_overlap_covers_the_receptive_radius() -> None:
    assert auto_overlap(47) == 48
    assert StitchConfig(patch_size=256).stride(47) == 208
    assert StitchConfig(patch_size=96).stride(47) == 48
    with pytest.raises(ConfigError, match="patch_size ≥ 96"):
        StitchConfig(patch_size=64).stride(47)  # the overlap would exceed half a patch
    with pytest.raises(ConfigError, match="receptive radius"):
        StitchConfig(patch_size=256, overlap=32).stride(47)  # border pixels see only padding


def test_window_maths() -> None:
    a, b = Window(0, 0, 10, 10), Window(5, 8, 10, 10)
    assert a.intersection(b) == Window(5, 8, 5, 2)
    assert Window(0, 0, 2, 2).intersection(Window(2, 2, 1, 1)) is None
    assert Window(5, 8, 5, 2).relative_to(b) == (slice(0, 5), slice(0, 2))


def test_sign_square_lookup_is_exact() -> None:
    codes = torch.tensor([-128, -127, -1, 0, 1, 127], dtype=torch.int8).view(1, 6, 1, 1)
    got = dequantise(codes, None, "sign_square").view(-1).double()
    want = torch.tensor([0.0, -(127 / 127.5) ** 2, -(1 / 127.5) ** 2, 0, (1 / 127.5) ** 2,
                         (127 / 127.5) ** 2], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-7)


def test_model_input_normalises_valid_pixels_and_zeroes_the_rest() -> None:
    codes = torch.randint(-127, 128, (2, 3, 4, 4), dtype=torch.int8)
    scales = torch.rand(2, 4, 4)
    valid = torch.rand(2, 4, 4) > 0.3
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 1.0, 2.0])
    loc = torch.randn(2, 4, 4, 4)
    x = model_input(codes, scales, valid, loc, mean, std, "per_pixel_scale")
    ref = (codes.float() * scales[:, None] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    ref = ref * valid[:, None]
    assert torch.allclose(x[:, :3], ref, atol=1e-5)
    assert torch.equal(x[:, 3:], loc)
    assert (x[:, :3][~valid.unsqueeze(1).expand(-1, 3, -1, -1)] == 0).all()


def test_cube_create_write_extend_and_refuse(tmp_path) -> None:
    url = str(tmp_path / "c.zarr")
    zone = utm_zone(32)
    grid, cube = GridConfig(tile_size=256), CubeConfig()
    create_cube(url, [zone], [2024], grid, cube, {"note": "x"})
    core = Window(256 * 1000, 256 * 100, 256, 256)
    lcz = np.random.default_rng(0).integers(0, 18, (256, 256), dtype=np.uint8)
    write_tile(url, zone, 2024, core, lcz, lcz)
    create_cube(url, [zone, utm_zone(33)], [2024, 2025], grid, cube, {})  # extend: zone + year
    assert [z.name for z in cube_zones(url)] == ["utm32", "utm33"]
    assert np.array_equal(read_window(url, zone, 2024, core), lcz)
    assert not read_window(url, zone, 2025, core).any()
    with pytest.raises(CubeError, match="layout"):
        create_cube(url, [zone], [2024], GridConfig(tile_size=512), cube, {})
    with pytest.raises(CubeError, match="shape"):
        write_tile(url, zone, 2024, core, lcz[:10], lcz[:10])


@pytest.mark.parametrize("sharding", [False, True])
def test_tile_writes_store_the_same_chunks_with_or_without_the_empty_check(
        tmp_path, monkeypatch, sharding: bool) -> None:
    """A tile with data skips zarr's fill-value comparison only where zarr would write the
    chunk anyway: an empty tile still leaves no chunk, and the stored files are the same as
    with the check."""
    from lczscale.io.cube import store

    zone, grid = utm_zone(32), GridConfig(tile_size=256)
    cube = CubeConfig(sharding=sharding, inner_chunk=64)
    lcz = np.zeros((256, 256), np.uint8)
    lcz[:40, :40] = 3  # one inner chunk with data, the others empty
    tiles = {Window(0, 0, 256, 256): lcz, Window(0, 256, 256, 256): np.zeros_like(lcz)}

    def written(url: str) -> dict[str, bytes]:
        create_cube(url, [zone], [2024], grid, cube, {})
        for core, values in tiles.items():
            write_tile(url, zone, 2024, core, values, values)
        root = Path(url) / "utm32"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "zarr.json"
                and p.relative_to(root).parts[0] in ("lcz", "confidence")}

    fast = written(str(tmp_path / "fast.zarr"))
    skipped = []
    real = store.without_empty_check

    def spy(arr, values, core):
        out = real(arr, values, core)
        skipped.append(out is not arr)
        return out

    monkeypatch.setattr(store, "without_empty_check", lambda arr, values, core: arr)
    checked = written(str(tmp_path / "checked.zarr"))
    monkeypatch.setattr(store, "without_empty_check", spy)
    written(str(tmp_path / "spied.zarr"))
    assert fast == checked
    assert fast
    assert not any(k.endswith("/0/0/1") for k in fast)  # the empty tile wrote no chunk
    # the check is skipped for the tile with data, only when it is one unsharded chunk
    assert skipped == [not sharding, not sharding, False, False]
    assert np.array_equal(read_window(str(tmp_path / "fast.zarr"), zone, 2024,
                                      Window(0, 0, 256, 256)), lcz)


def test_ledger_round_trip_and_replace(tmp_path) -> None:
    url = str(tmp_path / "c.zarr")
    ledger.record(url, "utm32/2024/0_0", {"provenance_hash": "a"})
    ledger.record(url, "utm32/2024/0_0", {"provenance_hash": "b"})
    ledger.record(url, "utm32/2024/0_256", {"provenance_hash": "b"})
    entries = ledger.read_all(url)
    assert set(entries) == {"utm32/2024/0_0", "utm32/2024/0_256"}
    assert entries["utm32/2024/0_0"]["provenance_hash"] == "b"
    assert not list((tmp_path / "c.zarr").rglob("*.tmp"))


def test_pixel_lonlat_is_exact_enough_and_window_independent() -> None:
    from pyproj import Transformer

    zone = utm_zone(37)
    win = Window(1_000_123, 33_301, 70, 45)  # south of the equator
    lon, lat = zone.lonlat(win)
    a = zone.affine
    xx, yy = np.meshgrid(a.c + a.a * (np.arange(win.col, win.col_stop) + 0.5),
                         a.f + a.e * (np.arange(win.row, win.row_stop) + 0.5))
    ref_lon, ref_lat = Transformer.from_crs(zone.crs, 4326, always_xy=True).transform(xx, yy)
    assert np.abs(lon - ref_lon).max() < 1e-8
    assert np.abs(lat - ref_lat).max() < 1e-8
    sub = Window(win.row + 13, win.col + 5, 30, 21)
    sub_lon, sub_lat = zone.lonlat(sub)
    assert np.array_equal(sub_lon, lon[13:43, 5:26])
    assert np.array_equal(sub_lat, lat[13:43, 5:26])
