"""Secret screening: every way a credential slips into a configuration is refused, in one line
that names where it is and the fix and never the secret; what real users set goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lczscale.cli import main
from lczscale.config import MapConfig
from lczscale.config.clusters import parse_cluster_config
from lczscale.config.screening import (
    SecretInConfigError,
    reject_env_secrets,
    reject_option_secrets,
    reject_url_secrets,
)
from lczscale.errors import ConfigError
from lczscale.train.settings import LabelSet, TrainJob

SECRET = "zq7-planted-Secret-9vX"


def refused(call: Any, where: str) -> str:
    """The one-line message of ``call()``'s refusal, checked for what every refusal says."""
    with pytest.raises(SecretInConfigError) as err:
        call()
    msg = str(err.value)
    assert SECRET not in msg, msg
    assert "\n" not in msg, msg
    assert msg.startswith(where), msg
    assert "environment" in msg, msg  # the fix
    assert "AWS_PROFILE" in msg, msg
    return msg


# -- URLs -------------------------------------------------------------------------------------

LEAKY_URLS = {
    "presigned S3 (SigV4)": ("https://b.s3.amazonaws.com/e.zarr?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                             f"&X-Amz-Credential=AKIA%2F{SECRET}&X-Amz-Date=20260101T000000Z"
                             f"&X-Amz-Security-Token={SECRET}&X-Amz-Signature={SECRET}",
                             "X-Amz-Signature"),
    "presigned S3 (SigV2)": (f"https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA&Signature="
                             f"{SECRET}&Expires=1", "Signature"),
    "presigned GCS": (f"https://storage.googleapis.com/b/k?X-Goog-Signature={SECRET}",
                      "X-Goog-Signature"),
    "Azure SAS": (f"https://acct.blob.core.windows.net/c/e.zarr?sv=2024-01-01&sr=c&sig={SECRET}",
                  "'sig'"),
    "access_token": (f"https://host/e.zarr?access_token={SECRET}", "access_token"),
    "token": (f"https://host/e.zarr?token={SECRET}", "'token'"),
    "key": (f"https://host/e.zarr?key={SECRET}", "'key'"),
    "api_key": (f"https://host/stac?api_key={SECRET}", "api_key"),
    "token in a fragment": (f"https://host/e.zarr#access_token={SECRET}", "fragment"),
    "user and password": (f"s3://AKIAEXAMPLE:{SECRET}@bucket/e.zarr", "user name and password"),
    "token as the user name": (f"https://{SECRET}@host/e.zarr", "user name (often a token)"),
    "token as the user name, empty password": (f"https://{SECRET}:@host/e.zarr", "password"),
    "in an fsspec chain": (f"simplecache::https://u:{SECRET}@host/e.zarr", "password"),
}


@pytest.mark.parametrize("name", LEAKY_URLS)
def test_urls_carrying_secrets_are_refused(name: str) -> None:
    url, what = LEAKY_URLS[name]
    msg = refused(lambda: reject_url_secrets(url, "source"), "source: ")
    assert what in msg


@pytest.mark.parametrize("url", [
    "s3://bucket/emb.zarr", "gs://b/e.zarr", "/data/e.zarr", "file:///data/e.zarr",
    "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet",
    "http://127.0.0.1:9000/bucket/e.zarr", "https://host/e.zarr?version=2&format=zarr",
    "tls://10.0.0.1:8786", "C:\\data\\e.zarr",
])
def test_plain_urls_pass(url: str) -> None:
    assert reject_url_secrets(url) == url


@pytest.mark.parametrize("field", ["source", "model", "out", "stac_collection",
                                   "scheduler_address", "cluster"])
def test_every_url_field_of_a_map_config_is_screened(field: str) -> None:
    base = {"source": "e.zarr", "model": "m", "out": "o.zarr"}
    bad = base | {field: f"https://{SECRET}@host/x"}
    refused(lambda: MapConfig.model_validate(bad), f"{field}: ")


def test_training_jobs_are_screened() -> None:
    labels = (LabelSet(name="z", path="z.tif"),)
    for field in ("source", "out"):
        bad = {"source": "e.zarr", "out": "m", "labels": labels} | {field: f"s3://k:{SECRET}@b/x"}
        refused(lambda bad=bad: TrainJob.model_validate(bad), f"{field}: ")
    refused(lambda: LabelSet(name="z", path=f"https://h/z.tif?sig={SECRET}"), "labels: path")
    job = {"source": "e.zarr", "out": "m", "labels": [{"name": "z", "path": f"https://h/z?"
                                                                            f"token={SECRET}"}]}
    refused(lambda: TrainJob.model_validate_json(__import__("json").dumps(job)), "labels: path")


