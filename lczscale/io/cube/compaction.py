"""Folding the ledger's per-tile objects into one snapshot per folder (one zone and year).

``ledger`` explains the format: per-tile objects are a log over their folder's snapshot, and a
per-tile object always wins. Compaction keeps that true at every instant, so a crash anywhere
in it loses and resurrects nothing:

1. the folder's snapshot and per-tile objects are read; the new snapshot is the old one with
   each readable object's entry put over it; a key whose object is unreadable is *removed*
   from the snapshot (the tile is not done; the object stays, still masking it, so nothing
   older can show through even if the object is removed later);
2. the new snapshot is written atomically (local disk: temporary file, fsync, rename, fsync of
   the folder; object stores: one whole-object put) — a crash before this leaves the old state;
3. only then are the folded objects deleted, and only those the store still lists at the
   version that was read (one listing of the folder): an object rewritten meanwhile stays and
   wins over the snapshot. A crash among the deletions leaves objects whose entry the
   snapshot already holds: they read the same, and the next compaction folds them again.

Compaction must run under the cube's writer lock (``lock.writer_lock``) with no tile in flight,
as at the end of a map run (``compact_after_run``); the version check narrows, but cannot
close, the window a writer that ignores the lock would have. Readers need no lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from lczscale.io.cube import ledger

log = logging.getLogger(__name__)

# A map run compacts when the ledger holds at least this many per-tile objects: a small cube
# reads its few objects faster than it would write snapshots.
COMPACT_AFTER = 1000


def compact(cube_url: str, storage_options: dict[str, Any] | None = None,
            min_objects: int = 0) -> int:
    """Fold every per-tile ledger object into its folder's snapshot (when there are at least
    ``min_objects``); how many objects were folded and deleted. Call under the writer lock."""
    listing = ledger.list_ledger(cube_url, storage_options, detail=True)
    if not len(listing) or len(listing) < min_objects:
        return 0
    folded = 0
    for folder in sorted(listing.objects):
        folded += _compact_folder(cube_url, listing, folder, storage_options)
    return folded


def compact_after_run(cube_url: str, storage_options: dict[str, Any] | None = None) -> int:
    """A map run's compaction, under its writer lock once every tile has ended: only when
    the ledger has ``COMPACT_AFTER`` objects or more; an I/O failure is logged, not raised
    (the ledger reads the same uncompacted, and the next run compacts it)."""
    try:
        return compact(cube_url, storage_options, COMPACT_AFTER)
    except OSError as exc:
        log.warning("could not compact the ledger of %s (%s: %s); it stays as it is, correct "
                    "but slower to read, and the next run tries again", cube_url,
                    type(exc).__name__, exc)
        return 0


def _compact_folder(cube_url: str, listing: ledger.Listing, folder: str,
                    storage_options: dict[str, Any] | None) -> int:
    objects = listing.objects[folder]
    part = ledger.Listing(listing.fs, listing.root, {folder: objects},
                          {folder: listing.snapshots[folder]} if folder in listing.snapshots
                          else {})
    snapshots, read = ledger.read_listed(part)
    before = snapshots.get(folder, {})
    entries = dict(before)
    foldable = []
    for key, path in objects.items():
        if key not in read:  # gone since listed: another compaction folded it
            continue
        entry = read[key]
        entries.pop(key, None)  # the object wins; unreadable, the tile is not done
        if entry is not None and entry["key"] == key:
            entries[key] = entry
            foldable.append(path)
    if not foldable and entries == before:
        return 0  # only unreadable objects, which the snapshot does not hold either
    ledger.put_atomically(ledger.snapshot_url(cube_url, folder),
                          ledger.snapshot_bytes(folder, entries), storage_options)
    unchanged = _still_as_read(listing, folder, foldable)
    _delete(listing, folder, unchanged)
    return len(unchanged)


def _still_as_read(listing: ledger.Listing, folder: str, paths: list[str]) -> list[str]:
    """Those of ``paths`` the store lists now at the version the first listing gave."""
    fs, where = listing.fs, listing.folder_path(folder)
    fs.invalidate_cache(where)
    now = {info["name"].rstrip("/"): ledger.version(info)
           for info in fs.ls(where, detail=True)}
    return [p for p in paths if now.get(p.rstrip("/")) == listing.versions.get(p)]


def _delete(listing: ledger.Listing, folder: str, paths: list[str]) -> None:
    """Delete folded objects (their entries are in the snapshot already written)."""
    if not paths:
        return
    if isinstance(listing.fs, LocalFileSystem):
        # many at once: an unlink of an fsynced file waits for the journal (~2 ms here);
        # concurrent ones share its commits (~0.07 ms each with 8)
        with ThreadPoolExecutor(ledger.READERS) as pool:
            list(pool.map(_unlink, paths))
        ledger.fsync_path(listing.folder_path(folder))
        return
    listing.fs.rm(paths)  # bulk deletes, 1,000 objects a request on S3


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
