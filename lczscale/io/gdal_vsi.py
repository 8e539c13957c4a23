"""Object URLs as GDAL virtual file paths, with the GDAL configuration that reaches them.

Remote COGs are read through GDAL's own network file systems — ``/vsis3/`` (S3 and
S3-compatible stores), ``/vsigs/`` (Google Cloud Storage), ``/vsicurl/`` (plain HTTP(S)) —
rather than through fsspec file objects handed to rasterio (``opener=``): GDAL does ranged
reads with its own caches and retries, and a dataset handle per thread reads with no lock
between threads, where the Python file-object bridge needed one process-wide lock (rasterio
issue #3636) and with rasterio 1.4 did not open S3 files at all (``OpenerRegistrationError``).

GDAL does not read every variable an AWS or Google client does: ``AWS_ENDPOINT_URL`` means
nothing to it — it wants ``AWS_S3_ENDPOINT`` (host[:port]), ``AWS_HTTPS`` and
``AWS_VIRTUAL_HOSTING`` — and it knows no billing-project variable but ``GS_USER_PROJECT``.
:func:`vsi_target` translates, at each open, from the environment and the source's non-secret
storage options into a path and config options for ``rasterio.Env``. **Credentials are never
translated**: GDAL itself reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS`` …
from the environment, so no secret is copied into anything that is pickled or written. A GDAL
option set in the environment wins over the defaults made here (GDAL reads it there), except
``anon`` given in the storage options, which is explicit for this source.

Option names: GDAL "Virtual file systems" (/vsis3/: AWS_S3_ENDPOINT, AWS_HTTPS,
AWS_VIRTUAL_HOSTING, AWS_NO_SIGN_REQUEST, AWS_REGION, AWS_REQUEST_PAYER; /vsigs/:
GS_NO_SIGN_REQUEST, GS_USER_PROJECT) and "Configuration options" (GDAL_HTTP_USERAGENT,
GDAL_DISABLE_READDIR_ON_OPEN, GDAL_HTTP_MAX_RETRY, GDAL_HTTP_RETRY_DELAY).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import rasterio
from rasterio.session import DummySession

from lczscale.io.remote_env import (
    SOURCE_COOP_BUCKET,
    SOURCE_COOP_REGION,
    USER_AGENT,
    billing_project,
    endpoint_host,
    environ,
    is_source_coop,
    s3_endpoint,
    truthy,
)

# Every remote open: name ourselves; never list the COG's directory looking for sidecar files
# (.ovr, .aux.xml: AEF has none, and a Source Cooperative directory holds thousands of files);
# retry throttled (429) and 5xx answers a few times inside GDAL.
COMMON = {
    "GDAL_HTTP_USERAGENT": USER_AGENT,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


@dataclass(frozen=True)
class VsiTarget:
    """Where GDAL reads ``href`` and the config options it needs there (no secrets: build it
    where it is used, from that process's environment)."""

    href: str
    path: str
    options: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> rasterio.Env:
        """A ``rasterio.Env`` with the options; the dummy session keeps rasterio from starting
        a boto3 session (GDAL reads AWS credentials from the environment itself)."""
        return rasterio.Env(session=DummySession(), **self.options)

    def where(self) -> str:
        """How the file was reached, for messages: the GDAL path and any custom endpoint."""
        host = self.options.get("AWS_S3_ENDPOINT")
        return f"{self.path}" + (f" at {host}" if host else "")


def _defaults(values: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """``values`` minus the options the environment sets (GDAL reads those itself)."""
    return {k: v for k, v in values.items() if k not in env}


def _s3(href: str, rest: str, opts: Mapping[str, Any], env: Mapping[str, str]) -> VsiTarget:
    bucket, _, key = rest.partition("/")
    endpoint = s3_endpoint(opts, env if "AWS_S3_ENDPOINT" not in env else {})
    # Explicit values even where they are GDAL's defaults: rasterio sets a main thread's
    # options process-wide, and another thread's read must not inherit them.
    values = {**COMMON, "AWS_HTTPS": "YES", "AWS_VIRTUAL_HOSTING": "TRUE",
              "AWS_NO_SIGN_REQUEST": "NO"}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        values["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        values["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        values["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path style: what custom endpoints serve
    public = is_source_coop(bucket, endpoint)
    if public and endpoint_host(endpoint) is not None and bucket == SOURCE_COOP_BUCKET:
        bucket, _, key = key.partition("/")  # Source Cooperative's API: /{account}/{repo}/…
    if public and not endpoint:
        values["AWS_REGION"] = SOURCE_COOP_REGION
    if public:
        values["AWS_NO_SIGN_REQUEST"] = "YES"
    region = (opts.get("client_kwargs") or {}).get("region_name")
    if region:
        values["AWS_REGION"] = str(region)
    if truthy(opts.get("requester_pays")):
        values["AWS_REQUEST_PAYER"] = "requester"
    values = _defaults(values, env)
    if "anon" in opts:
        values["AWS_NO_SIGN_REQUEST"] = "YES" if truthy(opts["anon"]) else "NO"
    return VsiTarget(href, f"/vsis3/{bucket}/{key}", values)


def _gs(href: str, rest: str, opts: Mapping[str, Any], env: Mapping[str, str]) -> VsiTarget:
    values = dict(COMMON)
    project = billing_project(opts, env)
    if project:
        values["GS_USER_PROJECT"] = project
    values = _defaults(values, env)
    if truthy(opts.get("anon")) or opts.get("token") == "anon":
        values["GS_NO_SIGN_REQUEST"] = "YES"
    return VsiTarget(href, f"/vsigs/{rest}", values)


def vsi_target(href: str, storage_options: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None) -> VsiTarget | None:
    """The GDAL path and config for a remote ``href``; None for schemes GDAL has no network
    file system for here (``memory://`` …: those go through fsspec)."""
    scheme, sep, rest = href.partition("://")
    if not sep:
        return None
    opts = storage_options or {}
    e = environ(env)
    if scheme in ("s3", "s3a"):
        return _s3(href, rest, opts, e)
    if scheme in ("gs", "gcs"):
        return _gs(href, rest, opts, e)
    if scheme in ("http", "https"):
        return VsiTarget(href, f"/vsicurl/{href}", _defaults(dict(COMMON), e))
    return None
