"""Which chunks of a Zarr v3 array are stored: by listing, and inside a shard by its index.

The sharding codec stores, at the start or end of each shard object, an index of (offset,
nbytes) uint64 pairs, one per inner chunk, with 2⁶⁴−1 marking an empty chunk (sharding spec,
zarr v3). Reading only that index tells the planner where land is at inner-chunk resolution
(32 px for TESSERA) at the cost of one small ranged read per shard.

A damaged shard must never hide data from the planner: an index that is short (a zero-byte or
truncated object) or fails its CRC32C checksum yields ``None`` ("assume every chunk present"),
so the shard's tiles are planned and their read reports the damage.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import google_crc32c
import numpy as np
from fsspec import AbstractFileSystem
from zarr.codecs import Crc32cCodec, ShardingCodec

from lczscale.io.stores import store_filesystem
from lczscale.io.zarr_calls import ZarrArray

EMPTY = np.uint64(2**64 - 1)


def stored_chunks(
    arr: ZarrArray,
    leading: tuple[int, ...],
    candidates: Iterable[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], str]:
    """Stored chunks (shards when sharded) whose leading grid indices equal ``leading``:
    their (row, col) grid index on the last two axes → object path. Lists, never reads.

    Plain HTTP(S) cannot list, so there each of ``candidates`` (default: every block of the
    array) is asked for with a HEAD request instead: give the blocks under the area of
    interest, or a planet-sized store costs a request per block.
    """
    fs, root = store_filesystem(arr.store_path.store)
    array_dir = f"{root}/{arr.path}"
    sep = getattr(arr.metadata.chunk_key_encoding, "separator", "/")  # type: ignore[union-attr]
    lead = [str(i) for i in leading]
    if not can_list(fs):
        return _probe(fs, arr, root, leading, candidates)
    if sep == "/":
        prefix = "/".join([array_dir, "c", *lead]) + "/"
        found = {p: p[len(prefix) :].split("/") for p in fs.find(prefix)}
    else:
        start = ".".join(["c", *lead]) + "."
        found = {
            p: p.rsplit("/", 1)[-1][len(start) :].split(".")
            for p in fs.find(array_dir)
            if p.rsplit("/", 1)[-1].startswith(start)
        }
    return {(int(k[0]), int(k[1])): p for p, k in found.items() if len(k) == 2}


def can_list(fs: AbstractFileSystem) -> bool:
    """False for plain HTTP(S), where a "directory" is not something a server lists."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return not {"http", "https"} & set(protocols)


def _probe(
    fs: AbstractFileSystem,
    arr: ZarrArray,
    root: str,
    leading: tuple[int, ...],
    candidates: Iterable[tuple[int, int]] | None,
) -> dict[tuple[int, int], str]:
    block = arr.shards or arr.chunks
    if candidates is None:
        grid = [-(-n // b) for n, b in zip(arr.shape[-2:], block[-2:], strict=True)]
        candidates = itertools.product(range(grid[0]), range(grid[1]))
    found = {}
    for r, c in candidates:
        coords = (*leading, *([0] * (arr.ndim - 2 - len(leading))), r, c)
        path = f"{root}/{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
        if fs.exists(path):
            found[(r, c)] = path
    return found


def sharding_codec(arr: ZarrArray) -> ShardingCodec | None:
    """The array's sharding codec, or None when its objects are plain chunks."""
    codecs = getattr(arr.metadata, "codecs", ())
    return next((c for c in codecs if isinstance(c, ShardingCodec)), None)


def inner_chunk_mask(fs: AbstractFileSystem, path: str, arr: ZarrArray) -> np.ndarray | None:
    """Boolean grid (inner rows, inner cols) of the last two axes: True where a chunk exists.

    None when the array is not sharded, or when the shard's index cannot be trusted (object
    shorter than the index, checksum mismatch): the caller then treats the whole shard as
    holding data, and reading it raises a clear error instead of the tile being skipped.
    """
    layout = index_layout(arr)
    if layout is None:
        return None
    size, at_start = layout
    raw = fs.cat_file(path, start=0, end=size) if at_start else fs.cat_file(path, start=-size)
    return index_mask(raw, arr)


def index_layout(arr: ZarrArray) -> tuple[int, bool] | None:
    """(bytes, at the start?) of a shard's index; None for an unsharded array."""
    codec = sharding_codec(arr)
    if codec is None or arr.shards is None:
        return None
    n = int(np.prod([s // c for s, c in zip(arr.shards, arr.chunks, strict=True)]))
    crc = any(isinstance(c, Crc32cCodec) for c in codec.index_codecs)
    location: Any = codec.index_location
    return 16 * n + (4 if crc else 0), str(getattr(location, "value", location)) == "start"


def index_mask(raw: bytes, arr: ZarrArray) -> np.ndarray | None:
    """The (y, x) inner-chunk mask a shard index's bytes describe (spatial axes: the array's
    dimension_names ``y``/``x`` or ``northing``/``easting``, else the last two); None when the
    bytes are short or fail their checksum (assume every chunk present)."""
    layout = index_layout(arr)
    assert layout is not None and arr.shards is not None
    size, _ = layout
    per_shard = tuple(s // c for s, c in zip(arr.shards, arr.chunks, strict=True))
    n = int(np.prod(per_shard))
    if len(raw) < size:  # zero-byte or truncated shard object
        return None
    if size > 16 * n and int.from_bytes(raw[16 * n : size], "little") != google_crc32c.value(
            raw[: 16 * n]):
        return None
    index = np.frombuffer(raw[: 16 * n], dtype="<u8").reshape(*per_shard, 2)
    present = ~((index[..., 0] == EMPTY) & (index[..., 1] == EMPTY))
    names = list(arr.metadata.dimension_names or ())  # type: ignore[union-attr]
    for y, x in (("y", "x"), ("northing", "easting")):
        if y in names and x in names:
            present = np.moveaxis(present, (names.index(y), names.index(x)), (-2, -1))
            break
    # collapse the other axes (time, band): a spatial cell has data if any of its chunks has
    return np.asarray(present.reshape(-1, present.shape[-2], present.shape[-1]).any(axis=0))
