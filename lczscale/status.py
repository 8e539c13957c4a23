"""``lczscale status``: how far a cube's run has got, from its ledger and its recorded run."""

from __future__ import annotations

from typing import Any

from lczscale.config import MapConfig
from lczscale.errors import LczscaleError
from lczscale.execute.run import prepare
from lczscale.io import ledger
from lczscale.io.cube import cube_attrs


def cube_status(url: str) -> dict[str, Any]:
    """Counts of done / stale / failed / remaining tiles of the cube's last recorded run.

    A tile is done when its ledger entry carries the provenance hash the run would give it now
    (same model, input, grid, code); stale when its entry has another hash; remaining when it
    has none.
    """
    attrs = cube_attrs(url)
    entries = ledger.read_all(url)
    out: dict[str, Any] = {"cube": url, "ledger_entries": len(entries)}
    run = attrs.get("lczscale:run")
    if run is None:
        return out | {"done": len(entries), "stale": 0, "failed": 0, "remaining": None,
                      "note": "no map run recorded in this cube (e.g. a truth cube)"}
    try:
        plan = prepare(MapConfig.model_validate(run))
    except LczscaleError as exc:
        return out | {"done": None, "stale": None, "failed": 0, "remaining": None,
                      "note": f"cannot re-plan the recorded run: {exc}"}
    keys = [t.key for t in plan.planned]
    done = sum(1 for k in keys if entries.get(k, {}).get("provenance_hash") == plan.provenance_hash)
    stale = sum(1 for k in keys if k in entries and
                entries[k].get("provenance_hash") != plan.provenance_hash)
    return out | {
        "done": done,
        "stale": stale,
        "failed": 0,
        "remaining": len(keys) - done - stale,
        "planned": len(keys),
        "year": plan.year,
        "provenance_hash": plan.provenance_hash,
    }
