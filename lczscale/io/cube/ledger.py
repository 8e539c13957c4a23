"""The ledger: one small JSON object per tile, inside the cube (``_ledger/``), folded now and
then into one snapshot per folder (``compaction``).

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

**Snapshots.** A tile's entry lives at ``_ledger/<zone>/<year>/<row>_<col>.json``. One year of
all land is ~100,000 of them, too many small objects to read on every ``status`` and resume
(minutes on an object store), so ``compaction.compact`` folds the entries of each folder (one
zone and year) into that folder's snapshot, ``.snapshot.json`` (a name no tile key can give:
key names never start with a dot), and only then deletes the objects it folded in. The
per-tile objects are a log over the snapshot: **a per-tile object always wins over the
snapshot**, also when it cannot be read (the tile is then not done; the snapshot's older entry
never shows through). A crash while compacting therefore leaves either the old snapshot and
every object, or the new snapshot and some of the objects it already holds: both read the same.
Writers never touch snapshots: ``record`` writes the per-tile object as before.

Tile keys become object names under the cube, so they are checked to stay inside it; a
snapshot's entries are taken only for keys of its own folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from lczscale.io.stores import child_url, filesystem, is_remote, local_path

log = logging.getLogger(__name__)

LEDGER_DIR = "_ledger"
SNAPSHOT = ".snapshot.json"  # in each folder of the ledger; no key's name starts with a dot
SNAPSHOT_FORMAT = "lczscale-ledger-snapshot/1"
DONE, FAILED, PENDING = "done", "failed", "pending"
READERS = 8  # objects read at once

Entry = dict[str, Any]


def entry_url(cube_url: str, key: str) -> str:
    """Where tile ``key``'s own object is kept (its names checked to stay in the cube)."""
    return child_url(cube_url, LEDGER_DIR, *key.split("/")[:-1], f"{key.split('/')[-1]}.json")


def folder_of(key: str) -> str:
    """The ledger folder of ``key`` (its zone and year: ``utm32/2024``; "" for a bare name)."""
    return key.rpartition("/")[0]


def snapshot_url(cube_url: str, folder: str) -> str:
    """Where the snapshot of ledger folder ``folder`` is kept (the folder's names are checked
    to stay in the cube; the snapshot's own name is ours, the one a key can never give)."""
    return f"{child_url(cube_url, LEDGER_DIR, *[p for p in folder.split('/') if p])}/{SNAPSHOT}"


def writer() -> str:
    """``host:pid`` of this process, as entries name the worker that made them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def state(entry: Entry) -> str:
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


def put_atomically(target: str, data: bytes,
                   storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``target`` so that readers see the old bytes or the new ones, never a
    part, and (on local disk) the new ones survive a power loss once this returns."""
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


def record(
    cube_url: str, key: str, entry: Entry, storage_options: dict[str, Any] | None = None
) -> None:
    """Write (or replace) the ledger entry of tile ``key`` atomically."""
    data = json.dumps({"key": key, "state": DONE, **entry}, sort_keys=True).encode()
    put_atomically(entry_url(cube_url, key), data, storage_options)


def record_failure(
    cube_url: str, key: str, entry: Entry, storage_options: dict[str, Any] | None = None
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
) -> Entry | None:
    """The entry of tile ``key``, or None (none, or unreadable): its own object when there is
    one (readable or not), else its folder's snapshot."""
    fs, path = filesystem(entry_url(cube_url, key), storage_options)
    try:
        return _parse(fs.cat_file(path), path)
    except FileNotFoundError:
        pass
    folder = folder_of(key)
    fs, path = filesystem(snapshot_url(cube_url, folder), storage_options)
    try:
        entries = parse_snapshot(fs.cat_file(path), path, folder)
    except FileNotFoundError:
        return None
    return entries.get(key)


def _parse(blob: bytes, path: str) -> Entry | None:
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


