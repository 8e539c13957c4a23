"""The ledger: one small JSON object per tile, inside the cube (``_ledger/``).

A ``done`` entry is written only after the tile's chunks are written, so a crash in between
leaves the tile "not done" and a rerun redoes it. A ``failed`` entry records why a tile could
not be made (its error, where, how many attempts); it never replaces a ``done`` entry of the same
provenance, and a rerun retries it. Entries carry the tile's provenance hash; a rerun skips a
tile only when it is done with the hash the new run would give it.

Tile keys become object names under the cube, so they are checked to stay inside it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lczscale.io.stores import child_url, filesystem, is_remote, local_path

LEDGER_DIR = "_ledger"
DONE, FAILED = "done", "failed"


def _entry_path(cube_url: str, key: str) -> str:
    return child_url(cube_url, LEDGER_DIR, *key.split("/")[:-1], f"{key.split('/')[-1]}.json")


def writer() -> str:
    """``host:pid`` of this process, as entries name the worker that made them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def state(entry: dict[str, Any]) -> str:
    """``done`` or ``failed`` (entries written before failures were recorded are done)."""
    return str(entry.get("state", DONE))


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
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new entry
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
    fs, path = filesystem(_entry_path(cube_url, key), storage_options)
    try:
        return dict(json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None


def read_all(
    cube_url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """All entries, keyed by tile key."""
    fs, root = filesystem(f"{cube_url.rstrip('/')}/{LEDGER_DIR}", storage_options)
    paths = [p for p in fs.find(root) if p.endswith(".json")]
    if not paths:
        return {}
    with ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(fs.cat_file, paths))
    entries = {}
    for blob in blobs:
        entry = json.loads(blob)
        entries[entry["key"]] = entry
    return entries
