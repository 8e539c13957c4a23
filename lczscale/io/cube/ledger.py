"""The ledger: one small JSON object per tile, inside the cube (``_ledger/``).

A tile's entry is ``pending`` before any of its chunks is overwritten and ``done`` only after
all of its outputs (``lcz``, ``confidence``, ``probability``) are written — and, on local disk,
fsynced (files, then their directory) — so a crash at any point leaves the tile "not done" and a
rerun redoes it: a kill between a chunk write and the ledger write can no longer leave a
``done`` entry of an earlier run over new bytes. A ``failed`` entry records why a tile could not
be made (its error, where, how many attempts); it never replaces a ``done`` entry of the same
provenance, and a rerun retries it. Entries carry the tile's provenance hash; a rerun skips a
tile only when it is done with the hash the new run would give it.

An entry that cannot be read (empty, truncated by a full disk, not JSON) counts as not done,
with a warning naming it: the tile is remade. Entries are written through a temporary file that
is removed again when the write fails, so a full disk leaves no orphans.

Tile keys become object names under the cube, so they are checked to stay inside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lczscale.io.stores import child_url, filesystem, is_remote, local_path

log = logging.getLogger(__name__)

LEDGER_DIR = "_ledger"
DONE, FAILED, PENDING = "done", "failed", "pending"


def _entry_path(cube_url: str, key: str) -> str:
    return child_url(cube_url, LEDGER_DIR, *key.split("/")[:-1], f"{key.split('/')[-1]}.json")


def writer() -> str:
    """``host:pid`` of this process, as entries name the worker that made them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def state(entry: dict[str, Any]) -> str:
    """``done``, ``failed`` or ``pending`` (entries written before failures were recorded are
    done)."""
    return str(entry.get("state", DONE))


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a local file or directory to disk (a directory: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record(
    cube_url: str, key: str, entry: dict[str, Any], storage_options: dict[str, Any] | None = None
) -> None:
    """Write (or replace) the ledger entry of tile ``key`` atomically."""
    data = json.dumps({"key": key, "state": DONE, **entry}, sort_keys=True).encode()
    target = _entry_path(cube_url, key)
    if not is_remote(target):
        path = local_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new entry
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_path(path.parent)  # the rename itself survives a power loss
        return
    fs, path_in_fs = filesystem(target, storage_options)
    fs.pipe_file(path_in_fs, data)  # object stores put whole objects atomically


def record_failure(
    cube_url: str, key: str, entry: dict[str, Any], storage_options: dict[str, Any] | None = None
) -> bool:
    """Record that tile ``key`` failed, unless it is already done with the same provenance
    (a duplicate attempt of a finished tile must not undo it). Returns whether it wrote."""
    old = read_one(cube_url, key, storage_options)
    if old and state(old) == DONE and old.get("provenance_hash") == entry.get("provenance_hash"):
        return False
    record(cube_url, key, {**entry, "state": FAILED}, storage_options)
    return True


def read_one(
    cube_url: str, key: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The entry of tile ``key``, or None (none, or unreadable)."""
    fs, path = filesystem(_entry_path(cube_url, key), storage_options)
    try:
        return _parse(fs.cat_file(path), path)
    except FileNotFoundError:
        return None


def _parse(blob: bytes, path: str) -> dict[str, Any] | None:
    """An entry, or None (with a warning) when it is unreadable: the tile counts as not done."""
    try:
        entry = json.loads(blob)
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            return entry
    except (ValueError, UnicodeDecodeError):
        pass
    log.warning("ledger entry %s is unreadable (%d bytes, e.g. a full disk cut it short): its "
                "tile counts as not done and will be remade", path, len(blob))
    return None


def read_all(
    cube_url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """All entries, keyed by tile key."""
    fs, root = filesystem(f"{cube_url.rstrip('/')}/{LEDGER_DIR}", storage_options)
    paths = [p for p in fs.find(root) if p.endswith(".json") and not p.rsplit("/", 1)[-1]
             .startswith(".")]
    if not paths:
        return {}
    with ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(fs.cat_file, paths))
    entries = {}
    for path, blob in zip(paths, blobs, strict=True):
        entry = _parse(blob, path)
        if entry is not None:
            entries[entry["key"]] = entry
    return entries
