"""AlphaEarth COGs where they live: S3 on any endpoint, GCS (requester pays), HTTP(S) and
Source Cooperative, read through GDAL's network file systems configured from the environment,
by many threads at once, with lczscale's User-Agent on every request; every year 2017–2025.

The S3 conformance suite and a map over an S3 copy are in
``tests/integration/test_object_stores.py``; no GCS server can run here, so GCS is checked up
to the GDAL configuration it would be read with."""

from __future__ import annotations

import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rasterio.errors import RasterioIOError

from lczscale.errors import NoDataError, SourceError
from lczscale.io import remote_env
from lczscale.io.cog_files import RemoteReadError, classify
from lczscale.io.gdal_vsi import vsi_target
from lczscale.io.retry import is_transient
from lczscale.io.sources import aef_index
from lczscale.io.sources.aef_cogs import AefCogSource, AefFile
from lczscale.io.sources.registry import detect_layout
from lczscale.io.stores import client_options
from lczscale.synth import world as synth
from lczscale.synth.aef import aef_codes, write_aef_cogs
from tests.servers import RangeServer, range_server

SEED = 5
YEARS = tuple(range(2017, 2026))  # what the published indexes span
SECRET = "aef-remote-secret-7Qx2"
SC = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual"
GCS = "gs://alphaearth_foundations/satellite_embedding/v1/annual"


# --------------------------------------------------------------------------------------------
# GDAL configuration from the environment (GDAL option names: GDAL's "Virtual file systems")


