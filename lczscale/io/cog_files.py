"""Opening COGs wherever they are, from many threads at once, and saying why one cannot be.

Three ways to a file (:func:`locate`):

- a local path: opened natively;
- ``s3://``, ``gs://``, ``http(s)://``: GDAL's network file systems (:mod:`lczscale.io.gdal_vsi`)
  inside a ``rasterio.Env`` built from this process's environment for each open *and* read
  (a handle keeps using GDAL's config while it reads). Nothing is locked: a GDAL dataset handle
  must not be shared between threads, so :class:`Handles` keeps one per thread and file;
- any other fsspec URL (``memory://`` …): an fsspec file object through rasterio's ``opener=``,
  which is not thread-safe (rasterio issue #3636) — those opens and reads take one
  process-wide lock and are closed after each use. No published copy needs this path.

Failures are sorted by what fixes them (:func:`classify`): a missing object, a refused one
(credentials, billing), a passing network fault (retried: :class:`RemoteReadError` is a
``ConnectionError``) or bytes that are not a GeoTIFF.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import rasterio
from fsspec import AbstractFileSystem
from rasterio.errors import RasterioIOError

from lczscale.errors import SourceError, exception_chain
from lczscale.io.gdal_vsi import VsiTarget, vsi_target
from lczscale.io.stores import filesystem, is_remote

T = TypeVar("T")

_OPENER_LOCK = threading.Lock()  # fsspec file objects only
_BLOCK = 1 << 20  # fsspec read block: about one compressed 1024² tile of one band
MAX_HANDLES = 32  # open datasets kept per thread (least recently used closed first)

CREDENTIALS_FIX = {
    "s3": "give credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
          "AWS_PROFILE) and the endpoint (AWS_ENDPOINT_URL), or anon: true in source_options "
          "for a public bucket",
    "gs": "give Google credentials in the environment (GOOGLE_APPLICATION_CREDENTIALS) and, "
          "for a requester-pays bucket such as AlphaEarth's, the project billed "
          "(LCZSCALE_GCS_BILLING_PROJECT), or anon: true in source_options for a public bucket",
    "http": "check the URL (a signed URL may have expired) and that the server lets this "
            "machine read it",
}
NETWORK_FIX = (
    "check the endpoint (AWS_ENDPOINT_URL for S3-compatible stores) and the network from this "
    "machine; the read is retried"
)

# GDAL's words: S3 error codes (NoSuchKey, AccessDenied …), "HTTP response code: N" from
# /vsicurl/ and /vsigs/, curl's own errors. Bare numbers are not matched: TIFF messages carry
# offsets and strile numbers.
_MISSING = re.compile(r"does not exist|not ?found|NoSuchKey|NoSuchBucket|"
                      r"HTTP response code: 404", re.IGNORECASE)
_DENIED = re.compile(r"AccessDenied|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch|"
                     r"credentials|UserProject|requester pays|HTTP response code: 40[13]",
                     re.IGNORECASE)
_TRANSIENT = re.compile(r"CURL error|timed? ?out|HTTP response code: (5\d\d|429)|SlowDown|"
                        r"connection|Could not resolve", re.IGNORECASE)


class RemoteReadError(SourceError, ConnectionError):
    """A remote read that failed for the moment (connection, timeout, throttling, 5xx): a
    ``ConnectionError``, so the tile runner retries it, and a SourceError with the fix."""


@dataclass(frozen=True)
class Location:
    """How to open ``href`` in this process: ``target`` for GDAL's network file systems,
    ``opener`` for fsspec file objects, neither for a local path (``fs`` is the filesystem
    that can tell a missing file from a bad one, when not GDAL's)."""

    href: str
    path: str
    target: VsiTarget | None = None
    opener: Callable[..., Any] | None = None
    fs: AbstractFileSystem | None = None

    @property
    def cacheable(self) -> bool:
        """Whether a handle may stay open between reads (not for fsspec file objects)."""
        return self.opener is None

    def session(self) -> AbstractContextManager[Any]:
        """The context every open and read of this file runs in."""
        if self.target is not None:
            env: AbstractContextManager[Any] = self.target.env()  # rasterio is untyped
            return env
        return _OPENER_LOCK if self.opener is not None else nullcontext()

    def open(self) -> Any:
        """The dataset (call inside :meth:`session`); rasterio's errors propagate."""
        if self.opener is not None:
            return rasterio.open(self.path, opener=self.opener)
        return rasterio.open(self.path)

    def where(self) -> str:
        """`` (read as …)`` when GDAL reads another object name than the href's or through a
        custom endpoint, else ''."""
        if self.target is None:
            return ""
        same = self.target.path.endswith(self.href.split("://", 1)[-1])
        if same and "AWS_S3_ENDPOINT" not in self.target.options:
            return ""
        return f" (read as {self.target.where()})"


def locate(href: str, storage_options: dict[str, Any] | None) -> Location:
    """Where and how to open ``href`` (a local path, or a URL of any fsspec scheme)."""
    if not is_remote(href):
        fs, path = filesystem(href)
        return Location(href, path, fs=fs)
    target = vsi_target(href, storage_options)
    if target is not None:
        return Location(href, target.path, target=target)
    try:
        fs, path = filesystem(href, storage_options)
    except ImportError as exc:
        raise SourceError(f"cannot open {href}: {exc}; install that fsspec backend") from exc

    def opener(p: str, mode: str = "rb", **kw: Any) -> Any:
        return fs.open(p, mode, block_size=_BLOCK, cache_type="blockcache", **kw)

    return Location(href, path, opener=opener, fs=fs)


def message(exc: BaseException) -> str:
    """GDAL's own words for a failure, on one line: the chain's distinct messages (rasterio's
    "Read failed. See previous exception" hides them a link down)."""
    seen: list[str] = []
    for e in exception_chain(exc):
        text = " ".join(str(e).split())
        if text and text not in seen:
            seen.append(text)
    return "; ".join(seen)[:300]


def classify(exc: BaseException) -> str:
    """"missing", "denied", "transient" or "unreadable" for a failed open or read."""
    text = message(exc)
    if _DENIED.search(text):
        return "denied"
    if _MISSING.search(text):
        return "missing"
    if _TRANSIENT.search(text):
        return "transient"
    return "unreadable"


def open_error(loc: Location, exc: BaseException, what: str, fix: str) -> Exception:
    """The error to raise for a file that would not open: one line naming ``loc.href``
    (``what`` is "AlphaEarth COG" …), with ``fix`` for files that exist but are bad."""
    kind, text = classify(exc), message(exc)
    where = loc.where()
    if kind == "transient":
        return RemoteReadError(f"{what} {loc.href}{where} could not be reached ({text}); "
                               f"{NETWORK_FIX}")
    if kind == "denied":
        scheme = loc.href.split("://", 1)[0].replace("gcs", "gs").replace("s3a", "s3")
        fix_access = CREDENTIALS_FIX.get(scheme, CREDENTIALS_FIX["http"])
        return SourceError(f"reading {what} {loc.href}{where} was refused ({text}); "
                           f"{fix_access}")
    if loc.fs is not None:
        if not loc.fs.exists(loc.path):
            kind = "missing"
        elif loc.fs.size(loc.path) == 0:
            return SourceError(f"{what} {loc.href} is empty (zero bytes): {text}; {fix}")
    if kind == "missing":
        return SourceError(f"{loc.href}{where} is listed as an {what} but does not exist; {fix}")
    return SourceError(f"{what} {loc.href}{where} is not a readable GeoTIFF (empty, truncated "
                       f"or another format: {text}); {fix}")


class Handles:
    """Datasets kept open by each thread, by key (a GDAL handle is not safe to share between
    threads; one per thread reads in parallel with no lock). At most :data:`MAX_HANDLES` per
    thread: the least recently used is closed first."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _cache(self) -> OrderedDict[str, tuple[Any, Any]]:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        return cache

    def get(self, key: str, open_: Callable[[], tuple[Any, T]], fresh: bool) -> tuple[Any, T]:
        """(dataset, what ``open_`` derived from it) for ``key``; ``fresh`` reopens it.
        ``open_`` returns both and closes the dataset itself when it raises."""
        cache = self._cache()
        if fresh and key in cache:
            cache.pop(key)[0].close()
        if key not in cache:
            cache[key] = open_()
            while len(cache) > MAX_HANDLES:
                cache.popitem(last=False)[1][0].close()
        cache.move_to_end(key)
        return cache[key]

    def close(self, which: Callable[[str], bool] = lambda key: True) -> None:
        """Close this thread's datasets whose key ``which`` accepts (they reopen when read)."""
        cache = self._cache()
        for key in [k for k in cache if which(k)]:
            cache.pop(key)[0].close()


# Remote datasets are kept per thread for the whole process, not per source object: a source
# is unpickled afresh for every Dask task, and reopening a remote COG costs a round trip or
# two (published objects do not change under a run). Local files stay per source object.
REMOTE_HANDLES = Handles()


def handle_key(loc: Location, storage_options: dict[str, Any] | None) -> str:
    """Key of a remote dataset: the href, the source's options and where GDAL reads it now
    (path and config: another endpoint in the environment is another dataset)."""
    target = [loc.target.path, dict(loc.target.options)] if loc.target else None
    return json.dumps([storage_options or {}, loc.href, target], sort_keys=True, default=str)


@contextmanager
def opened(loc: Location, what: str, fix: str) -> Iterator[Any]:
    """A dataset open for the ``with`` block, inside its session (no handle kept)."""
    with loc.session():
        try:
            ds = loc.open()
        except RasterioIOError as exc:
            raise open_error(loc, exc, what, fix) from exc
        try:
            yield ds
        finally:
            ds.close()
