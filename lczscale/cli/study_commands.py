"""The commands that run the studies end to end: ``experiment`` (transfer, reference-label and
year-to-year experiments) and ``demo`` (synthetic world → model → cube → picture + report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lczscale.cli.common import print_json, why


def cmd_experiment(a: argparse.Namespace) -> int:
    """``lczscale experiment``: run a transfer, reference-label or year experiment."""
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
        raise ConfigError(f"invalid experiment settings: {why(exc)}") from exc
    report = run_experiment(cfg, a.out, progress=not a.quiet)
    if a.json:
        print_json(report)
    else:
        print((Path(a.out) / "report.md").read_text())
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """``lczscale demo``: synthetic world, training, map, picture and report in one go."""
    from lczscale.io.out_path import check_writable_out
    from lczscale.studies.demo import run_demo

    check_writable_out(a.dir, "demo --dir", "dir")
    report = run_demo(Path(a.dir), workers=a.workers, quick=a.quick)
    print(report.read_text())
    return 0
