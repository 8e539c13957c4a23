"""One exception tree, so callers can catch every lczscale failure with one clause.

Every message says what happened (with the offending values) and how to fix it.
"""


class LczscaleError(Exception):
    """Root of all lczscale errors."""


class ConfigError(LczscaleError):
    """A configuration value is invalid or inconsistent."""


class SourceError(LczscaleError):
    """An embedding or label source is not in the expected format."""


class NoDataError(LczscaleError):
    """The requested area or year has no input data."""


class CheckpointError(LczscaleError):
    """A model checkpoint is missing, unsafe, or does not fit the input."""


class CubeError(LczscaleError):
    """The output cube is missing, inconsistent, or would be overwritten."""


class LczscaleWarning(UserWarning):
    """Root of lczscale's own warnings: something worked, but not as asked (a default taken, a
    fallback used). Warn with this class or a subclass, never a bare UserWarning, so that the
    test suite can make every one of them an error without touching other libraries' warnings.
    """


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception, then its causes and contexts (each once): what an error really was is
    often a few links down (an OSError under a codec's ValueError)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and not any(cur is e for e in out):
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
