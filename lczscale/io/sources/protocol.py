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

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability

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
        """Bytes of codes, scales and validity: what a training region counts against its cap."""
        extra = 0 if self.scales is None else self.scales.nbytes
        return int(self.codes.nbytes + extra + self.valid.nbytes)


class EmbeddingSource(Protocol):
    """What the planner, the predictor and the trainer need from any embedding source.

    Implementations hold only addresses and small metadata when pickled (never opened handles
    or credentials), so they travel to Dask workers cheaply and safely.
    """

    kind: str  # the embedding family a model is trained for: "tessera", "alphaearth", "geoemb"
    layout: str  # how it is stored: "tessera-zarr", "tessera-tiles", "aef-cogs", …
    url: str
    grid_kinds: tuple[str, ...]  # zone lattices it can be read on, native first ("utm", "global")

    @property
    def dimensions(self) -> int:
        """Embedding bands per pixel (TESSERA 128, AlphaEarth 64): the model's input width."""
        ...

    @property
    def dataset(self) -> str:
        """Identifies the feature space (kind/version/variant): models never cross it."""
        ...

    @property
    def years(self) -> list[int]:
        """Years the source holds data for, ascending."""
        ...

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """Zones holding data on the ``grid_kind`` lattice (None = the native one)."""
        ...

    def availability(
        self, zone: Zone, year: int, within: Window | None = None
    ) -> Availability:
        """Blocks of the zone holding any non-water input, from listings and chunk indexes
        (never pixel reads); ``within`` limits the finer (per-chunk) look-ups to a window."""
        ...

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes, scales and masks of ``window`` (zone pixels); pixels outside the data are invalid.
        Corrupt input raises SourceError, I/O failures an OSError (retried by the caller)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance: enough to tell whether two runs used the same input."""
        ...


def dequantised(data: EmbeddingWindow) -> np.ndarray:
    """float32 (band, y, x) embeddings of a window, NaN where invalid (host-side reference).

    The model de-quantises on its device (``model.features``); this is the same arithmetic in
    numpy, for tests, sampling statistics and conformance checks.
    """
    out: np.ndarray
    if data.dequantisation == "per_pixel_scale":
        if data.scales is None:
            raise ValueError("per_pixel_scale de-quantisation needs scales")
        out = data.codes.astype(np.float32) * data.scales[None]
    elif data.dequantisation == "sign_square":
        out = SIGN_SQUARE[data.codes.astype(np.int16) + 128]
    else:
        raise ValueError(f"unknown de-quantisation {data.dequantisation!r}")
    out[:, ~data.valid] = np.nan
    return out


# AlphaEarth: v = sign(q)·(q/127.5)² evaluated in float64, then cast; −128 (masked) → 0.
SIGN_SQUARE = np.array(
    [0.0 if q == -128 else np.sign(q) * (q / 127.5) ** 2 for q in range(-128, 128)],
    dtype=np.float64,
).astype(np.float32)


def quantise_per_pixel(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and a per-pixel float32 scale ``max|v|/127`` along the band ``axis``.

    TESSERA's form: ``codes · scale`` is within ``scale / 2`` of ``v`` in every band. Used by
    the synthetic writer and by readers that must hand float or re-scaled data to the model
    in that same form. ``values`` must be finite.
    """
    scale = (np.abs(values).max(axis=axis) / np.float32(127.0)).astype(np.float32)
    safe = np.expand_dims(np.where(scale > 0, scale, np.float32(1.0)), axis)
    codes = np.rint(values / safe).clip(-127, 127).astype(np.int8)
    return codes, scale


def identity(source: EmbeddingSource) -> dict[str, Any]:
    """The fields every ``describe()`` starts with: which feature space, stored how, where."""
    return {"kind": source.kind, "layout": source.layout, "url": source.url,
            "dataset": source.dataset, "dimensions": source.dimensions}
