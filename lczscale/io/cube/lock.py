"""One writer at a time: a lock object inside the cube (``_lczscale.lock``).

Two ``map`` runs into one cube with different models would otherwise both "succeed" and the
last writer would win tile by tile. The lock records who holds it (host, pid, the process's
start time, the command, when) so that a second run can name the holder, and so that a lock
left by a process that died on this host is recognised as stale and taken over (with a
warning) instead of blocking the cube for ever.

Limits, by store:

- **local disk**: ``O_CREAT | O_EXCL`` — atomic, also on NFS v3+; a dead holder on *another*
  host cannot be told from a live one, so its lock must be removed by hand (the error says so);
- **object stores**: a conditional create (``If-None-Match: *``, s3fs ``mode="create"``) where
  the store supports it (AWS S3 since 2024, MinIO, moto); where it does not, an existence check
  then a put, which two runs starting within the same moment can both pass (documented, logged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psutil

from lczscale.errors import CubeError
from lczscale.io.stores import filesystem, is_remote, local_path

log = logging.getLogger(__name__)

LOCK_NAME = "_lczscale.lock"


def _holder(command: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid,
            "pid_started": psutil.Process(pid).create_time(), "command": command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}


def _dead_here(holder: dict[str, Any]) -> bool:
    """A holder on this host whose process is gone (or is another process with its pid)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(holder.get("pid", -1)))
        started = holder.get("pid_started")
        return started is not None and abs(proc.create_time() - float(started)) > 1.0
    except (psutil.NoSuchProcess, ValueError):
        return True


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock"
    return (f"{holder.get('command', 'a run')} on {holder.get('host')} (pid {holder.get('pid')}) "
            f"since {holder.get('since')}")


@contextlib.contextmanager
def writer_lock(cube_url: str, command: str,
                storage_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Hold the cube's writer lock for the ``with`` block; CubeError naming the holder when
    another live process has it."""
    holder = _holder(command)
    made_folder = False
    if is_remote(cube_url):
        _acquire_remote(cube_url, holder, storage_options)
    else:
        made_folder = not local_path(cube_url).exists()
        _acquire_local(cube_url, holder)
    try:
        yield holder
    finally:
        _release(cube_url, holder, storage_options)
        if made_folder:  # a run refused before writing anything leaves no empty cube behind
            with contextlib.suppress(OSError):
                local_path(cube_url).rmdir()


def read_holder(cube_url: str, storage_options: dict[str, Any] | None = None
                ) -> dict[str, Any] | None:
    """Who holds the lock now (None: nobody, or it cannot be read)."""
    fs, path = filesystem(f"{cube_url.rstrip('/')}/{LOCK_NAME}", storage_options)
    try:
        data = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _refuse(cube_url: str, holder: dict[str, Any] | None, path: str) -> CubeError:
    return CubeError(
        f"cube {cube_url} is being written by {_describe(holder)}: one writer at a time; wait "
        f"for it to finish (lczscale status {cube_url} shows progress), or, if that process is "
        f"gone, remove {path}"
    )


def _acquire_local(cube_url: str, holder: dict[str, Any]) -> None:
    root = local_path(cube_url)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CubeError(f"cannot create the cube directory {root}: {exc.strerror}; choose "
                        "another --out") from None
    path = root / LOCK_NAME
    data = json.dumps(holder).encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = read_holder(cube_url)
            if current is not None and _dead_here(current):
                log.warning("cube %s: taking over the stale lock of %s (no such process)",
                            cube_url, _describe(current))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if current is None and time.time() - path.stat().st_mtime > 60:
                log.warning("cube %s: removing an unreadable lock file over a minute old",
                            cube_url)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise _refuse(cube_url, current, str(path)) from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    raise _refuse(cube_url, read_holder(cube_url), str(path))


def _acquire_remote(cube_url: str, holder: dict[str, Any],
                    storage_options: dict[str, Any] | None) -> None:
    fs, path = filesystem(f"{cube_url.rstrip('/')}/{LOCK_NAME}", storage_options)
    data = json.dumps(holder).encode()
    try:
        fs.pipe_file(path, data, mode="create")
        return
    except FileExistsError:
        raise _refuse(cube_url, read_holder(cube_url, storage_options), path) from None
    except (TypeError, NotImplementedError, ValueError):
        pass  # the store has no conditional create: check, then put
    if fs.exists(path):
        raise _refuse(cube_url, read_holder(cube_url, storage_options), path)
    log.info("cube %s: the store has no conditional create; the lock is check-then-put",
             cube_url)
    fs.pipe_file(path, data)


def _release(cube_url: str, holder: dict[str, Any],
             storage_options: dict[str, Any] | None) -> None:
    """Remove the lock if it is still ours (a taken-over stale lock is not)."""
    current = read_holder(cube_url, storage_options)
    if current is None or current.get("token") != holder["token"]:
        return
    fs, path = filesystem(f"{cube_url.rstrip('/')}/{LOCK_NAME}", storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
