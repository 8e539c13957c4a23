"""A bbox west of Greenwich or south of the equator is given as users type it."""

from __future__ import annotations

import pytest

from lczscale.cli import _joined_negative_values
from lczscale.cli.arguments import parser


@pytest.mark.parametrize("command", [
    ["eval", "lcz.zarr", "--truth", "t.zarr"],
    ["export", "lcz.zarr", "--out", "x.tif"],
    ["map", "--source", "s", "--model", "m", "--out", "o"],
])
def test_a_bbox_starting_with_a_minus_sign_parses(command: list[str]) -> None:
    argv = [*command, "--bbox", "-0.15,-33.9,0.2,-33.8"]
    with pytest.raises(SystemExit):  # what argparse alone does with it
        parser().parse_args(argv)
    args = parser().parse_args(_joined_negative_values(argv))
    assert tuple(args.bbox) == (-0.15, -33.9, 0.2, -33.8)


def test_other_values_are_left_alone() -> None:
    argv = ["eval", "c", "--bbox", "1,2,3,4", "--year", "-1", "--bbox"]
    assert _joined_negative_values(argv) == argv
