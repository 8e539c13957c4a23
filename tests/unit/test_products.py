"""The pure 100 m products and the seam-quality measure on synthetic 10 m maps."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from lczscale.config import CubeConfig, GridConfig, OutputsConfig
from lczscale.core.grid import utm_zone
from lczscale.io.cube.store import create_cube
from lczscale.products.cells import (
    cell_products,
    fractions_255,
    seam_counts,
    seam_rates,
    seam_ratio,
)
from lczscale.products.counts import gaussian_mode_filter


def smooth_map(n: int, seed: int = 0, classes: int = 6, period: float = 25.0) -> np.ndarray:
    """A seamless class map: the argmax of a few smooth random wave fields (curved class
    borders every ~``period``/4 px, nothing aligned to any lattice)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    fields = []
    for _ in range(classes):
        f = np.zeros((n, n))
        for _ in range(4):
            theta = rng.uniform(0, 2 * np.pi)
            freq = 2 * np.pi / period * rng.uniform(0.5, 1.5)
            f += np.sin(freq * (np.cos(theta) * x + np.sin(theta) * y) + rng.uniform(0, 2 * np.pi))
        fields.append(f)
    return (np.argmax(fields, axis=0) + 1).astype(np.uint8)


def numpy_cells(codes: np.ndarray, factor: int = 10) -> np.ndarray:
    """(h, w, 18) counts of codes 0..17 per factor x factor cell, by reshaping."""
    h, w = codes.shape
    blocks = codes.reshape(h // factor, factor, w // factor, factor)
    return np.stack([(blocks == k).sum(axis=(1, 3)) for k in range(18)], axis=-1)


def numpy_majority(counts: np.ndarray) -> np.ndarray:
    classes = counts[..., 1:]
    return np.where(classes.max(axis=-1) > 0, classes.argmax(axis=-1) + 1, 0).astype(np.uint8)


def noisy_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A map with nodata holes and mixed cells: every code 0..17 occurs."""
    rng = np.random.default_rng(seed)
    base = smooth_map(max(shape), seed)[: shape[0], : shape[1]]
    noise = rng.integers(0, 18, size=shape, dtype=np.uint8)
    return np.where(rng.random(shape) < 0.3, noise, base).astype(np.uint8)


def test_fractions_sum_to_255_exactly_and_round_by_largest_remainder() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 40, size=(2000, 18))
    counts[:50, 1:] = 0  # cells with no valid pixel
    counts[50:60] = 0
    counts[60, 1:] = 0
    counts[60, 5] = 3  # one class only
    f = fractions_255(counts).astype(np.int64)
    valid = counts[:, 1:].sum(axis=1) > 0
    assert np.all(f[valid].sum(axis=1) == 255)
    assert np.all(f[~valid] == 0)
    exact = counts[:, 1:] * 255 / np.maximum(counts[:, 1:].sum(axis=1, keepdims=True), 1)
    assert np.all(np.abs(f - exact) < 1), "largest remainder moves each share by < 1 unit"
    assert f[60, 4] == 255
    # Ties go to the lowest code: two equal classes get 128 + 127.
    tie = np.zeros((1, 18), dtype=np.int64)
    tie[0, [2, 9]] = 1
    assert list(fractions_255(tie)[0, [1, 8]]) == [128, 127]


def test_cell_products_match_numpy_and_the_whole_map_filter() -> None:
    codes = noisy_map((400, 360), seed=2)
    halo = 2
    whole = cell_products(codes, (0, 0), halo=halo)  # the outer 2 cells only feed the filter
    counts = numpy_cells(codes)
    inner = (slice(halo, -halo), slice(halo, -halo))
    assert np.array_equal(whole.majority, numpy_majority(counts)[inner])
    assert np.array_equal(whole.filtered, gaussian_mode_filter(numpy_majority(counts))[inner])
    fr = whole.fractions.astype(np.int64)
    assert fr.shape == (17, 36, 32)
    valid = counts[inner][..., 1:].sum(axis=-1) > 0
    assert np.all(fr.sum(axis=0)[valid] == 255)
    assert np.all(fr.sum(axis=0)[~valid] == 0)
    # The chosen majority has the largest fraction.
    maj = whole.majority
    has = maj > 0
    picked = np.take_along_axis(fr, (maj.astype(np.int64) - 1).clip(0)[None], axis=0)[0]
    assert np.all(picked[has] == fr.max(axis=0)[has])


def test_blocks_with_a_halo_give_the_whole_map() -> None:
    """Cut into blocks of cells (each read with its 2-cell halo), the products equal those of
    the whole map: the aggregation pass does not depend on how a zone is cut."""
    codes = noisy_map((300, 300), seed=3)
    padded = np.pad(codes, 20)  # zeros around, as outside a zone
    whole = cell_products(padded, (-20, -20))
    block = 7  # cells
    for r in range(0, 30, block):
        for c in range(0, 30, block):
            h, w = min(block, 30 - r), min(block, 30 - c)
            window = padded[r * 10 : (r + h + 4) * 10, c * 10 : (c + w + 4) * 10]
            part = cell_products(window, ((r - 2) * 10, (c - 2) * 10))
            sel = (slice(r, r + h), slice(c, c + w))
            assert np.array_equal(part.majority, whole.majority[sel])
            assert np.array_equal(part.filtered, whole.filtered[sel])
            assert np.array_equal(part.fractions, whole.fractions[(slice(None), *sel)])


def test_cell_products_need_cell_aligned_windows() -> None:
    with pytest.raises(ValueError, match="aligned"):
        cell_products(np.zeros((60, 60), np.uint8), (5, 0))


def checkerboard(base: np.ndarray, other: np.ndarray, tile: int) -> np.ndarray:
    """``other`` in the tiles of one colour of a checkerboard of ``tile`` px, ``base`` in the
    rest: a seam along every tile border."""
    ty, tx = np.indices(base.shape) // tile
    return np.where((ty + tx) % 2 == 1, other, base).astype(np.uint8)


N, TILE = 1024, 256


def test_seam_ratio_is_about_one_on_a_seamless_map() -> None:
    m = smooth_map(N)
    ratio, tile0 = seam_ratio(m, TILE)
    assert tile0 == (0, 0)
    assert ratio.shape == (4, 4)
    assert np.isnan(ratio[-1, -1]), "the last tile has no border pair inside the window"
    defined = ratio[~np.isnan(ratio)]
    assert len(defined) == 15
    assert np.all((defined > 0.6) & (defined < 1.5)), ratio
    pooled = seam_counts(m, TILE)
    rate = pooled.border_changes.sum() / pooled.border_pairs.sum()
    inside = pooled.interior_changes.sum() / pooled.interior_pairs.sum()
    assert 0.85 < rate / inside < 1.15


@pytest.mark.parametrize("seam", ["shifted", "permuted"])
def test_seam_ratio_flags_a_checkerboard_of_misfit_tiles(seam: str) -> None:
    big = smooth_map(N + 16)
    base = big[:N, :N]
    if seam == "shifted":  # the content of every other tile moved by 8 px
        other = big[8 : N + 8, 8 : N + 8]
    else:  # every other tile's classes permuted
        other = np.roll(np.arange(1, 18), 3).astype(np.uint8)[base - 1]
    ratio, _ = seam_ratio(checkerboard(base, other, TILE), TILE)
    defined = ratio[~np.isnan(ratio)]
    assert len(defined) == 15, ratio
    assert np.all(defined > 3), ratio
    # The tiles' own interiors are unchanged: the interior rate stays that of the smooth map.
    _, _, interior = seam_rates(seam_counts(checkerboard(base, other, TILE), TILE))
    _, _, smooth = seam_rates(seam_counts(base, TILE))
    assert np.allclose(interior, smooth, rtol=0.1)


def test_seam_counts_of_disjoint_owners_add_up() -> None:
    """Counted by blocks that each own the pairs starting in them (and see one pixel past),
    the counts equal those of the whole window, tile by tile, at any origin."""
    m = noisy_map((300, 280), seed=4)
    origin = (1000, 2000)
    whole = seam_counts(m, 64, origin)
    total = {k: np.zeros_like(getattr(whole, k)) for k in
             ("border_changes", "border_pairs", "interior_changes", "interior_pairs")}
    for r in range(0, 299, 70):
        for c in range(0, 279, 90):
            own = (origin[0] + r, origin[1] + c, min(70, 299 - r), min(90, 279 - c))
            part = seam_counts(m, 64, origin, own)
            dy, dx = part.tile0[0] - whole.tile0[0], part.tile0[1] - whole.tile0[1]
            for k, acc in total.items():
                a = getattr(part, k)
                acc[dy : dy + a.shape[0], dx : dx + a.shape[1]] += a
    for k, acc in total.items():
        assert np.array_equal(acc, getattr(whole, k)), k


def test_seam_counts_ignore_nodata_and_count_tile_borders_only() -> None:
    m = np.ones((8, 8), np.uint8)
    m[:, 4:] = 2  # a class border exactly on the tile border at column 4
    c = seam_counts(m, 4)
    assert c.border_changes[0, 0] == 4
    assert c.border_pairs[0, 0] == 8
    assert c.interior_changes.sum() == 0
    m[0, :] = 0  # nodata pixels form no pairs
    c = seam_counts(m, 4)
    assert c.border_pairs[0, 0] == 3 + 4  # row 0 lost its right-border pair


def test_output_arrays_follow_the_cube_layout_and_its_years(tmp_path) -> None:
    """Probabilities are sharded like ``lcz``; a cube made without outputs gains them (with
    its years), and a later year grows every array."""
    url = str(tmp_path / "c.zarr")
    zone = utm_zone(32)
    grid, cube = GridConfig(tile_size=512), CubeConfig(sharding=True, inner_chunk=256)
    create_cube(url, [zone], [2023], grid, cube, {})
    assert "probability" not in zarr.open_group(url, mode="r")["utm32"]
    outputs = OutputsConfig(probabilities=True, fractions=True, block_cells=512)
    create_cube(url, [zone], [2023, 2024], grid, cube, {}, outputs=outputs)
    g = zarr.open_group(url, mode="r")["utm32"]
    assert g["lcz"].shards == (1, 512, 512)
    assert g["probability"].shards == (1, 17, 512, 512)
    assert g["probability"].chunks == (1, 17, 256, 256)
    assert g["lcz_fraction_100m"].shards == (1, 17, 512, 512)
    assert g["lcz_100m"].shape == (2, -(-zone.shape[0] // 10), -(-zone.shape[1] // 10))
    assert g["seam_ratio"].shape == (2, -(-zone.shape[0] // 512), -(-zone.shape[1] // 512))
    assert g["probability"].shape[:2] == (2, 17)
    assert zarr.open_group(url, mode="r").attrs["lczscale:outputs"]["fractions"] is True
    # The stored block size wins over a later run's: it is the arrays' chunking.
    assert OutputsConfig(fractions=True, block_cells=512).union(
        OutputsConfig(block_cells=64)).block_cells == 512


def test_probability_sums_are_exact_soft_counts() -> None:
    """Sums of p × 255 per class over each cell's classified pixels; nodata pixels and their
    probabilities do not count, and the shares are the cell's mean probabilities."""
    from lczscale.products.cells import fractions_255, probability_sums

    codes = np.zeros((20, 10), dtype=np.uint8)
    codes[:10] = 3
    codes[10:, :5] = 14
    prob = np.zeros((17, 20, 10), dtype=np.uint8)
    prob[2, :10] = 200  # cell 0: class 3 at p 0.78, class 5 at 0.22 everywhere
    prob[4, :10] = 55
    prob[13, 10:] = 255  # cell 1: half the pixels D (certain), half nodata with stray values
    prob[0, 10:, 5:] = 90
    got = probability_sums(prob, codes, (10, 20), factor=10)
    assert got.shape == (2, 1, 18)
    assert got[0, 0, 3] == 100 * 200
    assert got[0, 0, 5] == 100 * 55
    assert got[1, 0, 14] == 50 * 255
    assert got[1, 0, 1] == 0, "nodata pixels' probabilities are left out"
    assert got[..., 0].sum() == 0
    shares = fractions_255(got)
    assert shares[0, 0, 2] == 200
    assert shares[0, 0, 4] == 55
    assert shares[1, 0, 13] == 255
    with pytest.raises(ValueError, match="aligned"):
        probability_sums(prob, codes, (5, 0), factor=10)
