"""The commands that run the pipeline: ``synth`` (a world), ``train`` (a model), ``map`` (a
cube) and ``deploy`` (the files that run training and mapping on a cluster), with the
settings each builds from its flags (``train_job_from_args``, ``map_config``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lczscale.cli.common import SOURCE_FIX, check_aoi_file, print_json, source_options, why
from lczscale.errors import LczscaleError


def cmd_synth(a: argparse.Namespace) -> int:
    """``lczscale synth``: write a synthetic world in the real on-disk formats."""
    from lczscale.io.out_path import check_writable_out
    from lczscale.synth.world import write_world

    check_writable_out(a.dir, "synth DIR", "dir")
    summary = write_world(a.dir, cities=a.cities, size_km=a.size_km, seed=a.seed,
                          years=tuple(a.years), layouts=tuple(a.layout),
                          overwrite=a.overwrite,
                          changing_city=getattr(a, "changing_city", False),
                          sites=getattr(a, "sites", None))
    print_json(summary)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """``lczscale train``: train a model on labelled embeddings (resuming a run in --out)."""
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
    print_json({k: v for k, v in metrics.items() if k != "history"} | {"model": a.out})
    return 0


def train_job_from_args(a: argparse.Namespace) -> Any:
    """A TrainJob from ``lczscale train`` arguments (a --config YAML gives the defaults)."""
    from pydantic import ValidationError

    from lczscale.config import ModelConfig, load_yaml
    from lczscale.errors import ConfigError
    from lczscale.train.settings import TrainConfig, TrainJob, label_sets

    cfg = load_yaml(a.config, TrainConfig) if a.config else TrainConfig()
    updates = {k: v for k, v in {"steps": a.steps, "year": a.year, "seed": a.seed,
                                 "batch_size": a.batch_size, "device": a.device,
                                 "data": getattr(a, "data", None)}.items()
               if v is not None}
    try:
        if a.holdout_city:
            split = cfg.split.model_copy(update={"holdout_cities": tuple(a.holdout_city)})
            updates["split"] = split
        cfg = TrainConfig.model_validate(cfg.model_dump() | updates)
        return TrainJob(source=a.source, labels=label_sets(a.labels), out=a.out, train=cfg,
                        model=ModelConfig(location=not a.no_location), bbox=a.bbox)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid training settings: {why(exc)}") from exc


def map_config(a: argparse.Namespace) -> Any:
    """The MapConfig of ``lczscale map`` arguments: a --config YAML with the flags over it."""
    from lczscale.config import MapConfig, load_yaml

    years = getattr(a, "years", None)
    if a.year is not None and years is not None:
        raise LczscaleError(f"give --year {a.year} or --years {years}, not both")
    base: dict[str, Any] = {}
    if a.config:
        base = load_yaml(a.config, MapConfig).model_dump()
    if a.year is not None or years is not None:  # a flag's year(s) replace the file's
        base.update(year=None, years=None)
    base.update({k: v for k, v in {
        "source": a.source, "model": a.model, "out": a.out, "bbox": a.bbox,
        "geojson": a.geojson, "year": a.year, "years": years, "executor": a.executor,
        "workers": a.workers,
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
    if getattr(a, "fractions", None) == "soft":
        base["outputs"] = dict(base["outputs"]) | {"fractions_from": "probabilities"}
    missing = [k for k in ("source", "model", "out") if not base.get(k)]
    if missing:
        raise LczscaleError(f"map needs --{' --'.join(missing)} (or a --config that sets them)")
    from pydantic import ValidationError

    from lczscale.errors import ConfigError

    try:
        return MapConfig.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(f"invalid map settings: {why(exc)}") from exc


def cmd_map(a: argparse.Namespace) -> int:
    """``lczscale map``: map an AOI into an LCZ cube; exit 1 when a tile or product failed."""
    from lczscale.execute.run import run_map

    dry = getattr(a, "dry_run", False)
    for flag in ("json", "rates"):
        if getattr(a, flag, None) and not dry:
            raise LczscaleError(f"--{flag} goes with --dry-run (a real run prints its summary)")
    if dry and getattr(a, "rates", None):
        from lczscale.planning.rates import rates_path

        rates_path(a.rates)  # refused before the source is opened
    cfg = map_config(a)
    from lczscale.config.files import read_yaml_mapping
    from lczscale.io.out_path import check_input, check_writable_out
    from lczscale.io.stores import exists

    # Every local path is checked before the first byte is written (or the source is read).
    if cfg.source_kind != "stac":  # a STAC source may be a stac-geoparquet file
        check_input(cfg.source, "embedding source", "dir", SOURCE_FIX)
    check_aoi_file(cfg.geojson)
    if cfg.cluster:
        read_yaml_mapping(cfg.cluster, "--cluster")
    if not dry:  # the writability probe creates (and removes) a file: a dry run writes nothing
        check_writable_out(cfg.out, "map --out", "dir")

    if cfg.source_kind in ("auto", "") and exists(cfg.source, cfg.source_options):
        from lczscale.io.sources.registry import detect_layout

        layout, found = detect_layout(cfg.source, cfg.source_options)
        print(f"source {cfg.source}: {found} (kind {layout})", file=sys.stderr)
        cfg = cfg.model_copy(update={"source_kind": layout})  # detected once, not again
    if dry:
        return _dry_run(a, cfg)
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
    print_json(summary)
    return 1 if failed or products.get("failed") else 0


def _dry_run(a: argparse.Namespace, cfg: Any) -> int:
    """``lczscale map --dry-run``: the plan and its projected cost; nothing is written."""
    import json

    from lczscale.planning.dry_run import dry_run, summary_lines

    result = dry_run(cfg, a.workers, a.rates)
    print(json.dumps(result, default=str) if a.json else "\n".join(summary_lines(result)))
    return 0


def cmd_deploy_kubernetes(a: argparse.Namespace) -> int:
    """``lczscale deploy kubernetes``: render the map, training and cluster manifests."""
    from lczscale.config.files import read_yaml_mapping
    from lczscale.execute.clusters.kubernetes_cluster import write_manifests
    from lczscale.io.out_path import check_writable_out

    read_yaml_mapping(a.cluster, "--cluster")
    check_writable_out(a.out, "deploy --out", "dir")
    for path in write_manifests(a.cluster, a.map, a.out, a.train, a.ranks):
        print(path)
    return 0
