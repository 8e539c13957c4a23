"""Which I/O failures are worth retrying, and retrying them with exponential backoff.

Shared by every reader and writer (io) and by the tile runner (execute): a dropped connection,
a throttled object store or a timeout is retried in place; anything that says something about
the request itself (a missing file, a refused permission) is not.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from lczscale.config import FaultConfig
from lczscale.errors import SourceError, exception_chain

T = TypeVar("T")

# OSErrors that say something about the request, not the moment: retrying cannot fix them.
_PERMANENT_ERRNOS = {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EINVAL,
    errno.ENOSPC, errno.EROFS, errno.EEXIST,
}
# Exception class names from object-store client libraries that mean "try again later"
# (matched by name so that none of these libraries has to be importable).
_TRANSIENT_NAMES = {
    "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
    "ClientPayloadError", "EndpointConnectionError", "ConnectTimeoutError",
    "ReadTimeoutError", "ResponseStreamingError", "IncompleteReadError", "SlowDown",
    "ServiceUnavailable", "ThrottlingException", "RequestTimeout",
}


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later attempt of the same request may not meet."""
    if any(k.__name__ in _TRANSIENT_NAMES for e in exception_chain(exc) for k in type(e).__mro__):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS and not isinstance(
            exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
        )
    return False


def with_retries[T](fn: Callable[[], T], faults: FaultConfig) -> T:
    """``fn()`` retried on transient errors with exponential backoff; the last error is
    re-raised unchanged once ``faults.io_attempts`` attempts are spent."""
    retrying = Retrying(
        stop=stop_after_attempt(faults.io_attempts),
        wait=wait_exponential(multiplier=faults.backoff_s, max=faults.backoff_max_s),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    return retrying(fn)




def retry_io[T](fn: Callable[[], T], what: str, faults: FaultConfig | None = None) -> T:
    """``fn()`` with retries; once they are spent on a transient error, a SourceError that
    names ``what`` (the URL) and how often it was tried."""
    faults = faults or FaultConfig()
    try:
        return with_retries(fn, faults)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise SourceError(
            f"{what} failed {faults.io_attempts} times ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); check that the URL is right and reachable "
            "from this machine (network, endpoint, credentials in the environment)"
        ) from exc
