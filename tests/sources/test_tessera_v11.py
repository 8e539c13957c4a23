"""The dClimate TESSERA v1.1 store (Icechunk) and its plain Zarr copy, on replicas written by
``lczscale.synth.dclimate`` in the published formats: both pass the conformance suite (a
northern and a southern zone), a NaN scale is nodata and never water, ``years_complete`` is
honoured, each row comes from its own hemisphere's group, the registry's traps are handled, and
damaged or inconsistent stores fail with one clear error."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from affine import Affine

from lczscale.core.grid import Window, utm_zone
from lczscale.errors import NoDataError, SourceError
from lczscale.io.sources import dclimate_registry as tessera_registry
from lczscale.io.sources.protocol import dequantised
from lczscale.io.sources.registry import detect_layout, open_source
from lczscale.io.sources.tessera_dclimate_zarr import TesseraDclimateZarrSource
from lczscale.io.sources.tessera_icechunk import TesseraIcechunkSource
from lczscale.io.sources.tessera_zarr import TesseraZarrSource
from lczscale.synth import dclimate as synth_dclimate
from lczscale.synth import world as synth
from tests.conformance import SourceCase, SourceConformance
from tests.servers import S3Server, environment, s3_server
from tests.sources.reference import dclimate_reference

SEED, CITIES, SIZE, YEARS = 5, 3, 0.8, (2023, 2024)  # Zurich, Basel, Nairobi (37S)
LAYOUTS = ("tessera-icechunk", "tessera-dclimate-zarr")


def _repo(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _edit_group(path: Path, group: str, **attrs: Any) -> None:
    """Commit attribute changes to one zone group of a local Icechunk replica (None deletes)."""
    session = _repo(path).writable_session("main")
    g = zarr.open_group(session.store, mode="r+")[group]
    for key, value in attrs.items():
        if value is None:
            del g.attrs[key]
        else:
            g.attrs[key] = value
    session.commit(f"edit {group}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both years are written, but the Icechunk store lists only 2024 as complete."""
    out = tmp_path_factory.mktemp("v11")
    summary = synth.write_world(out, cities=CITIES, size_km=SIZE, seed=SEED, years=YEARS,
                                truth_cube=False, layouts=("tessera-zarr", *LAYOUTS))
    return {"dir": out, "summary": summary, **summary["layouts"]}


def _copy(world: dict[str, Any], tmp_path: Path, layout: str = "tessera-icechunk") -> Path:
    src = Path(world[layout])
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    registry = src.with_suffix(".registry")
    if registry.exists():
        shutil.copytree(registry, dst.with_suffix(".registry"))
    return dst


@pytest.mark.parametrize("layout", LAYOUTS)
class TestV11(SourceConformance):
    @pytest.fixture(params=[(0, 2024), (0, 2023), (2, 2024)],
                    ids=["zurich-2024", "zurich-2023", "nairobi-south-2024"])
    def case(self, world: dict[str, Any], layout: str, request: pytest.FixtureRequest
             ) -> SourceCase:
        city, year = request.param
        zone, window, expected = dclimate_reference(SEED, CITIES, SIZE, year, city)
        return SourceCase(open_source(world[layout]), zone, year, window, expected, 128,
                          "per_pixel_scale")


def test_detected_as_their_layouts_and_one_dataset(world: dict[str, Any]) -> None:
    sources = {layout: open_source(world[layout]) for layout in LAYOUTS}
    for layout, source in sources.items():
        assert detect_layout(world[layout])[0] == layout == source.layout
    assert sources["tessera-icechunk"].dataset == sources["tessera-dclimate-zarr"].dataset
    assert sources["tessera-icechunk"].dataset.startswith("tessera/1.1/dclimate/")
    assert open_source(world["tessera-zarr"]).dataset != sources["tessera-icechunk"].dataset
    assert sources["tessera-icechunk"].describe()["snapshot"]  # the pinned Icechunk snapshot


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_scale_is_nodata_never_water(world: dict[str, Any], layout: str) -> None:
    c = synth.make_world(cities=CITIES, size_km=SIZE, seed=SEED, years=(2024,))[0]
    assert c.nodata.any()
    assert c.water.any()
    data = open_source(world[layout]).read(c.zone, c.window, 2024)
    assert not data.water.any(), "the v1.1 store has no water marker"
    assert not data.valid[c.nodata].any(), "a not-embedded pixel must be nodata"
    assert data.valid[c.water].all(), "water is embedded like land in v1.1"


def test_geotessera_layout_on_a_v11_copy_is_refused(world: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match=r"would be mapped as water.*tessera-dclimate-zarr"):
        open_source(world["tessera-dclimate-zarr"], "tessera-zarr")


