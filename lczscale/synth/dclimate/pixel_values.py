"""The values stored for a city-year, the same in both writers: ``quantise_per_pixel`` codes and
scales (water embedded, the ``nodata`` swath not: NaN scale), and observation counts and
month flags hashed from each pixel's canonical position, so a pixel holds the same values in
the N and S groups and in the plain copy (spec §3, §7)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lczscale.errors import ConfigError
from lczscale.io.sources.protocol import quantise_per_pixel
from lczscale.synth.cities import SynthCity
from lczscale.synth.dclimate.spec import MONTH_ARRAYS, MONTHS, OBS_ARRAYS, OPTICAL_MIN_OBS
from lczscale.synth.dclimate.zone_groups import _zone_number
from lczscale.synth.layout import BANDS

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _pixel_hash(zone: int, rows: np.ndarray, cols: np.ndarray, year: int, seed: int,
                salt: int) -> npt.NDArray[np.uint64]:
    """(len(rows), len(cols)) hash of canonical positions: the same pixel, the same value."""
    key = _mix(np.array([((seed * 1_000_003 + year) * 64 + zone) * 16 + salt], dtype=np.uint64))
    r = _mix(key ^ rows.astype(np.uint64))
    return _mix(r[:, None] ^ _mix(cols.astype(np.uint64) + key)[None, :])


@dataclass
class _CityYear:
    """One city-year in the city's window: codes (band, y, x) and per-pixel arrays (y, x[, m])."""

    codes: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]
    obs: dict[str, npt.NDArray[np.uint16]]
    months: dict[str, npt.NDArray[np.int8]]


def _months(count: npt.NDArray[np.uint16], offset: npt.NDArray[np.uint64]) -> np.ndarray:
    """min(count, 12) consecutive months flagged from ``offset``: 0 obs ↔ no month."""
    n = np.minimum(count, MONTHS).astype(np.int64)[..., None]
    m = np.arange(MONTHS, dtype=np.int64)
    return ((m - (offset % np.uint64(MONTHS)).astype(np.int64)[..., None]) % MONTHS < n).astype(
        np.int8)


def _city_year(c: SynthCity, year: int, emb: np.ndarray, seed: int) -> _CityYear:
    """The stored values: ``quantise_per_pixel`` codes and scales, water embedded, the
    ``nodata`` swath not embedded (NaN scale, codes 0, fewer than 15 optical observations)."""
    h, w = c.window.height, c.window.width
    if emb.shape != (BANDS, h, w):
        raise ConfigError(f"{c.city.name}: render gave {emb.shape}, want {(BANDS, h, w)}")
    codes, scales = quantise_per_pixel(np.asarray(emb, dtype=np.float32))
    embedded = ~c.nodata
    codes[:, ~embedded] = 0
    scales = scales.astype(np.float32)
    scales[~embedded] = np.nan
    rows = np.arange(c.window.row, c.window.row_stop)
    cols = np.arange(c.window.col, c.window.col_stop)
    zone = _zone_number(c.zone)
    hs = [_pixel_hash(zone, rows, cols, year, seed, salt) for salt in range(6)]
    s2 = np.where(embedded, OPTICAL_MIN_OBS + hs[0] % np.uint64(40),
                  hs[0] % np.uint64(OPTICAL_MIN_OBS)).astype(np.uint16)
    s1a = (hs[1] % np.uint64(20)).astype(np.uint16)  # 0 in 5 %: some radar-free pixels
    s1d = (hs[2] % np.uint64(20)).astype(np.uint16)
    obs = dict(zip(OBS_ARRAYS, (s2, s1a, s1d), strict=True))
    months = {m: _months(v, hs[3 + i]) for i, (m, v) in enumerate(zip(MONTH_ARRAYS, obs.values(),
                                                                     strict=True))}
    return _CityYear(codes, scales, obs, months)
