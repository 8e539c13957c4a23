"""References for the conformance suite, computed from the synthetic world in memory — never
through a reader — so each reader is checked against what its writer was given."""

from __future__ import annotations

import numpy as np

from lczscale import synth
from lczscale.grid import Window, Zone


def tessera_reference(
    seed: int, cities: int, size_km: float, year: int, city: int = 0
) -> tuple[Zone, Window, np.ndarray]:
    """(zone, city window, de-quantised TESSERA codes·scale with NaN where no data) of one
    city of ``synth.make_world(cities, size_km, seed, years=(year,))``."""
    c = synth.make_world(cities=cities, size_km=size_km, seed=seed, years=(year,))[city]
    codes, scale = synth.quantise(c.embeddings[year])
    expected = codes.astype(np.float32) * scale[None]
    expected[:, ~c.valid] = np.nan
    return c.zone, c.window, expected
