"""PNGs: a cube region with the official LCZ colours and a legend of the classes present, and
a confusion matrix of an evaluation."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from lczscale import classes
from lczscale.browse.draw import MAX_SIDE, draw_lcz
from lczscale.browse.query import fractions, lcz_map
from lczscale.core.grid import Window
from lczscale.errors import NoDataError
from lczscale.io.cube import ledger
from lczscale.io.cube.dataset import open_cube
from lczscale.io.cube.store import cube_zones


def data_window(url: str, zone: str) -> Window:
    """The bounding window of the tiles written in a zone (from the ledger)."""
    cores = [e["core"] for e in ledger.read_all(url).values() if e.get("zone") == zone]
    if not cores:
        raise NoDataError(f"cube {url} has no finished tile in zone {zone}; pass --bbox")
    r0 = min(c[0] for c in cores)
    c0 = min(c[1] for c in cores)
    r1 = max(c[0] + c[2] for c in cores)
    c1 = max(c[1] + c[3] for c in cores)
    return Window(r0, c0, r1 - r0, c1 - c0)


def plot_lcz(
    lcz: np.ndarray,
    out: str | Path,
    title: str = "",
    extent: tuple[float, float, float, float] | None = None,
) -> Path:
    """Draw a 2-D array of LCZ codes (0 = nodata, transparent) with a legend."""
    fig, ax = plt.subplots(figsize=(9, 7.5), dpi=110)
    draw_lcz(ax, lcz, extent=extent, title=title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)
    return out


def cube_region(
    url: str,
    bbox: tuple[float, float, float, float] | None = None,
    zone: str | None = None,
    year: int | None = None,
) -> xr.Dataset:
    """What ``lczscale plot`` draws: a lon/lat bbox of the cube, else the bounding window of
    the tiles written in ``zone`` (or in the cube's only zone)."""
    if bbox is None and zone is None:
        zones = [z.name for z in cube_zones(url)]
        zone = zones[0] if len(zones) == 1 else None
        if zone is None:
            raise NoDataError(f"cube {url} has zones {zones}; pass --bbox or --zone")
    ds = open_cube(url, bbox, zone=zone, year=year)
    if bbox is None:
        assert zone is not None
        w = data_window(url, zone)
        ds = ds.isel(y=slice(w.row, w.row_stop), x=slice(w.col, w.col_stop))
    return ds


def plot_cube(
    url: str,
    out: str | Path,
    bbox: tuple[float, float, float, float] | None = None,
    zone: str | None = None,
    year: int | None = None,
) -> Path:
    """Plot ``lcz`` of a cube: a lon/lat bbox, or the extent of what has been written."""
    ds = cube_region(url, bbox, zone, year)
    da = ds["lcz"].isel(time=-1)
    step = max(1, int(np.ceil(max(da.shape) / MAX_SIDE)))
    lcz = da.isel(y=slice(None, None, step), x=slice(None, None, step)).values
    x, y = ds["x"].values, ds["y"].values
    extent = (float(x[0]), float(x[-1]), float(y[-1]), float(y[0]))
    name = ds.attrs.get("lczscale:zone", {}).get("name") or zone or ""
    title = f"LCZ {name} {int(ds['time'].values[-1])}"
    return plot_lcz(lcz, out, title=title, extent=extent)


def plot_confusion(
    confusion: np.ndarray | Sequence[Sequence[int]],
    out: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """A row-normalised confusion matrix (rows = reference, columns = prediction) with counts.

    ``confusion``: counts as ``evaluate`` reports them — 17 rows (reference classes 1–17) by
    18 columns (prediction 0–17, 0 = no class) — or the full 18×18 with row 0 = nodata.
    ``labels``: names of classes 1–17 (default: the official "1"–"10", "A"–"G"). Only classes
    present in the reference or the prediction are drawn; a "none" column appears when some
    reference pixels got no class. Colour = share of the row (the class's reference pixels),
    text = pixel count.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape == (18, 18):
        cm = cm[1:]
    if cm.shape != (17, 18):
        raise ValueError(f"confusion must be 17×18 or 18×18 counts, got shape {cm.shape}")
    names = list(labels) if labels is not None else list(classes.LCZ_LABELS)
    if len(names) != 17:
        raise ValueError(f"labels must name the 17 LCZ classes, got {len(names)}")
    present = [c for c in range(1, 18) if cm[c - 1].sum() > 0 or cm[:, c].sum() > 0]
    if not present:
        raise NoDataError("the confusion matrix holds no pixel; nothing to plot")
    rows = cm[[c - 1 for c in present]]
    cols = present if cm[:, 0].sum() == 0 else [0, *present]
    m = rows[:, cols]
    totals = rows.sum(axis=1, keepdims=True)  # every prediction of the class's pixels
    share = np.divide(m, totals, out=np.zeros(m.shape, dtype=np.float64), where=totals > 0)
    return plot_row_shares(
        m, share, out, ["none" if c == 0 else names[c - 1] for c in cols],
        [names[c - 1] for c in present], "predicted LCZ", "reference LCZ", title,
        "share of reference pixels", lambda v: f"{v}")


def plot_row_shares(
    values: np.ndarray, share: np.ndarray, out: str | Path, columns: Sequence[str],
    rows: Sequence[str], xlabel: str, ylabel: str, title: str, bar_label: str,
    fmt: Callable[[Any], str],
) -> Path:
    """A PNG of a class-by-class matrix: each cell coloured by ``share`` (of its row), its
    non-zero value written with ``fmt`` — the confusion matrix and the change matrix."""
    side = 2.5 + 0.5 * len(columns)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if values[i, j]:
                ax.text(j, i, fmt(values[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(columns)), list(columns))
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=bar_label)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion_file(path: str | Path, out: str | Path, baseline: bool = False) -> Path:
    """The confusion matrix of an evaluation JSON (``lczscale eval --json`` or report.json);
    ``baseline``: the baseline's matrix (the evaluation must have scored one)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NoDataError(f"cannot read evaluation {path}: {exc}; write one with "
                          "`lczscale eval CUBE --truth REF --json > eval.json`") from exc
    key = "baseline_confusion" if baseline else "confusion"
    if not isinstance(result, dict) or key not in result:
        have = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise NoDataError(f"{path} has no {key!r} (keys: {have}); "
                          + ("evaluate with --baseline FILE to score a baseline" if baseline
                             else "is it the output of `lczscale eval --json`?"))
    miou = result.get("baseline_miou" if baseline else "miou")
    who = "baseline" if baseline else "model"
    title = f"{who} — mIoU {miou:.3f}" if isinstance(miou, int | float) else who
    return plot_confusion(result[key], out, title=title)


def plot_fractions(
    fractions: xr.DataArray, out: str | Path, title: str = "", columns: int = 5,
) -> Path:
    """Small multiples: one panel per class present (share 0–1, same colour scale for all),
    titled with the class's label and name and framed in its official colour."""
    present = [int(c) for c in fractions["class"].values
               if bool((fractions.sel({"class": c}).fillna(0) > 0).any())]
    if not present:
        raise NoDataError("the region has no valid pixel: no class fraction to plot")
    n = len(present)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 1.0, 2.6 * rows + 0.6),
                             dpi=110, squeeze=False, layout="constrained")
    box = fractions.odc.geobox
    extent = None
    if box is not None:
        b = box.extent.boundingbox
        extent = (b.left, b.right, b.bottom, b.top)
    rgb = classes.palette_rgb()
    im = None
    for ax, code in zip(axes.flat, present, strict=False):
        share = np.ma.masked_invalid(fractions.sel({"class": code}).values)
        im = ax.imshow(share, cmap="magma_r", vmin=0.0, vmax=1.0, interpolation="nearest",
                       extent=extent)
        ax.set_title(f"{classes.LCZ_LABELS[code - 1]} {classes.LCZ_CLASS_NAMES[code - 1]}",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(tuple(v / 255 for v in rgb[code - 1]))
            spine.set_linewidth(3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="share of valid pixels")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_cube_fractions(
    url: str,
    out: str | Path,
    bbox: tuple[float, float, float, float] | None = None,
    zone: str | None = None,
    year: int | None = None,
    res: float = 100.0,
) -> Path:
    """Class fractions of a cube region (as ``plot_cube`` picks it) in ``res`` cells of the
    zone lattice, computed by the ``.lcz`` accessor."""
    ds = cube_region(url, bbox, zone, year)
    name = ds.attrs.get("lczscale:zone", {}).get("name") or zone or ""
    frac = fractions(lcz_map(ds), res)  # what ds.lcz.fractions(res) gives
    title = f"LCZ fractions in {res:g} m cells — {name} {int(ds['time'].values[-1])}"
    return plot_fractions(frac, out, title=title)