# -- storage options --------------------------------------------------------------------------

LEAKY_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "s3fs key/secret": ({"key": "AKIA", "secret": SECRET}, "source_options.key"),
    "s3fs token": ({"token": SECRET}, "source_options.token"),
    "gcsfs token as a dict": ({"token": {"refresh_token": SECRET}}, "source_options.token"),
    "botocore client credentials": ({"client_kwargs": {"aws_secret_access_key": SECRET}},
                                    "source_options.client_kwargs.aws_secret_access_key"),
    "Authorization header": ({"headers": {"Authorization": f"Bearer {SECRET}"}},
                             "source_options.headers.Authorization"),
    "Authorization under client_kwargs": (
        {"client_kwargs": {"headers": {"authorization": f"Bearer {SECRET}"}}},
        "source_options.client_kwargs.headers.authorization"),
    "API-key header": ({"headers": {"X-API-Key": SECRET}}, "source_options.headers.X-API-Key"),
    "headers as a list of pairs": (
        {"client_kwargs": {"headers": [["Authorization", f"Bearer {SECRET}"]]}},
        "source_options.client_kwargs.headers[0][0]"),
    "headers as a list of mappings": ({"headers": [{"Authorization": SECRET}]},
                                      "source_options.headers[0].Authorization"),
    "a secret in a list": ({"config_kwargs": {"retries": [{"token": SECRET}]}},
                           "source_options.config_kwargs.retries[0].token"),
    "aiohttp auth": ({"client_kwargs": {"auth": [SECRET, SECRET]}},
                     "source_options.client_kwargs.auth"),
    "SSE-C key": ({"s3_additional_kwargs": {"SSECustomerKey": SECRET}},
                  "source_options.s3_additional_kwargs.SSECustomerKey"),
    "Azure": ({"account_name": "acct", "account_key": SECRET}, "source_options.account_key"),
    "Azure SAS": ({"sas_token": SECRET}, "source_options.sas_token"),
    "connection string": ({"connection_string": f"AccountKey={SECRET}"},
                          "source_options.connection_string"),
    "endpoint with a password": ({"endpoint_url": f"https://minio:{SECRET}@h:9000"},
                                 "source_options.endpoint_url"),
    "signed endpoint": ({"client_kwargs": {"endpoint_url": f"https://h/?sig={SECRET}"}},
                        "source_options.client_kwargs.endpoint_url"),
    "an unknown option": ({"mystery": SECRET}, "source_options.mystery"),
    "an object": ({"session": object()}, "source_options.session"),
}


@pytest.mark.parametrize("name", LEAKY_OPTIONS)
def test_options_not_on_the_allow_list_are_refused(name: str) -> None:
    options, where = LEAKY_OPTIONS[name]
    refused(lambda: reject_option_secrets(options), f"{where}: ")
    refused(lambda: MapConfig(source="s3://b/e.zarr", model="m", out="o.zarr",
                              source_options=options), f"{where}: ")


def test_what_real_users_set_goes_through() -> None:
    options = {
        "anon": True, "endpoint_url": "https://data.source.coop", "region": "us-west-2",
        "requester_pays": True, "profile": "work", "use_ssl": True, "default_block_size": 2**22,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-central-1",
                          "verify": "/etc/ssl/ca.pem", "headers": {"User-Agent": "me/1"},
                          "trust_env": True},
        "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 10, "mode":
                                                            "adaptive"},
                          "s3": {"addressing_style": "path"}, "max_pool_connections": 64},
        "s3_additional_kwargs": {"RequestPayer": "requester", "ServerSideEncryption": "aws:kms",
                                 "SSEKMSKeyId": "arn:aws:kms:eu:1:key/abc"},
        "project": "my-billing", "token": "anon", "headers": {"user-agent": "me/1"},
        "cache_type": "readahead", "account_name": "public",
    }
    assert reject_option_secrets(options) == options
    cfg = MapConfig(source="s3://b/e.zarr", model="m", out="o.zarr", source_options=options)
    assert cfg.source_options == options
    for method in ("anon", "google_default", "cloud"):
        reject_option_secrets({"token": method})


