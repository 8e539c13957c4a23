"""The commands that report on a cube or a source without changing it: ``status`` (which tiles
are done), ``coverage`` (is an AOI embedded in a store) and ``eval`` (how right a cube is)."""

from __future__ import annotations

import argparse
import json

from lczscale.cli.common import SOURCE_FIX, check_aoi_file, source_options
from lczscale.errors import LczscaleError


def cmd_eval(a: argparse.Namespace) -> int:
    """``lczscale eval``: score a cube against a reference cube (and write a report); with
    ``--at 100m``, against a raster on the global LCZ map's lattice, pixel for pixel."""
    from lczscale.studies.evaluate import evaluate

    if getattr(a, "at", "10m") == "100m":
        return _eval_100m(a)
    if a.report:
        from lczscale.io.out_path import check_writable_out

        check_writable_out(a.report, "eval --report", "dir")
    from lczscale.io.out_path import check_input

    check_input(a.truth, "--truth", "any", "give the reference cube or label file to score "
                "against")
    result = evaluate(a.cube, a.truth, year=a.year, baseline=a.baseline, bbox=a.bbox,
                      bootstrap=a.bootstrap, block_m=a.block_m)
    if a.report:
        from lczscale.studies.report import write_eval_report

        files = write_eval_report(result, a.report)
        if not a.json:  # --json: stdout holds the one JSON object and nothing else
            print(f"report: {files['report.md']}")
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"mIoU {result['miou']:.3f}  OA {result['oa']:.3f}  kappa {result['kappa']:.3f}  "
          f"({result['pixels']} px)")
    ci = result.get("ci", {})
    for key, name in (("oa", "OA"), ("oa_u", "OA_u"), ("oa_bu", "OA_bu"), ("oa_w", "OA_w")):
        value, bounds = result.get(key), ci.get(key)
        shown = "—" if value is None else f"{value:.3f}"
        if bounds:
            shown += f"  [{bounds[0]:.3f}, {bounds[1]:.3f}]"
        print(f"  {name:<6}{shown}")
    if ci:
        print(f"  ({result['replicates']} bootstrap replicates over {result['units']} "
              f"{result['ci_units']}, {result['level']:.0%} intervals)")
    if "baseline_miou" in result:
        print(f"baseline (upsampled coarse labels): mIoU {result['baseline_miou']:.3f}  "
              f"OA {result['baseline_oa']:.3f}")
    agree = result.get("agreement_100m")
    if agree is not None:
        if agree["cells"]:
            print(f"agreement at 100 m with {agree['reference']}: OA {agree['oa']:.3f}  "
                  f"mIoU {agree['miou']:.3f}  ({agree['cells']} cells)")
        else:
            print(f"agreement at 100 m with {agree['reference']}: no cell where both have a "
                  "class")
    for label, iou in result["per_class_iou"].items():
        print(f"  LCZ {label:>2}: IoU {iou:.3f}  F1 {result['f1'][label]:.3f}")
    return 0


def _eval_100m(a: argparse.Namespace) -> int:
    """``eval --at 100m``: the cube's majority on the global LCZ map's cells vs ``--truth``."""
    from lczscale.io.out_path import check_input
    from lczscale.studies.global_grid_eval import evaluate_100m

    for flag, value in (("--baseline", a.baseline), ("--report", a.report)):
        if value:
            raise LczscaleError(f"eval --at 100m compares the cube with --truth alone; {flag} "
                                "belongs to the 10 m evaluation (drop it or --at 100m)")
    check_input(a.truth, "--truth", "file", "give a raster on the global LCZ map's lattice "
                "(EPSG:4326, 0.000898315°), e.g. the global map or an LCZ Generator GeoTIFF")
    result = evaluate_100m(a.cube, a.truth, year=a.year, bbox=a.bbox, bootstrap=a.bootstrap,
                           block_m=a.block_m)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"at 100 m on the global LCZ map's lattice: mIoU {result['miou']:.3f}  OA "
          f"{result['oa']:.3f}  kappa {result['kappa']:.3f}  ({result['cells']} cells)")
    for key, name in (("oa_u", "OA_u"), ("oa_bu", "OA_bu"), ("oa_w", "OA_w")):
        value = result.get(key)
        print(f"  {name:<6}{'—' if value is None else f'{value:.3f}'}")
    for label, iou in result["per_class_iou"].items():
        print(f"  LCZ {label:>2}: IoU {iou:.3f}  F1 {result['f1'][label]:.3f}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    """``lczscale status``: the done, stale and remaining tiles of a cube."""
    from lczscale.execute.status import cube_status

    status = cube_status(a.cube)
    if a.json:
        print(json.dumps(status))
    else:
        for k, v in status.items():
            print(f"{k:>16}: {v}")
    return 0


def cmd_coverage(a: argparse.Namespace) -> int:
    """``lczscale coverage``: is an AOI embedded in a store for a year; exit 1 if not complete."""
    from lczscale.core.grid import Aoi
    from lczscale.io.sources.dclimate_coverage import coverage
    from lczscale.io.sources.registry import open_source

    if bool(a.bbox) == bool(a.geojson):
        raise LczscaleError("coverage needs an AOI: give --bbox or --geojson (one of them)")
    from lczscale.io.out_path import check_input

    check_input(a.source, "--source", "dir", SOURCE_FIX)
    check_aoi_file(a.geojson)
    from lczscale.config import reject_secret_options

    options = source_options(a.source_options)
    try:
        reject_secret_options(options)
    except ValueError as exc:
        raise LczscaleError(str(exc)) from None
    aoi = Aoi.from_bbox(a.bbox) if a.bbox else Aoi.from_geojson(a.geojson)
    rows = coverage(open_source(a.source, a.source_kind or "auto", options), aoi, a.year)
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            share = r.get("refused_share")
            found = (f"{r['embedded']} of {r['tiles']} tiles embedded" if r.get("tiles") is not None
                     else f"{r.get('blocks_with_data', 0)} 2048 px blocks with data")
            print(f"{r['zone']} {r['year']}: {'complete' if r['complete'] else 'NOT complete'} "
                  f"(years_complete {r['years_complete']})"
                  + (f"; {found}" if r["complete"] or r.get("tiles") else "")
                  + (f", {share:.1%} of their pixels refused" if share is not None else "")
                  + f" [{r.get('from', '-')}]")
    return 0 if all(r["complete"] for r in rows) else 1
