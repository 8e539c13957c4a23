"""Which failures are worth retrying, and retrying them with backoff.

A tile can fail in three ways. Transient I/O (a dropped connection, a throttled object store, a
timeout) is retried in place with exponential backoff. A lost worker (preemption, OOM kill,
segfault) is Dask's business: the scheduler reruns the task elsewhere up to
``allowed_failures`` times. Everything else is deterministic for that tile — corrupt input, a
bug — and retrying cannot help, so the tile is recorded as failed with its error and the run
carries on with the others.
"""

from __future__ import annotations

import traceback

from lczscale.io.retry import is_transient, with_retries

__all__ = ["describe", "is_transient", "with_retries"]


def describe(exc: BaseException) -> dict[str, str]:
    """A failure as the ledger stores it: type, one-line message and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return {"error_type": type(exc).__name__, "error": message[:2000], "where": where}
