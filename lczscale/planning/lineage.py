"""One cube, one lineage: the planned tiles another provenance made; what their inputs are now.

A cube records, per tile, the provenance hash of what made it and the digest of the input
objects it read. A run that would overwrite tiles of another model, code or settings is refused
before anything is written (``--overwrite`` allows it), and a resume redoes exactly the done
tiles whose inputs changed since.
"""

from __future__ import annotations

from typing import Any

from lczscale.config import MapConfig
from lczscale.core.grid import zone_by_name
from lczscale.core.tiling import TileTask
from lczscale.errors import CubeError
from lczscale.io.cube import ledger
from lczscale.io.sources.protocol import EmbeddingSource


def current_inputs(source: EmbeddingSource, cfg: MapConfig, planned: list[TileTask],
                   year: int) -> dict[str, str]:
    """The input digest of every planned tile as the source holds it now (one listing per
    array), so that a resume redoes exactly the tiles whose inputs changed; {} for sources
    that cannot tell (they are judged by the run's provenance alone)."""
    digests = getattr(source, "input_digests", None)
    if digests is None:
        return {}
    out: dict[str, str] = {}
    for name in sorted({t.zone for t in planned}):
        tasks = [t for t in planned if t.zone == name]
        found = digests(zone_by_name(name, cfg.grid), [t.read for t in tasks], year)
        if found is not None:
            out |= {t.key: found[t.read] for t in tasks}
    return out


def other_lineage(planned: list[TileTask], entries: dict[str, dict[str, Any]],
                  phash: str) -> dict[str, dict[str, Any]]:
    """Planned tiles the cube holds as done with another provenance: a run would overwrite
    good tiles of another model, code or settings."""
    return {t.key: entries[t.key] for t in planned
            if t.key in entries and ledger.state(entries[t.key]) == ledger.DONE
            and entries[t.key].get("provenance_hash") != phash}


def check_lineage(out: str, planned: list[TileTask], entries: dict[str, dict[str, Any]],
                  phash: str, parts: dict[str, str]) -> None:
    """Refuse (before anything is written) a run that would silently overwrite tiles made with
    another provenance, and so mix two lineages in one cube; ``--overwrite`` allows it."""
    others = other_lineage(planned, entries, phash)
    if not others:
        return
    changed: set[str] = set()
    for entry in others.values():
        then = entry.get("provenance_parts")
        changed |= ({k for k in {*parts, *then} if then.get(k) != parts.get(k)}
                    if isinstance(then, dict) else {"unknown (an older lczscale)"})
    raise CubeError(
        f"{len(others)} of the {len(planned)} tiles this run would write are already in {out} "
        f"with another provenance (differs in: {', '.join(sorted(changed)) or 'provenance'}); "
        "nothing was written — pass --overwrite to remap them with this run, or write to "
        "another --out"
    )


