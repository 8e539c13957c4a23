"""``lczscale`` command line: synth | train | map | eval | status | plot | experiment | demo |
pyramid | serve | stac | export | deploy."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lczscale.errors import LczscaleError


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT (four numbers), got {text!r}"
        )
    return parts  # type: ignore[return-value]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


SOURCE_FIX = ("give the embedding store (a Zarr store or Icechunk repository: a directory) or "
              "the folder of tiles or COGs, not a file in it")


def _why(exc: Exception) -> str:
    """A settings error (pydantic or plain) as one line."""
    from pydantic import ValidationError

    from lczscale.io.out_path import validation_line

    return validation_line(exc) if isinstance(exc, ValidationError) else " ".join(
        str(exc).split())


def _check_aoi_file(geojson: str | None) -> None:
    """--geojson names a file (inline GeoJSON text, starting with '{', is read as such)."""
    from lczscale.io.out_path import check_input

    if geojson and not geojson.lstrip().startswith("{"):
        check_input(geojson, "--geojson", "file", "give a GeoJSON file with the AOI polygon")


def cmd_synth(a: argparse.Namespace) -> int:
    from lczscale.io.out_path import check_writable_out
    from lczscale.synth.world import write_world

    check_writable_out(a.dir, "synth DIR", "dir")
    summary = write_world(a.dir, cities=a.cities, size_km=a.size_km, seed=a.seed,
                          years=tuple(a.years), layouts=tuple(a.layout),
                          overwrite=a.overwrite)
    _print_json(summary)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from lczscale.browse.export import checked_bbox
    from lczscale.io.out_path import check_input, check_writable_out
    from lczscale.train.launch import run_training

    job = train_job_from_args(a)
    if a.bbox is not None:
        checked_bbox(a.bbox)  # map's rule, before the model directory is made
    check_input(a.source, "--source", "dir", SOURCE_FIX)
    for labels in job.labels:
        check_input(labels.path, "--labels", "any", "give a label file, NAME=FILE or a folder "
                    "of label files")
    check_writable_out(a.out, "train --out", "dir")
    metrics = run_training(job, nproc=a.nproc, progress=not a.quiet, restart=a.restart)
    _print_json({k: v for k, v in metrics.items() if k != "history"} | {"model": a.out})
    return 0


def train_job_from_args(a: argparse.Namespace) -> Any:
    """A TrainJob from ``lczscale train`` arguments (a --config YAML gives the defaults)."""
    from pydantic import ValidationError

    from lczscale.config import ModelConfig, load_yaml
    from lczscale.errors import ConfigError
    from lczscale.train.settings import TrainConfig, TrainJob, label_sets

    cfg = load_yaml(a.config, TrainConfig) if a.config else TrainConfig()
    updates = {k: v for k, v in {"steps": a.steps, "year": a.year, "seed": a.seed,
                                 "batch_size": a.batch_size, "device": a.device}.items()
               if v is not None}
    try:
        if a.holdout_city:
            split = cfg.split.model_copy(update={"holdout_cities": tuple(a.holdout_city)})
            updates["split"] = split
        cfg = TrainConfig.model_validate(cfg.model_dump() | updates)
        return TrainJob(source=a.source, labels=label_sets(a.labels), out=a.out, train=cfg,
                        model=ModelConfig(location=not a.no_location), bbox=a.bbox)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid training settings: {_why(exc)}") from exc


def map_config(a: argparse.Namespace) -> Any:
    from lczscale.config import MapConfig, load_yaml

    base: dict[str, Any] = {}
    if a.config:
        base = load_yaml(a.config, MapConfig).model_dump()
    base.update({k: v for k, v in {
        "source": a.source, "model": a.model, "out": a.out, "bbox": a.bbox,
        "geojson": a.geojson, "year": a.year, "executor": a.executor, "workers": a.workers,
        "device": a.device, "scheduler_address": a.scheduler, "source_kind": a.source_kind,
        "stac_collection": a.collection, "cluster": a.cluster, "min_s2_obs": a.min_s2_obs,
        "overwrite": a.overwrite,
    }.items() if v is not None})
    if a.source_options is not None:
        base["source_options"] = source_options(a.source_options)
    if bool(a.cluster) != bool(a.scheduler):  # a flag says where to run; the YAML's goes
        base["scheduler_address" if a.cluster else "cluster"] = None
    if a.stac:
        base.update(source=a.stac, source_kind="stac")
    if a.grid is not None:
        base["grid"] = dict(base.get("grid") or {}) | {"kind": a.grid}
    if a.tile_size is not None:
        base["grid"] = dict(base.get("grid") or {}) | {"tile_size": a.tile_size}
    if a.patch_size is not None:
        base["stitch"] = dict(base.get("stitch") or {}) | {"patch_size": a.patch_size}
    if a.sharding:
        base["cube"] = dict(base.get("cube") or {}) | {"sharding": True}
    for flag in ("probabilities", "fractions"):  # on only: a cube's outputs stay on anyway
        if getattr(a, flag, False):
            base["outputs"] = dict(base.get("outputs") or {}) | {flag: True}
    missing = [k for k in ("source", "model", "out") if not base.get(k)]
    if missing:
        raise LczscaleError(f"map needs --{' --'.join(missing)} (or a --config that sets them)")
    from pydantic import ValidationError

    from lczscale.errors import ConfigError

    try:
        return MapConfig.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(f"invalid map settings: {_why(exc)}") from exc


def cmd_map(a: argparse.Namespace) -> int:
    from lczscale.execute.run import run_map

    cfg = map_config(a)
    from lczscale.io.out_path import check_input, check_writable_out, read_yaml_mapping
    from lczscale.io.stores import exists

    # Every local path is checked before the first byte is written (or the source is read).
    if cfg.source_kind != "stac":  # a STAC source may be a stac-geoparquet file
        check_input(cfg.source, "embedding source", "dir", SOURCE_FIX)
    _check_aoi_file(cfg.geojson)
    if cfg.cluster:
        read_yaml_mapping(cfg.cluster, "--cluster")
    check_writable_out(cfg.out, "map --out", "dir")

    if cfg.source_kind in ("auto", "") and exists(cfg.source, cfg.source_options):
        from lczscale.io.sources.registry import detect_layout

        layout, found = detect_layout(cfg.source, cfg.source_options)
        print(f"source {cfg.source}: {found} (kind {layout})", file=sys.stderr)
        cfg = cfg.model_copy(update={"source_kind": layout})  # detected once, not again
    report = run_map(cfg, progress=not a.quiet)
    summary = report.summary()
    failed = report.failed
    print(f"computed {summary['computed']} tiles, skipped {summary['skipped']} "
          f"already done, {len(failed)} failed", file=sys.stderr)
    for result in failed[:20]:
        print(f"  failed {result.key}: {result.error}", file=sys.stderr)
    if len(failed) > 20:
        print(f"  … and {len(failed) - 20} more: `lczscale status {report.cube}`", file=sys.stderr)
    products = summary.get("products") or {}
    if products:
        print(f"100 m products: computed {products['computed']} blocks, skipped "
              f"{products['skipped']}, {products['failed']} failed", file=sys.stderr)
    _print_json(summary)
    return 1 if failed or products.get("failed") else 0


def cmd_eval(a: argparse.Namespace) -> int:
    from lczscale.studies.evaluate import evaluate

    if a.report:
        from lczscale.io.out_path import check_writable_out

        check_writable_out(a.report, "eval --report", "dir")
    result = evaluate(a.cube, a.truth, year=a.year, baseline=a.baseline, bbox=a.bbox)
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
        print(f"  LCZ {label:>2}: IoU {iou:.3f}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from lczscale.execute.status import cube_status

    status = cube_status(a.cube)
    if a.json:
        print(json.dumps(status))
    else:
        for k, v in status.items():
            print(f"{k:>16}: {v}")
    return 0


def source_options(text: str | None) -> dict[str, Any]:
    """``--source-options`` (YAML or JSON, e.g. ``{anon: true}``) as a dict."""
    import yaml

    try:
        options = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise LczscaleError(f"--source-options is not YAML/JSON ({' '.join(str(exc).split())});"
                            " e.g. '{anon: true}'") from None
    if not isinstance(options, dict):
        raise LczscaleError(f"--source-options must be a mapping such as '{{anon: true}}', got "
                            f"{text!r}")
    return options


def cmd_coverage(a: argparse.Namespace) -> int:
    from lczscale.core.grid import Aoi
    from lczscale.io.sources.dclimate_coverage import coverage
    from lczscale.io.sources.registry import open_source

    if bool(a.bbox) == bool(a.geojson):
        raise LczscaleError("coverage needs an AOI: give --bbox or --geojson (one of them)")
    from lczscale.io.out_path import check_input

    check_input(a.source, "--source", "dir", SOURCE_FIX)
    _check_aoi_file(a.geojson)
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


def cmd_plot(a: argparse.Namespace) -> int:
    from lczscale.browse.export import checked_bbox
    from lczscale.browse.plot import plot_confusion_file, plot_cube, plot_cube_fractions
    from lczscale.io.out_path import check_writable_out

    if a.bbox is not None:
        checked_bbox(a.bbox)  # the rule map and export apply: no silently swapped box
    check_writable_out(a.out, "plot --out", "file")
    if a.confusion:
        if a.cube or a.fractions:
            raise LczscaleError("plot --confusion EVAL.json draws an evaluation, not a cube: "
                                "give either CUBE (map or --fractions) or --confusion")
        path = plot_confusion_file(a.confusion, a.out, baseline=a.baseline)
    elif not a.cube:
        raise LczscaleError("plot needs CUBE (a map, or --fractions) or --confusion EVAL.json")
    elif a.fractions:
        path = plot_cube_fractions(a.cube, a.out, bbox=a.bbox, zone=a.zone, year=a.year,
                                   res=a.res)
    else:
        path = plot_cube(a.cube, a.out, bbox=a.bbox, zone=a.zone, year=a.year)
    print(path)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from lczscale.browse.export import export

    path = export(a.cube, a.bbox, a.out, a.format, zone=a.zone, year=a.year, crs=a.crs,
                  resolution=a.resolution, resampling=a.resampling, blocksize=a.blocksize,
                  overwrite=a.overwrite)
    print(path)
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lczscale.config import load_yaml
    from lczscale.errors import ConfigError
    from lczscale.io.out_path import check_input, check_writable_out
    from lczscale.studies.experiment import ExperimentConfig, from_world, run_experiment
    from lczscale.train.settings import TrainConfig

    if a.world and not a.config:
        check_input(a.world, "--world", "dir", "give a directory written by `lczscale synth`")
        check_input(Path(a.world) / "world.json", "--world", "file",
                    "give a directory written by `lczscale synth`")
    check_writable_out(a.out, "experiment --out", "dir")

    overrides: dict[str, Any] = {k: v for k, v in {
        "holdout": tuple(a.holdout) if a.holdout else None, "nproc": a.nproc}.items()
        if v is not None}
    if a.train_config:
        overrides["train"] = load_yaml(a.train_config, TrainConfig)
    if a.steps is not None:
        overrides["train"] = overrides.get("train", TrainConfig()).model_copy(
            update={"steps": a.steps})
    try:
        if a.config:
            cfg = load_yaml(a.config, ExperimentConfig).model_copy(
                update=overrides | {"kind": a.kind})
        elif a.world:
            cfg = from_world(a.world, a.kind, **overrides)
        else:
            raise ConfigError("give --world DIR (a synthetic world) or --config EXPERIMENT.yaml")
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid experiment settings: {_why(exc)}") from exc
    report = run_experiment(cfg, a.out, progress=not a.quiet)
    if a.json:
        _print_json(report)
    else:
        print((Path(a.out) / "report.md").read_text())
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from lczscale.io.out_path import check_writable_out
    from lczscale.studies.demo import run_demo

    check_writable_out(a.dir, "demo --dir", "dir")
    report = run_demo(Path(a.dir), workers=a.workers, quick=a.quick)
    print(report.read_text())
    return 0


def cmd_deploy_kubernetes(a: argparse.Namespace) -> int:
    from lczscale.execute.clusters.kubernetes_cluster import write_manifests
    from lczscale.io.out_path import check_writable_out, read_yaml_mapping

    read_yaml_mapping(a.cluster, "--cluster")
    check_writable_out(a.out, "deploy --out", "dir")
    for path in write_manifests(a.cluster, a.map, a.out, a.train, a.ranks):
        print(path)
    return 0


def cmd_pyramid(a: argparse.Namespace) -> int:
    from lczscale.io.cube.pyramid import build_pyramid
    from lczscale.io.out_path import check_writable_out, local_path

    local = local_path(a.cube)
    if local is not None and local.is_dir():  # the overviews are written into the cube
        check_writable_out(a.cube, "pyramid CUBE", "dir")

    def progress(zone: str, level: int, chunks: int) -> None:
        if not a.quiet:
            print(f"{zone}: level {level}: {chunks} chunks", file=sys.stderr)

    _print_json(build_pyramid(a.cube, a.zone, threads=a.threads, on_level=progress))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from lczscale.browse.serve import Limits, export_static, serve

    if a.static:
        from lczscale.io.out_path import check_writable_out

        check_writable_out(a.static, "serve --static", "dir")
        _print_json(export_static(a.cube, a.static, max_zoom=a.max_zoom, min_zoom=a.min_zoom,
                                  year=a.year))
        return 0
    serve(a.cube, host=a.host, port=a.port, limits=Limits(timeout=a.timeout, threads=a.threads))
    return 0


def cmd_stac(a: argparse.Namespace) -> int:
    from lczscale.browse.stac_catalog import write_stac
    from lczscale.io.out_path import check_writable_out

    check_writable_out(a.out, "stac --out", "dir")
    _print_json(write_stac(a.cube, a.out, collection_id=a.id, href=a.href))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lczscale", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic world in the real on-disk formats")
    s.add_argument("dir")
    s.add_argument("--cities", type=int, default=2)
    s.add_argument("--size-km", type=float, default=4.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--years", type=int, nargs="+", default=[2023, 2024])
    s.add_argument("--layout", nargs="+", default=["tessera-zarr"],
                   choices=["tessera-zarr", "tessera-tiles", "aef-cogs", "aef-mosaic",
                            "tessera-icechunk", "tessera-dclimate-zarr"],
                   help="embedding layouts to write (DIR/embeddings.zarr, DIR/tiles/, DIR/aef/, "
                   "DIR/aef-mosaic.zarr, DIR/dclimate.icechunk + DIR/dclimate.registry/, "
                   "DIR/dclimate.zarr); the same world in each")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train the attention U-Net on labelled embeddings")
    t.add_argument("--source", required=True)
    t.add_argument("--labels", required=True, action="extend", nargs="+",
                   help="label sources, one per city: FILE (named by its stem), NAME=FILE, or a "
                   "directory of label files (e.g. the synthetic world's lcz_coarse/)")
    t.add_argument("--out", required=True, help="model directory (safetensors + JSON); a run "
                   "finding resumable state of the same job there continues from it")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel ranks on this machine "
                   "(torchrun: gloo on CPU, NCCL on GPUs)")
    t.add_argument("--holdout-city", action="append", help="leave this city (label set name) "
                   "out of training, for transfer tests (repeatable)")
    t.add_argument("--restart", action="store_true", help="discard resumable state in --out")
    t.add_argument("--config", help="TrainConfig YAML")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--year", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--bbox", type=_bbox)
    t.add_argument("--no-location", action="store_true", help="ablation: no lat/lon input")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("map", help="map an AOI into an LCZ cube (resumes an existing cube)")
    m.add_argument("--source", help="embeddings: path or URL (local, s3://, https://)")
    m.add_argument("--source-kind", help="skip layout detection: tessera-icechunk, "
                   "tessera-dclimate-zarr, tessera-zarr, tessera-tiles, aef-cogs, aef-mosaic, "
                   "geoemb-zarr")
    m.add_argument("--overwrite", action="store_true", default=None,
                   help="remap tiles the cube holds from another provenance (model, code, "
                   "settings); without it such a run exits 2 and changes nothing")
    m.add_argument("--source-options", help="non-secret fsspec/S3 options for the source as "
                   "YAML, e.g. '{anon: true}' for the public TESSERA v1.1 store")
    m.add_argument("--min-s2-obs", type=int, help="mask pixels with fewer clear optical "
                   "observations as nodata (TESSERA v1.1 stores: s2_obs_count)")
    m.add_argument("--stac", help="STAC API URL (or stac-geoparquet file) to find the "
                   "embedding files in; needs --collection, --year and an AOI")
    m.add_argument("--collection", help="STAC collection id (with --stac)")
    m.add_argument("--grid", choices=["utm", "global"], help="cube lattice (default utm)")
    m.add_argument("--model")
    m.add_argument("--out")
    m.add_argument("--config", help="MapConfig YAML; flags override it")
    m.add_argument("--bbox", type=_bbox)
    m.add_argument("--geojson", help="AOI polygon (GeoJSON file)")
    m.add_argument("--year", type=int)
    m.add_argument("--tile-size", type=int)
    m.add_argument("--patch-size", type=int)
    m.add_argument("--sharding", action="store_true")
    m.add_argument("--probabilities", action="store_true",
                   help="also write per-class probabilities (uint8, class x y x x)")
    m.add_argument("--fractions", action="store_true",
                   help="also make 100 m LCZ fractions, majority and filtered LCZ, and the "
                   "per-tile seam-quality layer (an aggregation pass after the tiles)")
    m.add_argument("--executor", choices=["serial", "dask"])
    m.add_argument("--workers", type=int)
    m.add_argument("--scheduler", help="address of a running Dask scheduler")
    m.add_argument("--cluster", help="cluster YAML: kind local, slurm, kubernetes or address "
                   "(see deploy/*/cluster.yaml); --workers then does not apply")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"])
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_map)

    e = sub.add_parser("eval", help="score a cube against a reference cube")
    e.add_argument("cube")
    e.add_argument("--truth", required=True, help="reference lczscale cube (e.g. truth.zarr)")
    e.add_argument("--baseline", help="coarse label raster to score as the naive baseline; "
                   "also the reference of the 100 m agreement")
    e.add_argument("--bbox", type=_bbox, metavar="MINLON,MINLAT,MAXLON,MAXLAT",
                   help="score only reference pixels inside this lon/lat box (one held-out city)")
    e.add_argument("--year", type=int)
    e.add_argument("--report", metavar="DIR",
                   help="write report.json, report.md and confusion PNGs to DIR")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    e.set_defaults(func=cmd_eval)

    st = sub.add_parser("status", help="done / stale / remaining tiles of a cube")
    st.add_argument("cube")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    cv = sub.add_parser("coverage", help="is an AOI covered in a TESSERA v1.1 store for a year "
                        "(years_complete, embedded tiles, refused pixels; exit 1 if not complete)")
    cv.add_argument("--source", required=True, help="the Icechunk store (path or s3:// URL)")
    cv.add_argument("--source-kind", help="skip layout detection (tessera-icechunk)")
    cv.add_argument("--source-options", help="fsspec/S3 options as YAML, e.g. '{anon: true}'")
    cv.add_argument("--year", type=int, required=True)
    cv.add_argument("--bbox", type=_bbox)
    cv.add_argument("--geojson")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=cmd_coverage)

    pl = sub.add_parser("plot", help="PNG of a cube region with the LCZ legend, of its class "
                        "fractions (--fractions), or of an evaluation's confusion matrix")
    pl.add_argument("cube", nargs="?", help="the cube (not with --confusion)")
    pl.add_argument("--out", required=True)
    pl.add_argument("--bbox", type=_bbox)
    pl.add_argument("--zone")
    pl.add_argument("--year", type=int)
    pl.add_argument("--fractions", action="store_true", help="small multiples of the class "
                    "fractions in --res cells instead of the map")
    pl.add_argument("--res", type=float, default=100.0, help="cell size of --fractions in the "
                    "zone's units (default 100 m)")
    pl.add_argument("--confusion", metavar="EVAL.json", help="draw the confusion matrix of an "
                    "evaluation (`lczscale eval --json` output or --report's report.json)")
    pl.add_argument("--baseline", action="store_true", help="with --confusion: the baseline's "
                    "matrix instead of the model's")
    pl.set_defaults(func=cmd_plot)

    ex = sub.add_parser("export", help="cut a bbox of the cube to a COG / GeoTIFF (LCZ colour "
                        "table embedded) or CF NetCDF")
    ex.add_argument("cube")
    ex.add_argument("--bbox", type=_bbox, required=True, metavar="MINLON,MINLAT,MAXLON,MAXLAT")
    ex.add_argument("--out", required=True)
    ex.add_argument("--format", choices=["cog", "geotiff", "netcdf"], default="cog")
    ex.add_argument("--zone", help="zone group (default: the one the bbox falls in)")
    ex.add_argument("--year", type=int, help="default: the cube's latest year")
    ex.add_argument("--crs", help="warp to this CRS (e.g. EPSG:4326), stitching every zone the "
                    "bbox touches; default: the zone's native grid")
    ex.add_argument("--resolution", type=float, help="pixel size with --crs, in its units "
                    "(default: 10 m, or its equivalent in degrees)")
    ex.add_argument("--resampling", choices=["nearest", "mode"], default="nearest",
                    help="with --crs: nearest (keeps 10 m detail) or mode (coarser targets)")
    ex.add_argument("--blocksize", type=int, default=512, help="GeoTIFF tile side")
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    x = sub.add_parser("experiment", help="the studies' experiments: transfer to a held-out "
                       "city, coarse vs fine reference labels, year-to-year transfer")
    x.add_argument("kind", choices=["transfer", "reference", "year"])
    x.add_argument("--world", help="a synthetic world written by `lczscale synth`")
    x.add_argument("--config", help="ExperimentConfig YAML (source, coarse/fine label sets per "
                   "city with bbox, truth cube, …)")
    x.add_argument("--out", required=True, help="directory for models, cubes and report")
    x.add_argument("--holdout", action="append", help="city to test on (repeatable; default: "
                   "the last city)")
    x.add_argument("--steps", type=int)
    x.add_argument("--train-config", help="TrainConfig YAML for every training of the run")
    x.add_argument("--nproc", type=int, help="data-parallel ranks per training")
    x.add_argument("--json", action="store_true")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_experiment)

    d = sub.add_parser("demo", help="synthetic world → train → map → cube → picture + report")
    d.add_argument("--dir", default="lczscale-demo")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--quick", action="store_true", help="smaller world and training (tests)")
    d.set_defaults(func=cmd_demo)

    py = sub.add_parser("pyramid", help="mode-downsampled overviews of lcz (browsing "
                        "pyramid, resumable): ZONE/overviews/K/lcz")
    py.add_argument("cube")
    py.add_argument("--zone", action="append", help="only this zone (repeatable)")
    py.add_argument("--threads", type=int, default=4)
    py.add_argument("--quiet", action="store_true")
    py.set_defaults(func=cmd_pyramid)

    sv = sub.add_parser("serve", help="web map of a cube (slippy map, legend, class on click)")
    sv.add_argument("cube")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--static", metavar="DIR", help="write a static web map (page + tiles "
                    "over the data) to DIR instead of serving")
    sv.add_argument("--max-zoom", type=int, default=15, help="deepest zoom of --static")
    sv.add_argument("--min-zoom", type=int, default=0, help="shallowest zoom of --static")
    sv.add_argument("--year", type=int, help="year of --static (default: the latest)")
    sv.add_argument("--timeout", type=float, default=30.0, help="seconds a tile or point may "
                    "take before the server answers 503 (default: 30)")
    sv.add_argument("--threads", type=int, default=16, help="requests handled at once; more "
                    "wait in a short line, then get 503 (default: 16)")
    sv.set_defaults(func=cmd_serve)

    sc = sub.add_parser("stac", help="STAC Collection + Items describing the cube")
    sc.add_argument("cube")
    sc.add_argument("--out", required=True, help="directory for collection.json and items")
    sc.add_argument("--id", default="lczscale-lcz", help="collection id")
    sc.add_argument("--href", help="URL of the cube as STAC users will reach it (default: "
                    "the CUBE argument)")
    sc.set_defaults(func=cmd_stac)

    dp = sub.add_parser("deploy", help="render deployment files for a platform")
    dsub = dp.add_subparsers(dest="platform", required=True)
    k = dsub.add_parser("kubernetes", help="DaskJob (map), Indexed Job (DDP training) and "
                        "DaskCluster manifests with kustomizations: OUT/{map,train,cluster}/")
    k.add_argument("--cluster", required=True, help="cluster YAML with kind: kubernetes")
    k.add_argument("--map", required=True, help="MapConfig YAML the DaskJob's client runs")
    k.add_argument("--train", help="TrainJob JSON (e.g. MODEL_DIR/train_job.json) for the "
                   "training Job")
    k.add_argument("--ranks", type=int, help="data-parallel ranks (pods, one GPU each) of the "
                   "training Job; default: the cluster's workers")
    k.add_argument("--out", required=True, help="directory for the manifests")
    k.set_defaults(func=cmd_deploy_kubernetes)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LczscaleError as exc:
        print(f"lczscale {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