def test_a_store_that_does_not_say_what_nan_means_is_refused(world: dict[str, Any],
                                                             tmp_path: Path) -> None:
    copy = tmp_path / "unknown.zarr"
    shutil.copytree(world["tessera-zarr"], copy)
    root = zarr.open_group(str(copy), mode="r+", zarr_format=3)
    quant = dict(root.attrs["geoemb:quantization"])  # type: ignore[arg-type]
    quant["scale"] = {"type": "array", "array_name": "scales"}  # no nodata declared
    root.attrs["geoemb:quantization"] = quant
    for key in list(root.attrs):
        if key.startswith("tessera:"):
            del root.attrs[key]
    with pytest.warns(UserWarning, match="Consolidated"):
        zarr.consolidate_metadata(str(copy))
    with pytest.raises(SourceError, match=r"does not say what a NaN scale means.*--source-kind"):
        detect_layout(str(copy))
    # declared explicitly, it is read: the user chose geotessera's convention
    assert isinstance(open_source(str(copy), "tessera-zarr"), TesseraZarrSource)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_year_missing_from_years_complete_is_refused(world: dict[str, Any], tmp_path: Path,
                                                       layout: str) -> None:
    path = _copy(world, tmp_path, layout)
    if layout == "tessera-icechunk":
        _edit_group(path, "32N", years_complete=[2024])
    else:
        root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        groups = dict(root["utm32"].attrs["geotessera:source_groups"])  # type: ignore[arg-type]
        groups["32N"] = dict(groups["32N"]) | {"years_complete": [2024]}
        root["utm32"].attrs["geotessera:source_groups"] = groups
        with pytest.warns(UserWarning, match="Consolidated"):
            zarr.consolidate_metadata(str(path))
    source = open_source(str(path))
    zone = utm_zone(32)
    c = synth.make_world(cities=1, size_km=SIZE, seed=SEED, years=(2024,))[0]
    with pytest.raises(NoDataError, match=r"zone 32N has no complete year 2023 \(years_complete: "
                                          r"\[2024\]\)"):
        source.availability(zone, 2023, c.window)
    with pytest.raises(NoDataError, match="32N has no complete year 2023"):
        source.read(zone, c.window, 2023)
    source.availability(utm_zone(37), 2023)  # the other zone still has 2023


