"""What this process's environment says about remote reads, in one place for fsspec and GDAL.

Endpoints, credentials and billing projects live in the environment of each worker (they are
never written into a source, a task graph or a cube), so everything here is read at call time
from ``os.environ`` (or a mapping given for tests) and returned, never stored.

- **User-Agent**: Source Cooperative's CDN refuses some default agents (Python-urllib gets 403,
  "error code: 1010"), so every request lczscale makes names itself: ``lczscale/<version>``.
- **S3 endpoint**: botocore and s3fs read ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; a
  ``endpoint_url`` storage option (or ``client_kwargs.endpoint_url``) wins over both.
- **Source Cooperative**: its public data is in the AWS bucket ``us-west-2.opendata.source.coop``
  and behind its own S3 API at ``https://data.source.coop``; both are read unsigned.
- **GCS billing**: the AlphaEarth bucket on GCS is requester/provider pays; the project billed
  comes from ``LCZSCALE_GCS_BILLING_PROJECT`` (or GDAL's own ``GS_USER_PROJECT``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from lczscale.version import __version__

USER_AGENT = f"lczscale/{__version__}"
SOURCE_COOP_BUCKET = "us-west-2.opendata.source.coop"
SOURCE_COOP_REGION = "us-west-2"
# Hosts of Source Cooperative's S3 API, which names objects /{account}/{repository}/{key}
# (no AWS bucket). A set so that a test can add its loopback stand-in.
SOURCE_COOP_HOSTS: set[str] = {"data.source.coop"}
BILLING_PROJECT_VARS = ("LCZSCALE_GCS_BILLING_PROJECT", "GS_USER_PROJECT")


def environ(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The environment options come from: ``env`` when given, else this process's."""
    return os.environ if env is None else env


def truthy(value: Any) -> bool:
    """True for True, 1 and strings like "yes"/"true"/"on" (options come from YAML or env)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "yes", "true", "on")
    return bool(value)


def s3_endpoint(options: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
                ) -> str | None:
    """The S3 endpoint URL a botocore client would use, or None for AWS itself."""
    opts = options or {}
    client = opts.get("client_kwargs") or {}
    given = opts.get("endpoint_url") or client.get("endpoint_url")
    if given:
        return str(given)
    e = environ(env)
    return e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None


def endpoint_host(endpoint: str | None) -> str | None:
    """The host name of an endpoint URL (``host:port`` and bare hosts accepted)."""
    if not endpoint:
        return None
    return urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}").hostname


def is_source_coop(bucket: str, endpoint: str | None) -> bool:
    """Whether an S3 object is Source Cooperative's public data: its AWS bucket read from AWS,
    or anything read through its own S3 API."""
    host = endpoint_host(endpoint)
    if host is None:
        return bucket == SOURCE_COOP_BUCKET
    return host in SOURCE_COOP_HOSTS


def billing_project(options: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
                    ) -> str | None:
    """The Google Cloud project billed for requester-pays reads: gcsfs's ``requester_pays``
    option when it names one, else the first of :data:`BILLING_PROJECT_VARS` that is set."""
    opts = options or {}
    pays = opts.get("requester_pays")
    if isinstance(pays, str) and pays and pays.lower() not in ("true", "false"):
        return pays
    if truthy(pays) and opts.get("project"):
        return str(opts["project"])
    e = environ(env)
    return next((e[k] for k in BILLING_PROJECT_VARS if e.get(k)), None)
