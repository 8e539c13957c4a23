"""``lczscale`` command line: synth | train | map | eval | status | plot | experiment | demo |
pyramid | serve | stac | export | zonal | change | deploy.

``main`` is the console entry point (``lczscale = "lczscale.cli:main"``); ``arguments`` defines
the commands, and the ``*_commands`` modules run them, grouped by what they touch: the
pipeline (synth, train, map, deploy), reports on a cube or source (status, coverage, eval),
what is made from a finished cube (plot, export, pyramid, serve, stac, zonal, change) and
the studies (experiment, demo). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from lczscale.cli.arguments import parser
from lczscale.cli.pipeline_commands import map_config, train_job_from_args
from lczscale.errors import LczscaleError

__all__ = ["main", "map_config", "parser", "train_job_from_args"]


NUMERIC_LISTS = ("--bbox",)  # options whose value may start with a minus sign


def _joined_negative_values(argv: Sequence[str]) -> list[str]:
    """``--bbox -0.15,51.49,…`` as ``--bbox=-0.15,51.49,…``: argparse takes a value that starts
    with ``-`` and is not a plain number for an option, so every bbox west of Greenwich or
    south of the equator would otherwise need the ``=`` form."""
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in NUMERIC_LISTS:
            value = next(it, None)
            if value is not None and re.match(r"-\d|-\.\d", value):
                out.append(f"{token}={value}")
                continue
            out.append(token)
            if value is not None:
                out.append(value)
            continue
        out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lczscale ARGV`` (default: ``sys.argv[1:]``) and return its exit status: the
    command's own, or 2 with a one-line error on stderr for bad input."""
    args = parser().parse_args(_joined_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except LczscaleError as exc:
        print(f"lczscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
