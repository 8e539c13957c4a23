"""``lczscale stac``: the Collection and Items validate against STAC 1.1 core and the
projection / classification / processing extension schemas, offline (schemas vendored in
tests/data/stac_schemas), and broken items fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pystac
import pytest
from pystac.errors import STACValidationError
from pystac.validation import JsonSchemaSTACValidator, validate_dict

from lczscale import classes
from lczscale.cli import main
from tests.small_cubes import PROVENANCE, make_cube

pytestmark = pytest.mark.integration
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "stac_schemas"


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator that never fetches: a schema not vendored is an error."""

    def __init__(self) -> None:
        super().__init__()
        for path in SCHEMAS.glob("*-v*.json"):
            schema = json.loads(path.read_text())
            self.schema_cache[schema["$id"].rstrip("#")] = schema

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not vendored in {SCHEMAS}")
        return self.schema_cache[schema_uri]


PROFILE = json.loads((SCHEMAS / "lczscale-item-profile.json").read_text())


def validate(obj: dict[str, Any]) -> None:
    """STAC core + every extension the object declares, then lczscale's profile for Items."""
    validate_dict(obj, validator=OfflineValidator())
    if obj["type"] == "Feature":
        try:
            jsonschema.validate(obj, PROFILE)
        except jsonschema.ValidationError as exc:
            raise STACValidationError(f"lczscale profile: {exc.message}") from exc


@pytest.fixture(scope="module")
def stac(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("stac")
    cube = make_cube(root / "c.zarr", {"utm31": [(1596, 220)], "utm32": [(1596, 44), (1597, 44)]})
    out = root / "stac"
    assert main(["stac", cube, "--out", str(out), "--href", "s3://bucket/lcz.zarr"]) == 0
    return cube, out


def test_collection_and_items_validate_offline(stac: tuple[str, Path]) -> None:
    _, out = stac
    collection = json.loads((out / "collection.json").read_text())
    validate(collection)
    items = sorted(out.glob("*/*.json"))
    assert [p.stem for p in items] == ["utm31-2024", "utm32-2024"]
    for path in items:
        validate(json.loads(path.read_text()))
    cat = pystac.Collection.from_file(str(out / "collection.json"))
    assert len(list(cat.get_items())) == 2
    assert cat.extent.temporal.intervals[0][0].year == 2024  # type: ignore[union-attr]


def test_items_describe_grid_classes_and_provenance(stac: tuple[str, Path]) -> None:
    _, out = stac
    item = json.loads((out / "utm32-2024" / "utm32-2024.json").read_text())
    props = item["properties"]
    assert props["proj:code"] == "EPSG:32632"
    assert props["proj:transform"][:3] == [10.0, 0.0,
                                                                                   160000.0]
    assert props["lczscale:model_hash"] == PROVENANCE["model_hash"]
    assert props["lczscale:dataset"] == "synthetic-tessera"
    assert props["processing:software"] == {"lczscale": "0.1.0"}
    assert props["start_datetime"].startswith("2024-01-01")
    lcz = item["assets"]["lcz"]
    assert lcz["href"] == "s3://bucket/lcz.zarr/utm32/lcz"
    assert lcz["type"].startswith("application/vnd.zarr")
    klasses = lcz["classification:classes"]
    assert [c["value"] for c in klasses] == classes.LCZ_CODES
    assert ["#" + c["color_hint"] for c in klasses] == classes.LCZ_PALETTE
    assert [c["title"].split(": ", 1)[1] for c in klasses] == classes.LCZ_CLASS_NAMES
    # the footprint is the data (two 2.56 km tiles), not the 680 km wide zone
    w, s, e, n = item["bbox"]
    assert 0.02 < e - w < 0.06
    assert 0.03 < n - s < 0.07


def _broken(out: Path, change: str) -> dict[str, Any]:
    item = copy.deepcopy(json.loads((out / "utm32-2024" / "utm32-2024.json").read_text()))
    lcz = item["assets"]["lcz"]
    if change == "no proj:code":
        del item["properties"]["proj:code"]
        del lcz["proj:code"]
    elif change == "proj:code not a string":
        item["properties"]["proj:code"] = 32632
    elif change == "class value not an integer":
        lcz["classification:classes"][0]["value"] = "1"
    elif change == "class name not machine-readable":
        lcz["classification:classes"][3]["name"] = "Open highrise"
    elif change == "colour with #":
        lcz["classification:classes"][5]["color_hint"] = "#FF985E"
    elif change == "no datetime":
        del item["properties"]["start_datetime"]
    return item


@pytest.mark.parametrize("change", ["no proj:code", "proj:code not a string",
                                    "class value not an integer",
                                    "class name not machine-readable", "colour with #",
                                    "no datetime"])
def test_broken_items_fail_validation(stac: tuple[str, Path], change: str) -> None:
    with pytest.raises(STACValidationError):
        validate(_broken(stac[1], change))


def test_empty_cube_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = make_cube(tmp_path / "c.zarr", {"utm32": []})
    assert main(["stac", cube, "--out", str(tmp_path / "s")]) == 2
    assert "holds no data yet" in capsys.readouterr().err
