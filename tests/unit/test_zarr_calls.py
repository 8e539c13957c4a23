"""A zarr call whose I/O loop has lost its wake-ups times out, and the next call works on a
new loop (the stall seen on Dask workers: loop idle in epoll, every later call hung too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.core.sync as zsync

from lczscale.io import zarr_calls


@pytest.fixture
def array(tmp_path: Path) -> zarr.Array:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64, 64), chunks=(16, 16),
                            dtype="int16", fill_value=0)
    arr[:] = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
    return arr


class _LostWakeUps:
    """Stands in for a loop's self-pipe write end whose writes go nowhere."""

    def send(self, data: bytes) -> int:
        raise OSError(9, "Bad file descriptor")

    def fileno(self) -> int:
        return -1


_kept: list[object] = []  # the real write ends: closing one would wake its loop (EOF)


def _deafen(loop: object) -> None:
    """Break the loop's wake-ups: calls handed to it from other threads are queued but the
    loop, asleep in epoll, never hears of them."""
    _kept.append(loop._csock)  # type: ignore[attr-defined]
    loop._csock = _LostWakeUps()  # type: ignore[attr-defined]


def test_a_deaf_loop_times_out_and_the_next_call_gets_a_new_one(array: zarr.Array) -> None:
    expected = np.asarray(array[:])
    old = zsync._get_loop()
    _deafen(old)
    stalls = zarr_calls.stalls
    with pytest.raises(TimeoutError):
        zarr_calls.getitem(array, (slice(0, 16), slice(0, 16)), timeout=1.0)
    assert zarr_calls.stalls == stalls + 1
    assert zsync._get_loop() is not old
    np.testing.assert_array_equal(zarr_calls.getitem(array, (slice(None), slice(None))), expected)
    zarr_calls.setitem(array, (slice(0, 2), slice(0, 2)), np.full((2, 2), -5, np.int16))
    assert int(array[1, 1]) == -5


def test_a_plain_zarr_call_on_a_deaf_loop_would_hang(array: zarr.Array) -> None:
    """The control: without the deadline the same call does not return (checked with zarr's
    own timeout, which its synchronous API leaves unset)."""
    _deafen(zsync._get_loop())
    with pytest.raises(TimeoutError):
        zsync.sync(array.async_array.getitem((slice(0, 4), slice(0, 4))), timeout=1.0)
    # leave a working loop for the tests after this one
    with pytest.raises(TimeoutError):
        zarr_calls.getitem(array, (slice(0, 4), slice(0, 4)), timeout=0.5)
    assert int(zarr_calls.getitem(array, (slice(0, 1), slice(1, 2)))[0, 0]) == 1
