"""Training patches read on demand through the chunk I/O layer, with a small chunk cache.

The in-memory path reads every labelled region once and keeps its embeddings (132 bytes a
pixel): a few dozen cities fill a worker. Streamed, a rank holds only the sample index (the
labels, their split and loss target, packed: kilobytes per city, never an embedding) and reads the
patches it draws, through the source's own ``read`` (any layout; local, S3 or Icechunk).

Reads are aligned to ``block`` px squares of the zone lattice (64: 2 × 2 of TESSERA's 32 px
inner chunks, so a read decodes little beyond the patch) and kept in an LRU cache of
``cache_bytes``: neighbouring samples of one class share chunks, so the cache serves many
reads, and memory stays flat whatever the labelled area. ``prefetch`` (in ``loop``)
assembles the next batches in a thread; the blocks of one batch are fetched concurrently by
``threads`` readers.

A patch's values do not depend on which blocks it was cut from: ``read`` of a window is the
window of a larger read (the sources' contract), so a streamed patch is byte for byte the
in-memory region's slice (``tests/unit/test_training_stream.py``).
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from lczscale.core.grid import Window, Zone
from lczscale.io.sources.protocol import EmbeddingSource, EmbeddingWindow
from lczscale.model.unet import encode_location
from lczscale.train.settings import TrainConfig

if TYPE_CHECKING:  # regions imports nothing from here; the type only
    from lczscale.train.regions import Region

# Training's defaults (TrainConfig), for a cache made without them (tests, tools)
BLOCK = TrainConfig.model_fields["read_block"].default  # 2 x 2 of TESSERA's 32 px chunks
CACHE_BYTES = TrainConfig.model_fields["cache_mb"].default << 20  # ~ 120 blocks of 64 px


@dataclass
class ReadStats:
    """What a reader fetched: source calls, blocks cached from them, cache hits.
    Counts only: a set of the blocks read would grow with the run, which flat memory
    forbids."""

    reads: int = 0
    loaded: int = 0
    hits: int = 0


class BlockCache:
    """Aligned ``block`` × ``block`` reads of one source and year, least recently used first
    out once they hold more than ``max_bytes``. Thread-safe; one source read per block even
    when two threads ask for it at once."""

    def __init__(self, source: EmbeddingSource, year: int, block: int = BLOCK,
                 max_bytes: int = CACHE_BYTES) -> None:
        self.source, self.year, self.block, self.max_bytes = source, year, block, max_bytes
        self._lru: OrderedDict[tuple[str, int, int], EmbeddingWindow] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, int], threading.Event] = {}
        self.stats = ReadStats()

    def blocks_under(self, window: Window) -> Iterator[tuple[int, int]]:
        """(block row, block col) of every block a window touches."""
        b = self.block
        for br in range(window.row // b, (window.row_stop - 1) // b + 1):
            for bc in range(window.col // b, (window.col_stop - 1) // b + 1):
                yield br, bc

    def get(self, zone: Zone, br: int, bc: int) -> EmbeddingWindow:
        """The block's read, from the cache or the source."""
        key = (zone.name, br, bc)
        while True:
            with self._lock:
                hit = self._lru.get(key)
                if hit is not None:
                    self._lru.move_to_end(key)
                    self.stats.hits += 1
                    return hit
                waiting = self._loading.get(key)
            if waiting is not None:
                waiting.wait()  # another thread is reading it
            else:
                self.load(zone, [(br, bc)])

    def load(self, zone: Zone, blocks: list[tuple[int, int]]) -> None:
        """Read the blocks not cached nor being read, as one source call over their bounding
        window (a call costs far more than its bytes: one per patch, not one per block; a
        cached block inside that window is read again, not re-cached), and cache each block
        on its own."""
        with self._lock:
            mine = [k for k in ((zone.name, br, bc) for br, bc in blocks)
                    if k not in self._lru and k not in self._loading]
            for k in mine:
                self._loading[k] = threading.Event()
        if not mine:
            return
        b = self.block
        r0, r1 = min(k[1] for k in mine), max(k[1] for k in mine) + 1
        c0, c1 = min(k[2] for k in mine), max(k[2] for k in mine) + 1
        whole = Window(r0 * b, c0 * b, (r1 - r0) * b, (c1 - c0) * b)
        try:
            data = self.source.read(zone, whole, self.year)
        except BaseException:
            with self._lock:
                for k in mine:
                    self._loading.pop(k).set()  # a waiter retries the read itself
            raise
        with self._lock:
            self.stats.reads += 1
            for k in mine:
                part = _cut(data, Window(k[1] * b, k[2] * b, b, b))
                self._lru[k] = part
                self._held += part.nbytes
                self.stats.loaded += 1
                self._loading.pop(k).set()
            while self._held > self.max_bytes and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._held -= old.nbytes

    def clear(self) -> None:
        """Let every cached block go (training is over: validation reads whole regions), and
        their pages go back to the system."""
        with self._lock:
            self._lru.clear()
            self._held = 0
        return_free_memory()

    def window(self, zone: Zone, window: Window) -> EmbeddingWindow:
        """A window assembled from its blocks (codes, scales, valid, water)."""
        parts = {(br, bc): self.get(zone, br, bc) for br, bc in self.blocks_under(window)}
        first = next(iter(parts.values()))
        codes = np.empty((first.codes.shape[0], window.height, window.width),
                         dtype=first.codes.dtype)
        scales = None if first.scales is None else np.empty(
            (window.height, window.width), dtype=first.scales.dtype)
        valid = np.empty((window.height, window.width), dtype=bool)
        water = np.empty((window.height, window.width), dtype=bool)
        b = self.block
        for (br, bc), d in parts.items():
            got = window.intersection(Window(br * b, bc * b, b, b))
            assert got is not None
            dst = got.relative_to(window)
            src = got.relative_to(Window(br * b, bc * b, b, b))
            codes[(slice(None), *dst)] = d.codes[(slice(None), *src)]
            if scales is not None and d.scales is not None:
                scales[dst] = d.scales[src]
            valid[dst] = d.valid[src]
            water[dst] = d.water[src]
        return EmbeddingWindow(window, codes, scales, valid, water, first.dequantisation)

    def prefetch(self, zone: Zone, windows: list[Window], pool: ThreadPoolExecutor) -> None:
        """Read the missing blocks under ``windows`` on the pool, one call per window (the
        batch's reads run together)."""
        list(pool.map(lambda w: self.load(zone, list(self.blocks_under(w))), windows))


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where there is none."""
    try:
        return cast("Callable[[int], int]", ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):
        return None


def return_free_memory() -> None:
    """Give the pages the process has freed back to the system (glibc; elsewhere nothing).

    glibc keeps freed memory in its arenas, one per thread, for reuse. The cache's churn (reads
    cut into blocks by several reader threads) and each validated region leave them
    fragmented, so without this a rank's resident memory creeps up with the data it has
    passed through rather than what it holds (Dask's documentation trims its workers the same
    way)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _cut(data: EmbeddingWindow, window: Window) -> EmbeddingWindow:
    """A block of a larger read, copied so the larger arrays can be freed."""
    sl = window.relative_to(data.window)
    return EmbeddingWindow(
        window, np.ascontiguousarray(data.codes[(slice(None), *sl)]),
        None if data.scales is None else np.ascontiguousarray(data.scales[sl]),
        np.ascontiguousarray(data.valid[sl]), np.ascontiguousarray(data.water[sl]),
        data.dequantisation)


