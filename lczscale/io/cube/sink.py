"""Where a tile goes: its outputs into the cube and its entry into the ledger, in the safe order.

The counterpart of the embedding source's protocol. Every pass writes through a
:class:`CubeSink`, so the rules that keep a cube honest live in one place:

1. ``start``: a *pending* entry before any chunk of the tile is overwritten;
2. ``write``: the tile's outputs (``lcz``, ``confidence``, optionally ``probability``);
3. ``finish``: the *done* entry, only after every output is written (and fsynced locally).

A crash anywhere in between leaves the tile not done, so a resume redoes it. ``fail`` records a
failure but never replaces a done entry of the same provenance (a duplicate attempt of a
finished tile must not undo it). ``compact`` folds the ledger's per-tile entries into snapshots
(``io/cube/compaction.py``) without changing what ``entries`` reads, crash or not; it runs under
the cube's writer lock with no tile in flight. ``tests/cube_sink_conformance.py`` is the suite
every sink passes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lczscale.core.grid import Window, Zone
from lczscale.io.cube import compaction, ledger
from lczscale.io.cube.store import write_tile


class CubeSink(Protocol):
    """A cube a tile's outputs and its ledger entry are written to."""

    url: str

    def start(self, key: str, entry: dict[str, Any]) -> None:
        """Mark tile ``key`` pending (``entry`` plus ``state: pending``) before its chunks."""
        ...

    def write(self, zone: Zone, year: int, core: Window, lcz: np.ndarray,
              confidence: np.ndarray, probability: np.ndarray | None = None) -> None:
        """Write the tile's outputs over ``core`` of ``zone``'s ``year``."""
        ...

    def finish(self, key: str, entry: dict[str, Any]) -> None:
        """Mark tile ``key`` done with ``entry``; only after ``write`` returned."""
        ...

    def fail(self, key: str, entry: dict[str, Any]) -> bool:
        """Mark tile ``key`` failed unless it is done with the same provenance; whether it
        wrote."""
        ...

    def entry(self, key: str) -> dict[str, Any] | None:
        """The ledger entry of ``key`` (None: none, or unreadable)."""
        ...

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every readable ledger entry, by key."""
        ...

    def compact(self) -> int:
        """Fold the per-tile entries into snapshots (``entries`` reads the same); how many were
        folded. Only under the writer lock, with no tile in flight."""
        ...


class ZarrCubeSink:
    """The Zarr v3 cube at ``url`` (local, ``s3://``, ``gs://``) with its ``_ledger/``."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = storage_options

    def start(self, key: str, entry: dict[str, Any]) -> None:
        """Pending before any chunk is overwritten."""
        ledger.record(self.url, key, {**entry, "state": ledger.PENDING}, self.storage_options)

    def write(self, zone: Zone, year: int, core: Window, lcz: np.ndarray,
              confidence: np.ndarray, probability: np.ndarray | None = None) -> None:
        """The tile's chunks (each tile owns whole chunks: no other writer shares them)."""
        write_tile(self.url, zone, year, core, lcz, confidence, probability=probability,
                   storage_options=self.storage_options)

    def finish(self, key: str, entry: dict[str, Any]) -> None:
        """Done, after every output."""
        ledger.record(self.url, key, {**entry, "state": ledger.DONE}, self.storage_options)

    def fail(self, key: str, entry: dict[str, Any]) -> bool:
        """Failed, unless already done with the same provenance."""
        return ledger.record_failure(self.url, key, entry, self.storage_options)

    def entry(self, key: str) -> dict[str, Any] | None:
        """One entry."""
        return ledger.read_one(self.url, key, self.storage_options)

    def entries(self) -> dict[str, dict[str, Any]]:
        """All entries."""
        return ledger.read_all(self.url, self.storage_options)

    def compact(self) -> int:
        """Per-tile entries folded into per-(zone, year) snapshots."""
        return compaction.compact(self.url, self.storage_options)
