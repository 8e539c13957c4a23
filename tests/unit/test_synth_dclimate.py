"""The synthetic world in the dClimate v1.1 formats, read back with plain icechunk/zarr/pyarrow.

Checks the facts of /work/notes/dclimate-spec.md (section numbers in the test names' docs):
groups, full-zone shapes, chunks and shards, dims, dtypes, fills, codecs, coordinates,
attributes, the NaN-scale semantics (water embedded, the no-data swath not), an
equator-crossing city in both hemisphere groups, the registry and the plain Zarr copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import zarr
from pyproj import Transformer

from lczscale.errors import ConfigError
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.synth import world as synth
from lczscale.synth.dclimate import (
    HemisphereGroup,
    equator_city,
    shard_bbox_wgs84,
    write_tessera_icechunk,
    write_tessera_plain_zarr,
)

YEAR, SEED = 2024, 1
TIME_YEARS = list(range(2017, 2026))
T = TIME_YEARS.index(YEAR)
EQUATOR_ROWS_NORTH = 20  # of the equator city's 50 rows


def _render(c: synth.SynthCity, year: int) -> np.ndarray:
    return c.embeddings[year]


@pytest.fixture(scope="module")
def world() -> list[synth.SynthCity]:
    """Zurich (no-data strip), Basel (same zone), Nairobi (37S) and Nairobi moved onto the
    equator; every city has a 5×5 block of water."""
    cities = synth.make_world(cities=3, size_km=0.5, seed=SEED, years=(YEAR,))
    cities.append(equator_city(cities[2], EQUATOR_ROWS_NORTH))
    out = []
    for c in cities:
        water = c.water.copy()
        water[40:45, 5:10] = True
        out.append(dataclasses.replace(c, water=water & ~c.nodata))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory,
            world: list[synth.SynthCity]) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("dclimate")
    ice = write_tessera_icechunk(out, world, [YEAR], _render, SEED)
    plain = write_tessera_plain_zarr(out, world, [YEAR], _render, SEED)
    return out, ice, plain


def _repo(path: str) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(path))


@pytest.fixture(scope="module")
def ice_root(written: tuple[Path, str, str]) -> tuple[icechunk.Session, zarr.Group]:
    session = _repo(written[1]).readonly_session(branch="main")
    return session, zarr.open_group(session.store, mode="r")


def _group(root: zarr.Group, name: str) -> zarr.Group:
    g = root[name]
    assert isinstance(g, zarr.Group)
    return g


def _attrs(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    return dict(node.attrs)


def _dims(a: zarr.Array) -> tuple[str | None, ...] | None:
    return getattr(a.metadata, "dimension_names", None)


def _array(g: zarr.Group, name: str) -> zarr.Array:
    a = g[name]
    assert isinstance(a, zarr.Array)
    return a


def _group_rowcol(attrs: dict[str, Any], c: synth.SynthCity) -> tuple[int, int]:
    """Group pixel of the city's top-left, from the group's own transform and CRS."""
    x = 160_000.0 + 10 * c.window.col
    y = 9_340_000.0 - 10 * c.window.row  # EPSG:326NN
    if attrs["proj:code"].startswith("EPSG:327"):
        y += 10_000_000.0
    t = attrs["spatial:transform"]
    col, row = (x - t[2]) / t[0], (y - t[5]) / t[4]
    assert col == int(col)
    assert row == int(row)
    return int(row), int(col)


def _expected(c: synth.SynthCity) -> tuple[np.ndarray, np.ndarray]:
    codes, scales = quantise_per_pixel(_render(c, YEAR))
    return codes, scales


def _inner_codecs(a: zarr.Array) -> list[dict[str, Any]]:
    codecs: Any = a.metadata.to_dict()["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    return list(codecs[0]["configuration"]["codecs"])


# --------------------------------------------------------------------------------------------
# Icechunk store


def test_groups_root_attrs_and_tags(written: tuple[Path, str, str],
                                    ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§1: groups NNN/NNS where cities lie; §2 root attrs; §0 tags."""
    _, root = ice_root
    assert sorted(root.group_keys()) == ["32N", "37N", "37S"]
    a = _attrs(root)
    assert a["geoemb:model"] == "https://geotessera.org/model/1.1"
    assert a["geoemb:quantization"]["scale"] == {"type": "array", "array_name": "scales",
                                                 "nodata": "NaN"}
    assert a["checkpoint_id"] == "tessera_v1_1_aws_encoder"
    assert a["optical_min_obs"] == 15
    assert a["geoemb:dimensions"] == 128
    assert a["geoemb:data_type"] == "int8"
    assert a["geoemb:spatial_layout"] == "utm_zones"
    assert a["geoemb:gsd"] == 10.0
    assert [c["name"] for c in a["zarr_conventions"]] == ["geoemb:"]
    assert not [k for k in a if k.startswith("tessera:")]
    tags = set(_repo(written[1]).list_tags())
    assert {"zone-32N-2024", "zone-37N-2024", "zone-37S-2024", "year-2024-complete"} <= tags


