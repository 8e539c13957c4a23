"""Which failures are worth retrying, and retrying them with backoff.

A tile can fail in three ways. Transient I/O (a dropped connection, a throttled object store, a
timeout) is retried in place with exponential backoff. A lost worker (preemption, OOM kill,
segfault) is Dask's business: the scheduler reruns the task elsewhere up to
``allowed_failures`` times. Everything else is deterministic for that tile — corrupt input, a
bug — and retrying cannot help, so the tile is recorded as failed with its error and the run
carries on with the others.
"""

from __future__ import annotations

import errno
import traceback
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from lczscale.config import FaultConfig
from lczscale.errors import exception_chain

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
    if any(type(e).__name__ in _TRANSIENT_NAMES for e in exception_chain(exc)):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS and not isinstance(
            exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
        )
    return False


def with_retries(fn: Callable[[], T], faults: FaultConfig) -> T:
    """``fn()`` retried on transient errors with exponential backoff; the last error is
    re-raised unchanged once ``faults.io_attempts`` attempts are spent."""
    retrying = Retrying(
        stop=stop_after_attempt(faults.io_attempts),
        wait=wait_exponential(multiplier=faults.backoff_s, max=faults.backoff_max_s),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    return retrying(fn)


def describe(exc: BaseException) -> dict[str, str]:
    """A failure as the ledger stores it: type, one-line message and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return {"error_type": type(exc).__name__, "error": message[:2000], "where": where}
