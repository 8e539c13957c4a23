"""References for the conformance suite, computed from the synthetic world in memory — never
through a reader — so each reader is checked against what its writer was given.

Each reference is computed once per test run (the conformance suite asks for the same one in
every test of a case) and returned read-only, so that no test can change another's."""

from __future__ import annotations

import functools

import numpy as np

from lczscale.core.grid import Window, Zone
from lczscale.synth import world as synth


@functools.lru_cache(maxsize=2)
def _world(cities: int, size_km: float, seed: int, year: int) -> list[synth.SynthCity]:
    """``synth.make_world`` for one year, shared by the references of its cities (read only)."""
    return synth.make_world(cities=cities, size_km=size_km, seed=seed, years=(year,))


def _read_only(zone: Zone, window: Window, expected: np.ndarray) -> tuple[Zone, Window, np.ndarray]:
    expected.setflags(write=False)
    return zone, window, expected


@functools.cache
def tessera_reference(
    seed: int, cities: int, size_km: float, year: int, city: int = 0
) -> tuple[Zone, Window, np.ndarray]:
    """(zone, city window, de-quantised TESSERA codes·scale with NaN where no data) of one
    city of ``synth.make_world(cities, size_km, seed, years=(year,))``."""
    c = _world(cities, size_km, seed, year)[city]
    codes, scale = synth.quantise(c.embeddings[year])
    expected = codes.astype(np.float32) * scale[None]
    expected[:, ~c.valid] = np.nan
    return _read_only(c.zone, c.window, expected)


def aef_dequantise(codes: np.ndarray) -> np.ndarray:
    """float32 AlphaEarth values of int8 codes, NaN where the codes say no data (−128)."""
    from lczscale.io.sources.protocol import SIGN_SQUARE

    out = SIGN_SQUARE[codes.astype(np.int16) + 128]
    out[:, codes[0] == -128] = np.nan
    return out


def aef_padded(window: Window, codes: np.ndarray, pad: int = 16) -> tuple[Window, np.ndarray]:
    """The city window grown by ``pad`` px, and its codes (−128 = no data around the city:
    AEF covers water too, so a city window alone may hold no pixel without data)."""
    out = np.full((codes.shape[0], window.height + 2 * pad, window.width + 2 * pad), -128,
                  dtype=np.int8)
    out[:, pad:-pad, pad:-pad] = codes
    return Window(window.row - pad, window.col - pad, out.shape[1], out.shape[2]), out


@functools.cache
def aef_reference(
    seed: int, cities: int, size_km: float, year: int, city: int = 0
) -> tuple[Zone, Window, np.ndarray]:
    """(zone, padded city window, de-quantised AEF values with NaN where no data) of one city
    of ``synth.make_world(cities, size_km, seed, years=(year,))`` — what the AEF writers of
    ``synth.write_world(..., layouts=("aef-cogs",))`` were given."""
    from lczscale.synth.aef import aef_codes

    c = _world(cities, size_km, seed, year)[city]
    extent, codes = aef_padded(c.window, aef_codes(c, c.embeddings[year], seed))
    return _read_only(c.zone, extent, aef_dequantise(codes))


@functools.cache
def dclimate_reference(
    seed: int, cities: int, size_km: float, year: int, city: int = 0, margin: int = 16
) -> tuple[Zone, Window, np.ndarray]:
    """The same for the dClimate v1.1 layouts, which have no water marker: water is embedded
    like land, and only the not-processed swath (scale NaN there) is without data. The window
    reaches ``margin`` px past the city (nothing is stored there), so every city's reference
    holds pixels without data."""
    c = _world(cities, size_km, seed, year)[city]
    codes, scale = synth.quantise(c.embeddings[year])
    w, m = c.window, margin
    expected = np.full((codes.shape[0], w.height + 2 * m, w.width + 2 * m), np.nan, np.float32)
    inner = codes.astype(np.float32) * scale[None]
    inner[:, c.nodata] = np.nan
    expected[:, m : m + w.height, m : m + w.width] = inner
    return _read_only(c.zone, Window(w.row - m, w.col - m, w.height + 2 * m, w.width + 2 * m),
                      expected)