def snapshot_bytes(folder: str, entries: dict[str, Entry]) -> bytes:
    """A snapshot of ledger folder ``folder`` holding ``entries`` (all of that folder)."""
    doc = {"format": SNAPSHOT_FORMAT, "folder": folder,
           "entries": [entries[k] for k in sorted(entries)]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_snapshot(blob: bytes, path: str, folder: str) -> dict[str, Entry]:
    """The entries of a snapshot by key, those of other folders left out; {} (with a warning)
    when it is unreadable: its tiles count as not done and are remade."""
    try:
        doc = json.loads(blob)
        if isinstance(doc, dict) and doc.get("format") == SNAPSHOT_FORMAT \
                and isinstance(doc.get("entries"), list):
            out = {}
            for e in doc["entries"]:
                if isinstance(e, dict) and isinstance(e.get("key"), str) \
                        and folder_of(e["key"]) == folder:
                    out[e["key"]] = e
                else:
                    log.warning("ledger snapshot %s holds an entry of another folder or none "
                                "(%.80r): left out", path, e)
            return out
    except (ValueError, UnicodeDecodeError):
        pass
    log.warning("ledger snapshot %s is unreadable (%d bytes): the tiles it held count as not "
                "done and will be remade", path, len(blob))
    return {}


@dataclass
class Listing:
    """The ledger's objects, by folder: per-tile objects (key → path) and snapshots (path);
    with ``versions`` (path → what the store says of its version) when listed in detail."""

    fs: AbstractFileSystem
    root: str
    objects: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    snapshots: dict[str, str] = field(default_factory=dict)
    versions: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        """How many per-tile objects."""
        return sum(len(keys) for keys in self.objects.values())

    def folder_path(self, folder: str) -> str:
        """The path of ledger folder ``folder`` in ``fs``."""
        return f"{self.root}/{folder}" if folder else self.root


def version(info: dict[str, Any]) -> tuple[Any, ...]:
    """What changes when an object is replaced: its size, and its ETag or generation (object
    stores) or inode and mtime (local disk, where every write is a rename of a new file)."""
    return (info.get("size"), info.get("ETag") or info.get("etag"), info.get("generation"),
            info.get("ino"), info.get("mtime"), str(info.get("LastModified") or ""))


def list_ledger(cube_url: str, storage_options: dict[str, Any] | None = None,
                detail: bool = False) -> Listing:
    """Every per-tile object and snapshot of the cube's ledger (temporary files left out)."""
    fs, root = filesystem(f"{cube_url.rstrip('/')}/{LEDGER_DIR}", storage_options)
    out = Listing(fs, root.rstrip("/"))
    if isinstance(fs, LocalFileSystem) and not detail:  # names only: no stat per file
        found: Any = [f"{where}/{name}" for where, _, names in os.walk(out.root)
                      for name in names]
    else:
        found = fs.find(out.root, detail=detail)
    for path in found:
        if not path.startswith(f"{out.root}/"):
            continue
        rel = path[len(out.root) + 1:]
        folder, _, name = rel.rpartition("/")
        if name == SNAPSHOT:
            out.snapshots[folder] = path
        elif name.endswith(".json") and not name.startswith("."):
            out.objects[folder][rel[: -len(".json")]] = path
            if detail:
                out.versions[path] = version(found[path])
    return out


def cat_many(fs: AbstractFileSystem, paths: list[str]) -> list[bytes | None]:
    """The bytes of each path, read ``READERS`` at a time (None: gone since it was listed)."""
    if len(paths) < 2:
        return [_cat_or_none(fs.cat_file, p) for p in paths]
    if not isinstance(fs, LocalFileSystem):
        with ThreadPoolExecutor(READERS) as pool:
            return list(pool.map(partial(_cat_or_none, fs.cat_file), paths))
    # local disk (or a network file system): a plain open per file, and each thread a run of
    # files rather than one task per file, whose overhead is larger than a cached read
    runs = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(READERS) as pool:
        return [b for run in pool.map(_read_local_run, runs) for b in run]


def _cat_or_none(read: Callable[[str], bytes], path: str) -> bytes | None:
    try:
        return read(path)
    except FileNotFoundError:
        return None


def _read_local_run(paths: list[str]) -> list[bytes | None]:
    return [_cat_or_none(_read_local, p) for p in paths]


def _read_local(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def read_listed(listing: Listing) -> tuple[dict[str, dict[str, Entry]], dict[str, Entry | None]]:
    """(each folder's snapshot entries, each per-tile object's entry by key: None when it is
    unreadable) of a listing.

    An object listed but gone when read was folded into its snapshot by a compaction meanwhile
    (objects are deleted only after the snapshot holding them is written): that folder's
    snapshot is read again, after, so the entry is not lost from this read.
    """
    folders = sorted(listing.snapshots)
    keys = [k for objects in listing.objects.values() for k in objects]
    snapshot_paths = [listing.snapshots[f] for f in folders]
    object_paths = [listing.objects[folder_of(k)][k] for k in keys]
    blobs = cat_many(listing.fs, snapshot_paths + object_paths)
    objects: dict[str, Entry | None] = {}
    compacted_meanwhile = set()
    for key, path, blob in zip(keys, object_paths, blobs[len(folders):], strict=True):
        if blob is None:
            compacted_meanwhile.add(folder_of(key))
        else:
            objects[key] = _parse(blob, path)
    snapshots: dict[str, dict[str, Entry]] = {}
    for folder, path, blob in zip(folders, snapshot_paths, blobs, strict=False):
        if blob is not None and folder not in compacted_meanwhile:
            snapshots[folder] = parse_snapshot(blob, path, folder)
    for folder in sorted(compacted_meanwhile | (set(folders) - set(snapshots))):
        path = f"{listing.root}/{folder}/{SNAPSHOT}" if folder else f"{listing.root}/{SNAPSHOT}"
        blob = cat_many(listing.fs, [path])[0]
        snapshots[folder] = {} if blob is None else parse_snapshot(blob, path, folder)
    return snapshots, objects


def read_all(
    cube_url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Entry]:
    """All entries, keyed by tile key: the snapshots' entries, each replaced by the tile's own
    object where there is one (and left out where that object is unreadable)."""
    listing = list_ledger(cube_url, storage_options)
    snapshots, objects = read_listed(listing)
    entries: dict[str, Entry] = {}
    for folder_entries in snapshots.values():
        entries.update(folder_entries)
    for key, entry in objects.items():
        entries.pop(key, None)  # the tile's own object wins, readable or not
        if entry is not None:
            entries[entry["key"]] = entry
    return entries
