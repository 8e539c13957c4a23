"""Corrupt TESSERA input fails the read of that window with one clear SourceError — never a
silently masked or zero-valued pixel — and damaged shards are still planned, so they fail
loudly instead of vanishing from the map."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lczscale.core.grid import Window, utm_zone
from lczscale.errors import SourceError
from lczscale.io.sources.corrupt_pixels import MAX_ABS_VALUE
from lczscale.io.sources.tessera_zarr import TesseraZarrSource
from lczscale.synth import world as synth

YEAR = 2024
SHARD = 32  # the 100 px city spans 4 × 4 shards, so one can be damaged alone
ZONE = utm_zone(32)  # Zurich
BAD = (1, 1)  # the shard the tests damage: rows/cols 32..63 of the store, inside the city


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Window]:
    """A 1 km synthetic Zurich (one year, 32 px shards) and its window in zone pixels."""
    out = tmp_path_factory.mktemp("corruption")
    summary = synth.write_world(out, cities=1, size_km=1.0, seed=0, years=(YEAR,),
                                shard_size=SHARD, truth_cube=False)
    return out / "embeddings.zarr", Window(*summary["zones"][ZONE.name]["window"])


@pytest.fixture
def store(pristine: tuple[Path, Window], tmp_path: Path) -> tuple[Path, Window]:
    """A fresh copy of the store for a test to damage."""
    src, window = pristine
    dst = tmp_path / "embeddings.zarr"
    shutil.copytree(src, dst)
    return dst, window


def arrays(path: Path) -> tuple[zarr.Array, zarr.Array]:
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)[ZONE.name]
    assert isinstance(g, zarr.Group)
    emb, sc = g["embeddings"], g["scales"]
    assert isinstance(emb, zarr.Array)
    assert isinstance(sc, zarr.Array)
    return emb, sc


def shard_file(path: Path, array: str, shard: tuple[int, int] = BAD) -> Path:
    lead = ["0", "0"] if array == "embeddings" else ["0"]
    p = path / ZONE.name / array / "c" / Path(*lead, *(str(i) for i in shard))
    assert p.is_file(), p
    return p


def shard_window(window: Window, shard: tuple[int, int] = BAD) -> Window:
    return Window(window.row + shard[0] * SHARD, window.col + shard[1] * SHARD, SHARD, SHARD)


def valid_pixel(sc: zarr.Array, shard: tuple[int, int] = BAD) -> tuple[int, int]:
    """(row, col) in the store of the first pixel of ``shard`` with a finite scale."""
    block = np.asarray(sc[0, shard[0] * SHARD : (shard[0] + 1) * SHARD,
                          shard[1] * SHARD : (shard[1] + 1) * SHARD])
    r, c = np.argwhere(np.isfinite(block))[0]
    return shard[0] * SHARD + int(r), shard[1] * SHARD + int(c)


def read_error(path: Path, window: Window, read: Window | None = None) -> str:
    with pytest.raises(SourceError) as info:
        TesseraZarrSource(str(path)).read(ZONE, read or window, YEAR)
    message = str(info.value)
    assert "\n" not in message, "one line"
    return message


def where(window: Window, row: int, col: int) -> str:
    return f"first at zone row {window.row + row}, col {window.col + col}"


# --------------------------------------------------------------------------------------------


def test_undamaged_store_reads_and_plans(pristine: tuple[Path, Window]) -> None:
    path, window = pristine
    src = TesseraZarrSource(str(path))
    _, sc = arrays(path)
    scales = np.asarray(sc[0])
    padded = Window(window.row - 40, window.col - 40, window.height + 80, window.width + 80)
    data = src.read(ZONE, padded, YEAR)
    inside = window.relative_to(padded)
    assert data.valid[inside].sum() == np.isfinite(scales).sum() > 0
    assert data.water[inside].sum() == np.isnan(scales).sum() > 0
    assert not data.valid.sum() - data.valid[inside].sum()  # padding is invalid
    assert not data.codes[:, ~data.valid].any()
    assert not data.scales[~data.valid].any()
    assert np.isposinf(scales).any()  # the no-data strip is there, and reads fine
    avail = src.availability(ZONE, YEAR)
    assert avail.blocks, "full blocks carry no inner-chunk mask"
    assert not avail.cells, "full blocks carry no inner-chunk mask"
    year0 = path / ZONE.name / "embeddings" / "c" / "0" / "0"
    stored = {tuple(int(v) for v in p.relative_to(year0).parts)
              for p in year0.rglob("*") if p.is_file()}
    assert avail.blocks == stored, "an intact store plans exactly its embeddings chunks"
    assert avail.intersects(shard_window(window))
    assert not avail.intersects(Window(window.row - 64, window.col - 64, 32, 32))


def test_negative_scale(store: tuple[Path, Window]) -> None:
    path, window = store
    _, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = -0.05
    msg = read_error(path, window)
    assert "1 pixels have a negative or -inf scale" in msg
    assert where(window, r, c) in msg
    assert "utm32 year 2024" in msg
    assert "re-download or rebuild" in msg


def test_minus_inf_scale(store: tuple[Path, Window]) -> None:
    path, window = store
    _, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = -np.inf
    assert "negative or -inf scale" in read_error(path, window)


def test_nan_scale_over_written_embeddings(store: tuple[Path, Window]) -> None:
    path, window = store
    _, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = np.nan
    msg = read_error(path, window)
    assert ("1 pixels have a non-finite scale (NaN or +inf: water or no embedding) but nonzero "
            "embeddings") in msg
    assert where(window, r, c) in msg


def test_deleted_scales_shard(store: tuple[Path, Window]) -> None:
    """A lost scales shard reads as +inf (no data) under embeddings that were written."""
    path, window = store
    _, sc = arrays(path)
    n = int(np.isfinite(np.asarray(sc[0, 32:64, 32:64])).sum())
    r, c = valid_pixel(sc)
    shard_file(path, "scales").unlink()
    msg = read_error(path, window)
    assert f"{n} pixels have a non-finite scale (NaN or +inf: water or no embedding) but " in msg
    assert where(window, r, c) in msg
    assert "scales chunk was damaged, deleted or replaced" in msg
    # the tile is still planned: the embeddings shard is there
    assert TesseraZarrSource(str(path)).availability(ZONE, YEAR).intersects(
        shard_window(window))


@pytest.mark.parametrize("damage", ["deleted", "zero-byte"])
def test_missing_embeddings_shard_is_planned_and_fails(
    store: tuple[Path, Window], damage: str
) -> None:
    path, window = store
    _, sc = arrays(path)
    n = int(np.isfinite(np.asarray(sc[0, 32:64, 32:64])).sum())
    r, c = valid_pixel(sc)
    target = shard_file(path, "embeddings")
    if damage == "deleted":
        target.unlink()
    else:
        target.write_bytes(b"")
    src = TesseraZarrSource(str(path))
    bad = shard_window(window)
    avail = src.availability(ZONE, YEAR)
    assert avail.intersects(bad), "a tile over a lost embeddings shard must still be planned"
    assert src.availability(ZONE, YEAR, within=bad).intersects(bad)
    msg = read_error(path, window, bad)
    if damage == "zero-byte" and "cannot be decoded" in msg:
        # zarr >= 3.2 refuses a zero-byte shard instead of reading it as fill: also a clear
        # error, naming the damaged shard
        assert "utm32/embeddings/c/0/0/1/1" in msg
        assert "damaged" in msg
    else:
        assert f"{n} pixels have a positive scale but all-zero embeddings" in msg
        assert where(window, r, c) in msg
        assert "embeddings chunk is missing or zeroed" in msg
    # windows away from the damage still read
    src.read(ZONE, shard_window(window, (3, 0)), YEAR)


def test_lost_shards_of_both_arrays_are_not_planned(store: tuple[Path, Window]) -> None:
    """Where neither array stores anything there is nothing to map (nor to detect)."""
    path, window = store
    shard_file(path, "embeddings").unlink()
    shard_file(path, "scales").unlink()
    avail = TesseraZarrSource(str(path)).availability(ZONE, YEAR)
    assert not avail.intersects(shard_window(window))
    assert avail.intersects(shard_window(window, (1, 0)))


def test_zero_scale(store: tuple[Path, Window]) -> None:
    path, window = store
    emb, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = 0.0
    msg = read_error(path, window)
    assert "1 pixels have scale 0 but nonzero embeddings" in msg
    assert where(window, r, c) in msg
    emb[0, :, r, c] = 0  # scale 0 with all codes 0: a valid all-zero vector
    data = TesseraZarrSource(str(path)).read(ZONE, window, YEAR)
    assert data.valid[r, c]
    assert not data.codes[:, r, c].any()


def test_absurd_values(store: tuple[Path, Window]) -> None:
    path, window = store
    _, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = 100.0  # synth codes peak at ±127: values up to 12,700
    msg = read_error(path, window)
    assert f"1 pixels de-quantise to |value| > {MAX_ABS_VALUE:g}" in msg
    assert where(window, r, c) in msg
    assert "#355" in msg


def test_absurd_values_use_the_pixels_largest_code(store: tuple[Path, Window]) -> None:
    """The bound is max|code|·scale of the pixel, not 127·scale."""
    path, window = store
    emb, sc = arrays(path)
    r, c = valid_pixel(sc)
    codes = np.zeros(128, dtype=np.int8)
    codes[:3] = (5, -7, 1)
    emb[0, :, r, c] = codes
    sc[0, r, c] = 100.0  # |value| ≤ 700: odd but not corrupt
    data = TesseraZarrSource(str(path)).read(ZONE, window, YEAR)
    assert data.valid[r, c]
    assert data.scales[r, c] == 100.0
    sc[0, r, c] = 150.0  # 7 · 150 = 1050
    assert "de-quantise to |value| > 1000" in read_error(path, window)


def test_several_problems_in_one_message(store: tuple[Path, Window]) -> None:
    path, window = store
    _, sc = arrays(path)
    r, c = valid_pixel(sc)
    sc[0, r, c] = -1.0
    r2, c2 = valid_pixel(sc, (2, 2))
    sc[0, r2, c2] = 1e6
    msg = read_error(path, window)
    assert "negative or -inf scale" in msg
    assert "de-quantise to |value|" in msg
    assert msg.count("re-download or rebuild") == 1


@pytest.mark.parametrize(
    ("array", "damage"),
    [
        ("embeddings", "truncated"),
        ("embeddings", "flipped"),
        ("scales", "truncated"),
        ("scales", "garbage"),
    ],
)
def test_undecodable_shard(store: tuple[Path, Window], array: str, damage: str) -> None:
    path, window = store
    target = shard_file(path, array)
    raw = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # one byte of compressed chunk data: blosc fails
        target.write_bytes(raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:])
    else:
        target.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    msg = read_error(path, window)
    key = "c/0/0/1/1" if array == "embeddings" else "c/0/1/1"
    assert f"utm32/{array} year 2024" in msg
    assert "cannot be decoded" in msg
    assert f"utm32/{array}/{key}" in msg
    assert "re-download or rebuild" in msg
    assert f"rows {window.row}..{window.row_stop - 1}" in msg
    # planning neither crashes on the damaged index nor drops the shard
    avail = TesseraZarrSource(str(path)).availability(ZONE, YEAR)
    assert avail.intersects(shard_window(window))
    TesseraZarrSource(str(path)).read(ZONE, shard_window(window, (3, 3)), YEAR)


def test_io_errors_are_not_turned_into_source_errors(
    pristine: tuple[Path, Window], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transient I/O must reach the caller unchanged, so that it can retry."""
    path, window = pristine
    src = TesseraZarrSource(str(path))
    src.read(ZONE, window, YEAR)  # open the store before breaking reads

    async def refuse(self: zarr.AsyncArray, sel: Any) -> Any:
        raise ConnectionResetError(104, "connection reset by peer")

    monkeypatch.setattr(zarr.AsyncArray, "getitem", refuse)
    with pytest.raises(ConnectionResetError):
        src.read(ZONE, window, YEAR)

    async def wrapped(self: zarr.AsyncArray, sel: Any) -> Any:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as exc:
            raise ValueError("decode failed") from exc

    monkeypatch.setattr(zarr.AsyncArray, "getitem", wrapped)
    with pytest.raises(ValueError, match="decode failed"):
        src.read(ZONE, window, YEAR)