def test_plain_environment_with_credentials_is_refused() -> None:
    for env in ({"AWS_SECRET_ACCESS_KEY": SECRET}, {"AZURE_STORAGE_SAS_TOKEN": SECRET},
                {"AWS_ACCESS_KEY_ID": SECRET}, {"AWS_ENDPOINT_URL": f"https://u:{SECRET}@h"}):
        name = next(iter(env))
        refused(lambda env=env: reject_env_secrets(env, "env"), f"env.{name}: ")
        refused(lambda env=env: parse_cluster_config({"kind": "kubernetes", "env": env}),
                f"env.{name}: ")
    assert reject_env_secrets({"AWS_DEFAULT_REGION": "eu"}, "env") == {
        "AWS_DEFAULT_REGION": "eu"}


def test_screening_errors_are_config_errors() -> None:
    """The command line prints a ConfigError as one line and exits 2."""
    assert issubclass(SecretInConfigError, ConfigError)
    assert not issubclass(SecretInConfigError, ValueError)  # pydantic would wrap it


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "config file"])
def test_the_cli_refuses_with_one_line_and_writes_nothing(how: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = tmp_path / "cube.zarr"
    options = {"client_kwargs": {"headers": {"Authorization": f"Bearer {SECRET}"}}}
    args = ["map", "--source", "https://host/emb.zarr", "--model", str(tmp_path / "m"),
            "--out", str(out), "--quiet"]
    if how == "flag":
        args += ["--source-options", yaml.safe_dump(options, default_flow_style=True)]
    else:
        (tmp_path / "map.yaml").write_text(yaml.safe_dump({"source_options": options}))
        args += ["--config", str(tmp_path / "map.yaml")]
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lczscale map: error: source_options.client_kwargs.headers."
                               "Authorization: ")
    assert "AWS_ACCESS_KEY_ID" in lines[0]
    assert SECRET not in captured.err + captured.out
    assert sorted(tmp_path.rglob("*")) == before
    assert not out.exists()


def test_the_cli_refuses_a_presigned_source(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"https://b.s3.amazonaws.com/e.zarr?X-Amz-Credential=A&X-Amz-Signature={SECRET}"
    assert main(["map", "--source", url, "--model", "m", "--out", str(tmp_path / "c.zarr"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "X-Amz-Signature" in err
    assert SECRET not in err
    assert not list(tmp_path.iterdir())


def test_deploy_refuses_a_secret_in_any_input(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    good_cluster = {"kind": "kubernetes", "volume_claim": "d"}
    good_map = {"source": "s3://b/e.zarr", "model": "/data/m", "out": "s3://b/c.zarr"}
    cases = {
        "cluster env": ({**good_cluster, "env": {"GITHUB_TOKEN": SECRET}}, good_map),
        "map options": (good_cluster, {**good_map, "source_options": {"secret": SECRET}}),
        "map source": (good_cluster, {**good_map, "source": f"https://h/e.zarr?sig={SECRET}"}),
    }
    for name, (cluster, map_cfg) in cases.items():
        (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
        (tmp_path / "map.yaml").write_text(yaml.safe_dump(map_cfg))
        out = tmp_path / "out"
        code = main(["deploy", "kubernetes", "--cluster", str(tmp_path / "cluster.yaml"),
                     "--map", str(tmp_path / "map.yaml"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1, (name, err)
        assert SECRET not in err, (name, err)
        assert not out.exists(), name


def test_a_signed_stac_asset_link_is_refused() -> None:
    """A STAC API that signs its asset links (Azure SAS, presigned S3) would put the signature
    into every pickled task and the cube: refused, naming the item, never echoing it."""
    from lczscale.errors import ConfigError
    from lczscale.io.sources.stac_search import assets_of

    item = {"id": "x1", "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "assets": {"data": {"href": "https://acct.blob.core.windows.net/c/x.tif?sv=2024&"
                                        "sig=SeCrEt123"}}}
    with pytest.raises(ConfigError, match="x1") as err:
        assets_of([item], "https://example.org/")
    assert "SeCrEt123" not in str(err.value)
    item["assets"]["data"]["href"] = "https://example.org/x.tif"  # type: ignore[index]
    assert assets_of([item], "https://example.org/")[0].href == "https://example.org/x.tif"
