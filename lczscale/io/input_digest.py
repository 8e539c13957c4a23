"""What one tile read, as a short digest: staleness decided per tile from its own inputs.

A tile's ledger entry records the digest of the stored objects its read window touches (object
key, size, and ETag or mtime); the planner recomputes it for every planned tile from one listing
per array and redoes exactly the tiles whose inputs changed. Adding data elsewhere in the store
restales nothing; rewriting one shard restales exactly the tiles that read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from fsspec import AbstractFileSystem

from lczscale.core.grid import Window
from lczscale.io.shards import can_list
from lczscale.io.stores import store_filesystem
from lczscale.io.zarr_calls import ZarrArray

Listing = dict[str, tuple[int, str]]  # object path → (size, ETag or mtime)
ABSENT = (-1, "absent")


def digest(items: Iterable[tuple[Any, ...]]) -> str:
    """A 16-hex digest of (key, size, tag) items, independent of their order."""
    text = json.dumps(sorted(list(i) for i in items), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tag(info: dict[str, Any]) -> tuple[int, str]:
    """(size, version tag) of an fsspec ``info``/``find(detail=True)`` record."""
    version = (info.get("ETag") or info.get("etag") or info.get("mtime")
               or info.get("LastModified") or info.get("last_modified") or info.get("created"))
    return int(info.get("size") or 0), str(version)


def listing(arr: ZarrArray) -> Listing | None:
    """Every stored object of an array with its tag, from one listing (None: the store cannot
    list, e.g. plain HTTP; the planner then does not judge staleness by inputs)."""
    fs, root = store_filesystem(arr.store_path.store)
    if not can_list(fs):
        return None
    found = fs.find(f"{root}/{arr.path}", detail=True)
    return {str(p): tag(i) for p, i in found.items()}


def objects_under(arr: ZarrArray, lead: tuple[int, ...], window: Window,
                  offset: tuple[int, int]) -> list[str]:
    """Paths of the array's stored objects (shards, else chunks) that a zone ``window`` meets;
    the array's last two axes are (y, x) with pixel (0, 0) at zone pixel ``offset``."""
    _, root = store_filesystem(arr.store_path.store)
    block = arr.shards or arr.chunks
    h, w = arr.shape[-2], arr.shape[-1]
    r0, r1 = max(0, window.row - offset[0]), min(h, window.row_stop - offset[0])
    c0, c1 = max(0, window.col - offset[1]), min(w, window.col_stop - offset[1])
    if r1 <= r0 or c1 <= c0:
        return []
    middle = [0] * (arr.ndim - 2 - len(lead))
    return [f"{root}/{arr.path}/{arr.metadata.encode_chunk_key((*lead, *middle, r, c))}"
            for r in range(r0 // block[-2], (r1 - 1) // block[-2] + 1)
            for c in range(c0 // block[-1], (c1 - 1) // block[-1] + 1)]


def stat(fs: AbstractFileSystem, path: str, known: Listing | None) -> tuple[int, str]:
    """(size, tag) of one object, from a listing when there is one."""
    if known is not None:
        return known.get(path, ABSENT)
    try:
        return tag(fs.info(path))
    except FileNotFoundError:
        return ABSENT