@pytest.mark.parametrize(("shards", "chunks"), [((1, 64, 64), (1, 32, 32)), (None, (1, 32, 32)),
                                                ((1, 32, 32), (1, 16, 16))])
def test_scales_with_another_layout_still_plan_lost_embeddings(
    store: tuple[Path, Window], shards: tuple[int, ...] | None, chunks: tuple[int, ...]
) -> None:
    """Scales sharded differently, unsharded, or with finer inner chunks: a lost embeddings
    shard under stored scales is planned (whole blocks where the layouts differ)."""
    path, window = store
    _, sc = arrays(path)
    values = np.asarray(sc[:])
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)[ZONE.name]
    assert isinstance(g, zarr.Group)
    del g["scales"]
    new = g.create_array("scales", shape=values.shape, chunks=chunks, shards=shards,
                         dtype="float32", fill_value=np.inf, dimension_names=["time", "y", "x"],
                         config={"write_empty_chunks": False})
    new[:] = values
    with warnings.catch_warnings():  # as synth does: consolidated metadata is not in v3 spec
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))
    src = TesseraZarrSource(str(path))
    before = src.availability(ZONE, YEAR)
    assert before.block == (SHARD, SHARD)
    shard_file(path, "embeddings").unlink()
    after = TesseraZarrSource(str(path)).availability(ZONE, YEAR)
    for r in range(4):
        for c in range(4):
            w = shard_window(window, (r, c))
            assert after.intersects(w) == before.intersects(w), (r, c)
    assert after.intersects(shard_window(window))
    if shards == (1, 32, 32):  # same shards, finer scales chunks: the lost block's scales
        # chunks all stored, so it is planned whole, without a mask
        assert BAD in after.blocks
        assert BAD not in after.cells
    assert "all-zero embeddings" in read_error(path, window)