def test_missing_years_complete_is_a_clear_error(world: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(world, tmp_path)
    _edit_group(path, "37S", years_complete=None)
    source = TesseraIcechunkSource(str(path))
    with pytest.raises(SourceError, match="37S has no valid 'years_complete'"):
        source.availability(utm_zone(37), 2024)


def test_coordinates_disagreeing_with_the_transform_are_refused(world: dict[str, Any],
                                                                tmp_path: Path) -> None:
    path = _copy(world, tmp_path)
    _edit_group(path, "32N", **{"spatial:transform": [10.0, 0.0, 163850.0, 0.0, -10.0,
                                                      9338880.0]})
    with pytest.raises(SourceError, match="32N: coordinates disagree with spatial:transform"):
        TesseraIcechunkSource(str(path)).availability(utm_zone(32), 2024)


def test_the_pre_adr024_centre_origin_transform_is_read_the_same(world: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    path = _copy(world, tmp_path)
    _edit_group(path, "32N", **{"spatial:transform": [10.0, 0.0, 163845.0, 0.0, -10.0,
                                                      9338875.0]})
    c = synth.make_world(cities=1, size_km=SIZE, seed=SEED, years=(2024,))[0]
    a = TesseraIcechunkSource(str(path)).read(c.zone, c.window, 2024)
    b = open_source(world["tessera-icechunk"]).read(c.zone, c.window, 2024)
    assert np.array_equal(a.codes, b.codes)
    assert np.array_equal(a.valid, b.valid)


def test_a_truncated_shard_is_a_clear_error(world: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(world, tmp_path)
    c = synth.make_world(cities=1, size_km=SIZE, seed=SEED, years=(2024,))[0]
    source = TesseraIcechunkSource.open(str(path), None)
    source.availability(c.zone, 2024, c.window)  # the groups' coordinates are read now
    for chunk in (path / "chunks").iterdir():  # then every stored object loses its tail
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])
    with pytest.raises(SourceError, match=r"utm32|32N/(embeddings|scales).*cannot be read "
                                          r".*truncated"):
        source.read(c.zone, c.window, 2024)
    with pytest.raises(SourceError, match=r"utm37 cannot be read.*damaged"):
        TesseraIcechunkSource.open(str(path), None).read(utm_zone(37), c.window, 2024)


def test_each_row_comes_from_its_own_hemisphere(tmp_path: Path) -> None:
    """A city across the equator is in 18N and in 18S (whose extent reaches 1,472 rows north
    of it); the rows north of the equator are read from 18N even where 18S says otherwise."""
    base = synth.make_world(cities=1, size_km=0.64, seed=3, years=(2024,))[0]
    moved = synth_dclimate.equator_city(dataclasses.replace(base), rows_north=20)
    world = [moved]

    def render(c: synth.SynthCity, year: int) -> np.ndarray:
        return c.embeddings[year]

    path = Path(synth_dclimate.write_tessera_icechunk(tmp_path, world, (2024,), render, 3))
    source = open_source(str(path))
    before = source.read(moved.zone, moved.window, 2024)
    equator = synth_dclimate.equator_row(moved.zone)
    north = equator - moved.window.row  # rows of the window north of the equator
    assert 0 < north < moved.window.height
    # spoil 18S's copy of the rows north of the equator: the reader must not take them
    session = _repo(path).writable_session("main")
    s = zarr.open_group(session.store, mode="r+")[f"{moved.zone.name[3:]}S"]["scales"]
    offset = moved.zone.pixel_offset(
        Affine(10, 0, 163840.0, 0, -10, 10014720.0 - 1e7))
    rows = slice(moved.window.row - offset[0], equator - offset[0])
    cols = slice(moved.window.col - offset[1], moved.window.col_stop - offset[1])
    s[2024 - 2017, rows, cols] = np.float32(50.0)  # type: ignore[index]  # 2024's time slot
    session.commit("spoil the overlap rows of the southern group")
    after = open_source(str(path)).read(moved.zone, moved.window, 2024)
    np.testing.assert_array_equal(after.scales, before.scales)
    np.testing.assert_array_equal(after.codes, before.codes)
    codes, scale = synth.quantise(moved.embeddings[2024])
    expected = codes.astype(np.float32) * scale[None]
    got = dequantised(after)
    np.testing.assert_array_equal(got[:, after.valid], expected[:, after.valid])
    assert np.array_equal(~after.valid, moved.nodata)
    assert after.valid[:north].any()
    assert after.valid[north:].any()


def test_neighbouring_zone_data_is_never_mapped_outside_its_band(tmp_path: Path) -> None:
    """Data of group 33N that lies west of 12°E (inside the extent 33N reaches past its band)
    is not planned for an AOI there: that ground belongs to zone 32."""
    base = synth.make_world(cities=1, size_km=0.64, seed=3, years=(2024,))[0]
    z33 = utm_zone(33)
    zone32_window = base.window
    x, y = base.zone.affine * (zone32_window.col, zone32_window.row)
    from pyproj import Transformer

    _, lat = Transformer.from_crs(base.zone.crs, "EPSG:4326", always_xy=True).transform(x, y)
    # move Zurich to 11.95°E (zone 32, 0.05° from 33) and write it into group 33N instead
    ex, ny = Transformer.from_crs("EPSG:4326", z33.crs, always_xy=True).transform(11.95, lat)
    col, row = ~z33.affine * (ex, ny)
    moved = dataclasses.replace(base, zone=z33, window=Window(round(row), round(col),
                                                              base.window.height,
                                                              base.window.width))
    path = synth_dclimate.write_tessera_icechunk(tmp_path, [moved], (2024,),
                                                 lambda c, yr: c.embeddings[yr], 3)
    source = open_source(path)
    assert source.zone_names() == ["utm33"]
    assert source.availability(z33, 2024, moved.window).blocks  # 33N does hold it
    from lczscale.config import GridConfig
    from lczscale.core.grid import Aoi, zones_for_aoi

    aoi = Aoi.from_bbox((11.92, lat - 0.01, 11.98, lat + 0.01))
    assert [z.name for z, _ in zones_for_aoi(aoi, GridConfig())] == ["utm32"]


def test_min_s2_obs_masks_thin_pixels(world: dict[str, Any]) -> None:
    c = synth.make_world(cities=1, size_km=SIZE, seed=SEED, years=(2024,))[0]
    for layout in LAYOUTS:
        full = open_source(world[layout]).read(c.zone, c.window, 2024)
        thin = open_source(world[layout], min_s2_obs=40)
        assert thin.describe()["min_s2_obs"] == 40
        data = thin.read(c.zone, c.window, 2024)
        assert data.valid.sum() < full.valid.sum()
        assert data.valid.any()
        assert not (data.valid & ~full.valid).any()
        assert not data.codes[:, ~data.valid].any()
        assert (data.scales[~data.valid] == 0).all()
    with pytest.raises(SourceError, match="min_s2_obs needs per-pixel optical observation"):
        open_source(world["tessera-zarr"], min_s2_obs=40)


def test_registry_and_chunk_index_plan_the_same(world: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(world, tmp_path)
    for z in (32, 37):
        with_registry = TesseraIcechunkSource.open(str(path), None).availability(
            utm_zone(z), 2024)
        shutil.rmtree(path.with_suffix(".registry"))
        index = TesseraIcechunkSource.open(str(path), None).availability(utm_zone(z), 2024)
        shutil.copytree(Path(world["tessera-icechunk"]).with_suffix(".registry"),
                        path.with_suffix(".registry"))
        assert with_registry == index
        assert with_registry.blocks


def _part(folder: Path, run: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    full = [{f.name: r.get(f.name) for f in tessera_registry.SCHEMA} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=tessera_registry.SCHEMA),
                   folder / f"{run}.parquet")


def _row(tile: str, when: str, embedded: bool, bbox: tuple[float, ...]) -> dict[str, Any]:
    w, s, e, n = bbox
    return {"tile": tile, "run_id": when, "assembled_at": when, "embedded": embedded,
            "refused_px": 0 if embedded else 4_194_304, "chunk_px": 4_194_304,
            "bbox_west": w, "bbox_south": s, "bbox_east": e, "bbox_north": n}


def test_registry_refill_and_antimeridian(tmp_path: Path) -> None:
    root = tmp_path / "x.registry"
    box = (8.0, 47.0, 8.3, 47.2)
    # a refilled zone-year keeps both parts: the later run's row wins, whatever file sorts first
    _part(root / "parts/zone=32N/year=2024", "b-refill", [
        _row("chunk_10_3", "2026-08-02T10:00:00+00:00", True, box)])
    _part(root / "parts/zone=32N/year=2024", "a-first", [
        _row("chunk_10_3", "2026-07-01T10:00:00+00:00", False, box),
        _row("chunk_10_4", "2026-07-01T10:00:00+00:00", True, box)])
    rows = tessera_registry.latest_rows(str(root), None, "32N", 2024)
    assert rows is not None
    assert sorted(r["tile"] for r in rows) == ["chunk_10_3", "chunk_10_4"]
    assert tessera_registry.embedded_shards(str(root), None, "32N", 2024) == {(10, 3), (10, 4)}
    assert tessera_registry.latest_rows(str(root), None, "32N", 2023) is None
    # zone 01: a tile across the antimeridian has bbox_west > bbox_east
    cross = _row("chunk_5_0", "2026-07-01T10:00:00+00:00", True, (179.8, 60.0, -179.7, 60.2))
    assert tessera_registry.meets_bbox(cross, (-179.9, 60.05, -179.8, 60.1))
    assert tessera_registry.meets_bbox(cross, (179.85, 60.05, 179.9, 60.1))
    assert tessera_registry.meets_bbox(cross, (179.0, 60.05, -179.0, 60.1))  # both across
    assert not tessera_registry.meets_bbox(cross, (170.0, 60.05, 171.0, 60.1))
    assert not tessera_registry.meets_bbox(cross, (-179.9, 61.0, -179.8, 61.1))


# ---- on S3 (moto's server on loopback) ------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server, environment(server.env):
        yield server


@pytest.fixture(scope="module")
def on_s3(s3: S3Server, world: dict[str, Any]) -> dict[str, str]:
    s3.create_bucket("tessera")
    out = {}
    for layout in LAYOUTS:
        local = Path(world[layout])
        out[layout] = s3.upload(local, "tessera", f"v1.1/{local.name}")
        registry = local.with_suffix(".registry")
        if registry.exists():
            s3.upload(registry, "tessera", f"v1.1/{registry.name}")
    return out


@pytest.mark.integration
@pytest.mark.parametrize("layout", LAYOUTS)
class TestV11OnS3(SourceConformance):
    @pytest.fixture
    def case(self, on_s3: dict[str, str], layout: str) -> SourceCase:
        zone, window, expected = dclimate_reference(SEED, CITIES, SIZE, 2024, 2)
        source = open_source(on_s3[layout])
        assert source.layout == layout
        return SourceCase(source, zone, 2024, window, expected, 128, "per_pixel_scale")


@pytest.mark.integration
def test_s3_reads_equal_local_reads_and_credentials_stay_in_the_environment(
        on_s3: dict[str, str], world: dict[str, Any]) -> None:
    import pickle

    c = synth.make_world(cities=1, size_km=SIZE, seed=SEED, years=(2024,))[0]
    for layout in LAYOUTS:
        remote = open_source(on_s3[layout])
        local = open_source(world[layout])
        a, b = remote.read(c.zone, c.window, 2024), local.read(c.zone, c.window, 2024)
        assert np.array_equal(a.codes, b.codes)
        assert np.array_equal(a.scales, b.scales)
        ra, la = (s.availability(c.zone, 2024, c.window) for s in (remote, local))
        assert ra.blocks == la.blocks
        assert ra.blocks
        assert ra.cells.keys() == la.cells.keys()
        assert all(np.array_equal(ra.cells[k], la.cells[k]) for k in ra.cells)
        assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in pickle.dumps(remote)
    assert isinstance(open_source(on_s3["tessera-dclimate-zarr"]), TesseraDclimateZarrSource)
