"""Paths a user names on the command line, checked before anything is written.

A command that is going to fail on its output path, or on an input that is not what it needs,
should fail *first*, with one line naming the path and the fix, and leave the disk as it was —
not after it has created a directory, written a job file or half a cube, with a traceback.

Only local paths (no ``scheme://``, or ``file://``) are checked: for object stores and HTTP the
store itself answers, and probing it would cost requests and need credentials.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from lczscale.errors import ConfigError, CubeError

# Kernel filesystems: nothing a command writes can live there (even root cannot create files
# in them), and the errors they give (ENOENT for /proc, EACCES or EROFS for /sys) say nothing
# useful.
KERNEL_FS: tuple[str, ...] = ("/proc", "/sys")

Kind = Literal["dir", "file", "any"]


def local_path(url: str | os.PathLike[str]) -> Path | None:
    """The local path of ``url``, or None for a remote URL (``s3://``, ``https://``, …)."""
    text = os.fspath(url)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" in text:
        return None
    return Path(text)


def _kernel_fs(path: Path) -> str | None:
    real = os.path.realpath(os.path.abspath(path))
    for root in KERNEL_FS:
        if real == root or real.startswith(root + os.sep):
            return root
    return None


def _deepest_existing(path: Path) -> Path:
    cur = Path(os.path.abspath(path))
    while not os.path.lexists(cur) and cur != cur.parent:
        cur = cur.parent
    return cur


def check_writable_out(url: str | os.PathLike[str], what: str = "--out",
                       kind: Kind = "dir") -> None:
    """Refuse a local output path that cannot be written, before anything is written.

    ``kind``: what the command writes at ``url``: a directory (a cube, a model, a report
    folder), a file (a GeoTIFF, a PNG), or either. Refused, with a CubeError naming the path
    and the fix: a file in the parent chain; a path under /proc or /sys; an existing path of the
    other kind; a location where no file can be created (read-only filesystem, no permission:
    probed by creating and removing a temporary file in the deepest existing ancestor — the
    only test that also holds for root, whom permission bits do not stop). Remote URLs pass.
    """
    path = local_path(url)
    if path is None:
        return
    shown = os.fspath(url)
    root = _kernel_fs(path)
    if root is not None:
        raise CubeError(f"{what} {shown} is under {root}, a kernel filesystem where nothing can "
                        "be written; choose a directory on a disk")
    base = _deepest_existing(path)
    if base != Path(os.path.abspath(path)):
        if not base.is_dir():
            raise CubeError(f"{what} {shown} cannot be created: {base} is a file, not a "
                            f"directory; give {what} a path outside that file")
    elif kind == "dir" and not path.is_dir():
        raise CubeError(f"{what} {shown} is an existing file, but must be a directory; give "
                        f"{what} another path (or remove the file)")
    elif kind == "file" and path.is_dir():
        raise CubeError(f"{what} {shown} is an existing directory, but must be a file; name a "
                        f"file, e.g. {path / 'out'}")
    probe_dir = base if base.is_dir() else base.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".lczscale-write-probe-", dir=probe_dir)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CubeError(f"{what} {shown} is not writable: cannot create a file in {probe_dir} "
                        f"({why}); choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_input(url: str | os.PathLike[str], what: str, kind: Kind = "any",
                fix: str = "") -> None:
    """Refuse a local input path that does not exist or is not a ``kind`` (a directory such as
    a Zarr store or a tile folder, or a file); ConfigError naming the path and ``fix``.
    Remote URLs pass (their readers answer for them)."""
    path = local_path(url)
    if path is None:
        return
    shown = os.fspath(url)
    tail = f"; {fix}" if fix else ""
    if not path.exists():
        raise ConfigError(f"{what} {shown} does not exist{tail or '; check the path'}")
    if kind == "dir" and not path.is_dir():
        raise ConfigError(f"{what} {shown} is a file, not a directory{tail}")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{what} {shown} is a directory, not a file{tail}")
