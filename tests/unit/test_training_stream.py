"""Streamed training data: the sample index is built from labels alone, a streamed patch is
byte for byte the in-memory region's slice, the chunk cache reads each block once and stays
bounded, and data-parallel ranks read only the blocks under their own samples."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from lczscale.io.sources.registry import open_source
from lczscale.synth.world import write_world
from lczscale.train.regions import index_regions, load_regions
from lczscale.train.sampler import PatchSampler, rank_indices, streamed_normalisation
from lczscale.train.settings import LabelSet, SplitConfig
from lczscale.train.stream import BlockCache, _malloc_trim, return_free_memory

YEAR = 2024
PATCH = 32


class CountingSource:
    """A source that counts its pixel reads (and refuses none)."""

    def __init__(self, source: object) -> None:
        self._source = source
        self.reads: list[tuple[str, int, int, int, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)

    def read(self, zone, window, year):
        self.reads.append((zone.name, window.row, window.col, window.height, window.width))
        return self._source.read(zone, window, year)


def _blocks(reads: list[tuple[str, int, int, int, int]], b: int) -> list[tuple[str, int, int]]:
    """Every block the source reads covered (with repeats), reads aligned to the blocks."""
    out = []
    for z, r, c, h, w in reads:
        assert r % b == 0 and c % b == 0 and h % b == 0 and w % b == 0  # noqa: PT018
        out += [(z, br, bc) for br in range(r // b, (r + h) // b)
                for bc in range(c // b, (c + w) // b)]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stream-world")
    summary = write_world(root / "w", cities=2, size_km=1.28, seed=3, years=(YEAR,))
    labels = tuple(LabelSet(name=c["name"], path=summary["coarse_per_city"][c["name"]])
                   for c in summary["cities"])
    return {"source": str(root / "w" / "embeddings.zarr"), "labels": labels}


def _sampler(world: dict, streamed: bool, freqs: int | None = None,
             source: object | None = None, cache_bytes: int = 256 << 20) -> PatchSampler:
    src = source or open_source(world["source"])
    split = SplitConfig()
    if streamed:
        regions = index_regions(src, world["labels"], YEAR, split)  # type: ignore[arg-type]
        cache = BlockCache(src, YEAR, max_bytes=cache_bytes)  # type: ignore[arg-type]
        return PatchSampler(regions, PATCH, seed=5, cache=cache, frequencies=freqs)
    regions = load_regions(src, world["labels"], YEAR, split, freqs)  # type: ignore[arg-type]
    return PatchSampler(regions, PATCH, seed=5)


def test_the_index_reads_no_embedding(world: dict) -> None:
    src = CountingSource(open_source(world["source"]))
    regions = index_regions(src, world["labels"], YEAR, SplitConfig())  # type: ignore[arg-type]
    assert regions
    assert src.reads == [], "the index is built from labels and the store's listing only"
    assert all(r.data is None and r.location is None for r in regions)
    labelled = sum(int((r.labels.unpack() > 0).sum()) for r in regions)
    assert labelled > 20_000
    held = sum(r.labels.nbytes + r.target.nbytes + r.split.nbytes for r in regions)
    assert held < sum(r.labels.size for r in regions) / 20, "packed: far under a byte a pixel"
    assert held < 16_000 * len(world["labels"]), "kilobytes per city"


def test_a_streamed_patch_is_the_in_memory_slice(world: dict) -> None:
    """Same region, same place: codes, scales, validity and location are identical, whichever
    blocks the streamed patch was assembled from."""
    mem, st = _sampler(world, False, freqs=2), _sampler(world, True, freqs=2)
    assert [r.window for r in st.regions] == [r.window for r in mem.regions]
    for ri, reg in enumerate(mem.regions):
        h, w = reg.labels.shape
        for r0, c0 in ((0, 0), (h - PATCH, w - PATCH), (h // 2 - 7, w // 3 + 5)):
            a, la = mem._inputs(ri, r0, c0)
            b, lb = st._inputs(ri, r0, c0)
            assert np.array_equal(a.codes, b.codes)
            assert np.array_equal(a.scales, b.scales, equal_nan=True)
            assert np.array_equal(a.valid, b.valid)
            assert la is not None
            assert lb is not None
            assert np.allclose(la, lb, atol=1e-6)


def test_streamed_batches_mask_pixels_without_embeddings(world: dict) -> None:
    st = _sampler(world, True)
    b = st.batch(range(64))
    assert b["codes"].shape == (64, 128, PATCH, PATCH)
    invalid = ~b["valid"]
    assert invalid.any(), "the world's no-data strip and water are drawn too"
    assert torch.all(b["target"][invalid] == -1), "the loss never sees a pixel without input"


def test_the_cache_reads_each_block_once_and_stays_bounded(world: dict) -> None:
    src = CountingSource(open_source(world["source"]))
    st = _sampler(world, True, source=src)
    st.batch(range(200))
    assert st.cache is not None
    stats = st.cache.stats
    cached = set(st.cache._lru)  # the 256 MiB cache evicted nothing
    assert stats.loaded == len(cached), "a block is read once while it is cached"
    assert set(_blocks(src.reads, st.cache.block)) == cached
    assert len(src.reads) == stats.reads < stats.loaded, "one call per patch's missing blocks"
    assert st.cache is not None
    assert st.cache.stats.hits > st.cache.stats.reads
    small = CountingSource(open_source(world["source"]))
    tight = _sampler(world, True, source=small, cache_bytes=1)
    tight.batch(range(200))
    assert tight.cache is not None
    assert len(tight.cache._lru) == 1, "the cache evicts down to its bound"
    assert len(small.reads) > len(src.reads)
    tight.cache.clear()
    assert not tight.cache._lru
    assert tight.cache._held == 0


def test_each_rank_reads_only_the_blocks_under_its_own_samples(world: dict) -> None:
    """Two ranks of one step read the blocks under their own halves of the global batch; one
    rank with the whole batch reads their union — never a block no sample of it touches."""
    per_rank = []
    for rank in (0, 1):
        src = CountingSource(open_source(world["source"]))
        st = _sampler(world, True, source=src)
        idx = rank_indices(3, 4, rank, 2)
        st.batch(idx)
        assert st.cache is not None
        need = {(st.regions[ri].zone.name, br, bc)
                for ri, r0, c0, _, _ in (st.spec(i) for i in idx)
                for br, bc in st.cache.blocks_under(st.patch_window(ri, r0, c0))}
        b = st.cache.block
        got = set(_blocks(src.reads, b))
        assert got == need
        per_rank.append(got)
    src = CountingSource(open_source(world["source"]))
    one = _sampler(world, True, source=src)
    one.batch(rank_indices(3, 8, 0, 1))
    b = BlockCache(src, YEAR).block  # type: ignore[arg-type]
    assert set(_blocks(src.reads, b)) == per_rank[0] | per_rank[1]


def test_streamed_normalisation_is_the_same_over_ranks(world: dict) -> None:
    """Each of two ranks reads half of the normalisation patches; the sums they add up give
    one rank's mean and std."""
    one = streamed_normalisation(_sampler(world, True), 0, 0, 1, lambda a: a)
    shares: list[np.ndarray] = []
    for rank in (0, 1):
        streamed_normalisation(_sampler(world, True), 0, rank, 2,
                               lambda a: shares.append(a) or a * 2)  # any non-empty total
    total = shares[0] + shares[1]
    dims = (len(total) - 1) // 2
    mean = total[:dims] / total[-1]
    std = np.sqrt(total[dims:2 * dims] / total[-1] - mean**2)
    assert np.allclose(mean, one[0], rtol=1e-9)
    assert np.allclose(np.maximum(std, 1e-3), one[1], rtol=1e-6)
    assert len(one[0]) == 128
    assert min(one[1]) > 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_goes_back_to_the_system() -> None:
    """Small arrays freed between live ones stay resident in glibc's heap until trimmed."""
    assert _malloc_trim() is not None, "Linux here has glibc"
    arrays = [np.ones(16_000) for _ in range(2_000)]  # 125 KiB each: the heap, not mmap
    live = arrays[::10]  # every tenth stays: the freed ones are holes glibc keeps
    held = _rss()
    del arrays
    freed = _rss()
    return_free_memory()
    trimmed = _rss()
    assert held - freed < 64 << 20, "freed heap pages stay resident"
    assert freed - trimmed > 128 << 20, "trimming gives them back (1,800 × 125 KiB freed)"
    assert sum(a.sum() for a in live) == 200 * 16_000
