"""Keep secrets out of everything lczscale stores or sends.

A map's configuration is written into the cube's root attributes and, on Kubernetes, into a
ConfigMap; a training job into ``train_job.json``; and every Dask task that opens a source
carries the source's URL and storage options in its pickle. A secret that reaches a
configuration therefore ends up, in clear, in files and on every worker. Credentials belong in
the environment (or a profile or credentials file) of each machine, where s3fs, gcsfs, GDAL
and Icechunk read them; this module refuses the ways they slip into a configuration instead:

* **storage options are an allow-list** (:data:`ALLOWED_OPTIONS`): the fsspec/s3fs/gcsfs/HTTP
  settings a real user sets (``anon``, ``endpoint_url``, ``client_kwargs.region_name``, a
  ``User-Agent`` header …), screened recursively through mappings and lists. Any other key is
  refused, named by its path (``source_options.client_kwargs.headers.Authorization``).
* **URLs carry no user info** (``user:password@``, or a token as the user name) and **no query
  or fragment parameter that signs or authorises** (presigned S3/GCS URLs, Azure SAS ``sig=``,
  ``access_token=``, ``token=``, ``key=`` …).

Every refusal is one line: where, what, and the fix; never the value itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from lczscale.errors import ConfigError

FIX = ("give credentials through the environment or a profile on every machine "
       "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS; "
       "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN; for HTTP(S) a ~/.netrc with "
       "source_options {client_kwargs: {trust_env: true}}), never in the configuration, which is "
       "stored in the cube and sent to every worker")


class SecretInConfigError(ConfigError):
    """A configuration value carries (or may carry) a credential.

    Not a ``ValueError`` on purpose: raised from a pydantic validator it leaves the model
    unwrapped, so the command line prints this one line instead of a validation report.
    """


# -- URLs -------------------------------------------------------------------------------------

# Query/fragment parameters that sign or authorise a request: presigned S3 (SigV4 X-Amz-*, SigV2
# AWSAccessKeyId/Signature), GCS (X-Goog-*, GoogleAccessId), CloudFront (Signature, Policy,
# Key-Pair-Id), Azure SAS (sig), OAuth (access_token, code) and API keys.
_SIGNING_PARAM = re.compile(
    r"^(?:x-amz-.*|x-goog-.*|sig|signature|policy|key|key-pair-id|code|pwd|sas|"
    r"awsaccesskeyid|googleaccessid)$"
    r"|token|secret|passw|credential|signature|session|api.?key|access.?key|auth",
    re.IGNORECASE,
)


def _refuse(where: str, what: str) -> SecretInConfigError:
    return SecretInConfigError(f"{where}: {what}; {FIX}")


def _shown(parts: Any) -> str:
    """The URL without user info, query or fragment: safe to print."""
    host = parts.hostname or ""
    port = f":{parts.port}" if _port(parts) else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _port(parts: Any) -> int | None:
    try:
        return int(parts.port) if parts.port else None
    except ValueError:
        return None


def _check_one(url: str, where: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: say so without echoing it
        if "@" in url or "?" in url:
            raise _refuse(where, "a URL that cannot be parsed carries '@' or '?'") from None
        return
    if "://" in url and "@" in parts.netloc:
        kind = "a user name and password" if ":" in parts.netloc.rpartition("@")[0] \
            else "a user name (often a token)"
        raise _refuse(where, f"the URL {_shown(parts)} carries {kind} before '@'")
    for part, what in ((parts.query, "query"), (parts.fragment, "fragment")):
        names = [n for n in _param_names(part) if _SIGNING_PARAM.search(n)]
        if names:
            listed = ", ".join(_printable(n) for n in dict.fromkeys(names))
            raise _refuse(where, f"the URL {_shown(parts)} has the {what} parameter(s) {listed}, "
                          "which sign or authorise requests (a presigned or SAS URL, or a token)")


def _param_names(part: str) -> list[str]:
    """Parameter names of a query or fragment, ``&`` or ``;`` separated, percent-decoded."""
    return [unquote_plus(item.partition("=")[0]) for item in re.split("[&;]", part) if item]


def _printable(name: str) -> str:
    """A parameter name to print; a long or odd one may itself be the secret."""
    return repr(name) if len(name) <= 32 and re.fullmatch(r"[\w.-]+", name) else "(unnamed)"


def reject_url_secrets(url: str, where: str = "URL") -> str:
    """``url`` unchanged, or :class:`SecretInConfigError` when it carries a credential.

    fsspec chains (``simplecache::s3://…``) are checked link by link. Local paths pass unless
    they hold a signing query (``…?sig=…``).
    """
    for link in str(url).split("::"):
        _check_one(link, where)
    return url


# -- storage options --------------------------------------------------------------------------

Check = Callable[[Any, str], None]
Rule = Check | Mapping[str, Any]  # a leaf check, or the allowed keys of a nested mapping


def _plain(value: Any, path: str) -> None:
    """A scalar; strings that are URLs are screened as URLs."""
    if value is not None and not isinstance(value, str | int | float | bool):
        raise _refuse(path, f"must be a plain value, not a {type(value).__name__}")
    if isinstance(value, str) and ("://" in value or "?" in value):
        reject_url_secrets(value, path)


def _one_of(*allowed: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in allowed:
            listed = ", ".join(repr(a) for a in allowed)
            raise _refuse(path, f"looks like a credential unless it is one of {listed}")
    return check


def _headers(value: Any, path: str) -> None:
    """HTTP headers: a User-Agent only (any other header may authorise a request)."""
    if not isinstance(value, Mapping):
        raise _refuse(path, "must be a mapping of header names (only User-Agent is allowed)")
    for name, item in value.items():
        where = f"{path}.{name}"
        if str(name).lower() != "user-agent":
            raise _refuse(where, "is not a header lczscale lets through (only User-Agent; "
                          "Authorization, cookies and API-key headers are credentials)")
        _plain(item, where)


_RETRIES: Mapping[str, Rule] = {"max_attempts": _plain, "total_max_attempts": _plain,
                                "mode": _plain}
_CONFIG_KWARGS: Mapping[str, Rule] = {  # botocore.config.Config
    "connect_timeout": _plain, "read_timeout": _plain, "retries": _RETRIES,
    "max_pool_connections": _plain, "user_agent_extra": _plain, "user_agent_appid": _plain,
    "region_name": _plain, "signature_version": _plain, "tcp_keepalive": _plain,
    "request_checksum_calculation": _plain, "response_checksum_validation": _plain,
    "s3": {"addressing_style": _plain, "use_accelerate_endpoint": _plain,
           "payload_signing_enabled": _plain, "us_east_1_regional_endpoint": _plain},
}
_CLIENT_KWARGS: Mapping[str, Rule] = {  # botocore client (s3fs) / aiohttp session (HTTP)
    "endpoint_url": _plain, "region_name": _plain, "verify": _plain, "use_ssl": _plain,
    "api_version": _plain, "headers": _headers, "trust_env": _plain,
}
_S3_ADDITIONAL: Mapping[str, Rule] = {  # extra arguments of every S3 request
    "RequestPayer": _plain, "ServerSideEncryption": _plain, "SSEKMSKeyId": _plain,
    "ACL": _plain, "StorageClass": _plain,
}

ALLOWED_OPTIONS: Mapping[str, Rule] = {
    # every file system
    "anon": _plain, "endpoint_url": _plain, "default_block_size": _plain, "block_size": _plain,
    "default_cache_type": _plain, "default_fill_cache": _plain, "cache_type": _plain,
    "use_listings_cache": _plain, "listings_expiry_time": _plain, "max_paths": _plain,
    "skip_instance_cache": _plain, "version_aware": _plain,
    # s3fs (credentials: AWS_* variables, AWS_PROFILE or `profile`, a name, not a secret)
    "region": _plain, "use_ssl": _plain, "requester_pays": _plain, "profile": _plain,
    "cache_regions": _plain, "max_concurrency": _plain, "fixed_upload_size": _plain,
    "client_kwargs": _CLIENT_KWARGS, "config_kwargs": _CONFIG_KWARGS,
    "s3_additional_kwargs": _S3_ADDITIONAL,
    # gcsfs (credentials: GOOGLE_APPLICATION_CREDENTIALS; `token` only names a method)
    "project": _plain, "access": _plain, "consistency": _plain, "cache_timeout": _plain,
    "check_connection": _plain, "requests_timeout": _plain, "timeout": _plain,
    "default_location": _plain, "token": _one_of("anon", "google_default", "cloud"),
    # HTTP(S) (fsspec's HTTPFileSystem; top-level `headers` go with every request)
    "headers": _headers, "simple_links": _plain, "same_scheme": _plain, "size_policy": _plain,
    "encoded": _plain,
    # Azure (adlfs): the account is a name; keys and SAS tokens come from AZURE_STORAGE_*
    "account_name": _plain,
}

_SECRETISH = re.compile(r"secret|passw|token|key|credential|session|auth|sig|cookie|"
                        r"private|sas|connection", re.IGNORECASE)


def _screen(value: Any, rule: Rule, path: str) -> None:
    if isinstance(value, list | tuple):  # each item meets the rule of the key it is under
        for i, item in enumerate(value):
            _screen(item, rule, f"{path}[{i}]")
        return
    if callable(rule):
        rule(value, path)
        return
    if not isinstance(value, Mapping):
        raise _refuse(path, "must be a mapping of the allowed keys "
                      f"({', '.join(sorted(rule))})")
    for name, item in value.items():
        where = f"{path}.{name}"
        sub = rule.get(str(name))
        if sub is None:
            if _SECRETISH.search(str(name)):
                raise _refuse(where, "looks like a credential")
            raise _refuse(where, "is not on lczscale's allow-list of non-secret storage "
                          "options (lczscale.config.screening.ALLOWED_OPTIONS: anon, endpoint_url, "
                          "region, client_kwargs, config_kwargs, …)")
        _screen(item, sub, where)


def reject_option_secrets(options: Mapping[str, Any], where: str = "source_options"
                          ) -> dict[str, Any]:
    """``options`` unchanged when every key is on :data:`ALLOWED_OPTIONS` (recursively, through
    mappings and lists) and no value is a URL with a credential; else
    :class:`SecretInConfigError` naming the first offending key path."""
    if not isinstance(options, Mapping):
        raise _refuse(where, "must be a mapping such as {anon: true}")
    _screen(options, ALLOWED_OPTIONS, where)
    return dict(options)


# -- environment and shell lines ---------------------------------------------------------------

SECRET_ENV_NAME = re.compile(
    r"secret|password|passwd|token|credential|session|private|_key$|^aws_access_key_id$|"
    r"connection_string|sas", re.IGNORECASE)


def reject_env_secrets(env: Mapping[str, str], where: str) -> dict[str, str]:
    """Plain environment written into files (manifests, job scripts): no credential-named
    variable, no URL value with a credential."""
    for name, value in env.items():
        if SECRET_ENV_NAME.search(name):
            raise _refuse(f"{where}.{name}", "looks like a credential, and plain environment is "
                          "written into the rendered files (on Kubernetes: put it in a Secret and "
                          "name it in env_secret)")
        _plain(value, f"{where}.{name}")
    return dict(env)


_ASSIGNMENT = re.compile(r"(?:^|[\s;&|(,=])([A-Za-z_]\w*)=([^\s,;]*)")


def reject_shell_secrets(lines: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Shell lines copied into job scripts: no literal assignment to a credential-named
    variable (``export AWS_SECRET_ACCESS_KEY=…``; ``=$VAR`` and ``source FILE`` are fine) and
    no URL with a credential."""
    for i, line in enumerate(lines):
        for name, value in _ASSIGNMENT.findall(line):
            literal = value.strip("'\"")
            if SECRET_ENV_NAME.search(name) and literal and not literal.startswith("$"):
                raise _refuse(f"{where}[{i}]", f"assigns {name} a literal value, which would be "
                              "written into every job script; source it from a file only you "
                              "can read (`set -a; source ~/.config/lczscale/credentials.env`)")
        for word in line.split():
            if "://" in word:
                reject_url_secrets(word.strip("'\""), f"{where}[{i}]")
    return lines
