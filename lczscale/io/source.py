"""The narrow protocol every embedding source implements, and the window it returns.

A source reads a window of a *zone* (in zone pixel coordinates) and hands back int8 codes plus
the parameters to de-quantise them, and an explicit validity mask. De-quantisation happens on the
compute device, so only int8 (4× fewer bytes than float32) crosses the host→device link. Pixels
outside the data are padded with codes 0 and marked invalid — never silently zero-valued land.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from lczscale.grid import Window, Zone
from lczscale.plan import Availability

Dequantisation = Literal["per_pixel_scale", "sign_square"]


@dataclass
class EmbeddingWindow:
    """int8 codes (band, y, x), per-pixel scales (y, x), validity and water masks (y, x).

    ``valid`` marks pixels with an embedding; ``water`` marks pixels the source knows to be
    water (TESSERA: scale NaN from the landmask). Pixels that are neither have no data.
    """

    window: Window
    codes: np.ndarray
    scales: np.ndarray | None
    valid: np.ndarray
    water: np.ndarray
    dequantisation: Dequantisation

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scales is None else self.scales.nbytes
        return int(self.codes.nbytes + extra + self.valid.nbytes)


class EmbeddingSource(Protocol):
    """What the planner, the predictor and the trainer need from any embedding source."""

    kind: str  # "tessera", "alphaearth", …
    url: str

    @property
    def dimensions(self) -> int: ...

    @property
    def dataset(self) -> str:
        """Identifies the feature space (kind/version/variant): models never cross it."""
        ...

    @property
    def years(self) -> list[int]: ...

    def zone_names(self) -> list[str]: ...

    def availability(
        self, zone: Zone, year: int, within: Window | None = None
    ) -> Availability:
        """Blocks of the zone holding any non-water input, from listings and chunk indexes
        (never pixel reads); ``within`` limits the finer (per-chunk) look-ups to a window."""
        ...

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow: ...

    def describe(self) -> dict[str, Any]:
        """Provenance: enough to tell whether two runs used the same input."""
        ...
