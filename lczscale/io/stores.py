"""URL + storage options → a zarr store or an fsspec filesystem.

Local paths and every fsspec URL (``s3://``, ``https://``, ``memory://`` …) go through the same
two functions, so no source or writer has a special case for where its bytes live. Credentials
are never stored here: fsspec/s3fs read them from the environment on each worker. What this
process adds to the caller's options (:func:`client_options`: the User-Agent, the GCS billing
project, unsigned reads of Source Cooperative) is also read from the environment at each call.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from lczscale.errors import CubeError
from lczscale.io.remote_env import USER_AGENT, billing_project, is_source_coop, s3_endpoint


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than ``file``."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> Path:
    """The local filesystem path of ``url`` (a ``file://`` URL or a path, ``~`` expanded)."""
    return Path(url.removeprefix("file://")).expanduser()


def client_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``: the caller's, plus what this process's environment implies
    and the caller did not set — a ``User-Agent`` on HTTP(S) and S3 requests (Source
    Cooperative refuses some default agents), ``anon`` for Source Cooperative's public S3 data,
    and gcsfs's ``requester_pays`` project for GCS. Not stored anywhere: made at each call."""
    opts = dict(storage_options or {})
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("http", "https"):
        client = dict(opts.get("client_kwargs") or {})
        headers = dict(client.get("headers") or {})
        if not any(k.lower() == "user-agent" for k in headers):
            headers["User-Agent"] = USER_AGENT
        opts["client_kwargs"] = {**client, "headers": headers}
    elif scheme in ("s3", "s3a"):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("user_agent_extra", USER_AGENT)
        opts["config_kwargs"] = config
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if "anon" not in opts and is_source_coop(bucket, s3_endpoint(opts)):
            opts["anon"] = True
    elif scheme in ("gs", "gcs"):
        project = billing_project(opts)
        if project and "requester_pays" not in opts:
            opts["requester_pays"] = project
    return opts


def open_store(
    url: str, *, read_only: bool = True, storage_options: dict[str, Any] | None = None
) -> Store:
    """A zarr store rooted at ``url``."""
    if is_remote(url):
        return FsspecStore.from_url(
            url, storage_options=client_options(url, storage_options), read_only=read_only
        )
    path = local_path(url)
    if not read_only:
        path.mkdir(parents=True, exist_ok=True)
    return LocalStore(path, read_only=read_only)


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    if not is_remote(url):
        return fsspec.filesystem("file"), str(local_path(url).absolute())
    fs, path = fsspec.core.url_to_fs(url, **client_options(url, storage_options))
    return fs, path


def store_filesystem(store: Store) -> tuple[AbstractFileSystem, str]:
    """(filesystem, root path) behind an opened zarr store."""
    if isinstance(store, FsspecStore):
        fs = store.fs
        if getattr(fs, "asynchronous", False):  # zarr's own async instance: make a sync twin
            opts = {k: v for k, v in fs.storage_options.items()
                    if k not in ("asynchronous", "loop")}
            fs = type(fs)(**opts)
        return fs, store.path.rstrip("/")
    return fsspec.filesystem("file"), str(Path(str(getattr(store, "root", "."))).absolute())


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` names a file or directory; over plain HTTP(S), where a directory is not
    an object, whether the server answers for it at all (404 included: it is up)."""
    fs, path = filesystem(url, storage_options)
    if is_http(url):
        # a GET, not HEAD/info: fsspec turns a refused connection in info() into a 404.
        # A Zarr store or tile tree has no object at its own URL (404): its files decide.
        with contextlib.suppress(FileNotFoundError):
            fs.cat_file(path, start=0, end=1)
        return True
    return bool(fs.exists(path))


def is_http(url: str) -> bool:
    """Whether ``url`` is plain HTTP(S), where nothing lists: existence is probed by reads."""
    return url.startswith(("http://", "https://"))


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def child_url(root: str, *parts: str) -> str:
    """``root/part/…`` for names that cannot leave ``root``.

    Names come from tile keys and zone names, which a damaged or hostile cube or config could
    set to ``../elsewhere``; every write lczscale makes goes through here or through zarr, so
    nothing is ever written outside the cube root.
    """
    for part in parts:
        if not _NAME.match(part) or part in (".", ".."):
            raise CubeError(
                f"refusing to write {part!r} under {root}: names inside a cube are letters, "
                "digits, '_', '-' and '.', and may not leave the cube root"
            )
    return "/".join([root.rstrip("/"), *parts])


def root_attributes(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attributes in a Zarr v3 store's root ``zarr.json`` ({} when there is none or it is
    not JSON): a cheap look for layout detection, without opening the hierarchy."""
    fs, path = filesystem(url, storage_options)
    try:
        doc = json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except (FileNotFoundError, IsADirectoryError, ValueError, UnicodeDecodeError):
        return {}
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else {}
