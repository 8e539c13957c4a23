"""An evaluation written for people: ``report.json`` (the result of ``evaluate`` as is),
``report.md`` (model vs baseline, the LCZ Generator's measures with their intervals, 100 m
agreement, per-class F1 and IoU) and the confusion matrices
as PNGs (``confusion.png``, and ``confusion_baseline.png`` when a baseline was scored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lczscale import classes
from lczscale.browse.plot import plot_confusion


def _f(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ci(bounds: Any) -> str:
    return "—" if not bounds else f"{bounds[0]:.3f}–{bounds[1]:.3f}"


def _lcz_measures(result: dict[str, Any]) -> list[str]:
    """The LCZ Generator's four overall accuracies (and mIoU, kappa) with their intervals."""
    ci = result.get("ci", {})
    lines = ["", "## The LCZ Generator's measures", ""]
    if ci:
        lines += [f"{result['level']:.0%} intervals from {result['replicates']} bootstrap "
                  f"replicates over {result['units']} {result['ci_units']} of the reference "
                  "(its pixels are not independent samples).", ""]
    lines += ["| measure | value | interval |", "|---|---:|---:|"]
    for key, name in (("oa", "OA"), ("oa_u", "OA_u (urban 1–10)"),
                      ("oa_bu", "OA_bu (built vs natural)"), ("oa_w", "OA_w (weighted)"),
                      ("miou", "mIoU"), ("kappa", "kappa")):
        lines.append(f"| {name} | {_f(result.get(key))} | {_ci(ci.get(key))} |")
    return lines


def report_markdown(result: dict[str, Any]) -> str:
    """The Markdown of ``report.md`` for an ``evaluate`` result."""
    base = "baseline_miou" in result
    lines = [
        "# LCZ evaluation", "",
        f"- map: `{result.get('cube')}` (year {result.get('year')})",
        f"- reference: `{result.get('truth')}` — {result['pixels']} labelled pixels scored",
    ]
    if result.get("bbox"):
        lines.append(f"- restricted to bbox (lon/lat) {tuple(result['bbox'])}")
    if base:
        lines.append(f"- baseline: `{result.get('baseline')}` warped (nearest) to 10 m")
    lines += ["", "| | mIoU | OA | kappa |", "|---|---:|---:|---:|",
              f"| model | {_f(result['miou'])} | {_f(result['oa'])} | {_f(result['kappa'])} |"]
    if base:
        lines.append(f"| baseline | {_f(result['baseline_miou'])} | {_f(result['baseline_oa'])} "
                     f"| {_f(result['baseline_kappa'])} |")
    lines += _lcz_measures(result)
    agree = result.get("agreement_100m")
    lines += ["", "## Agreement at 100 m", ""]
    if agree is None:
        lines.append("No coarse reference given (pass a baseline): not computed.")
    else:
        lines += [
            f"Map and `{agree['reference']}`, both reduced to {agree['cell_m']:.0f} m cells by "
            "majority (cells of the zone's pixel lattice), compared over the cells where both "
            "have a class.", "",
            "| cells | OA | mIoU | kappa |", "|---:|---:|---:|---:|",
            f"| {agree['cells']} | {_f(agree['oa'])} | {_f(agree['miou'])} "
            f"| {_f(agree['kappa'])} |",
        ]
    lines += ["", "## Per class", "",
              "| LCZ | class | F1 | F1 interval | IoU |" + (" baseline IoU |" if base else ""),
              "|---|---|---:|---:|---:|" + ("---:|" if base else "")]
    model_iou = result["per_class_iou"]
    base_iou = result.get("baseline_per_class_iou", {})
    f1, f1_ci = result.get("f1", {}), result.get("f1_ci", {})
    for label, name in zip(classes.LCZ_LABELS, classes.LCZ_CLASS_NAMES, strict=True):
        if label not in model_iou and label not in base_iou:
            continue
        row = (f"| {label} | {name} | {_f(f1.get(label))} | {_ci(f1_ci.get(label))} "
               f"| {_f(model_iou.get(label))} |")
        lines.append(row + (f" {_f(base_iou.get(label))} |" if base else ""))
    lines += ["", "## Confusion (rows: reference, columns: prediction; colour: row share)", "",
              "![model](confusion.png)"]
    if base:
        lines += ["", "![baseline](confusion_baseline.png)"]
    return "\n".join(lines) + "\n"


def write_eval_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, confusion.png (+ confusion_baseline.png) under ``out_dir``;
    returns them by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.json": out / "report.json", "report.md": out / "report.md"}
    files["report.json"].write_text(json.dumps(result, indent=2) + "\n")
    files["report.md"].write_text(report_markdown(result))
    files["confusion.png"] = plot_confusion(
        result["confusion"], out / "confusion.png", title=f"model — mIoU {result['miou']:.3f}"
    )
    if "baseline_confusion" in result:
        files["confusion_baseline.png"] = plot_confusion(
            result["baseline_confusion"], out / "confusion_baseline.png",
            title=f"baseline — mIoU {result['baseline_miou']:.3f}",
        )
    return files
