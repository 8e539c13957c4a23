"""``map --years``: how years are written (lists, ranges, both; flags and settings files), and
that a run names either a year or years, never both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lczscale.cli import map_config, parser
from lczscale.config import MapConfig, parse_years
from lczscale.errors import ConfigError, LczscaleError

BASE = ["map", "--source", "s.zarr", "--model", "m", "--out", "o.zarr"]


@pytest.mark.parametrize(("given", "years"), [
    ("2018,2024", (2018, 2024)),
    ("2017-2020", (2017, 2018, 2019, 2020)),
    ("2018,2020-2022", (2018, 2020, 2021, 2022)),
    (" 2024 , 2018,2018", (2018, 2024)),
    (2024, (2024,)),
    ([2024, "2019"], (2019, 2024)),
])
def test_years_are_lists_ranges_or_both(given, years) -> None:
    assert parse_years(given) == years


@pytest.mark.parametrize("bad", ["", "2018,", "20x8", "2022-2020", "2018-2019-2020", "99",
                                 True])
def test_anything_else_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="years"):
        parse_years(bad)


def test_a_run_maps_years_or_year_or_the_latest() -> None:
    cfg = MapConfig(source="s", model="m", out="o", years="2023-2024")
    assert cfg.map_years([2020, 2025]) == (2023, 2024)
    assert MapConfig(source="s", model="m", out="o", year=2021).map_years([2025]) == (2021,)
    assert MapConfig(source="s", model="m", out="o").map_years([2020, 2025]) == (2025,)
    with pytest.raises(ValidationError, match="not both"):
        MapConfig(source="s", model="m", out="o", year=2024, years=[2023, 2024])


def test_flags_and_settings_files(tmp_path) -> None:
    assert map_config(parser().parse_args([*BASE, "--years", "2018,2020-2021"])).years == (
        2018, 2020, 2021)
    with pytest.raises(LczscaleError, match="not both"):
        map_config(parser().parse_args([*BASE, "--year", "2024", "--years", "2023,2024"]))
    with pytest.raises(ConfigError, match="years"):
        map_config(parser().parse_args([*BASE, "--years", "2024-2020"]))
    config = tmp_path / "map.yaml"
    config.write_text("source: s.zarr\nmodel: m\nout: o.zarr\nyears: [2024, 2023]\n")
    from_file = map_config(parser().parse_args(["map", "--config", str(config)]))
    assert from_file.years == (2023, 2024)
    assert from_file.year is None
    # a flag's year replaces the file's years (and the other way round)
    flag = map_config(parser().parse_args(["map", "--config", str(config), "--year", "2022"]))
    assert (flag.year, flag.years) == (2022, None)
    config.write_text("source: s.zarr\nmodel: m\nout: o.zarr\nyear: 2024\n")
    flags = map_config(parser().parse_args(["map", "--config", str(config), "--years",
                                            "2023,2024"]))
    assert (flags.year, flags.years) == (None, (2023, 2024))
    config.write_text("source: s.zarr\nmodel: m\nout: o.zarr\nyear: 2024\nyears: [2023]\n")
    with pytest.raises(ConfigError, match="not both"):
        map_config(parser().parse_args(["map", "--config", str(config)]))
