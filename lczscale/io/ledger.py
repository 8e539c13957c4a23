"""The ledger: one small JSON object per finished tile, inside the cube (``_ledger/``).

An entry is written only after the tile's chunks are written, so a crash in between leaves the
tile "not done" and a rerun redoes it. Entries carry the tile's provenance hash; a rerun skips a
tile only when its entry's hash equals the hash the new run would give it.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lczscale.io.stores import filesystem, is_remote, local_path

LEDGER_DIR = "_ledger"


def _entry_path(cube_url: str, key: str) -> str:
    return f"{cube_url.rstrip('/')}/{LEDGER_DIR}/{key}.json"


def record(
    cube_url: str, key: str, entry: dict[str, Any], storage_options: dict[str, Any] | None = None
) -> None:
    """Write (or replace) the ledger entry of tile ``key`` atomically."""
    data = json.dumps({"key": key, **entry}, sort_keys=True).encode()
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
