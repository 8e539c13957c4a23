"""PNG plots from benchmark JSON lines: model throughput vs batch size, the scaling curve, and
halo read amplification per tile/patch size.

    python benchmarks/plot.py results.jsonl [more.jsonl …] --out DIR

Writes ``model_throughput.png``, ``scaling.png`` and ``amplification.png`` (each only when the
input has the lines it needs) and prints the paths written.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load(paths: list[Path]) -> list[dict[str, Any]]:
    lines = []
    for path in paths:
        for text in path.read_text().splitlines():
            if text.strip().startswith("{"):
                lines.append(json.loads(text))
    return lines


def _label(line: dict[str, Any]) -> str:
    ctx = line.get("context", {})
    gpus = ctx.get("gpus") or []
    return gpus[0] if gpus else f"{ctx.get('cpu_count', '?')} CPU"


def model_throughput(lines: list[dict[str, Any]], out: Path) -> Path | None:
    rows = [x for x in lines if x.get("name") == "model_forward" and "px_per_s" in x]
    if not rows:
        return None
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for x in rows:
        key = (f"{_label(x)} {x['dtype']}{' channels-last' if x['channels_last'] else ''}"
               f"{' int8 in' if x.get('input') == 'int8' else ''} p{x['patch_size']}")
        series[key].append((x["batch_size"], x["px_per_s"] / 1e6))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (patches)")
    ax.set_ylabel("model forward, Mpx/s")
    ax.set_title("Model-only throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "model_throughput.png")


def scaling(lines: list[dict[str, Any]], out: Path) -> Path | None:
    rows = [x for x in lines if x.get("name") == "scaling" and x.get("status") == "run"]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for x in rows:
        label = f"{x['cluster']} ({_label(x)})"
        left.plot(x["workers"], [v / 1e3 for v in x["px_per_s"]], marker="o", label=label)
        right.plot(x["workers"], x["efficiency"], marker="o", label=label)
    right.axhline(0.9, color="grey", linestyle="--", label="target 0.9")
    left.set_xlabel("workers")
    left.set_ylabel("map throughput, kpx/s")
    right.set_xlabel("workers")
    right.set_ylabel("efficiency T(N) / (N·T(1))")
    right.set_ylim(0, 1.1)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Scaling")
    return _save(fig, out / "scaling.png")


def amplification(lines: list[dict[str, Any]], out: Path) -> Path | None:
    rows = [x for x in lines if x.get("name") == "halo_amplification"]
    if not rows:
        return None
    series: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for x in rows:
        series[x["patch_size"]].append((x["tile_size"], x["read_amplification"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for patch, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"patch {patch}")
    measured = [x for x in lines if x.get("name") == "halo_amplification_measured"]
    if measured:
        ax.scatter([x["tile_size"] for x in measured],
                   [x["read_amplification"] for x in measured], marker="+", s=80,
                   color="grey", label="plan, at the measured settings", zorder=3)
        ax.scatter([x["tile_size"] for x in measured],
                   [x["measured_read_amplification"] for x in measured], marker="x",
                   color="black", label="bytes read (synthetic store)", zorder=3)
        for x in measured:
            ax.annotate(f"p{x['patch_size']}", (x["tile_size"], x["read_amplification"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=7)
    for x in rows:
        if x.get("default"):
            ax.scatter([x["tile_size"]], [x["read_amplification"]], s=120, facecolors="none",
                       edgecolors="red", label="default settings", zorder=3)
    ax.axhline(1.15, color="grey", linestyle="--", label="target 1.15")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tile size (px)")
    ax.set_ylabel("read ÷ core pixels")
    ax.set_title("Halo read amplification")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out / "amplification.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", type=Path, nargs="+", help="JSON-lines files from run.py")
    ap.add_argument("--out", type=Path, required=True, help="directory for the PNGs")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    lines = load(a.results)
    written = [p for p in (model_throughput(lines, a.out), scaling(lines, a.out),
                           amplification(lines, a.out)) if p is not None]
    for path in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