def patch_location(zone: Zone, window: Window, frequencies: int) -> np.ndarray:
    """(4F, h, w) float32 location encoding of a patch; the same values as the slice of a
    whole region's, because ``Zone.lonlat`` puts its nodes at fixed zone positions."""
    lon, lat = zone.lonlat(window)
    return encode_location(torch.from_numpy(lon), torch.from_numpy(lat), frequencies).numpy()


INDEX_FILE = "sample_index.npz"


def write_sample_index(regions: list[Region], out_dir: str | Path) -> Path:
    """Store the sample index beside the model (``sample_index.npz``, compressed, no pickle):
    per region its city, zone and window, and its labels — what class-balanced sampling drew
    from, so a run can be audited (which classes, where, how many pixels) without re-reading
    the labels. LCZ labels are large flat areas, so it is kilobytes per city."""
    out = Path(out_dir) / INDEX_FILE
    table = np.array([[r.window.row, r.window.col, r.window.height, r.window.width]
                      for r in regions], dtype=np.int64).reshape(-1, 4)
    counts = np.stack([r.labels.totals() for r in regions])
    arrays: dict[str, np.ndarray] = {
        "windows": table, "class_pixels": counts,
        "cities": np.array([r.city for r in regions], dtype=str),
        "zones": np.array([r.zone.name for r in regions], dtype=str),
    }
    arrays |= {f"labels_{i}": r.labels.unpack() for i, r in enumerate(regions)}
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out