def test_s3_endpoint_comes_from_the_environment() -> None:
    href = "s3://bkt/aef/2024/32N/x.tiff"
    t = vsi_target(href, None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert t is not None
    assert t.path == "/vsis3/bkt/aef/2024/32N/x.tiff"
    assert t.options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert t.options["AWS_HTTPS"] == "NO"
    assert t.options["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert t.options["AWS_NO_SIGN_REQUEST"] == "NO"
    assert "AWS_REGION" not in t.options
    t = vsi_target(href, None, {"AWS_ENDPOINT_URL": "http://other:1",
                                "AWS_ENDPOINT_URL_S3": "https://s3.example.org:8443"})
    assert t is not None
    assert t.options["AWS_S3_ENDPOINT"] == "s3.example.org:8443"
    assert t.options["AWS_HTTPS"] == "YES"
    given = {"endpoint_url": "http://minio:9000", "anon": True, "requester_pays": True}
    t = vsi_target(href, given, {"AWS_ENDPOINT_URL": "http://other:1"})
    assert t is not None
    assert t.options["AWS_S3_ENDPOINT"] == "minio:9000"
    assert t.options["AWS_NO_SIGN_REQUEST"] == "YES"
    assert t.options["AWS_REQUEST_PAYER"] == "requester"
    # GDAL's own settings in the environment win: GDAL reads them there
    t = vsi_target(href, None, {"AWS_S3_ENDPOINT": "gdal.example.org", "AWS_HTTPS": "NO",
                                "AWS_ENDPOINT_URL": "http://other:1",
                                "GDAL_HTTP_USERAGENT": "mine/1"})
    assert t is not None
    assert not {"AWS_S3_ENDPOINT", "AWS_HTTPS",
                                  "GDAL_HTTP_USERAGENT"} & set(t.options)
    t = vsi_target(href, None, {})  # AWS itself
    assert t is not None
    assert "AWS_S3_ENDPOINT" not in t.options
    assert t.options["GDAL_HTTP_USERAGENT"] == remote_env.USER_AGENT
    assert t.options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert vsi_target("memory://x/y.tiff") is None  # fsspec's, not GDAL's
    assert vsi_target("/data/x.tiff") is None


def test_credentials_are_never_copied_into_the_configuration() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIA-aef-remote", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_SESSION_TOKEN": SECRET, "GOOGLE_APPLICATION_CREDENTIALS": "/secret/sa.json",
           "AWS_ENDPOINT_URL": "https://s3.example.org", "LCZSCALE_GCS_BILLING_PROJECT": "p"}
    for href in ("s3://b/k.tiff", f"{GCS}/2024/32N/x.tiff", "https://example.org/x.tiff"):
        blob = repr(vsi_target(href, {"anon": False}, env))
        assert SECRET not in blob
        assert "AKIA" not in blob
        assert "/secret/" not in blob


def test_source_cooperative_is_read_unsigned_through_its_own_api() -> None:
    href = f"{SC}/2024/32N/x.tiff"
    aws = vsi_target(href, None, {})
    assert aws is not None
    assert aws.path == f"/vsis3/{SC.removeprefix('s3://')}/2024/32N/x.tiff"
    assert aws.options["AWS_REGION"] == "us-west-2"
    assert aws.options["AWS_NO_SIGN_REQUEST"] == "YES"
    sc = vsi_target(href, None, {"AWS_ENDPOINT_URL": "https://data.source.coop"})
    assert sc is not None
    assert sc.path == "/vsis3/tge-labs/aef/v1/annual/2024/32N/x.tiff", "no AWS bucket there"
    assert sc.options["AWS_S3_ENDPOINT"] == "data.source.coop"
    assert sc.options["AWS_HTTPS"] == "YES"
    assert sc.options["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert sc.options["AWS_NO_SIGN_REQUEST"] == "YES"
    signed = vsi_target(href, None, {"AWS_ENDPOINT_URL": "https://data.source.coop",
                                     "AWS_NO_SIGN_REQUEST": "NO"})
    assert signed is not None
    assert "AWS_NO_SIGN_REQUEST" not in signed.options
    # fsspec (index reads) agrees, and names lczscale
    assert client_options(SC)["anon"] is True
    assert client_options("s3://tge-labs/aef", {"endpoint_url": "https://data.source.coop"}
                          )["anon"] is True
    assert "anon" not in client_options("s3://my-bucket/aef")
    assert client_options(SC)["config_kwargs"]["user_agent_extra"] == remote_env.USER_AGENT
    http = client_options("https://data.source.coop/tge-labs/aef/v1/annual")
    assert http["client_kwargs"]["headers"]["User-Agent"].startswith("lczscale/")
    mine = client_options("https://x.org/a", {"client_kwargs": {"headers": {"user-agent": "m"}}})
    assert mine["client_kwargs"]["headers"] == {"user-agent": "m"}


def test_gcs_billing_project_from_the_environment_and_not_in_pickles(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GDAL config a gs:// COG is read with carries the billing project of the worker's
    environment; the source pickles without it or any credential. (No GCS server here.)"""
    for var in ("GS_USER_PROJECT", "LCZSCALE_GCS_BILLING_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/service-account.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    href = f"{GCS}/2024/32N/xaaaaaaaaaaaaaaaa-0000000000-0000000000.tiff"
    source = AefCogSource(GCS, files=[AefFile(href, 2024, "EPSG:32632",
                                              (460_000.0, 5_247_440.0, 462_560.0, 5_250_000.0))])
    blob = pickle.dumps(source)
    monkeypatch.setenv("LCZSCALE_GCS_BILLING_PROJECT", "lcz-billing-4711")
    clone = pickle.loads(blob)  # on a worker: its environment names the project
    t = vsi_target(clone.files[0].href, clone.storage_options)
    assert t is not None
    assert t.path == f"/vsigs/{href.removeprefix('gs://')}"
    assert t.options["GS_USER_PROJECT"] == "lcz-billing-4711"
    assert "GS_NO_SIGN_REQUEST" not in t.options
    assert client_options(GCS)["requester_pays"] == "lcz-billing-4711"  # gcsfs, for the index
    for leak in (SECRET, "/secret/", "lcz-billing-4711"):
        assert leak.encode() not in blob
        assert leak.encode() not in pickle.dumps(clone)
    # GDAL's own name is honoured: GDAL reads it from the environment, gcsfs is told
    monkeypatch.delenv("LCZSCALE_GCS_BILLING_PROJECT")
    monkeypatch.setenv("GS_USER_PROJECT", "gdal-project")
    t = vsi_target(href)
    assert t is not None
    assert "GS_USER_PROJECT" not in t.options
    assert client_options(GCS)["requester_pays"] == "gdal-project"
    anon = vsi_target(href, {"token": "anon"})
    assert anon is not None
    assert anon.options["GS_NO_SIGN_REQUEST"] == "YES"


@pytest.mark.parametrize(("text", "kind"), [
    ("ObjectNotFound: The specified key does not exist.", "missing"),
    ("HTTP response code: 404", "missing"),
    ("AccessDenied: Access Denied", "denied"),
    ("HTTP response code: 403", "denied"),
    ("No valid GCS credentials found", "denied"),
    ("CURL error: Failed to connect to 127.0.0.1 port 9: Could not connect to server",
     "transient"),
    ("HTTP response code: 503", "transient"),
    ("_TIFFPartialReadStripArray:Cannot read offset/size for strile around ~503", "unreadable"),
    ("'/vsis3/b/x.tiff' not recognized as being in a supported file format.", "unreadable"),
])
def test_failures_are_sorted_by_what_fixes_them(text: str, kind: str) -> None:
    with pytest.raises(RasterioIOError, match="Read failed") as raised:
        raise RasterioIOError("Read failed. See previous exception for details.") from \
            RasterioIOError(text)
    assert classify(raised.value) == kind
    err = RemoteReadError("x could not be reached")
    assert isinstance(err, SourceError), "the tile runner retries it"
    assert is_transient(err), "the tile runner retries it"


# --------------------------------------------------------------------------------------------
# Every year, 2017–2025


@pytest.fixture(scope="module")
def nine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthCity]:
    world = synth.make_world(cities=1, size_km=0.5, seed=SEED, years=YEARS)
    out = tmp_path_factory.mktemp("aef-nine")
    write_aef_cogs(out, world, YEARS, lambda c, y: c.embeddings[y], SEED, file_px=256)
    return out / "aef", world[0]


def test_every_year_2017_to_2025(nine: tuple[Path, synth.SynthCity], tmp_path: Path) -> None:
    root, c = nine
    layout, found = detect_layout(str(root))
    assert layout == "aef-cogs"
    assert "years 2017..2025" in found
    stac_only = tmp_path / "stac-only"
    shutil.copytree(root, stac_only)
    (stac_only / "aef_index.parquet").unlink()
    for url in (str(root), str(stac_only)):
        s = AefCogSource.open(url)
        assert s.years == list(YEARS)
        for year in YEARS:
            data = s.read(c.zone, c.window, year)
            want = aef_codes(c, c.embeddings[year], SEED)
            np.testing.assert_array_equal(data.codes[:, data.valid], want[:, want[0] != -128])
            assert data.valid.any()
            assert s.availability(c.zone, year).intersects(c.window)
        with pytest.raises(NoDataError, match="2016"):
            s.read(c.zone, c.window, 2016)


def test_stac_items_with_only_a_start_datetime(nine: tuple[Path, synth.SynthCity],
                                               tmp_path: Path) -> None:
    """Annual STAC items may carry the range (start_datetime) and a null datetime."""
    root, c = nine
    copy = tmp_path / "ranges"
    shutil.copytree(root, copy)
    (copy / "aef_index.parquet").unlink()
    path = copy / "aef_index_stac_geoparquet.parquet"
    t = pq.read_table(path)
    stamps = t.column("datetime")
    t = t.set_column(t.column_names.index("datetime"), "datetime",
                     pa.nulls(t.num_rows, stamps.type))
    if "start_datetime" in t.column_names:
        t = t.set_column(t.column_names.index("start_datetime"), "start_datetime", stamps)
    else:
        t = t.append_column("start_datetime", stamps)
    pq.write_table(t, path)
    s = AefCogSource.open(str(copy))
    assert s.years == list(YEARS)
    ref = AefCogSource.open(str(root))
    for year in (2017, 2025):
        np.testing.assert_array_equal(s.read(c.zone, c.window, year).codes,
                                      ref.read(c.zone, c.window, year).codes)


def test_a_worker_reads_one_year_of_the_index_once(nine: tuple[Path, synth.SynthCity],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, c = nine
    blob = pickle.dumps(AefCogSource.open(str(root)))
    aef_index._cached_files.cache_clear()
    built: list[int] = []
    make = aef_index.make_file

    def counted(href: str, year: int, *args: Any) -> AefFile:
        built.append(int(year))
        return make(href, year, *args)

    monkeypatch.setattr(aef_index, "make_file", counted)
    for _ in range(3):  # three tasks unpickling the same source in one worker process
        pickle.loads(blob).read(c.zone, c.window, 2019)
    assert set(built) == {2019}
    assert len(built) == len(aef_index.read_index(str(root / "aef_index.parquet"), "aef", None,
                                                  2019))


# --------------------------------------------------------------------------------------------
# Served over HTTP and S3 (a loopback file server that watches its clients)


def _serve_copy(root: Path, tree: Path, prefix: str) -> Path:
    dst = root / prefix
    shutil.copytree(tree, dst)
    return dst


def _index_with(tree: Path, out: Path, href: str) -> None:
    """``tree``'s aef index with each path rewritten as ``href.format(path=…)``."""
    t = pq.read_table(tree / "aef_index.parquet")
    paths = [href.format(path=p) for p in t.column("path").to_pylist()]
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(t.set_column(t.column_names.index("path"), "path", pa.array(paths)),
                   out / "aef_index.parquet")


def _agents(server: RangeServer, suffix: str) -> set[str]:
    return {agent for _, path, agent in server.requests if path.endswith(suffix)}


def test_published_paths_are_read_from_the_mirror_that_holds_them(
    nine: tuple[Path, synth.SynthCity], tmp_path: Path
) -> None:
    """An index served from a copy (as https://data.source.coop/tge-labs/aef/v1/annual) lists
    the publisher's s3:// paths; the COGs are read from the copy, over HTTP, as lczscale."""
    root, c = nine
    local = AefCogSource.open(str(root))
    www = tmp_path / "www"
    copy = _serve_copy(www, root, "tge-labs/aef/v1/annual")
    _index_with(root, copy, SC + "/{path}")
    assert aef_index.mirrored(f"{SC}/2024/32N/x.tiff", "https://data.source.coop/tge-labs/aef/"
                              "v1/annual") == "https://data.source.coop/tge-labs/aef/v1/annual/"\
        "2024/32N/x.tiff"
    assert aef_index.mirrored(f"{GCS}/2024/32N/x.tiff", "s3://mirror/aef/v1/annual"
                              ) == "s3://mirror/aef/v1/annual/2024/32N/x.tiff"
    assert aef_index.mirrored(f"{SC}/2024/32N/x.tiff", "/data/aef/v1/annual") is None
    assert aef_index.mirrored(f"{SC}/2024/32N/x.tiff", SC) is None
    assert aef_index.mirrored("s3://mine/v1/annual/x.tiff", "https://h/v1/annual") is None
    with range_server(www) as server:
        s = AefCogSource.open(f"{server.url}/tge-labs/aef/v1/annual")
        assert all(f.href.startswith(f"{server.url}/tge-labs/aef/v1/annual/20") for f in s.files)
        for year in (2017, 2025):
            np.testing.assert_array_equal(s.read(c.zone, c.window, year).codes,
                                          local.read(c.zone, c.window, year).codes)
        s.close()
    assert _agents(server, ".tiff") == {remote_env.USER_AGENT}, "GDAL's requests"
    assert _agents(server, ".parquet") == {remote_env.USER_AGENT}, "fsspec's requests"


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_two_threads_read_two_remote_cogs_at_once(
    nine: tuple[Path, synth.SynthCity], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    """Two threads reading two remote COGs are both in flight at the same moment: the server
    holds each COG request until a request for another COG arrives (or 30 s pass), which
    reads serialised behind a lock would never do."""
    root, c = nine
    local = AefCogSource.open(str(root))
    www = tmp_path / "www"
    _serve_copy(www, root, "aefbucket")
    years = (2019, 2023)  # two years: two different files
    with range_server(www) as server:
        if scheme == "http":
            url, options = f"{server.url}/aefbucket", None
        else:
            monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
            _index_with(root, tmp_path / "index", "s3://aefbucket/{path}")
            url, options = str(tmp_path / "index"), {"anon": True}
        s = AefCogSource.open(url, options)
        assert s.files[0].href.startswith(f"{scheme}://")
        server.hold = 30.0  # from here on, a COG request waits for a second one
        with ThreadPoolExecutor(2) as pool:
            reads = list(pool.map(lambda y: s.read(c.zone, c.window, y), years))
        assert server.overlapped, "the two reads never were in flight at the same time"
        for year, data in zip(years, reads, strict=True):
            want = local.read(c.zone, c.window, year)
            np.testing.assert_array_equal(data.codes, want.codes)
            np.testing.assert_array_equal(data.valid, want.valid)
    assert _agents(server, ".tiff") == {remote_env.USER_AGENT}


def test_missing_damaged_and_unreachable_remote_cogs(nine: tuple[Path, synth.SynthCity],
                                                     tmp_path: Path) -> None:
    """Each remote failure is one line naming the COG and its fix; a server that went away
    is a RemoteReadError (transient: the tile runner retries it)."""
    root, c = nine
    www = tmp_path / "www"
    copy = _serve_copy(www, root, "aef")
    with range_server(www) as server:
        s = AefCogSource.open(f"{server.url}/aef")
        by_year = {f.year: f for f in s.files if f.window_in(c.zone).intersection(c.window)}
        Path(copy / by_year[2018].href.split("/aef/", 1)[1]).unlink()
        damaged = copy / by_year[2019].href.split("/aef/", 1)[1]
        damaged.write_bytes(damaged.read_bytes()[:3000])
        with pytest.raises(SourceError, match=r"2018/.*\.tiff is listed as an AlphaEarth COG "
                                              r"but does not exist; re-download") as err:
            s.read(c.zone, c.window, 2018)
        assert "\n" not in str(err.value)
        with pytest.raises(SourceError, match=r"2019/.*\.tiff .*(not a readable GeoTIFF|"
                                              r"truncated or damaged)"):
            s.read(c.zone, c.window, 2019)
        files = s.files
    gone = AefCogSource("stopped", files=files)  # the same COGs, the server stopped
    with pytest.raises(RemoteReadError, match=r"2020/.*could not be reached .*; check the "
                                              r"endpoint") as exc:
        gone.read(c.zone, c.window, 2020)
    assert is_transient(exc.value)
