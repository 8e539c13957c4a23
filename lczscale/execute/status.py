"""``lczscale status``: how far a cube's run has got, from its ledger and its recorded run.

The recorded run is re-planned (same config, the model and source as they are now), so a tile
is *done* when its ledger entry is done with the provenance the run would give it today,
*stale* when it was made with another provenance (the reasons name the parts that changed:
model, input, grid, code, …) or when an input object it read (a shard, a registry run) has
changed since, *failed* when its last attempt failed (with the error), and
*remaining* when it has no entry yet. A tile made with today's provenance but without an output
the cube now holds (per-class probabilities added by a later run) is stale too, with the reason
``outputs: probability``: the next run remakes it. A cube with 100 m products also reports
the aggregation pass's blocks done and failed (``products_100m``; their ledger entries are
counted in ``ledger_entries`` too).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lczscale.config import MapConfig
from lczscale.errors import LczscaleError
from lczscale.io.cube import ledger
from lczscale.io.cube.store import cube_attrs
from lczscale.planning.blocks import LEDGER_PREFIX
from lczscale.planning.map_plan import prepare

MAX_LISTED = 20
PENDING_REASON = "pending: a run stopped while writing it"
INPUTS_REASON = "inputs changed: an object this tile read was rewritten since"


def cube_status(url: str) -> dict[str, Any]:
    """Counts of done / stale / failed / remaining tiles of the cube's last recorded run."""
    attrs = cube_attrs(url)
    run = attrs.get("lczscale:run")
    if run is None:
        entries = ledger.read_all(url)
        out: dict[str, Any] = {"cube": url, "ledger_entries": len(entries)}
        done = sum(1 for e in entries.values() if ledger.state(e) == ledger.DONE)
        return out | {"done": done, "stale": 0, "failed": len(entries) - done, "remaining": None,
                      "note": "no map run recorded in this cube (e.g. a truth cube)"}
    try:
        # this cube, wherever it is now: the recorded ``out`` is where it was made; read-only,
        # so tiles of another lineage are reported, not refused
        plan = prepare(MapConfig.model_validate(run | {"out": url, "overwrite": True}))
    except LczscaleError as exc:
        out = {"cube": url, "ledger_entries": len(ledger.read_all(url))}
        return out | {"done": None, "stale": None, "failed": None, "remaining": None,
                      "note": f"cannot re-plan the recorded run: {exc}"}
    entries = plan.ledger  # the cube's entries, as prepare read them (read once)
    out = {"cube": url, "ledger_entries": len(entries)}
    done = stale = failed = remaining = 0
    todo = {t.key for t in plan.tasks}  # what the next run would make
    reasons: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for task in plan.planned:
        entry = entries.get(task.key)
        if entry is None:
            remaining += 1
        elif ledger.state(entry) == ledger.FAILED:
            failed += 1
            if len(failures) < MAX_LISTED:
                failures[task.key] = f"{entry.get('error_type')}: {entry.get('error')}"
        elif ledger.state(entry) == ledger.PENDING:  # its chunks may be half written
            stale += 1
            reasons[PENDING_REASON] += 1
        elif task.key not in todo:  # done with today's provenance and outputs
            done += 1
        elif entry.get("provenance_hash") == plan.lineage(task.year).hash:
            stale += 1
            now = plan.input_digests.get(task.key)
            if now is not None and entry.get("inputs") != now:
                reasons[INPUTS_REASON] += 1
            else:  # an output is missing
                reasons["outputs: probability"] += 1
        else:
            stale += 1
            reasons[_stale_reason(entry, plan.lineage(task.year).parts)] += 1
    # every other tile the cube holds (earlier runs over other AOIs or years): the whole cube
    # is counted, each tile against the provenance the run would give its own year
    planned = {t.key for t in plan.planned}
    for key, entry in entries.items():
        if key in planned or key.startswith(f"{LEDGER_PREFIX}/"):
            continue
        lineage = plan.lineage(_year(key, entry, plan.year))
        if ledger.state(entry) == ledger.FAILED:
            failed += 1
        elif ledger.state(entry) == ledger.DONE and entry.get("provenance_hash") == lineage.hash:
            done += 1
        else:
            stale += 1
            reasons[_stale_reason(entry, lineage.parts)
                    if ledger.state(entry) == ledger.DONE else PENDING_REASON] += 1
    tiles = {k: e for k, e in entries.items()
             if ledger.state(e) == ledger.DONE and not k.startswith(f"{LEDGER_PREFIX}/")}
    lineages = Counter(str(e.get("provenance_hash"))[:16] for e in tiles.values())
    per_year: dict[int, set[str]] = {}  # a year's tiles of several provenances: mixed
    for k, e in tiles.items():
        per_year.setdefault(_year(k, e, plan.year), set()).add(str(e.get("provenance_hash")))
    return out | {
        "done": done,
        "stale": stale,
        "failed": failed,
        "remaining": remaining,
        "planned": len(plan.planned),
        "stale_reasons": dict(reasons),
        "failures": failures,
        "year": plan.year,
        "provenance_hash": plan.provenance_hash,
        "provenances": dict(lineages),
        "mixed_provenance": any(len(h) > 1 for h in per_year.values()),
    } | ({"years": list(plan.years)} if len(plan.years) > 1 else {}) | _products(entries)


def _products(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The 100 m aggregation pass's blocks, when the cube has run it."""
    found = products_status(entries)
    return {} if found is None else {"products_100m": found}


def _year(key: str, entry: dict[str, Any], default: int) -> int:
    """The year of a tile's ledger entry (its field, else its key ``zone/year/row_col``)."""
    year = entry.get("year")
    if isinstance(year, int):
        return year
    parts = key.split("/")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else default


def _stale_reason(entry: dict[str, Any], now: dict[str, str]) -> str:
    then = entry.get("provenance_parts")
    if not isinstance(then, dict):
        return "made by an older lczscale that did not record what it depended on"
    changed = sorted(k for k in {*now, *then} if then.get(k) != now.get(k))
    return ("changed: " + ", ".join(changed)) if changed else "provenance differs"


def products_status(entries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Done / failed 100 m blocks in a ledger, with the first failures; None when the cube
    never ran the aggregation pass (for ``lczscale status``)."""
    blocks = {k: e for k, e in entries.items()
              if k.startswith(f"{LEDGER_PREFIX}/") and not k.endswith("/seam")}
    if not blocks:
        return None
    failed = {k: f"{e.get('error_type')}: {e.get('error')}" for k, e in blocks.items()
              if ledger.state(e) == ledger.FAILED}
    return {"blocks_done": len(blocks) - len(failed), "blocks_failed": len(failed),
            "failures": dict(sorted(failed.items())[:20])}