def test_a_failure_that_does_not_recur_is_not_blamed_on_the_data(
    pristine: tuple[Path, Window], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode-type error that no shard reproduces on its own (e.g. an event-loop hiccup)
    propagates unchanged rather than being reported as a damaged shard."""
    path, window = pristine
    src = TesseraZarrSource(str(path))
    src.read(ZONE, window, YEAR)
    original = zarr.AsyncArray.getitem
    calls = {"n": 0}

    async def once(self: zarr.AsyncArray, sel: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Event loop is closed")
        return await original(self, sel)

    monkeypatch.setattr(zarr.AsyncArray, "getitem", once)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        src.read(ZONE, window, YEAR)
    assert calls["n"] > 1, "the shards were re-read one by one"


def test_a_stalled_read_times_out_as_a_transient_error(
    pristine: tuple[Path, Window], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never finishes becomes a TimeoutError (which the tile's read retries)
    instead of hanging the worker."""
    import asyncio

    from lczscale.io.retry import is_transient
    from lczscale.io.sources import tessera_zarr

    path, window = pristine
    src = TesseraZarrSource(str(path))
    src.read(ZONE, window, YEAR)

    async def stall(self: zarr.AsyncArray, sel: Any) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(zarr.AsyncArray, "getitem", stall)
    monkeypatch.setattr(tessera_zarr, "READ_TIMEOUT_S", 0.2)
    with pytest.raises(TimeoutError) as info:
        src.read(ZONE, window, YEAR)
    assert is_transient(info.value)