def test_group_attrs(ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§2: CRS, corner-origin transform, real full extents, years_complete, runs."""
    _, root = ice_root
    n, s = _attrs(_group(root, "37N")), _attrs(_group(root, "37S"))
    assert n["crs"] == n["proj:code"] == "EPSG:32637"
    assert s["crs"] == s["proj:code"] == "EPSG:32737"
    assert n["spatial:transform"] == [10.0, 0.0, 163840.0, 0.0, -10.0, 9338880.0]
    assert s["spatial:transform"] == [10.0, 0.0, 163840.0, 0.0, -10.0, 10014720.0]
    assert n["spatial:shape"] == [933888, 67584]
    assert s["spatial:shape"] == [890880, 67584]
    assert n["spatial:bbox"] == [163840.0, 0.0, 839680.0, 9338880.0]
    assert s["spatial:bbox"] == [163840.0, 1105920.0, 839680.0, 10014720.0]
    assert n["spatial:dimensions"] == ["northing", "easting"]
    assert n["spatial:registration"] == "pixel"
    assert n["spatial:transform_type"] == "affine"
    assert "PROJCRS" in n["proj:wkt2"]
    assert isinstance(n["proj:projjson"], dict)
    assert [c["name"] for c in n["zarr_conventions"]] == ["proj", "spatial"]
    for a, name in ((n, "37N"), (s, "37S")):
        assert a["years_complete"] == [YEAR]
        assert a["runs"] == {str(YEAR): {"run_id": f"{name}-{YEAR}-0001-a",
                                         "assembled_at": "2026-06-01T00:00:00+00:00"}}
        assert a["zone_scheme"] == "utm_6deg_nominal"
        assert a["layout"] == "global"


def test_arrays(ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§3: dims, dtypes, full shapes, chunks/shards, fills, PCodec on scales, zstd elsewhere."""
    _, root = ice_root
    g = _group(root, "37S")
    h, w = 890880, 67584
    emb = _array(g, "embeddings")
    assert emb.shape == (9, h, w, 128)
    assert emb.dtype == np.int8
    assert emb.fill_value == 0
    assert emb.chunks == (1, 256, 256, 128)
    assert emb.shards == (1, 2048, 2048, 128)
    assert _dims(emb) == ("time", "northing", "easting", "band")
    assert [c["name"] for c in _inner_codecs(emb)] == ["bytes", "zstd"]
    sc = _array(g, "scales")
    assert sc.shape == (9, h, w)
    assert sc.dtype == np.float32
    assert np.isnan(sc.fill_value)
    assert sc.chunks == (1, 256, 256)
    assert sc.shards == (1, 2048, 2048)
    assert [c["name"] for c in _inner_codecs(sc)] == ["numcodecs.pcodec"]
    for name in ("s2_obs_count", "s1_asc_obs_count", "s1_desc_obs_count"):
        a = _array(g, name)
        assert (a.shape, a.dtype, a.fill_value) == ((9, h, w), np.uint16, 0)
        assert a.chunks == (1, 256, 256)
        assert a.shards == (1, 2048, 2048)
        assert _dims(a) == ("time", "northing", "easting")
    for name in ("s2_month_covered", "s1_asc_month_covered", "s1_desc_month_covered"):
        a = _array(g, name)
        assert (a.shape, a.dtype, a.fill_value) == ((9, h, w, 12), np.int8, 0)
        assert a.chunks == (1, 256, 256, 12)
        assert a.shards == (1, 2048, 2048, 12)
        assert _dims(a) == ("time", "northing", "easting", "month")
        assert _attrs(a) == {"dtype": "bool"}


def test_coordinates(ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§3: time ns of Jan 1 with CF attrs, half-open bounds, centres, band, month."""
    _, root = ice_root
    for name, top in (("37N", 9338880.0), ("37S", 10014720.0)):
        g = _group(root, name)
        time = _array(g, "time")
        assert time.dtype == np.int64
        assert list(np.asarray(time[:]).astype("datetime64[ns]")) == [
            np.datetime64(f"{y}-01-01", "ns") for y in TIME_YEARS]
        assert _attrs(time) == {"units": "nanoseconds since 1970-01-01",
                                    "calendar": "proleptic_gregorian", "bounds": "time_bnds"}
        bnds = np.asarray(_array(g, "time_bnds")[:])
        assert bnds.shape == (9, 2)
        assert (bnds[1:, 0] == bnds[:-1, 1]).all()
        assert _dims(_array(g, "time_bnds")) == ("time", "bnds")
        northing = _array(g, "northing")
        assert northing.dtype == np.float64
        assert northing.shape == (_attrs(g)["spatial:shape"][0],)
        assert list(np.asarray(northing[:3])) == [top - 5, top - 15, top - 25]
        easting = np.asarray(_array(g, "easting")[:])
        assert easting[0] == 163845.0
        assert easting[-1] == 839675.0
        assert (np.asarray(_array(g, "band")[:]) == np.arange(128)).all()
        month = _array(g, "month")
        assert month.dtype == np.int16
        assert list(np.asarray(month[:])) == list(range(1, 13))


def _read_city(g: zarr.Group, c: synth.SynthCity, rows: slice = slice(None)
               ) -> dict[str, np.ndarray]:
    r, col = _group_rowcol(_attrs(g), c)
    h, w = c.window.height, c.window.width
    rs = slice(r + (rows.start or 0), r + (h if rows.stop is None else rows.stop))
    cs = slice(col, col + w)
    names = ["embeddings", "scales", "s2_obs_count", "s1_asc_obs_count", "s1_desc_obs_count",
             "s2_month_covered", "s1_asc_month_covered", "s1_desc_month_covered"]
    return {n: np.asarray(_array(g, n)[T, rs, cs]) for n in names}


def test_pixel_values(world: list[synth.SynthCity],
                      ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§3/§7: codes and scales are quantise_per_pixel of the render; water is embedded; the
    no-data swath is not (NaN scale, zero codes, < 15 optical observations)."""
    _, root = ice_root
    for c, name in zip(world[:3], ["32N", "32N", "37S"], strict=True):
        got = _read_city(_group(root, name), c)
        codes, scales = _expected(c)
        emb = got["embeddings"]  # (y, x, band)
        done = ~c.nodata
        assert np.array_equal(emb[done], np.moveaxis(codes, 0, -1)[done])
        assert np.array_equal(got["scales"][done], scales[done])
        assert c.water.any()
        assert np.isfinite(got["scales"][c.water]).all()
        assert (np.abs(emb[c.water]).sum(axis=-1) > 0).any()
        assert np.isnan(got["scales"][c.nodata]).all()
        assert not emb[c.nodata].any()
        s2 = got["s2_obs_count"]
        assert ((s2 >= 15) == np.isfinite(got["scales"])).all()
        for sensor in ("s2", "s1_asc", "s1_desc"):
            counts, months = got[f"{sensor}_obs_count"], got[f"{sensor}_month_covered"]
            assert set(np.unique(months)) <= {0, 1}
            assert (months.sum(axis=-1) == np.minimum(counts, 12)).all()
    assert world[0].nodata.any()
    # a pixel just outside a city is fill
    g = _group(root, "32N")
    r, col = _group_rowcol(_attrs(g), world[0])
    assert np.isnan(_array(g, "scales")[T, r - 1, col])
    assert _array(g, "s2_obs_count")[T, r - 1, col] == 0


def test_equator_city_in_both_groups(world: list[synth.SynthCity],
                                     ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§1: rows north of the equator in 37N; every row in 37S, its above-equator rows too."""
    _, root = ice_root
    c = world[3]
    n, s = _group(root, "37N"), _group(root, "37S")
    r_n, _ = _group_rowcol(_attrs(n), c)
    r_s, _ = _group_rowcol(_attrs(s), c)
    assert r_n + EQUATOR_ROWS_NORTH == 933888  # city rows 0..19 are N's last rows
    assert r_s == 1472 - EQUATOR_ROWS_NORTH  # S row 1472 starts at the equator
    north = _read_city(n, c, slice(0, EQUATOR_ROWS_NORTH))
    south = _read_city(s, c)
    codes, scales = _expected(c)
    assert np.array_equal(south["scales"], scales)
    assert np.array_equal(np.moveaxis(south["embeddings"], -1, 0), codes)
    for k, v in north.items():  # the overlap rows agree in both groups, every array
        assert np.array_equal(v, south[k][:EQUATOR_ROWS_NORTH], equal_nan=True), k


def test_live_shards(world: list[synth.SynthCity],
                     ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§3: the shard census of scales lists only the shards the cities touch."""
    session, root = ice_root

    async def coords(path: str) -> list[tuple[int, ...]]:
        return [c async for c in session.chunk_coordinates(path)]

    r, col = _group_rowcol(_attrs(_group(root, "37N")), world[3])
    assert asyncio.run(coords("/37N/scales")) == [(T, r // 2048, col // 2048)]
    assert len(asyncio.run(coords("/32N/scales"))) == 2  # Zurich and Basel, one shard each
    assert len(asyncio.run(coords("/37S/embeddings"))) == 2  # 4-D: trailing 0


def test_registry(written: tuple[Path, str, str], world: list[synth.SynthCity],
                  ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§5: hive parts, 23 typed columns, one row per written shard, KV metadata, bbox."""
    out = written[0]
    parts = out / "dclimate.registry" / "parts"
    files = sorted(p.relative_to(parts).as_posix() for p in parts.rglob("*.parquet"))
    assert files == [f"zone={z}/year={YEAR}/{z}-{YEAR}-0001-a.parquet"
                     for z in ("32N", "37N", "37S")]
    f = parts / files[0]
    kv = pq.read_metadata(f).metadata
    assert {k: kv[k] for k in (b"zone", b"year", b"run_id")} == {
        b"zone": b"32N", b"year": b"2024", b"run_id": b"32N-2024-0001-a"}
    schema = pq.read_schema(f)
    assert len(schema) == 23
    assert schema.field("tile").type == pa.string()
    assert not schema.field("tile").nullable
    assert schema.field("embedded").type == pa.bool_()
    assert not schema.field("embedded").nullable
    assert schema.field("refused_px").type == pa.int64()
    assert schema.field("median_obs_where_thin").type == pa.float64()
    full = pa.schema([*schema.remove_metadata(), pa.field("zone", pa.string()),
                      pa.field("year", pa.int32())])
    table = pads.dataset(parts, schema=full, partitioning="hive").to_table()
    assert table.num_columns == 25
    rows = {(r["zone"], r["tile"]): r for r in table.to_pylist()}
    _, root = ice_root
    zurich = world[0]
    r, col = _group_rowcol(_attrs(_group(root, "32N")), zurich)
    tile = f"chunk_{r // 2048}_{col // 2048}"
    row = rows[("32N", tile)]
    assert row["year"] == YEAR
    assert row["embedded"]
    assert row["optical_min_obs"] == 15
    assert row["refused_px"] == int(zurich.nodata.sum()) > 0
    assert row["refused_px"] == row["refused_no_optical_px"] + row["refused_thin_px"] + \
        row["refused_no_radar_px"]
    assert row["chunk_px"] == 2048 * 2048
    assert row["eligible_px"] == zurich.window.size
    assert row["bbox_west"] < zurich.city.lon < row["bbox_east"]
    assert row["bbox_south"] < zurich.city.lat < row["bbox_north"]
    assert len([k for k in rows if k[0] == "32N"]) == 2
    assert {k[0] for k in rows} == {"32N", "37N", "37S"}
    # the 37S shard corners are in EPSG:32737: its bbox is south of the equator… and north
    s_rows = [v for k, v in rows.items() if k[0] == "37S"]
    lon, lat = Transformer.from_crs("EPSG:32637", "EPSG:4326", always_xy=True).transform(
        160_000 + 10 * world[2].window.col, 9_340_000 - 10 * world[2].window.row)
    assert any(v["bbox_south"] < lat < v["bbox_north"] and v["bbox_west"] < lon < v["bbox_east"]
               for v in s_rows)


# --------------------------------------------------------------------------------------------
# Plain Zarr copy


@pytest.fixture(scope="module")
def plain_root(written: tuple[Path, str, str]) -> zarr.Group:
    return zarr.open_group(written[2], mode="r", use_consolidated=True)


def test_plain_layout(written: tuple[Path, str, str], plain_root: zarr.Group) -> None:
    """§4: utmNN groups in EPSG:326NN, N ∪ S rounded up to 4096, chunks 32 / shards 4096,
    Blosc zstd 3 everywhere, coords, attrs."""
    root = plain_root
    assert sorted(root.group_keys()) == ["utm32", "utm37"]
    a = _attrs(root)
    assert a["geotessera:mask_source"] == "source_nodata"
    assert a["geoemb:landmask"] is False
    assert a["geoemb:model"] == "https://geotessera.org/model/1.1"
    assert a["geotessera:source_snapshot"] == _repo(written[1]).lookup_branch("main")
    assert a["geotessera:source_store"] == written[1]
    assert a["geotessera:migration_id"]
    g = _group(root, "utm37")
    ga = _attrs(g)
    h, w = 1_826_816, 69_632
    assert ga["proj:code"] == "EPSG:32637"
    assert ga["spatial:dimensions"] == ["y", "x"]
    assert ga["spatial:transform"] == [10.0, 0.0, 163840.0, 0.0, -10.0, 9338880.0]
    assert ga["spatial:shape"] == [h, w]
    assert ga["spatial:bbox"] == [163840.0, 9338880.0 - 10 * h, 163840.0 + 10 * w, 9338880.0]
    assert ga["geotessera:mask_source"] == "source_nodata"
    assert sorted(ga["geotessera:source_groups"]) == ["37N", "37S"]
    assert ga["geotessera:source_groups"]["37S"]["years_complete"] == [YEAR]
    assert ga["geotessera:source_groups"]["37S"]["proj:code"] == "EPSG:32737"
    assert "years_complete" not in ga
    assert sorted(_attrs(_group(root, "utm32"))["geotessera:source_groups"]) == ["32N"]
    emb = _array(g, "embeddings")
    assert emb.shape == (9, 128, h, w)
    assert emb.dtype == np.int8
    assert emb.fill_value == 0
    assert emb.chunks == (1, 128, 32, 32)
    assert emb.shards == (1, 128, 4096, 4096)
    assert _dims(emb) == ("time", "band", "y", "x")
    sc = _array(g, "scales")
    assert sc.chunks == (1, 32, 32)
    assert sc.shards == (1, 4096, 4096)
    assert np.isnan(sc.fill_value)
    assert _dims(sc) == ("time", "y", "x")
    mc = _array(g, "s1_desc_month_covered")
    assert mc.shape == (9, h, w, 12)
    assert mc.shards == (1, 4096, 4096, 12)
    assert _dims(mc) == ("time", "y", "x", "month")
    for name in ("embeddings", "scales", "s2_obs_count", "s2_month_covered"):
        inner = _inner_codecs(_array(g, name))
        assert inner[-1]["name"] == "blosc"
        assert inner[-1]["configuration"]["cname"] == "zstd"
        assert inner[-1]["configuration"]["clevel"] == 3
    y = _array(g, "y")
    assert y.dtype == np.float64
    assert list(np.asarray(y[:2])) == [9338875.0, 9338865.0]
    assert _array(g, "x")[0] == 163845.0
    time = _array(g, "time")
    assert time.dtype == np.int32
    assert list(np.asarray(time[:])) == TIME_YEARS
    assert _attrs(time) == {}
    assert _array(g, "band").dtype == np.int32
    assert _array(g, "month").dtype == np.int16
    assert _attrs(_array(g, "time_bnds"))["units"] == "nanoseconds since 1970-01-01"


def test_plain_values_match_icechunk(world: list[synth.SynthCity], plain_root: zarr.Group,
                                     ice_root: tuple[icechunk.Session, zarr.Group]) -> None:
    """§4: same pixels as the source; southern y negative; the equator city whole."""
    _, root = ice_root
    g = _group(plain_root, "utm37")
    y = _array(g, "y")
    for c, src in ((world[2], "37S"), (world[3], "37S")):
        r = c.window.row - 112  # the plain grid starts at the N group's top row
        col = c.window.col - 384
        assert np.isclose(y[r], 9_340_000.0 - 10 * c.window.row - 5)
        rs, cs = slice(r, r + c.window.height), slice(col, col + c.window.width)
        want = _read_city(_group(root, src), c)
        assert np.array_equal(np.asarray(_array(g, "scales")[T, rs, cs]), want["scales"],
                              equal_nan=True)
        assert np.array_equal(np.moveaxis(np.asarray(_array(g, "embeddings")[T, :, rs, cs]),
                                          0, -1), want["embeddings"])
        assert np.array_equal(np.asarray(_array(g, "s1_asc_month_covered")[T, rs, cs]),
                              want["s1_asc_month_covered"])
    assert float(np.asarray(y[world[2].window.row - 112])) < 0  # Nairobi: negative northings


def test_rejects_bad_years_and_existing(tmp_path: Path, world: list[synth.SynthCity]) -> None:
    with pytest.raises(ConfigError, match=r"2017\.\.2025"):
        write_tessera_icechunk(tmp_path, world[:1], [2016], _render, SEED)
    (tmp_path / "dclimate.zarr").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        write_tessera_plain_zarr(tmp_path, world[:1], [YEAR], _render, SEED)


def test_complete_years_and_no_registry(tmp_path: Path, world: list[synth.SynthCity]) -> None:
    """§2: ``years_complete`` is what the caller declares (a listed year may be unwritten)."""
    path = write_tessera_icechunk(tmp_path, world[2:3], [YEAR], _render, SEED,
                                  complete_years=[2024, 2017], registry=False)
    repo = _repo(path)
    root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    assert sorted(root.group_keys()) == ["37S"]  # Nairobi alone: no 37N
    assert _attrs(_group(root, "37S"))["years_complete"] == [2017, 2024]
    assert "year-2017-complete" not in set(repo.list_tags())
    assert not (tmp_path / "dclimate.registry").exists()


def test_antimeridian_bbox() -> None:
    """§1: a zone-60 shard across ±180° has west > east (GeoJSON/STAC)."""
    g = HemisphereGroup(60, "N")
    x, y = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(180.0, 60.0)
    sy, sx = int((9_338_880 - y) // 10) // 2048, int((x - 163_840) // 10) // 2048
    west, south, east, north = shard_bbox_wgs84(
        g, sy * 2048, (sy + 1) * 2048, sx * 2048, (sx + 1) * 2048)
    assert west > 0 > east
    assert west > east
    assert south < 60.0 < north
